"""Cyclic garbage per request, per driver and per path (``kitmw bench --suite garbage``).

With the collector paused, a batch of requests goes through one driver, then
``gc.collect()`` counts what only it could free: objects caught in reference cycles. A
request that leaves none is freed by reference counting the moment it ends; one that
leaves some makes a real server pay for a collection later, in pauses that a benchmark
round with the collector off never shows. Each scenario pairs the bare application (or
transport, or function) with the same one under kitmw, on the same path (success, an
error of the application, a refusal, an ``around`` policy the error goes through, a
retry), so kitmw's own share is the difference. ``tests/test_garbage.py`` asserts it is
0 for every scenario.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from .harness import SIX, Env, concern_options, hs256_token, kitmw_options, registry

__all__ = ["SCENARIOS", "Scenario", "cycle_types", "format_table", "measure", "per_call", "run"]

#: (driver, path, bare, kitmw): ``bare(env)``/``kitmw(env)`` return one call (a function
#: making one request, or a coroutine function for async drivers).
Scenario = tuple[str, str, Callable[[Env], Any], Callable[[Env], Any]]


def per_call(call: Callable[[], Any], n: int = 100) -> float:
    """Objects of cyclic garbage ``call()`` leaves, per call.

    A coroutine function is run ``n`` times on one event loop, and counted once the loop
    is closed (what it still held is garbage by then), less what an empty loop leaves.
    """
    if asyncio.iscoroutinefunction(call):
        return _per_call_async(call, n)
    call()
    call()  # warm: caches and lazily made objects are not garbage
    gc.collect()
    gc.disable()
    try:
        for _ in range(n):
            call()
        return gc.collect() / n
    finally:
        gc.enable()


def _per_call_async(call: Callable[[], Awaitable[Any]], n: int) -> float:
    async def batch(count: int) -> None:
        for _ in range(count):
            await call()

    asyncio.run(batch(2))  # warm
    found = []
    for count in (0, n):
        gc.collect()
        gc.disable()
        try:
            asyncio.run(batch(count))
            found.append(gc.collect())
        finally:
            gc.enable()
    return (found[1] - found[0]) / n


def cycle_types(call: Callable[[], Any], n: int = 20) -> Counter[str]:
    """The types of the objects ``n`` calls leave in cycles (to find who makes them)."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        per_call(call, n)
        gc.collect()
        found = Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return found


def _quiet(call: Callable[[], Any]) -> Callable[[], Any]:
    """``call`` with the exception it is meant to raise caught, as the server would."""
    if asyncio.iscoroutinefunction(call):

        async def acall() -> None:
            try:
                await call()
            except Exception:
                pass

        return acall

    def quiet() -> None:
        try:
            call()
        except Exception:
            pass

    return quiet


def _quieted(make: Callable[[Env], Any]) -> Callable[[Env], Any]:
    return lambda env: _quiet(make(env))


# -- WSGI -------------------------------------------------------------------------------------


def _flask() -> Any:
    from .wsgi import flask_app

    app = flask_app()
    app.logger.disabled = True

    def boom() -> str:
        raise RuntimeError("boom")

    app.add_url_rule("/boom", view_func=boom)

    return app


def _wsgi_raising(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    raise RuntimeError("boom")


def _wsgi_raising_body(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body() -> Any:
        yield b"o"
        raise RuntimeError("boom")

    return body()


def _wsgi_ok(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def _wsgi_call(app: Any, path: str = "/items/42", token: str | None = None) -> Callable[[], None]:
    from .wsgi import environ

    base = environ(token)
    base["PATH_INFO"] = path

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
        return _discard

    def call() -> None:
        request = dict(base)
        request["wsgi.input"] = io.BytesIO(b"")
        body = app(request, start_response)
        try:
            for _ in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    return call


def _discard(data: bytes) -> None:
    return None


def _server_options(env: Env, concerns: tuple[str, ...] = SIX) -> dict[str, Any]:
    options = concern_options(env, concerns)
    if "breaker" in options:
        options["breaker"]["fail_max"] = 10**9  # errors on every request: it must not open
    return options


def _wsgi_stack(app: Any, env: Env, flask: bool = True, **extra: Any) -> Any:
    from ..stack import stack

    options = {**_server_options(env), **extra}
    if flask:
        app.wsgi_app = stack(app.wsgi_app, **options)
        return app
    return stack(app, protocol="wsgi", **options)


def _wsgi_scenarios() -> list[Scenario]:
    token = hs256_token()
    scenarios: list[Scenario] = [
        (
            "wsgi",
            "success, Flask, stack() of 6",
            lambda env: _wsgi_call(_flask()),
            lambda env: _wsgi_call(_wsgi_stack(_flask(), env), token=token),
        ),
        (
            "wsgi",
            "app error, Flask's 500, stack() of 6",
            lambda env: _quiet(_wsgi_call(_flask(), "/boom")),
            lambda env: _quiet(_wsgi_call(_wsgi_stack(_flask(), env), "/boom", token)),
        ),
        (
            "wsgi",
            "app raises, stack() of 6",
            lambda env: _quiet(_wsgi_call(_wsgi_raising)),
            lambda env: _quiet(_wsgi_call(_wsgi_stack(_wsgi_raising, env, flask=False), token=token)),
        ),
        (
            "wsgi",
            "app raises, handle_errors=True",
            lambda env: _quiet(_wsgi_call(_wsgi_raising)),
            lambda env: _quiet(
                _wsgi_call(_wsgi_stack(_wsgi_raising, env, flask=False, handle_errors=True), token=token)
            ),
        ),
        (
            "wsgi",
            "body raises, stack() of 6",
            lambda env: _quiet(_wsgi_call(_wsgi_raising_body)),
            lambda env: _quiet(_wsgi_call(_wsgi_stack(_wsgi_raising_body, env, flask=False), token=token)),
        ),
        (
            "wsgi",
            "refused (401), stack() of 6",
            lambda env: _wsgi_call(_wsgi_ok),
            lambda env: _wsgi_call(_wsgi_stack(_wsgi_ok, env, flask=False)),
        ),
    ]
    for concern in SIX:

        def layer(env: Env, concern: str = concern) -> Callable[[], None]:
            from .. import wsgi

            app = _flask()
            cls = getattr(wsgi, {"breaker": "CircuitBreaker", "ratelimit": "RateLimit", "access_log": "AccessLog"}.get(
                concern, concern.capitalize()
            ))
            app.wsgi_app = cls(app.wsgi_app, **kitmw_options(env, concern))
            return _wsgi_call(app, token=token)

        scenarios.append(("wsgi", f"success, Flask, {concern} alone", lambda env: _wsgi_call(_flask()), layer))
    return scenarios


# -- ASGI -------------------------------------------------------------------------------------


def _starlette() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def boom(request: Any) -> PlainTextResponse:
        raise RuntimeError("boom")

    return Starlette(routes=[Route("/items/{item_id}", item), Route("/boom", boom)])


def _asgi_call(app: Any, path: str = "/items/42", token: str | None = None) -> Callable[[], Awaitable[None]]:
    from .asgi import request_scope

    base = request_scope(token)
    base["path"] = path
    base["raw_path"] = path.encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    async def call() -> None:
        scope = dict(base)
        scope["state"] = {}
        await app(scope, receive, send)

    return call


def _asgi_stack(env: Env, **extra: Any) -> Any:
    from ..stack import stack

    return stack(_starlette(), **{**_server_options(env), **extra})


def _asgi_scenarios() -> list[Scenario]:
    token = hs256_token()
    return [
        (
            "asgi",
            "success, stack() of 6",
            lambda env: _asgi_call(_starlette()),
            lambda env: _asgi_call(_asgi_stack(env), token=token),
        ),
        (
            "asgi",
            "app raises, stack() of 6",
            lambda env: _quiet(_asgi_call(_starlette(), "/boom")),
            lambda env: _quiet(_asgi_call(_asgi_stack(env), "/boom", token)),
        ),
        (
            "asgi",
            "app raises through an around (timeout), stack() of 6",
            lambda env: _quiet(_asgi_call(_starlette(), "/boom")),
            lambda env: _quiet(_asgi_call(_asgi_stack(env, timeout=30.0), "/boom", token)),
        ),
        (
            "asgi",
            "refused (401), stack() of 6",
            lambda env: _asgi_call(_starlette()),
            lambda env: _asgi_call(_asgi_stack(env)),
        ),
    ]


# -- httpx ------------------------------------------------------------------------------------


def _client_options(env: Env, **extra: Any) -> dict[str, Any]:
    shared = registry()
    options: dict[str, Any] = {
        "access_log": {"logger": env.access_logger()},
        "metrics": {"registry": shared},
        "tracing": {"tracer_provider": env.provider},
        "ratelimit": {"limit": "1000000/minute", "registry": shared},
        "breaker": {"fail_max": 10**9, "registry": shared},
        "retry": {"attempts": 2, "backoff_base": 0.0, "budget": False},
    }
    options.update(extra)
    return options


def _handler(outcome: str) -> Callable[[Any], Any]:
    import httpx

    def handle(request: Any) -> Any:
        if outcome == "raise":
            raise httpx.ConnectError("refused", request=request)
        status = 503 if outcome == "503" else 200
        return httpx.Response(status, headers={"content-type": "text/plain"}, stream=httpx.ByteStream(b"ok"))

    return handle


def _httpx_call(transport: Any, is_async: bool) -> Callable[[], Any]:
    import httpx

    if is_async:

        async def acall() -> None:
            request = httpx.Request("GET", "http://bench.local/items/42", extensions={"timeout": {}})
            response = await transport.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()

        return acall

    def call() -> None:
        request = httpx.Request("GET", "http://bench.local/items/42", extensions={"timeout": {}})
        response = transport.handle_request(request)
        try:
            response.read()
        finally:
            response.close()

    return call


def _httpx_scenarios() -> list[Scenario]:
    import httpx

    from .. import httpx as kitmw_httpx

    scenarios: list[Scenario] = []
    for is_async in (False, True):
        kind = "httpx async" if is_async else "httpx sync"
        cls = kitmw_httpx.AsyncTransport if is_async else kitmw_httpx.Transport

        def bare(env: Env, outcome: str, is_async: bool = is_async) -> Callable[[], Any]:
            return _httpx_call(httpx.MockTransport(_handler(outcome)), is_async)

        def wrapped(env: Env, outcome: str, cls: Any = cls, is_async: bool = is_async, **extra: Any) -> Any:
            transport = cls(transport=httpx.MockTransport(_handler(outcome)), **_client_options(env, **extra))
            return _httpx_call(transport, is_async)

        scenarios += [
            (kind, "success, all six", partial(bare, outcome="ok"), partial(wrapped, outcome="ok")),
            (kind, "503, retried once, all six", partial(bare, outcome="503"), partial(wrapped, outcome="503")),
            (
                kind,
                "transport raises, retried, all six",
                _quieted(partial(bare, outcome="raise")),
                _quieted(partial(wrapped, outcome="raise")),
            ),
            (
                kind,
                "refused (rate limit), all six",
                partial(bare, outcome="ok"),
                _quieted(partial(wrapped, outcome="ok", ratelimit={"limit": "1/hour"})),
            ),
        ]
    return scenarios


# -- kitmw.endpoint ---------------------------------------------------------------------------


def _function(outcome: str, is_async: bool) -> Callable[..., Any]:
    state = {"calls": 0}

    def work(x: int) -> int:
        state["calls"] += 1
        if outcome == "raise" or (outcome == "flaky" and state["calls"] % 2):
            raise ValueError("boom")
        return x

    if not is_async:
        return work

    async def awork(x: int) -> int:
        return work(x)

    return awork


def _endpoint_call(fn: Callable[..., Any], is_async: bool) -> Callable[[], Any]:
    if is_async:

        async def acall() -> None:
            await fn(1)

        return acall
    return lambda: fn(1)


def _endpoint_scenarios() -> list[Scenario]:
    from ..endpoint import endpoint

    def options(env: Env, **extra: Any) -> dict[str, Any]:
        shared = registry()
        found: dict[str, Any] = {
            "metrics": {"registry": shared},
            "tracing": {"tracer_provider": env.provider},
            "ratelimit": {"limit": "1000000/minute", "registry": shared},
            "breaker": {"fail_max": 10**9, "registry": shared},
        }
        found.update(extra)
        return found

    retry = {"attempts": 2, "backoff_base": 0.0, "budget": False}
    arounds: dict[str, dict[str, Any]] = {
        "inline (no around)": {},
        "through retry": {"retry": retry},
        "through timeout": {"timeout": 30.0},
        "through concurrency": {"concurrency": 1000},
    }
    scenarios: list[Scenario] = []
    for is_async in (False, True):
        kind = "endpoint async" if is_async else "endpoint sync"

        def bare(env: Env, outcome: str, is_async: bool = is_async) -> Callable[[], Any]:
            return _endpoint_call(_function(outcome, is_async), is_async)

        def wrapped(env: Env, outcome: str, is_async: bool = is_async, **extra: Any) -> Callable[[], Any]:
            fn = endpoint(f"bench-{id(extra)}", **options(env, **extra))(_function(outcome, is_async))
            return _endpoint_call(fn, is_async)

        for label, extra in arounds.items():
            scenarios += [
                (kind, f"success, {label}", partial(bare, outcome="ok"), partial(wrapped, outcome="ok", **extra)),
                (
                    kind,
                    f"raises, {label}",
                    _quieted(partial(bare, outcome="raise")),
                    _quieted(partial(wrapped, outcome="raise", **extra)),
                ),
            ]
        scenarios += [
            (
                kind,
                "fails once, retried",
                _quieted(partial(bare, outcome="flaky")),
                _quieted(partial(wrapped, outcome="flaky", retry=retry)),
            ),
            (
                kind,
                "refused (rate limit), through retry",
                partial(bare, outcome="ok"),
                _quieted(partial(wrapped, outcome="ok", retry=retry, ratelimit={"limit": "1/hour"})),
            ),
        ]
    return scenarios


def scenarios() -> list[Scenario]:
    """Every scenario, per driver."""
    return [*_wsgi_scenarios(), *_asgi_scenarios(), *_httpx_scenarios(), *_endpoint_scenarios()]


SCENARIOS = scenarios


def measure(scenario: Scenario, env: Env | None = None, n: int = 100) -> tuple[float, float]:
    """(bare, kitmw) objects of cyclic garbage per request of one scenario."""
    env = env or Env()
    _, _, bare, kitmw = scenario
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # the errors the scenarios raise on purpose
    try:
        return per_call(bare(env), n), per_call(kitmw(env), n)
    finally:
        logging.disable(previous)


def run(n: int = 100) -> list[dict[str, Any]]:
    """Every scenario measured: driver, path, bare, kitmw and kitmw's own (the difference)."""
    env = Env()
    rows = []
    for scenario in scenarios():
        bare, kitmw = measure(scenario, env, n)
        rows.append({"driver": scenario[0], "path": scenario[1], "bare": bare, "kitmw": kitmw, "own": kitmw - bare})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| driver | path | bare (objects/request) | with kitmw | kitmw's own |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['driver']} | {r['path']} | {r['bare']:.1f} | {r['kitmw']:.1f} | {r['own']:+.1f} |" for r in rows
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(format_table(run()))
