"""The ``asgi`` suite of ``kitmw bench`` (the default): ASGI middlewares in-process.

Every configuration wraps the same Starlette app (one route, ``/items/{item_id}``) and
is driven directly through ASGI (no server, no sockets), in interleaved rounds
(:mod:`kitmw.bench.harness`); overhead and ratio are against the bare Starlette app of
the same run.

Peer packages are optional (the ``bench`` extra): a configuration whose package is
missing is left out of the table, and one note names the missing packages and the extra
that installs them; a configuration that fails for another reason is listed as skipped
with that reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .harness import (
    JWT_SECRET,
    SIX,
    Configuration,
    Env,
    Suite,
    clock,
    concern_options,
    kitmw_options,
    per_request,
    registry,
)

__all__ = ["SUITE", "configurations", "drive", "peer_stack", "request_scope", "run", "starlette_app"]

Builder = Callable[[Env], Any]


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/items/{item_id}", item)])


def _fastapi_app() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})  # type: ignore[call-arg]

    @app.get("/items/{item_id}", response_class=PlainTextResponse)
    async def item(item_id: int) -> str:
        return "ok"

    return app


async def _raw_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def configurations() -> list[Configuration]:
    """(name, group, builder, needs_token); builders get the env and return an ASGI app."""
    import kitmw

    def kitmw_one(concern: str) -> Builder:
        def build(env: Env) -> Any:
            return kitmw.stack(starlette_app(), **concern_options(env, [concern]))

        return build

    def kitmw_nested(concerns: list[str]) -> Builder:
        classes = {
            "tracing": kitmw.Tracing,
            "access_log": kitmw.AccessLog,
            "metrics": kitmw.Metrics,
            "ratelimit": kitmw.RateLimit,
            "auth": kitmw.Auth,
            "breaker": kitmw.CircuitBreaker,
        }

        def build(env: Env) -> Any:
            app = starlette_app()
            for concern in reversed(concerns):
                app = classes[concern](app, **kitmw_options(env, concern))
            return app

        return build

    def kitmw_stack(concerns: list[str]) -> Builder:
        def build(env: Env) -> Any:
            return kitmw.stack(starlette_app(), **concern_options(env, concerns))

        return build

    three = list(SIX[:3])
    six = list(SIX)
    configs: list[Configuration] = [
        ("bare Starlette app", "bare", lambda env: starlette_app(), False),
        ("bare raw ASGI app", "reference", lambda env: _raw_app, False),
        ("bare FastAPI app", "reference", lambda env: _fastapi_app(), False),
        ("no-op pure-ASGI middleware", "reference", _noop_middleware, False),
    ]
    for concern, title in [
        ("access_log", "kitmw AccessLog"),
        ("metrics", "kitmw Metrics"),
        ("tracing", "kitmw Tracing"),
        ("ratelimit", "kitmw RateLimit (memory)"),
        ("auth", "kitmw Auth (HS256 JWT)"),
        ("breaker", "kitmw CircuitBreaker"),
    ]:
        configs.append((title, "kitmw", kitmw_one(concern), concern == "auth"))
    configs += [
        ("kitmw 3 nested (tracing, log, metrics)", "kitmw", kitmw_nested(three), False),
        ("kitmw stack() of 3", "kitmw", kitmw_stack(three), False),
        ("kitmw 6 nested", "kitmw", kitmw_nested(six), True),
        ("kitmw stack() of 6", "kitmw", kitmw_stack(six), True),
        ("kitmw stack() of 6, tracing off", "kitmw", kitmw_stack(six[1:]), True),
        ("asgi-correlation-id", "peer", _peer_correlation_id, False),
        ("starlette_exporter", "peer", _peer_starlette_exporter, False),
        ("prometheus-fastapi-instrumentator", "peer", _peer_instrumentator, False),
        ("OpenTelemetryMiddleware (exclude send/receive)", "peer", _peer_otel(True), False),
        ("OpenTelemetryMiddleware (default)", "peer", _peer_otel(False), False),
        ("slowapi ASGI middleware (memory)", "peer", _peer_slowapi, False),
        ("Starlette AuthenticationMiddleware + PyJWT", "peer", _peer_auth, True),
        ("pybreaker-guarded endpoint", "peer", _peer_pybreaker, False),
        ("peer stack (all six peers)", "peer", peer_stack, True),
    ]
    return configs


def _noop_middleware(env: Env) -> Any:
    inner = starlette_app()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def send_wrapper(message: Any) -> None:
            await send(message)

        await inner(scope, receive, send_wrapper)

    return app


def _with_middleware(*middleware: Any, state: dict[str, Any] | None = None, guard: bool = False) -> Any:
    """A Starlette app like `starlette_app()`, peers added the way their docs say."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    route = Route("/items/{item_id}", item)
    if guard:
        route.app = _pybreaker_guard(route.app)
    app = Starlette(routes=[route], middleware=list(middleware))
    for key, value in (state or {}).items():
        setattr(app.state, key, value)
    return app


def _pybreaker_guard(inner: Any) -> Any:
    import pybreaker

    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        with breaker.calling():
            await inner(scope, receive, send)

    return guarded


def _mw_correlation_id(env: Env) -> Any:
    from asgi_correlation_id import CorrelationIdMiddleware
    from starlette.middleware import Middleware

    return Middleware(CorrelationIdMiddleware)


def _mw_exporter(env: Env) -> Any:
    from starlette.middleware import Middleware
    from starlette_exporter import PrometheusMiddleware

    return Middleware(PrometheusMiddleware, app_name=f"bench{time.monotonic_ns()}", group_paths=True)


def _mw_otel(env: Env, exclude: bool = True) -> Any:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette.middleware import Middleware

    kwargs: dict[str, Any] = {"tracer_provider": env.provider}
    if exclude:
        kwargs["exclude_spans"] = ["receive", "send"]
    return Middleware(OpenTelemetryMiddleware, **kwargs)


def _slowapi_limiter() -> Any:
    from slowapi import Limiter
    from slowapi.util import get_remote_address

    return Limiter(key_func=get_remote_address, default_limits=["1000000/minute"])


def _mw_slowapi(env: Env) -> Any:
    from slowapi.middleware import SlowAPIASGIMiddleware
    from starlette.middleware import Middleware

    return Middleware(SlowAPIASGIMiddleware)


def _mw_auth(env: Env) -> Any:
    import jwt
    from starlette.authentication import (
        AuthCredentials,
        AuthenticationBackend,
        AuthenticationError,
        SimpleUser,
    )
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware

    class JWTBackend(AuthenticationBackend):
        async def authenticate(self, conn: Any) -> Any:
            header = conn.headers.get("authorization")
            if not header or not header.startswith("Bearer "):
                return None
            try:
                claims = jwt.decode(header[7:], JWT_SECRET, algorithms=["HS256"])
            except jwt.PyJWTError as exc:
                raise AuthenticationError("invalid token") from exc
            return AuthCredentials(claims.get("scope", "").split()), SimpleUser(claims["sub"])

    return Middleware(AuthenticationMiddleware, backend=JWTBackend())


def _peer_correlation_id(env: Env) -> Any:
    return _with_middleware(_mw_correlation_id(env))


def _peer_starlette_exporter(env: Env) -> Any:
    return _with_middleware(_mw_exporter(env))


def _peer_instrumentator(env: Env) -> Any:
    from prometheus_fastapi_instrumentator import Instrumentator

    app = starlette_app()
    Instrumentator(registry=registry()).instrument(app)
    return app


def _peer_otel(exclude: bool) -> Builder:
    def build(env: Env) -> Any:
        return _with_middleware(_mw_otel(env, exclude))

    return build


def _peer_slowapi(env: Env) -> Any:
    return _with_middleware(_mw_slowapi(env), state={"limiter": _slowapi_limiter()})


def _peer_auth(env: Env) -> Any:
    return _with_middleware(_mw_auth(env))


def _peer_pybreaker(env: Env) -> Any:
    return _with_middleware(guard=True)


def peer_stack(env: Env) -> Any:
    """What a user stitches together from peers to do the same six jobs."""
    return _with_middleware(
        _mw_otel(env),
        _mw_correlation_id(env),
        _mw_exporter(env),
        _mw_slowapi(env),
        _mw_auth(env),
        state={"limiter": _slowapi_limiter()},
        guard=True,
    )


def request_scope(token: str | None) -> dict[str, Any]:
    headers = [
        (b"host", b"bench.local"),
        (b"user-agent", b"kitmw-bench/1.0"),
        (b"accept", b"*/*"),
    ]
    if token:
        headers.append((b"authorization", b"Bearer " + token.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/items/42",
        "raw_path": b"/items/42",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def drive(app: Any, base_scope: dict[str, Any], n: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per request over ``n`` requests of ``base_scope`` to ``app``;
    raises unless every answer is a 200."""
    request = {"type": "http.request", "body": b"", "more_body": False}
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    start = clock()
    for _ in range(n):
        scope = dict(base_scope)
        scope["state"] = {}
        await app(scope, receive, send)
    timing = per_request(start, n)
    bad = [s for s in statuses if s != 200]
    if bad:
        raise RuntimeError(f"unexpected status {bad[0]}")
    return timing


async def _ready(make: Callable[[], Any], needs_token: bool, token: Callable[[], str]) -> Callable[[int], Any]:
    app = make()
    scope = request_scope(token() if needs_token else None)
    await drive(app, scope, 20)  # warm up, and check it answers 200
    return lambda n: drive(app, scope, n)


#: The suite; ``run(rounds=, requests_per_round=, only=, progress=)`` runs it.
SUITE = Suite(configurations, _ready)
run = SUITE.run
