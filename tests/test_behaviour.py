"""One behaviour suite, run over every driver.

One tiny service, written as users write it for each driver: a Starlette app (ASGI) and a
Flask app (WSGI) wrapped with ``kitmw.stack(...)``, an upstream behind a
``kitmw.httpx.Transport`` / ``AsyncTransport`` (an ``httpx.MockTransport`` serving the same
operations), and the same operations as plain functions wrapped with ``kitmw.endpoint``
(sync and async). A :class:`Harness` per driver builds it with the concerns a test asks
for and calls one operation, returning an :class:`Outcome` (what the caller got: a
response, a return value or an exception). Each behaviour is one test function run over
every driver it makes sense on (the ``driver`` ids: ``asgi``, ``wsgi``, ``httpx-sync``,
``httpx-async``, ``endpoint-sync``, ``endpoint-async``), so a behaviour that holds on
one driver and not on another shows up as one failing id:

* ``h``: all six drivers, for what a concern promises everywhere;
* ``server``: ASGI and WSGI (request ids on the response, route templates, ``/metrics``,
  auth, streaming);
* ``caller``: the httpx and endpoint drivers (retry).

The operations: ``item`` succeeds; ``fail`` is the callee failing (a 500 on a server and
from the upstream, an exception from a function); ``boom`` raises (the app's
``RuntimeError``, the transport's ``ConnectError``, the function's ``RuntimeError``),
which must reach the caller unchanged; ``hold`` waits until the test releases it;
``slow`` moves the service's fake clock past any deadline and then, on the async
drivers, waits to be cancelled; ``flaky`` fails its first call only.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kitmw
import kitmw.httpx
from kitmw.chain import CALL
from kitmw.errors import ConcurrencyLimited, DeadlineExceeded, Rejected
from kitmw.logging import bind_context, current_request_id
from kitmw.stack import build_policies
from kitmw.testing import FakeClock
from kitmw.timeout import remaining

APP_LOGGER = "tests.behaviour.app"
app_log = logging.getLogger(APP_LOGGER)

#: What a refusal looks like to the caller: (status on a server, error raised by a call).
REFUSALS: dict[str, tuple[int, type[BaseException]]] = {
    "rate_limited": (429, kitmw.RateLimited),
    "circuit_open": (503, kitmw.BreakerOpen),
    "concurrency_limited": (503, ConcurrencyLimited),
    "timeout": (504, DeadlineExceeded),
}
#: Seconds of real time an async driver lets ``slow`` run before cutting it (the service's
#: fake clock is already past the deadline by then).
BUDGET = 0.05
UPSTREAM = "http://svc.test"


#: A difference between drivers this suite found and left for a decision (the test is a
#: strict xfail on the client: it fails loudly once the client record gets the fields).
CLIENT_RECORD_HAS_NO_TRACE_ID = (
    "kitmw.client records have no trace_id/span_id (CLIENT_FIELDS), while the server's and "
    "the endpoint's records carry those of their own span"
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Unavailable(ConnectionError):
    """What a wrapped function raises when it fails (``fail``, ``flaky``)."""


# -- the service: its operations, once ---------------------------------------------------------


class Service:
    """The state of one test's service, shared by the operations of every driver."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.clock = FakeClock()
        self.failing = True
        self.flaky_left = 1
        self.gate = threading.Event()  # releases ``hold`` (and the streaming route)
        self.entered = threading.Event()  # ``hold`` is running
        self.released: list[bool] = []
        self.raised: list[BaseException] = []
        self.cancelled: list[str] = []
        #: (request id, span id) as the callee saw them, and its time budget, per ``item`` call.
        self.seen: list[tuple[str | None, str | None]] = []
        self.budgets: list[float | None] = []

    # Each returns (status, text): a server answers it, the upstream responds with it, a
    # function returns the text or raises Unavailable for a status >= 500.

    def item(self, request_id: str | None, span_id: str | None, budget: float | None) -> tuple[int, str]:
        self.calls["item"] += 1
        self.seen.append((request_id, span_id))
        self.budgets.append(budget)
        app_log.info("handling item")
        return 200, "item 1"

    def fail(self) -> tuple[int, str]:
        self.calls["fail"] += 1
        return (500, "down") if self.failing else (200, "up")

    def boom(self, error: BaseException) -> None:
        self.calls["boom"] += 1
        self.raised.append(error)
        raise error

    def flaky(self) -> tuple[int, str]:
        self.calls["flaky"] += 1
        if self.flaky_left:
            self.flaky_left -= 1
            return 503, "busy"
        return 200, "ok"

    def hold(self) -> tuple[int, str]:
        self.calls["hold"] += 1
        self.entered.set()
        assert self.gate.wait(10)
        return 200, "held"

    async def ahold(self) -> tuple[int, str]:
        self.calls["hold"] += 1
        self.entered.set()
        assert await anyio.to_thread.run_sync(self.gate.wait, 10)
        return 200, "held"

    def slow(self) -> tuple[int, str]:
        self.calls["slow"] += 1
        self.clock.advance(10)  # every deadline of the test has passed when it returns
        return 200, "late"

    async def aslow(self) -> tuple[int, str]:
        self.slow()
        try:
            await anyio.sleep(10)  # an async driver cuts it at its deadline
        except BaseException:
            self.cancelled.append("slow")
            raise
        return 200, "late"

    def stream(self) -> Iterator[bytes]:
        yield b"first\n"
        self.released.append(self.gate.wait(timeout=10))  # False: the client saw nothing yet
        yield b"second\n"


def current_span_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.span_id, "016x") if context.is_valid else None


def starlette_app(service: Service) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    def answer(reply: tuple[int, str]) -> PlainTextResponse:
        return PlainTextResponse(reply[1], status_code=reply[0])

    async def item(request: Request) -> PlainTextResponse:
        return answer(service.item(current_request_id(), current_span_id(), remaining()))

    async def admin(request: Request) -> PlainTextResponse:
        return PlainTextResponse("admin")

    async def fail(request: Request) -> PlainTextResponse:
        return answer(service.fail())

    async def boom(request: Request) -> PlainTextResponse:
        service.boom(RuntimeError("boom"))
        raise AssertionError("unreachable")

    async def flaky(request: Request) -> PlainTextResponse:
        return answer(service.flaky())

    async def hold(request: Request) -> PlainTextResponse:
        return answer(await service.ahold())

    async def slow(request: Request) -> PlainTextResponse:
        return answer(await service.aslow())

    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(service.stream(), media_type="text/plain")

    async def status(request: Request) -> PlainTextResponse:
        return PlainTextResponse("odd", status_code=request.path_params["code"])

    return Starlette(
        routes=[
            Route("/items/{item_id:int}", item),
            Route("/admin", admin),
            Route("/fail", fail),
            Route("/boom", boom),
            Route("/flaky", flaky),
            Route("/hold", hold),
            Route("/slow", slow),
            Route("/stream", stream),
            Route("/status/{code:int}", status),
        ]
    )


def flask_app(service: Service) -> Any:
    from flask import Flask, Response

    app = Flask(unique("behaviour"))
    app.config["PROPAGATE_EXCEPTIONS"] = True  # as in tests: the error reaches the WSGI layer

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> tuple[str, int]:
        status, text = service.item(current_request_id(), current_span_id(), remaining())
        return text, status

    @app.get("/admin")
    def admin() -> str:
        return "admin"

    @app.get("/fail")
    def fail() -> tuple[str, int]:
        status, text = service.fail()
        return text, status

    @app.get("/boom")
    def boom() -> str:
        service.boom(RuntimeError("boom"))
        raise AssertionError("unreachable")

    @app.get("/flaky")
    def flaky() -> tuple[str, int]:
        status, text = service.flaky()
        return text, status

    @app.get("/hold")
    def hold() -> tuple[str, int]:
        status, text = service.hold()
        return text, status

    @app.get("/slow")
    def slow() -> tuple[str, int]:
        status, text = service.slow()
        return text, status

    @app.get("/stream")
    def stream() -> Response:
        return Response(service.stream(), mimetype="text/plain")

    @app.get("/status/<int:code>")
    def status(code: int) -> tuple[str, int]:
        return "odd", code

    return app


def _traceparent_span(request: httpx.Request) -> str | None:
    value = request.headers.get("traceparent")
    return None if value is None else value.split("-")[2]


def upstream_handler(service: Service) -> Callable[[httpx.Request], httpx.Response]:
    """The service as the sync client's upstream (the handler of an ``httpx.MockTransport``)."""

    def handle(request: httpx.Request) -> httpx.Response:
        op = request.url.path.strip("/").split("/")[0]
        if op == "items":
            # the upstream sees the request id and traceparent sent, and the timeouts the
            # transport capped to the call's deadline
            budget = request.extensions.get("timeout", {}).get("read")
            reply = service.item(request.headers.get("x-request-id"), _traceparent_span(request), budget)
        elif op == "boom":
            service.boom(httpx.ConnectError("connection refused", request=request))
            raise AssertionError("unreachable")
        else:
            reply = getattr(service, op)()
        return httpx.Response(reply[0], text=reply[1])

    return handle


def async_upstream_handler(service: Service) -> Callable[[httpx.Request], Any]:
    """The service as the async client's upstream."""
    sync = upstream_handler(service)

    async def handle(request: httpx.Request) -> httpx.Response:
        op = request.url.path.strip("/")
        if op == "hold":
            reply = await service.ahold()
        elif op == "slow":
            reply = await service.aslow()
        else:
            return sync(request)
        return httpx.Response(reply[0], text=reply[1])

    return handle


def _returned(reply: tuple[int, str]) -> str:
    if reply[0] >= 500:
        raise Unavailable(reply[1])
    return reply[1]


def functions(service: Service) -> dict[str, Callable[[], Any]]:
    """The service as plain sync functions (what ``kitmw.endpoint`` wraps)."""

    def item() -> str:
        return _returned(service.item(current_request_id(), current_span_id(), remaining()))

    def fail() -> str:
        return _returned(service.fail())

    def boom() -> str:
        service.boom(RuntimeError("boom"))
        raise AssertionError("unreachable")

    def flaky() -> str:
        return _returned(service.flaky())

    def hold() -> str:
        return _returned(service.hold())

    def slow() -> str:
        return _returned(service.slow())

    return {"item": item, "fail": fail, "boom": boom, "flaky": flaky, "hold": hold, "slow": slow}


def async_functions(service: Service) -> dict[str, Callable[[], Any]]:
    """The service as async functions."""

    async def item() -> str:
        return _returned(service.item(current_request_id(), current_span_id(), remaining()))

    async def fail() -> str:
        return _returned(service.fail())

    async def boom() -> str:
        service.boom(RuntimeError("boom"))
        raise AssertionError("unreachable")

    async def flaky() -> str:
        return _returned(service.flaky())

    async def hold() -> str:
        return _returned(await service.ahold())

    async def slow() -> str:
        return _returned(await service.aslow())

    return {"item": item, "fail": fail, "boom": boom, "flaky": flaky, "hold": hold, "slow": slow}


# -- what the caller got -----------------------------------------------------------------------


@dataclass
class Outcome:
    """One call as its caller saw it: a response (servers, clients), a return value
    (functions) or an exception."""

    value: Any = None
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    error: BaseException | None = None

    @classmethod
    def of_response(cls, r: httpx.Response) -> Outcome:
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
        return cls(value=r.text, status=r.status_code, headers=r.headers, json=body)

    @property
    def ok(self) -> bool:
        return self.error is None and (self.status is None or self.status < 400)

    @property
    def refused(self) -> str | None:
        """The code of the policy that refused the call (``rate_limited``), else None."""
        if isinstance(self.error, Rejected):
            return self.error.rejection.code
        if isinstance(self.json, dict) and self.status and self.status >= 400:
            return self.json.get("error")  # type: ignore[no-any-return]
        return None


# -- one harness per driver --------------------------------------------------------------------


class Harness:
    """Builds the service for one driver with the concerns a test asks for, and calls it."""

    id: str
    side: str  # "server", "client", "endpoint"
    is_async: bool
    log_name: str  # the access log's logger on this side
    span_kind: SpanKind
    calls_metric: str  # the counter of exchanges, and its outcome label
    outcome_label: str
    duration_metric: str
    ok_label: str
    failed_label: str  # the ``fail`` operation
    boom_label: str  # the ``boom`` operation

    def __init__(self, portal: Any) -> None:
        self.service = Service()
        self.portal = portal
        self._pool = concurrent.futures.ThreadPoolExecutor(4)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def build(self, **concerns: Any) -> Harness:
        """Wrap the service with ``concerns`` (and ``policies=[...]``, your own, innermost)."""
        raise NotImplementedError

    def call(self, op: str, *, request_id: str | None = None, parent: Any = None) -> Outcome:
        """Call ``op`` once. ``request_id`` and ``parent`` (a span) are those of the
        request being served: a server gets them as headers, a call in its context."""
        raise NotImplementedError

    def start(self, op: str) -> concurrent.futures.Future[Outcome]:
        """Call ``op`` in the background (a thread, or a task on the event loop)."""
        return self._pool.submit(self.call, op)

    def refused_label(self, code: str) -> str:
        raise NotImplementedError

    def counts(self, registry: CollectorRegistry) -> dict[str, float]:
        """Exchanges counted on this side, by status (servers, clients) or outcome."""
        found: dict[str, float] = collections.Counter()
        for labels, value in samples(registry, self.calls_metric).items():
            if value:
                found[dict(labels)[self.outcome_label]] += value
        return dict(found)

    def durations(self, registry: CollectorRegistry) -> float:
        return sum(samples(registry, self.duration_metric + "_count").values())

    @staticmethod
    @contextlib.contextmanager
    def context(request_id: str | None, parent: Any) -> Iterator[None]:
        """What the code that makes a call runs in: the request being served."""
        with contextlib.ExitStack() as stack:
            if request_id is not None:
                stack.enter_context(bind_context(request_id=request_id))
            if parent is not None:
                stack.enter_context(trace.use_span(parent, end_on_exit=False))
            yield


class ServerHarness(Harness):
    side = "server"
    log_name = "kitmw.access"
    span_kind = SpanKind.SERVER
    calls_metric = "http_server_requests_total"
    outcome_label = "status"
    duration_metric = "http_server_request_duration_seconds"
    ok_label = "200"
    failed_label = "500"
    boom_label = "500"
    item_route: str
    status_route: str

    def __init__(self, portal: Any, server: Callable[..., Any]) -> None:
        super().__init__(portal)
        self._server = server
        self.app: Any = None

    def build(self, **concerns: Any) -> Harness:
        own = concerns.pop("policies", ())
        if own:
            exclude = concerns.pop("exclude_paths", None)
            policies = [*build_policies(concerns, shared={"exclude_paths": exclude}), *own]
            self.app = self.middleware(self.framework_app(), *policies)
        else:
            self.app = kitmw.stack(self.framework_app(), **concerns)
        return self

    def framework_app(self) -> Any:
        raise NotImplementedError

    def middleware(self, app: Any, *policies: Any) -> Any:
        raise NotImplementedError

    def refused_label(self, code: str) -> str:
        return str(REFUSALS[code][0])

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        raise NotImplementedError

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def call(self, op: str, *, request_id: str | None = None, parent: Any = None) -> Outcome:
        headers: dict[str, str] = {}
        if request_id is not None:
            headers["X-Request-ID"] = request_id
        if parent is not None:
            TraceContextTextMapPropagator().inject(headers, trace.set_span_in_context(parent))
        path = "/items/1" if op == "item" else f"/{op}"
        try:
            return Outcome.of_response(self.get(path, headers=headers))
        except Exception as exc:
            return Outcome(error=exc)

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        with self._server(self.app) as server:
            yield server.url


class AsgiHarness(ServerHarness):
    id = "asgi"
    is_async = True
    item_route = "/items/{item_id:int}"
    status_route = "/status/{code:int}"

    def framework_app(self) -> Any:
        return starlette_app(self.service)

    def middleware(self, app: Any, *policies: Any) -> Any:
        return kitmw.asgi.Middleware(app, *policies)

    async def arequest(self, method: str, path: str, **kw: Any) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.request(method, path, **kw)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.portal.call(lambda: self.arequest(method, path, **kw))  # type: ignore[no-any-return]

    def start(self, op: str) -> concurrent.futures.Future[Outcome]:
        async def go() -> Outcome:
            try:
                return Outcome.of_response(await self.arequest("GET", f"/{op}"))
            except Exception as exc:
                return Outcome(error=exc)

        return self.portal.start_task_soon(go)  # type: ignore[no-any-return]


class WsgiHarness(ServerHarness):
    id = "wsgi"
    is_async = False
    item_route = "/items/<int:item_id>"
    status_route = "/status/<int:code>"

    def framework_app(self) -> Any:
        return flask_app(self.service)

    def middleware(self, app: Any, *policies: Any) -> Any:
        return kitmw.wsgi.Middleware(app, *policies)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        transport = httpx.WSGITransport(app=self.app, remote_addr="127.0.0.1")
        with httpx.Client(transport=transport, base_url="http://test") as c:
            return c.request(method, path, **kw)


class ClientHarness(Harness):
    """A ``kitmw.httpx`` transport around an ``httpx.MockTransport`` serving the service."""

    side = "client"
    log_name = "kitmw.client"
    span_kind = SpanKind.CLIENT
    calls_metric = "http_client_requests_total"
    outcome_label = "status"
    duration_metric = "http_client_request_duration_seconds"
    ok_label = "200"
    failed_label = "500"
    boom_label = "ConnectError"

    def __init__(self, portal: Any) -> None:
        super().__init__(portal)
        self.client: Any = None

    @staticmethod
    def adapt(concerns: dict[str, Any]) -> dict[str, Any]:
        """The client's rate limit waits for its slot by default (Go kit's delaying
        limiter); the suite checks the erroring one, which every driver has."""
        limit = concerns.get("ratelimit")
        if isinstance(limit, dict):
            concerns["ratelimit"] = {"mode": "error", **limit}
        return concerns

    def refused_label(self, code: str) -> str:
        return REFUSALS[code][1].__name__

    def url(self, op: str) -> str:
        return f"{UPSTREAM}/items/1" if op == "item" else f"{UPSTREAM}/{op}"


class SyncClientHarness(ClientHarness):
    id = "httpx-sync"
    is_async = False

    def build(self, **concerns: Any) -> Harness:
        upstream = httpx.MockTransport(upstream_handler(self.service))
        transport = kitmw.httpx.Transport(transport=upstream, **self.adapt(concerns))
        self.client = httpx.Client(transport=transport, timeout=None)  # no timeout of its own
        return self

    def close(self) -> None:
        super().close()
        if self.client is not None:
            self.client.close()

    def call(self, op: str, *, request_id: str | None = None, parent: Any = None) -> Outcome:
        with self.context(request_id, parent):
            try:
                return Outcome.of_response(self.client.get(self.url(op)))
            except Exception as exc:
                return Outcome(error=exc)


class AsyncClientHarness(ClientHarness):
    id = "httpx-async"
    is_async = True

    def build(self, **concerns: Any) -> Harness:
        upstream = httpx.MockTransport(async_upstream_handler(self.service))
        transport = kitmw.httpx.AsyncTransport(transport=upstream, **self.adapt(concerns))
        self.client = httpx.AsyncClient(transport=transport, timeout=None)
        return self

    def close(self) -> None:
        super().close()
        if self.client is not None:
            self.portal.call(self.client.aclose)

    async def acall(self, op: str, request_id: str | None, parent: Any) -> Outcome:
        with self.context(request_id, parent):
            try:
                return Outcome.of_response(await self.client.get(self.url(op)))
            except Exception as exc:
                return Outcome(error=exc)

    def call(self, op: str, *, request_id: str | None = None, parent: Any = None) -> Outcome:
        return self.portal.call(self.acall, op, request_id, parent)  # type: ignore[no-any-return]

    def start(self, op: str) -> concurrent.futures.Future[Outcome]:
        return self.portal.start_task_soon(self.acall, op, None, None)  # type: ignore[no-any-return]


class EndpointHarness(Harness):
    """The service's operations as functions, all wrapped by one ``kitmw.endpoint``: they
    share its policies (one breaker, one limit), as one endpoint's functions do."""

    side = "endpoint"
    log_name = "kitmw.endpoint"
    span_kind = SpanKind.INTERNAL
    calls_metric = "kitmw_endpoint_calls_total"
    outcome_label = "outcome"
    duration_metric = "kitmw_endpoint_duration_seconds"
    ok_label = "ok"
    failed_label = "error"
    boom_label = "error"

    def __init__(self, portal: Any) -> None:
        super().__init__(portal)
        self.name = unique("svc")
        self.fns: dict[str, Callable[[], Any]] = {}

    def refused_label(self, code: str) -> str:
        return "rejected"

    def plain(self) -> dict[str, Callable[[], Any]]:
        raise NotImplementedError

    def build(self, **concerns: Any) -> Harness:
        wrap = kitmw.endpoint(self.name, **concerns)
        self.fns = {op: wrap(fn) for op, fn in self.plain().items()}
        return self


class SyncEndpointHarness(EndpointHarness):
    id = "endpoint-sync"
    is_async = False

    def plain(self) -> dict[str, Callable[[], Any]]:
        return functions(self.service)

    def call(self, op: str, *, request_id: str | None = None, parent: Any = None) -> Outcome:
        with self.context(request_id, parent):
            try:
                return Outcome(value=self.fns[op]())
            except Exception as exc:
                return Outcome(error=exc)


class AsyncEndpointHarness(EndpointHarness):
    id = "endpoint-async"
    is_async = True

    def plain(self) -> dict[str, Callable[[], Any]]:
        return async_functions(self.service)

    async def acall(self, op: str, request_id: str | None, parent: Any) -> Outcome:
        with self.context(request_id, parent):
            try:
                return Outcome(value=await self.fns[op]())
            except Exception as exc:
                return Outcome(error=exc)

    def call(self, op: str, *, request_id: str | None = None, parent: Any = None) -> Outcome:
        return self.portal.call(self.acall, op, request_id, parent)  # type: ignore[no-any-return]

    def start(self, op: str) -> concurrent.futures.Future[Outcome]:
        return self.portal.start_task_soon(self.acall, op, None, None)  # type: ignore[no-any-return]


SERVERS = ["asgi", "wsgi"]
CALLERS = ["httpx-sync", "httpx-async", "endpoint-sync", "endpoint-async"]
DRIVERS = SERVERS + CALLERS


def make_harness(driver: str, portal: Any, serve_asgi: Any, serve_wsgi: Any) -> Harness:
    if driver == "asgi":
        return AsgiHarness(portal, serve_asgi)
    if driver == "wsgi":
        return WsgiHarness(portal, serve_wsgi)
    simple: dict[str, type[Harness]] = {
        "httpx-sync": SyncClientHarness,
        "httpx-async": AsyncClientHarness,
        "endpoint-sync": SyncEndpointHarness,
        "endpoint-async": AsyncEndpointHarness,
    }
    return simple[driver](portal)


@contextlib.contextmanager
def harness(driver: str, serve_asgi: Any, serve_wsgi: Any) -> Iterator[Any]:
    with anyio.from_thread.start_blocking_portal() as portal:
        made = make_harness(driver, portal, serve_asgi, serve_wsgi)
        try:
            yield made
        finally:
            made.service.gate.set()  # never leave a held call behind
            made.close()


@pytest.fixture(params=DRIVERS)
def h(request: pytest.FixtureRequest, serve_asgi: Any, serve_wsgi: Any) -> Iterator[Harness]:
    """Every driver."""
    with harness(request.param, serve_asgi, serve_wsgi) as made:
        yield made


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest, serve_asgi: Any, serve_wsgi: Any) -> Iterator[ServerHarness]:
    """The server drivers (ASGI and WSGI)."""
    with harness(request.param, serve_asgi, serve_wsgi) as made:
        yield made


@pytest.fixture(params=CALLERS)
def caller(request: pytest.FixtureRequest, serve_asgi: Any, serve_wsgi: Any) -> Iterator[Harness]:
    """The drivers of calls (httpx, kitmw.endpoint)."""
    with harness(request.param, serve_asgi, serve_wsgi) as made:
        yield made


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def named(self, name: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.name == name]


@pytest.fixture
def records() -> Iterator[Records]:
    """Records of the three access logs and of the app's own logger, with the context filter."""
    from kitmw.logging import ContextFilter

    handler = Records()
    handler.addFilter(ContextFilter())
    names = ("kitmw.access", "kitmw.client", "kitmw.endpoint", APP_LOGGER)
    loggers = [logging.getLogger(name) for name in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield handler
    for lg, level in zip(loggers, saved, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = generate_latest(registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


def on_side(registry: CollectorRegistry, name: str, side: str) -> float:
    """The sum of metric ``name`` over the series of ``side`` (its ``side`` label)."""
    return sum(v for k, v in samples(registry, name).items() if dict(k).get("side") == side)


def count(registry: CollectorRegistry, route: str, status: str, method: str = "GET") -> float:
    key = (("method", method), ("route", route), ("status", status))
    return samples(registry, "http_server_requests_total").get(key, 0.0)


def assert_refused(h: Harness, outcome: Outcome, code: str) -> None:
    """``outcome`` is a refusal with ``code`` in this driver's form: a JSON answer with
    its status (servers), kitmw's error (calls; on the client also the library's)."""
    assert outcome.refused == code, outcome
    status, error = REFUSALS[code]
    if h.side == "server":
        assert outcome.status == status and outcome.json == {"error": code}
        if code != "timeout":
            assert int(outcome.headers["retry-after"]) >= 1
    else:
        assert isinstance(outcome.error, error), outcome
        assert isinstance(outcome.error, kitmw.KitmwError)
        if h.side == "client":
            assert isinstance(outcome.error, httpx.TransportError)  # existing handlers catch it
        if code != "timeout":
            assert outcome.error.retry_after >= 1  # type: ignore[union-attr]


# == every driver ==============================================================================

# -- access log and request id -------------------------------------------------------------


def test_one_access_record_per_exchange_with_the_request_id(h: Harness, records: Records) -> None:
    h.build(access_log=True)
    outcomes = [h.call(op, request_id=f"req-{op}") for op in ("item", "fail", "item")]
    assert [o.ok for o in outcomes] == [True, False, True]
    logged = records.named(h.log_name)
    assert [r.request_id for r in logged] == ["req-item", "req-fail", "req-item"]  # type: ignore[attr-defined]


def test_the_callee_sees_the_request_id(h: Harness) -> None:
    """The app's code (servers, functions) and the upstream (clients: ``X-Request-ID``)."""
    h.build(access_log=True)
    h.call("item", request_id="req-abc.123")
    assert [seen[0] for seen in h.service.seen] == ["req-abc.123"]


def test_an_error_reaches_the_caller_unchanged_and_is_recorded(
    h: Harness, records: Records, registry: CollectorRegistry
) -> None:
    h.build(access_log=True, metrics={"registry": registry})
    outcome = h.call("boom")
    assert outcome.error is not None and h.service.raised == [outcome.error]  # the same object
    (access,) = records.named(h.log_name)
    assert access.__dict__["error"] == type(outcome.error).__name__
    assert h.counts(registry) == {h.boom_label: 1}


# -- metrics -------------------------------------------------------------------------------


def test_metrics_count_each_exchange_once(h: Harness, registry: CollectorRegistry) -> None:
    h.build(metrics={"registry": registry})
    for op in ("item", "item", "fail"):
        h.call(op)
    assert h.counts(registry) == {h.ok_label: 2, h.failed_label: 1}
    assert h.durations(registry) == 3


def test_refusals_are_counted_and_logged(h: Harness, registry: CollectorRegistry, records: Records) -> None:
    h.build(
        access_log=True,
        metrics={"registry": registry},
        ratelimit={"limit": "1/minute", "namespace": unique("beh")},
    )
    h.call("item")
    assert_refused(h, h.call("item"), "rate_limited")
    assert h.counts(registry) == {h.ok_label: 1, h.refused_label("rate_limited"): 1}
    assert len(records.named(h.log_name)) == 2
    assert h.service.calls["item"] == 1


# -- tracing -------------------------------------------------------------------------------


def test_one_span_per_exchange_with_its_kind_and_parent(h: Harness, spans: Any) -> None:
    provider, exporter = spans
    h.build(tracing={"tracer_provider": provider})
    parent = provider.get_tracer("test").start_span("request being served")
    h.call("item", parent=parent)
    parent.end()
    (span,) = [s for s in exporter.get_finished_spans() if s.name != "request being served"]
    assert span.kind is h.span_kind
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
    # the callee runs inside it (servers, functions) or gets it in traceparent (clients)
    assert [seen[1] for seen in h.service.seen] == [format(span.context.span_id, "016x")]


def test_refused_and_failed_exchanges_get_one_span_each(h: Harness, spans: Any) -> None:
    from opentelemetry.trace import StatusCode

    provider, exporter = spans
    h.build(tracing={"tracer_provider": provider}, ratelimit={"limit": "2/minute", "namespace": unique("beh")})
    outcomes = [h.call(op) for op in ("item", "boom", "item")]
    assert outcomes[1].error is not None
    assert outcomes[2].refused == "rate_limited"
    found = exporter.get_finished_spans()
    assert [s.kind for s in found] == [h.span_kind] * 3
    assert found[1].status.status_code is StatusCode.ERROR  # the error is on its span
    assert found[0].status.status_code is not StatusCode.ERROR


def test_the_access_record_carries_the_trace_id(
    h: Harness, spans: Any, records: Records, request: pytest.FixtureRequest
) -> None:
    if h.side == "client":
        request.applymarker(pytest.mark.xfail(strict=True, reason=CLIENT_RECORD_HAS_NO_TRACE_ID))
    provider, exporter = spans
    h.build(tracing={"tracer_provider": provider}, access_log=True)
    h.call("item")
    (span,) = exporter.get_finished_spans()
    (access,) = records.named(h.log_name)
    assert access.trace_id == format(span.context.trace_id, "032x")  # type: ignore[attr-defined]


# -- rate limit ----------------------------------------------------------------------------


def test_rate_limit_refuses_the_call_past_the_limit(h: Harness) -> None:
    h.build(ratelimit={"limit": "2/minute", "namespace": unique("beh")})
    outcomes = [h.call("item") for _ in range(3)]
    assert [o.ok for o in outcomes] == [True, True, False]
    assert_refused(h, outcomes[2], "rate_limited")
    assert h.service.calls["item"] == 2  # the refused one never reached the callee


# -- circuit breaker -----------------------------------------------------------------------


def test_breaker_opens_after_fail_max_failures_refuses_and_recovers(
    h: Harness, registry: CollectorRegistry
) -> None:
    clock = FakeClock()
    h.build(
        breaker={"fail_max": 2, "reset_timeout": 30, "name": unique("beh"), "clock": clock, "registry": registry}
    )
    assert [h.call("fail").ok for _ in range(2)] == [False, False]
    assert_refused(h, h.call("fail"), "circuit_open")
    assert h.service.calls["fail"] == 2  # refused without calling
    assert sum(samples(registry, "kitmw_breaker_rejections_total").values()) == 1
    clock.advance(30)  # half-open: the next call is a trial
    h.service.failing = False
    assert [h.call("fail").ok for _ in range(2)] == [True, True]


def test_a_half_open_breaker_lets_one_trial_through_at_a_time(h: Harness, registry: CollectorRegistry) -> None:
    clock = FakeClock()
    breaker = {"fail_max": 1, "reset_timeout": 30, "name": unique("beh"), "clock": clock, "registry": registry}
    if h.side == "server":
        breaker["per_route"] = False  # the trial (``hold``) and the others share one breaker
    h.build(breaker=breaker)
    assert not h.call("fail").ok
    clock.advance(30)
    trial = h.start("hold")
    assert h.service.entered.wait(10)
    assert_refused(h, h.call("item"), "circuit_open")  # the trial is still in flight
    h.service.gate.set()
    assert trial.result(10).value == "held"
    assert [h.call("item").ok for _ in range(2)] == [True, True]  # closed by the trial


# -- timeout -------------------------------------------------------------------------------


def test_a_call_past_its_deadline(h: Harness, registry: CollectorRegistry) -> None:
    """Async drivers cut the callee at the deadline; sync ones cannot: the sync calls give
    a late result up all the same, a WSGI request is served as the app answered (docs/timeout.md).
    Every driver counts it."""
    clock = h.service.clock
    h.build(metrics={"registry": registry}, timeout={"seconds": BUDGET, "clock": clock})
    outcome = h.call("slow")
    if h.id == "wsgi":
        assert (outcome.status, outcome.value) == (200, "late")
        assert h.counts(registry) == {h.ok_label: 1}
    else:
        assert_refused(h, outcome, "timeout")
        assert h.counts(registry) == {h.refused_label("timeout"): 1}
    assert h.service.cancelled == (["slow"] if h.is_async else [])
    assert on_side(registry, "kitmw_timeouts_total", h.side) == 1
    assert h.call("item").ok  # the next call gets its own deadline


def test_the_breaker_counts_a_call_cut_at_its_deadline(h: Harness, registry: CollectorRegistry) -> None:
    """An async driver cuts the callee at the deadline: a failure, as a timeout is (the
    server's 504, the client's ``timeouts``, the function's exception). A sync driver
    cannot cut: the breaker judges what the callee answered, late (the sync client's
    capped httpx timeouts raise a counted ``ReadTimeout`` on a real network)."""
    breaker = {"fail_max": 1, "reset_timeout": 600, "name": unique("beh"), "registry": registry}
    if h.side == "server":
        breaker["per_route"] = False
    h.build(timeout={"seconds": BUDGET, "clock": h.service.clock, "registry": registry}, breaker=breaker)
    h.call("slow")
    after = h.call("item")
    if h.is_async:
        assert_refused(h, after, "circuit_open")
    else:
        assert after.ok


def test_the_callee_sees_what_remains_of_its_deadline(h: Harness) -> None:
    """``kitmw.timeout.remaining()`` inside (servers, functions), httpx's timeouts capped
    to it on the upstream's request (clients)."""
    h.build(timeout=60.0)
    h.call("item")
    (budget,) = h.service.budgets
    assert budget is not None and 50 < budget <= 60


# -- concurrency limit ---------------------------------------------------------------------


def test_concurrency_limit_refuses_while_full_and_frees_the_slot(h: Harness, registry: CollectorRegistry) -> None:
    h.build(metrics={"registry": registry}, concurrency={"limit": 1})
    held = h.start("hold")
    assert h.service.entered.wait(10)
    assert_refused(h, h.call("item"), "concurrency_limited")
    assert h.service.calls["item"] == 0
    h.service.gate.set()
    assert held.result(10).value == "held"
    assert h.call("item").ok  # the slot was given back
    assert h.counts(registry) == {h.ok_label: 2, h.refused_label("concurrency_limited"): 1}
    assert on_side(registry, "kitmw_concurrency_in_flight", h.side) == 0
    assert on_side(registry, "kitmw_concurrency_rejections_total", h.side) == 1


def test_concurrency_slots_are_freed_after_an_error_and_a_timeout(h: Harness, registry: CollectorRegistry) -> None:
    h.build(
        timeout={"seconds": BUDGET, "clock": h.service.clock, "registry": registry},
        concurrency={"limit": 1, "registry": registry},
    )
    assert h.call("boom").error is not None
    h.call("slow")
    assert [h.call("item").ok for _ in range(2)] == [True, True]
    assert on_side(registry, "kitmw_concurrency_in_flight", h.side) == 0


# -- a policy of your own ------------------------------------------------------------------


class Audit(kitmw.Policy):
    """An around of our own: how each call ended, as the around sees it."""

    name = "audit"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def around(self, ex: Any) -> Any:
        try:
            result = yield CALL
        except Rejected as refused:
            self.seen.append(f"refused {refused.rejection.code}")
            raise
        except Exception as exc:
            self.seen.append(f"raised {type(exc).__name__}")
            raise
        self.seen.append(f"status {ex.status}" if ex.status else "returned")
        return result


def test_your_own_around_policy_holds_the_call_on_every_driver(h: Harness) -> None:
    audit = Audit()
    h.build(policies=[audit])
    assert [h.call(op).ok for op in ("item", "boom")] == [True, False]
    ended = "status 200" if h.side != "endpoint" else "returned"
    raised = "ConnectError" if h.side == "client" else "RuntimeError"
    assert audit.seen == [ended, f"raised {raised}"]


# == calls only (httpx, kitmw.endpoint) ===========================================================


def test_retry_calls_again_and_the_exchange_is_counted_once(
    caller: Harness, registry: CollectorRegistry, records: Records
) -> None:
    waits: list[float] = []
    caller.build(
        access_log=True, metrics={"registry": registry}, retry={"attempts": 3, "sleep": waits.append}
    )
    outcome = caller.call("flaky")
    assert outcome.ok and caller.service.calls["flaky"] == 2
    assert len(waits) == 1
    assert caller.counts(registry) == {caller.ok_label: 1}
    assert len(records.named(caller.log_name)) == 1


def test_after_the_last_attempt_the_caller_gets_its_own_error_unchanged(caller: Harness) -> None:
    waits: list[float] = []
    caller.build(retry={"attempts": 2, "sleep": waits.append})
    outcome = caller.call("boom")
    assert caller.service.calls["boom"] == 2 and len(waits) == 1
    assert outcome.error is caller.service.raised[-1]  # the second attempt's, the same object


def test_a_refusal_of_the_breaker_is_never_retried(caller: Harness, registry: CollectorRegistry) -> None:
    waits: list[float] = []
    caller.build(
        retry={"attempts": 3, "sleep": waits.append},
        breaker={"fail_max": 1, "reset_timeout": 600, "name": unique("beh"), "registry": registry},
    )
    assert not caller.call("fail").ok  # opens the breaker: no retry that it would refuse
    assert_refused(caller, caller.call("item"), "circuit_open")
    assert waits == [] and caller.service.calls == {"fail": 1}


# == servers only ==============================================================================

# -- request id and logs ---------------------------------------------------------------


def test_request_id_is_kept_and_echoed(server: ServerHarness, records: Records) -> None:
    server.build(access_log=True)
    r = server.get("/items/1", headers={"X-Request-ID": "req-abc.123"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "req-abc.123"
    (access,) = records.named("kitmw.access")
    assert access.request_id == "req-abc.123"  # type: ignore[attr-defined]


def test_request_id_is_generated_when_missing_or_malformed(server: ServerHarness) -> None:
    server.build(access_log=True)
    generated = server.get("/items/1").headers["x-request-id"]
    replaced = server.get("/items/1", headers={"X-Request-ID": "x" * 500}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert re.fullmatch(r"[0-9a-f]{32}", replaced) and replaced != generated


def test_app_log_records_carry_the_request_id(server: ServerHarness, records: Records) -> None:
    server.build(access_log=True)
    r = server.get("/items/1", headers={"X-Request-ID": "from-the-app"})
    (inside,) = records.named(APP_LOGGER)
    assert inside.request_id == "from-the-app" == r.headers["x-request-id"]  # type: ignore[attr-defined]


def test_access_record_has_route_status_and_bytes(server: ServerHarness, records: Records) -> None:
    server.build(access_log=True)
    server.get("/items/7")
    (access,) = records.named("kitmw.access")
    fields = access.__dict__
    assert (fields["route"], fields["status"], fields["bytes_out"]) == (server.item_route, 200, len("item 1"))
    assert access.levelno == logging.INFO


# -- metrics ---------------------------------------------------------------------------


def test_metrics_count_route_templates_exactly(server: ServerHarness, registry: CollectorRegistry) -> None:
    server.build(metrics={"registry": registry})
    for path in ("/items/1", "/items/2", "/items/3", "/no/such/page"):
        server.get(path)
    assert count(registry, server.item_route, "200") == 3
    assert count(registry, "<unmatched>", "404") == 1
    routes = {dict(k)["route"] for k in samples(registry, "http_server_requests_total")}
    assert routes == {server.item_route, "<unmatched>"}  # never a raw path


def test_metrics_are_served_on_the_expose_path(server: ServerHarness, registry: CollectorRegistry) -> None:
    server.build(metrics={"registry": registry})
    server.get("/items/1")
    r = server.get("/metrics")
    assert r.status_code == 200
    assert 'route="' + server.item_route + '"' in r.text


def test_the_metrics_page_goes_through_auth_and_the_rate_limit(
    server: ServerHarness, registry: CollectorRegistry
) -> None:
    from kitmw.auth import APIKey

    server.build(
        metrics={"registry": registry},
        ratelimit={"limit": "5/minute", "namespace": unique("beh")},
        auth=APIKey(keys={"key-ops": "prometheus"}),
    )
    anonymous = server.get("/metrics")
    assert anonymous.status_code == 401 and "www-authenticate" in anonymous.headers
    assert "http_server" not in anonymous.text
    scrapes = [server.get("/metrics", headers={"X-API-Key": "key-ops"}) for _ in range(5)]
    assert [r.status_code for r in scrapes] == [200, 200, 200, 200, 429]
    assert 'route="<unmatched>",status="401"' not in scrapes[0].text  # the page itself is never counted
    assert "kitmw_ratelimit_decisions_total" in scrapes[0].text


def test_an_excluded_metrics_page_is_served_to_anyone(server: ServerHarness, registry: CollectorRegistry) -> None:
    from kitmw.auth import APIKey

    server.build(
        metrics={"registry": registry},
        ratelimit={"limit": "1/minute", "namespace": unique("beh")},
        auth=APIKey(keys={"key-ops": "prometheus"}),
        exclude_paths=["/metrics"],
    )
    assert [server.get("/metrics").status_code for _ in range(3)] == [200, 200, 200]
    assert server.get("/items/1").status_code == 401


def test_the_breaker_never_sees_the_metrics_page(server: ServerHarness, registry: CollectorRegistry) -> None:
    breaker = {"fail_max": 2, "reset_timeout": 600, "name": unique("beh"), "per_route": False}
    server.build(metrics={"registry": registry}, breaker=breaker)
    assert [server.get("/fail").status_code for _ in range(2)] == [500, 500]
    assert server.get("/items/1").status_code == 503  # open
    r = server.get("/metrics")
    assert r.status_code == 200  # scraped while the breaker is open, and not refused
    rejections = samples(registry, "kitmw_breaker_rejections_total")
    assert list(rejections.values()) == [1.0]  # /items/1 only


def test_status_codes_outside_100_599_share_one_label(server: ServerHarness, registry: CollectorRegistry) -> None:
    server.build(metrics={"registry": registry})
    for code in (999, 600, 777, 999):
        assert server.get(f"/status/{code}").status_code == code
    server.get("/status/418")
    statuses = {dict(k)["status"]: v for k, v in samples(registry, "http_server_requests_total").items()}
    assert statuses == {"other": 4.0, "418": 1.0}


# -- tracing ---------------------------------------------------------------------------


def test_one_server_span_named_by_route_and_parented_by_traceparent(server: ServerHarness, spans: Any) -> None:
    provider, exporter = spans
    server.build(tracing={"tracer_provider": provider})
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    server.get("/items/5", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    (span,) = exporter.get_finished_spans()
    assert span.name == f"GET {server.item_route}"
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == "00f067aa0ba902b7"


# -- early answers ---------------------------------------------------------------------


def test_a_refusal_carries_the_headers_outer_policies_added(server: ServerHarness) -> None:
    server.build(access_log=True, ratelimit={"limit": "1/minute", "namespace": unique("beh")})
    server.get("/items/1")
    r = server.get("/items/1")
    assert r.status_code == 429 and r.headers["x-request-id"]  # added by an outer policy


def _auth(server: ServerHarness) -> None:
    from kitmw.auth import APIKey

    backend = APIKey(keys={"key-alice": "alice", "key-bob": "bob"}, scopes={"alice": ["admin"]})
    server.build(auth={"backend": backend, "scopes": {"/admin": ["admin"]}})


def test_missing_credentials_get_401_with_a_challenge(server: ServerHarness) -> None:
    _auth(server)
    r = server.get("/items/1")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert "www-authenticate" in r.headers


def test_missing_scope_gets_403_and_granted_scope_passes(server: ServerHarness) -> None:
    _auth(server)
    denied = server.get("/admin", headers={"X-API-Key": "key-bob"})
    allowed = server.get("/admin", headers={"X-API-Key": "key-alice"})
    assert denied.status_code == 403 and denied.json()["error"] == "forbidden"
    assert allowed.status_code == 200 and allowed.text == "admin"


def test_open_breaker_answers_503_on_its_route_only(server: ServerHarness) -> None:
    server.build(breaker={"fail_max": 2, "reset_timeout": 600, "name": unique("beh")})
    assert [server.get("/fail").status_code for _ in range(2)] == [500, 500]
    r = server.get("/fail")
    assert r.status_code == 503 and r.json() == {"error": "circuit_open"}
    assert server.get("/items/1").status_code == 200  # one breaker per route


def test_service_wide_breaker_answers_503_everywhere(server: ServerHarness) -> None:
    breaker = {"fail_max": 2, "reset_timeout": 600, "name": unique("beh"), "per_route": False}
    server.build(breaker=breaker)
    assert [server.get("/fail").status_code for _ in range(2)] == [500, 500]
    r = server.get("/items/1")
    assert r.status_code == 503 and r.json() == {"error": "circuit_open"}


def test_excluded_paths_pass_an_open_breaker(server: ServerHarness) -> None:
    breaker = {"fail_max": 1, "reset_timeout": 600, "name": unique("beh"), "per_route": False}
    server.build(breaker=breaker, exclude_paths=["/items/*"])
    assert server.get("/fail").status_code == 500
    assert server.get("/fail").status_code == 503
    assert server.get("/items/1").status_code == 200  # excluded: neither refused nor counted


# -- errors and streaming --------------------------------------------------------------


def test_app_exception_is_recorded_as_a_500(
    server: ServerHarness, registry: CollectorRegistry, records: Records
) -> None:
    server.build(access_log=True, metrics={"registry": registry})
    with pytest.raises(RuntimeError) as info:
        server.get("/boom")
    assert server.service.raised == [info.value]
    assert count(registry, "/boom", "500") == 1
    (access,) = records.named("kitmw.access")
    assert access.levelno == logging.ERROR


def test_streaming_response_is_not_buffered(server: ServerHarness, registry: CollectorRegistry) -> None:
    server.build(access_log=True, metrics={"registry": registry})
    with server.serve() as url, httpx.stream("GET", url + "/stream", timeout=15) as r:
        chunks = r.iter_raw()
        first = next(chunks)
        server.service.gate.set()  # only now may the generator finish
        rest = b"".join(chunks)
    assert first + rest == b"first\nsecond\n" and first.startswith(b"first")
    assert server.service.released == [True]  # the first chunk arrived while the generator waited


# -- ASGI only -------------------------------------------------------------------------


def test_websocket_and_lifespan_pass_through_on_asgi() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    wrapped = kitmw.stack(app, access_log=True, metrics={"registry": CollectorRegistry()})
    with anyio.from_thread.start_blocking_portal() as portal:
        portal.call(wrapped, {"type": "lifespan"}, None, None)
        portal.call(wrapped, {"type": "websocket", "path": "/ws", "headers": []}, None, None)
    assert seen == ["lifespan", "websocket"]
