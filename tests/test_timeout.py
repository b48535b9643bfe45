"""The timeout concern: the policies with neutral exchanges and a fake clock, the ASGI
driver with Starlette/FastAPI apps (in process, and under real uvicorn for the
cancellation), the WSGI driver with Flask, and the call sides on the chain."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Generator
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI
from flask import Flask, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

import kitmw
import kitmw.httpx
import kitmw.timeout
import kitmw.wsgi
from kitmw.chain import CALL, Call, compile_chain
from kitmw.errors import ConfigError, DeadlineExceeded, Rejection
from kitmw.exchange import current_deadline, reset_deadline, set_deadline
from kitmw.testing import (
    FakeClock,
    NeutralClientExchange,
    NeutralEndpointExchange,
    NeutralExchange,
    capture_logs,
)
from kitmw.timeout import ClientTimeoutPolicy, EndpointTimeoutPolicy, TimeoutPolicy


def samples(registry: CollectorRegistry, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == metric:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def timeouts(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {(dict(k)["side"], dict(k)["scope"]): v for k, v in samples(registry, "kitmw_timeouts_total").items()}


def around(policy: Any, ex: Any, *, is_async: bool = True) -> Generator[Any, Any, Any]:
    hooks = policy.hooks("asgi" if policy.side == "server" else policy.side, is_async)
    assert hooks.around is not None
    gen: Generator[Any, Any, Any] = hooks.around(ex)
    return gen


def finished(gen: Generator[Any, Any, Any], send: Any = None, throw: BaseException | None = None) -> Any:
    """Send a result (or throw an error) into an around generator; return what it returns."""
    with pytest.raises(StopIteration) as stop:
        if throw is not None:
            gen.throw(throw)
        else:
            gen.send(send)
    return stop.value.value


# -- the policies, with neutral exchanges and a fake clock ----------------------------------------


def test_the_around_arms_the_deadline_and_holds_the_call_under_it(registry) -> None:
    clock = FakeClock()
    policy = TimeoutPolicy(seconds=2.0, clock=clock, registry=registry)
    ex = NeutralExchange("GET", "/items/1", route="/items/{item_id}")
    gen = around(policy, ex)
    op = next(gen)
    assert isinstance(op, Call) and op.timeout == 2.0
    assert ex.deadline == clock.now + 2.0
    assert current_deadline() == ex.deadline  # what the code the request runs sees
    assert finished(gen, "the result") == "the result"
    assert current_deadline() is None  # reset when the call is over
    assert timeouts(registry) == {}


def test_a_timeout_at_the_deadline_is_a_504_counted_and_recorded(registry) -> None:
    clock = FakeClock()
    policy = TimeoutPolicy(seconds=2.0, clock=clock, registry=registry)
    ex = NeutralExchange("GET", "/items/1", route="/items/{item_id}")
    gen = around(policy, ex)
    next(gen)
    clock.advance(2.0)
    answer = finished(gen, throw=TimeoutError())
    assert isinstance(answer, Rejection) and (answer.status, answer.code) == (504, "timeout")
    assert answer.body == b'{"error":"timeout"}'
    assert isinstance(ex.error, DeadlineExceeded) and isinstance(ex.error, TimeoutError)
    assert answer.error().__class__ is DeadlineExceeded
    assert timeouts(registry) == {("server", "/items/{item_id}"): 1.0}
    assert current_deadline() is None


def test_a_timeout_error_well_before_the_deadline_is_the_applications_own(registry) -> None:
    clock = FakeClock()
    policy = TimeoutPolicy(seconds=2.0, clock=clock, registry=registry)
    gen = around(policy, NeutralExchange())
    next(gen)
    clock.advance(0.5)
    with pytest.raises(TimeoutError) as raised:
        gen.throw(TimeoutError("the database's own"))
    assert str(raised.value) == "the database's own"
    assert timeouts(registry) == {}


def test_per_route_budgets_prefixes_and_exclusions(registry) -> None:
    policy = TimeoutPolicy(
        seconds=2.0,
        routes={"/reports/{id}": 30.0, "/export": None, "/static/*": 0.5},
        exclude_paths=["/events"],
        registry=registry,
    )

    def budget(path: str, route: str | None = None) -> float | None:
        return policy.budget(NeutralExchange("GET", path, route=route))

    assert budget("/items/1", "/items/{item_id}") == 2.0
    assert budget("/reports/7", "/reports/{id}") == 30.0
    assert budget("/export") is None and budget("/export/big.csv") is None  # a plain path covers below
    assert budget("/static/app.js") == 0.5 and budget("/static") == 0.5
    assert budget("/events") is None
    assert budget("/exports") == 2.0  # a prefix is a path segment, never a string prefix


def test_no_deadline_for_a_route_means_a_plain_call(registry) -> None:
    policy = TimeoutPolicy(seconds=2.0, routes={"/export": None}, registry=registry)
    ex = NeutralExchange("GET", "/export")
    gen = around(policy, ex)
    assert next(gen) is CALL
    assert ex.deadline is None and current_deadline() is None
    assert finished(gen, 1) == 1


def test_an_excluded_route_is_left_alone_even_under_an_outer_deadline(registry) -> None:
    """An outer layer's deadline is that layer's to enforce (this one enforced and counted
    it again for a path it excludes)."""
    clock = FakeClock()
    policy = TimeoutPolicy(seconds=2.0, exclude_paths=["/events"], clock=clock, registry=registry)
    token = set_deadline(clock.now + 1.0)
    try:
        ex = NeutralExchange("GET", "/events")
        gen = around(policy, ex)
        assert next(gen) is CALL and ex.deadline is None
        clock.advance(5)
        with pytest.raises(TimeoutError):
            gen.throw(TimeoutError())
    finally:
        reset_deadline(token)
    assert timeouts(registry) == {}


def test_an_earlier_deadline_already_current_wins(registry) -> None:
    clock = FakeClock()
    policy = TimeoutPolicy(seconds=10.0, clock=clock, registry=registry)
    token = set_deadline(clock.now + 1.0)  # the context's (an outer layer, a caller)
    try:
        ex = NeutralExchange()
        gen = around(policy, ex)
        op = next(gen)
        assert op.timeout == 1.0 and ex.deadline == clock.now + 1.0
        finished(gen, None)
    finally:
        reset_deadline(token)


def test_a_deadline_already_past_refuses_without_calling(registry) -> None:
    clock = FakeClock()
    policy = ClientTimeoutPolicy(seconds=5.0, clock=clock, registry=registry)
    ex = NeutralClientExchange("GET", "/", headers={"host": "api.test:8080"})
    ex.deadline = clock.now - 0.1  # the request it is made in has no time left
    gen = around(policy, ex)
    answer = finished(gen)  # returned before yielding anything
    assert answer.code == "timeout"
    assert timeouts(registry) == {("client", "http://api.test:8080"): 1.0}


@pytest.mark.parametrize(
    "error", [TimeoutError(), type("ReadTimeout", (type("TimeoutException", (Exception,), {}),), {})()]
)
def test_a_client_call_that_times_out_at_the_deadline_raises_deadline_exceeded(registry, error) -> None:
    """httpx's own timeouts (capped to what remains) are not TimeoutErrors: they count too."""
    clock = FakeClock()
    policy = ClientTimeoutPolicy(seconds=1.0, clock=clock, registry=registry)
    ex = NeutralClientExchange("GET", "/", headers={"host": "api.test"})
    gen = around(policy, ex)
    assert next(gen).timeout == 1.0 and ex.deadline == clock.now + 1.0
    clock.advance(1.0)
    assert finished(gen, throw=error).code == "timeout"


def test_a_client_error_before_the_deadline_passes_unchanged(registry) -> None:
    clock = FakeClock()
    gen = around(ClientTimeoutPolicy(seconds=1.0, clock=clock, registry=registry), NeutralClientExchange())
    next(gen)
    with pytest.raises(ConnectionError):
        gen.throw(ConnectionError("refused"))


def test_a_client_without_seconds_keeps_the_propagated_deadline_only(registry) -> None:
    clock = FakeClock()
    policy = ClientTimeoutPolicy(clock=clock, registry=registry)
    plain = around(policy, NeutralClientExchange())
    assert next(plain) is CALL  # no deadline anywhere: nothing to hold
    token = set_deadline(clock.now + 0.25)
    try:
        ex = NeutralClientExchange()
        gen = around(policy, ex)
        assert next(gen).timeout == 0.25 and ex.deadline == clock.now + 0.25
    finally:
        reset_deadline(token)


@pytest.mark.parametrize("policy_class", [ClientTimeoutPolicy, EndpointTimeoutPolicy])
def test_a_sync_call_that_returns_after_the_deadline_gives_its_result_up(registry, policy_class) -> None:
    """A sync driver cannot cut the call: a late result is refused all the same."""
    clock = FakeClock()
    policy = policy_class(seconds=1.0, clock=clock, registry=registry)
    side = NeutralClientExchange if policy_class is ClientTimeoutPolicy else NeutralEndpointExchange
    ex = side("CALL", "charge")
    gen = around(policy, ex, is_async=False)
    next(gen)
    clock.advance(1.5)
    assert finished(gen, "late").code == "timeout"
    on_time = around(policy, type(ex)("CALL", "charge"), is_async=False)
    next(on_time)
    clock.advance(0.5)
    assert finished(on_time, "on time") == "on time"


def test_an_endpoint_call_sees_its_deadline_as_the_context_deadline(registry) -> None:
    clock = FakeClock()
    policy = EndpointTimeoutPolicy(seconds=3.0, clock=clock, registry=registry)
    ex = NeutralEndpointExchange("CALL", "charge_card")
    gen = around(policy, ex)
    next(gen)
    assert current_deadline() == clock.now + 3.0
    clock.advance(3.0)
    assert finished(gen, throw=TimeoutError()).code == "timeout"
    assert current_deadline() is None
    assert timeouts(registry) == {("endpoint", "charge_card"): 1.0}


def test_client_scopes_are_bounded(registry, monkeypatch) -> None:
    from kitmw.timeout import _policy

    monkeypatch.setattr(_policy, "_MAX_SCOPES", 2)
    clock = FakeClock()
    policy = ClientTimeoutPolicy(seconds=1.0, clock=clock, registry=registry)
    for host in ("a.test", "b.test", "c.test", "d.test"):
        gen = around(policy, NeutralClientExchange(headers={"host": host}))
        next(gen)
        clock.advance(1)
        finished(gen, throw=TimeoutError())
    assert timeouts(registry) == {
        ("client", "http://a.test"): 1.0,
        ("client", "http://b.test"): 1.0,
        ("client", "<other>"): 2.0,
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "seconds: a number of seconds such as 2.0 is required"),
        ({"seconds": 0}, "seconds: expected a positive number of seconds"),
        ({"seconds": -1.0}, "seconds: expected a positive number"),
        ({"seconds": True}, "seconds: expected a positive number"),
        ({"seconds": float("inf")}, "seconds: expected a positive number"),
        ({"seconds": "2s"}, "seconds: expected a positive number"),
        ({"seconds": 1, "status": 200}, "status: expected an HTTP error status"),
        ({"seconds": 1, "routes": {"reports": 3}}, "routes: each key must be a route template"),
        ({"seconds": 1, "routes": {"/r": -3}}, "routes['/r']: expected a positive number"),
        ({"seconds": 1, "routes": [("/r", 3)]}, "routes: expected a mapping"),
        ({"seconds": 1, "exclude_paths": ["health"]}, "exclude_paths: each path must be a string"),
        ({"seconds": 1, "clock": 5}, "clock: expected a callable"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        TimeoutPolicy(**options)


def test_bad_options_through_stack_name_the_concern() -> None:
    with pytest.raises(ConfigError, match=r"^timeout: seconds: expected a positive number"):
        kitmw.stack(Starlette(), timeout=-2)
    with pytest.raises(ConfigError, match=r"^timeout: unknown option 'second'; did you mean 'seconds'\?"):
        kitmw.stack(Starlette(), timeout={"second": 2})
    with pytest.raises(ConfigError, match=r"^timeout: seconds: a number of seconds such as 2.0 is required"):
        kitmw.stack(Starlette(), timeout=True)
    with pytest.raises(ConfigError, match=r"seconds: expected a positive number of seconds, got True"):
        EndpointTimeoutPolicy(seconds=True)  # type: ignore[arg-type]


def test_the_helpers_read_the_context_deadline() -> None:
    assert kitmw.timeout.deadline() is None and kitmw.timeout.remaining() is None
    with kitmw.timeout.within(5.0) as deadline:
        assert kitmw.timeout.deadline() == deadline
        left = kitmw.timeout.remaining()
        assert left is not None and 4.0 < left <= 5.0
        with kitmw.timeout.within(60.0) as inner:
            assert inner == deadline  # never later than the one already current
        with kitmw.timeout.within(0.0):
            assert kitmw.timeout.remaining() == 0.0
    assert kitmw.timeout.deadline() is None
    with pytest.raises(ConfigError, match="seconds: expected a finite number"), kitmw.timeout.within(float("nan")):
        pass


def test_the_registry_names_every_side_and_the_classes_exist() -> None:
    from kitmw.concerns import build, concern

    entry = concern("timeout")
    assert entry.policies == {
        "server": "TimeoutPolicy",
        "client": "ClientTimeoutPolicy",
        "endpoint": "EndpointTimeoutPolicy",
    }
    assert isinstance(build("server", "timeout", 2.5), TimeoutPolicy)
    assert isinstance(build("client", "timeout", 2.5), ClientTimeoutPolicy)
    assert isinstance(build("endpoint", "timeout", 2), EndpointTimeoutPolicy)
    assert kitmw.Timeout.__name__ == "Timeout" and kitmw.wsgi.Timeout.__name__ == "Timeout"
    from kitmw.stack import CANONICAL_ORDER

    names = [name for name, *_ in CANONICAL_ORDER]
    assert names.index("metrics") < names.index("timeout") < names.index("ratelimit")


# -- the call sides on the chain (the httpx and endpoint drivers run this) ------------------------


@pytest.mark.anyio
async def test_an_async_call_is_cancelled_at_the_deadline(registry) -> None:
    policy = EndpointTimeoutPolicy(seconds=0.05, registry=registry)
    chain = compile_chain([policy], "endpoint", is_async=True)
    cancelled = asyncio.Event()

    async def call() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    ex = NeutralEndpointExchange("CALL", "slow")
    with pytest.raises(DeadlineExceeded) as raised:
        await chain.run_async(ex, call, [])
    assert isinstance(raised.value, TimeoutError)
    assert cancelled.is_set()
    assert timeouts(registry) == {("endpoint", "slow"): 1.0}


@pytest.mark.anyio
async def test_an_async_call_within_its_deadline_returns(registry) -> None:
    policy = EndpointTimeoutPolicy(seconds=5.0, registry=registry)
    chain = compile_chain([policy], "endpoint", is_async=True)
    seen: list[float | None] = []

    async def call() -> str:
        seen.append(kitmw.timeout.remaining())
        return "done"

    assert await chain.run_async(NeutralEndpointExchange(), call, []) == "done"
    assert seen[0] is not None and 4.0 < seen[0] <= 5.0
    assert current_deadline() is None


def test_a_sync_call_runs_to_its_end_then_raises_if_late(registry) -> None:
    policy = EndpointTimeoutPolicy(seconds=0.01, registry=registry)
    chain = compile_chain([policy], "endpoint", is_async=False)
    ran: list[str] = []

    def call() -> str:
        time.sleep(0.05)  # cannot be pre-empted
        ran.append("to its end")
        return "late"

    with pytest.raises(DeadlineExceeded):
        chain.run_sync(NeutralEndpointExchange(), call, [])
    assert ran == ["to its end"]


# -- the ASGI driver, in process ------------------------------------------------------------------


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test"
    )


def starlette_app(events: dict[str, asyncio.Event] | None = None) -> Starlette:
    events = events if events is not None else {}

    async def slow(request: Any) -> JSONResponse:
        try:
            await asyncio.sleep(float(request.query_params.get("s", "0")))
        except asyncio.CancelledError:
            events.setdefault("cancelled", asyncio.Event()).set()
            raise
        return JSONResponse({"remaining": kitmw.timeout.remaining()})

    def blocking(request: Any) -> JSONResponse:  # a sync endpoint: Starlette's threadpool
        return JSONResponse({"remaining": kitmw.timeout.remaining()})

    async def stream(request: Any) -> StreamingResponse:
        async def body() -> Any:
            yield b"first chunk\n"
            await asyncio.sleep(30)
            yield b"never\n"

        return StreamingResponse(body(), media_type="text/plain")

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("home")

    return Starlette(
        routes=[
            Route("/slow", slow),
            Route("/blocking", blocking),
            Route("/stream", stream),
            Route("/", home),
        ]
    )


@pytest.mark.anyio
async def test_a_request_past_its_deadline_gets_504_json_and_the_app_is_cancelled(registry) -> None:
    events: dict[str, asyncio.Event] = {}
    app = kitmw.stack(starlette_app(events), metrics={"registry": registry}, timeout=0.05)
    async with client(app) as c:
        r = await c.get("/slow", params={"s": "30"})
    assert r.status_code == 504
    assert r.json() == {"error": "timeout"}
    assert r.headers["content-type"] == "application/json"
    assert events["cancelled"].is_set()
    assert timeouts(registry) == {("server", "/slow"): 1.0}
    requests = samples(registry, "http_server_requests_total")
    assert requests == {(("method", "GET"), ("route", "/slow"), ("status", "504")): 1.0}


@pytest.mark.anyio
async def test_the_remaining_budget_is_visible_to_async_and_sync_handlers(registry) -> None:
    app = kitmw.Timeout(starlette_app(), seconds=5.0, registry=registry)
    async with client(app) as c:
        for path in ("/slow", "/blocking"):
            r = await c.get(path)
            assert r.status_code == 200
            assert 4.0 < r.json()["remaining"] <= 5.0, path


@pytest.mark.anyio
async def test_a_started_response_is_cut_and_recorded_as_a_timeout(registry) -> None:
    """Past the deadline mid-stream the body is left without its end (the server then closes
    the connection: see the uvicorn test below), and the exchange is recorded as a 504."""
    app = kitmw.stack(starlette_app(), access_log=True, metrics={"registry": registry}, timeout=0.05)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/stream", "headers": [], "query_string": b""}
    with capture_logs() as records:
        await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert [m.get("body") for m in bodies] == [b"first chunk\n"]
    assert all(m.get("more_body") for m in bodies)  # never a final chunk: no complete-looking body
    assert timeouts(registry) == {("server", "/stream"): 1.0}
    requests = samples(registry, "http_server_requests_total")
    assert requests == {(("method", "GET"), ("route", "/stream"), ("status", "504")): 1.0}
    (record,) = records
    assert record.__dict__["status"] == 504
    assert "DeadlineExceeded" in str(record.__dict__["error"])


def test_a_client_of_a_stream_cut_at_its_deadline_sees_it_incomplete(serve_asgi: Any) -> None:
    """Under a real server the cut stream ends without its last chunk: the client gets an
    incomplete read, never a short body that looks whole."""
    app = kitmw.stack(starlette_app(), timeout=0.2)
    with serve_asgi(app) as server, pytest.raises(httpx.RemoteProtocolError, match="incomplete"):
        httpx.get(server.url + "/stream", timeout=5)


@pytest.mark.anyio
async def test_background_tasks_after_the_response_are_not_cut(registry) -> None:
    """The deadline bounds the answer: FastAPI's background tasks run after the last body
    byte, inside the application call, and must finish (this failed before ``Call``'s
    timeout spared a complete response)."""
    api = FastAPI()
    done: list[str] = []

    async def later() -> None:
        await asyncio.sleep(0.15)
        done.append("background task finished")

    @api.get("/signup")
    async def signup(tasks: BackgroundTasks) -> dict[str, str]:
        tasks.add_task(later)
        return {"status": "ok"}

    app = kitmw.stack(api, metrics={"registry": registry}, timeout=0.05)
    async with client(app) as c:
        r = await c.get("/signup")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert done == ["background task finished"]
    assert timeouts(registry) == {}


@pytest.mark.anyio
async def test_per_route_budget_and_excluded_paths_through_the_driver(registry) -> None:
    app = kitmw.stack(
        starlette_app(),
        timeout={"seconds": 0.05, "routes": {"/slow": 5.0}, "registry": registry},
        exclude_paths=["/stream"],
    )
    async with client(app) as c:
        assert (await c.get("/slow", params={"s": "0.1"})).status_code == 200
        assert (await c.get("/")).status_code == 200


@pytest.mark.anyio
async def test_add_middleware_on_fastapi_and_the_deadline_bounds_inner_waits(registry) -> None:
    """Timeout runs before the concurrency limit: a request waiting for a slot is
    bounded by its deadline too."""
    api = FastAPI()
    release = asyncio.Event()

    @api.get("/hold")
    async def hold() -> dict[str, bool]:
        await release.wait()
        return {"held": True}

    app = kitmw.stack(
        api,
        timeout={"seconds": 0.1, "routes": {"/hold": 5.0}, "registry": registry},
        concurrency={"limit": 1, "max_wait": 30, "registry": registry},
    )
    async with client(app) as c:
        first = asyncio.ensure_future(c.get("/hold"))
        await asyncio.sleep(0.05)
        second = await c.get("/other")  # waits for the slot /hold holds, until its deadline
        assert second.status_code == 504
        release.set()
        assert (await first).status_code == 200

    api2 = FastAPI()

    @api2.get("/x")
    async def x() -> dict[str, float | None]:
        return {"remaining": kitmw.timeout.remaining()}

    api2.add_middleware(kitmw.Timeout, seconds=3, registry=registry)
    async with client(api2) as c:
        assert 2.0 < (await c.get("/x")).json()["remaining"] <= 3.0


# -- the WSGI driver: the deadline is exposed and propagated, never enforced ----------------------


def flask_app() -> Flask:
    app = Flask(__name__)

    @app.get("/work")
    def work() -> Any:
        time.sleep(float(__import__("flask").request.args.get("s", "0")))
        return {"remaining": kitmw.timeout.remaining(), "deadline": kitmw.timeout.deadline()}

    @app.get("/stream")
    def stream() -> Response:
        def body() -> Any:
            yield f"{kitmw.timeout.remaining() is not None}\n"

        return Response(body(), mimetype="text/plain")

    return app


def test_wsgi_exposes_the_deadline_and_does_not_cut_a_slow_view(registry) -> None:
    app = kitmw.wsgi.Timeout(flask_app(), seconds=0.05, registry=registry)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as c:
        fast = c.get("/work")
        assert fast.status_code == 200 and 0 < fast.json()["remaining"] <= 0.05
        slow = c.get("/work", params={"s": "0.1"})
        assert slow.status_code == 200 and slow.json()["remaining"] == 0.0  # past, not cut
        assert c.get("/stream").text == "True\n"  # the body streams with the deadline still current
    assert timeouts(registry) == {("server", "/work"): 1.0}  # the late one is counted
    assert current_deadline() is None


def test_wsgi_resets_the_context_deadline_in_close(registry) -> None:
    from kitmw.testing import wsgi_environ

    app = kitmw.wsgi.Timeout(flask_app(), seconds=5, registry=registry)
    seen: list[Any] = []
    ctx = contextvars.copy_context()
    body = ctx.run(app, wsgi_environ("GET", "/work"), lambda status, headers, exc_info=None: seen.append(status))
    assert b"remaining" in b"".join(body)
    body.close()  # type: ignore[attr-defined]
    assert seen == ["200 OK"] and ctx.run(current_deadline) is None


# -- under a real server: cancellation and a cut stream on the wire ------------------------------


@pytest.mark.e2e
def test_uvicorn_cancels_the_app_and_answers_504(serve_asgi: Any, registry: CollectorRegistry) -> None:
    cancelled = threading.Event()
    api = FastAPI()

    @api.get("/slow")
    async def slow() -> dict[str, str]:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"never": "sent"}

    @api.get("/stream")
    async def stream() -> StreamingResponse:
        async def body() -> Any:
            yield b"x" * 10
            await asyncio.sleep(30)

        return StreamingResponse(body())

    app = kitmw.stack(api, metrics={"registry": registry}, timeout=0.2)
    with serve_asgi(app) as server:
        started = time.monotonic()
        r = httpx.get(server.url + "/slow", timeout=10)
        took = time.monotonic() - started
        assert r.status_code == 504 and r.json() == {"error": "timeout"}
        assert cancelled.wait(5)
        assert took < 5  # answered at the deadline, not after the app's 30 s
        with httpx.stream("GET", server.url + "/stream", timeout=10) as streamed:
            assert streamed.status_code == 200
            received = b""
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete"):  # cut, not ended
                for chunk in streamed.iter_raw():
                    received += chunk
            assert received == b"x" * 10
    assert timeouts(registry) == {("server", "/slow"): 1.0, ("server", "/stream"): 1.0}


def test_the_deadline_is_read_on_the_clock_that_set_it() -> None:
    """A policy given a fake clock sets a deadline on that clock: ``remaining()`` inside the
    request and an httpx call's caps read it there too (before, they read time.monotonic,
    so a WSGI view under Timeout(seconds=60, clock=FakeClock()) saw 0.0 seconds left)."""
    clock = FakeClock()
    seen: dict[str, Any] = {}

    def view(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen["remaining"] = kitmw.timeout.remaining()
        request = httpx.Request("GET", "http://upstream.test/")
        transport = kitmw.httpx.Transport(transport=httpx.MockTransport(lambda r: httpx.Response(204)))
        transport.handle_request(request)
        seen["read"] = request.extensions["timeout"]["read"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    app = kitmw.wsgi.Timeout(view, seconds=60, clock=clock)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://svc.test") as c:
        assert c.get("/").status_code == 200
    assert seen["remaining"] == 60.0
    assert seen["read"] == 60.0
