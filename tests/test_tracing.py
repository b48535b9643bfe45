"""Tracing: one SERVER span per request, W3C propagation in and out, never a 500 from kitmw.

Apps are real Starlette/FastAPI apps (or bare ASGI apps) driven in process; spans come
from an SDK TracerProvider with an in-memory exporter (the ``spans`` fixture). Nothing
here sets the *global* tracer provider: that is done in a subprocess by
``tests/e2e/test_tracing_fastapi.py``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

import kitmw
import kitmw.httpx
from kitmw.errors import ConfigError, Rejection
from kitmw.exchange import Exchange, Policy
from kitmw.testing import NeutralClientExchange, NeutralEndpointExchange, wsgi_environ
from kitmw.tracing import ClientTracingPolicy, TracingPolicy

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def item(request: Any) -> PlainTextResponse:
    return PlainTextResponse(f"item {request.path_params['item_id']}")


async def ok(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def fail(request: Any) -> PlainTextResponse:
    raise RuntimeError("boom")


async def teapot(request: Any) -> PlainTextResponse:
    return PlainTextResponse("down", status_code=503)


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/fail", fail),
            Route("/health", ok),
            Route("/healthz", ok),
            Route("/down", teapot),
        ]
    )


def client(app: Any, *, raise_app_exceptions: bool = False) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def server_spans(exporter: Any) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


async def call(
    app: Any,
    path: str = "/",
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
    query: bytes = b"",
    client: tuple[Any, ...] = ("127.0.0.1", 50000),
) -> int:
    """Drive an ASGI app directly with raw header bytes or an odd scope (input httpx would refuse)."""
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"test"), *headers],
        "client": client,
        "server": ("127.0.0.1", 8000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


# -- span name, route, attributes ---------------------------------------------------------


@pytest.mark.anyio
async def test_span_named_by_route_template_with_http_route(spans: Any) -> None:
    provider, exporter = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider)
    async with client(app) as c:
        r = await c.get("/items/42")
    assert r.status_code == 200
    (span,) = exporter.get_finished_spans()
    assert span.kind is SpanKind.SERVER
    assert span.name == "GET /items/{item_id}"
    assert span.attributes["http.route"] == "/items/{item_id}"
    assert span.attributes["http.status_code"] == 200
    assert span.attributes["http.method"] == "GET"  # contrib's attributes (default semconv mode)
    assert span.attributes["http.target"] == "/items/42"
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.anyio
async def test_fastapi_route_template_names_the_span(spans: Any) -> None:
    from fastapi import FastAPI

    provider, exporter = spans
    api = FastAPI()

    @api.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    app = kitmw.stack(api, tracing={"tracer_provider": provider})
    async with client(app) as c:
        r = await c.get("/items/7")
    assert r.json() == {"item_id": 7}
    (span,) = server_spans(exporter)
    assert span.name == "GET /items/{item_id}"
    assert span.attributes["http.route"] == "/items/{item_id}"


@pytest.mark.anyio
async def test_unmatched_path_is_named_by_method_only(spans: Any) -> None:
    provider, exporter = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider)
    async with client(app) as c:
        r = await c.get("/wp-admin/setup.php")
    assert r.status_code == 404
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET"  # never the raw path
    assert "http.route" not in span.attributes


@pytest.mark.anyio
async def test_stable_semconv_attributes_on_request(spans: Any) -> None:
    provider, exporter = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider, semconv="http")
    async with client(app) as c:
        await c.get("/items/1?x=1")
    (span,) = exporter.get_finished_spans()
    attrs = span.attributes
    assert attrs["http.request.method"] == "GET"
    assert attrs["url.path"] == "/items/1"
    assert attrs["url.query"] == "x=1"
    assert attrs["http.response.status_code"] == 200
    assert attrs["http.response.body.size"] == len("item 1")
    assert "http.method" not in attrs


# -- propagation in -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_incoming_traceparent_continues_the_trace(spans: Any) -> None:
    provider, exporter = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider)
    async with client(app) as c:
        await c.get("/items/1", headers={"traceparent": TRACEPARENT})
    (span,) = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and span.parent.is_remote
    assert format(span.parent.span_id, "016x") == PARENT_ID


HOSTILE: list[Any] = [
    pytest.param([(b"traceparent", b"garbage")], id="garbage"),
    pytest.param([(b"traceparent", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01")], id="zero-ids"),
    pytest.param(
        [(b"traceparent", b"ff-" + TRACE_ID.encode() + b"-" + PARENT_ID.encode() + b"-01")], id="version-ff"
    ),
    pytest.param([(b"traceparent", b"00-" + b"z" * 32 + b"-" + b"1" * 16 + b"-01")], id="non-hex"),
    pytest.param([(b"traceparent", b"\xff\xfe\x00" * 100)], id="binary"),
    pytest.param([(b"traceparent", b"00-" + b"a" * 10_000)], id="huge"),
    pytest.param([(b"traceparent", TRACEPARENT.encode() + b"-extra")], id="v00-extra-field"),
    pytest.param(
        [(b"traceparent", TRACEPARENT.encode()), (b"tracestate", b"=,=,\x00\xff,,,a==b" * 200)],
        id="tracestate-garbage",
    ),
    pytest.param([(b"traceparent", b""), (b"tracestate", b"k=v")], id="empty"),
    pytest.param([(b"baggage", b"%%%;;;==\xff" * 500)], id="baggage-garbage"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("headers", HOSTILE)
async def test_garbage_trace_headers_never_fail_the_request(spans: Any, headers: list[Any]) -> None:
    provider, exporter = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider)
    assert await call(app, "/items/1", headers) == 200
    (span,) = exporter.get_finished_spans()
    assert span.context.is_valid
    if headers[0][1] != TRACEPARENT.encode():
        assert span.parent is None  # a new root trace
        assert format(span.context.trace_id, "032x") != TRACE_ID


@pytest.mark.anyio
async def test_non_utf8_query_string_still_traced(spans: Any) -> None:
    provider, exporter = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider)
    assert await call(app, "/items/1", query=b"q=\xff\xfe%zz") == 200
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /items/{item_id}"


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_app_exception_marks_span_error_with_event(spans: Any) -> None:
    provider, exporter = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider)
    async with client(app) as c:
        r = await c.get("/fail")
    assert r.status_code == 500
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["http.status_code"] == 500
    (event,) = [e for e in span.events if e.name == "exception"]
    assert event.attributes["exception.type"] == "RuntimeError"
    assert event.attributes["exception.message"] == "boom"


@pytest.mark.anyio
async def test_app_exception_propagates_unchanged(spans: Any) -> None:
    provider, exporter = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider)
    async with client(app, raise_app_exceptions=True) as c:
        with pytest.raises(RuntimeError, match="boom"):
            await c.get("/fail")
    assert len(exporter.get_finished_spans()) == 1


@pytest.mark.anyio
async def test_record_exceptions_off_keeps_error_status_without_event(spans: Any) -> None:
    provider, exporter = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider, record_exceptions=False)
    async with client(app) as c:
        await c.get("/fail")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert not span.events


@pytest.mark.anyio
async def test_5xx_answer_is_error_4xx_is_not(spans: Any) -> None:
    provider, exporter = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider)
    async with client(app) as c:
        await c.get("/down")
        await c.get("/nope")
    down, nope = exporter.get_finished_spans()
    assert down.status.status_code is StatusCode.ERROR
    assert nope.status.status_code is StatusCode.UNSET


@pytest.mark.anyio
async def test_hook_errors_are_recorded_not_raised(spans: Any) -> None:
    provider, exporter = spans

    def bad_hook(span: Any, scope: Any) -> None:
        raise ValueError("hook bug")

    app = kitmw.Tracing(starlette_app(), tracer_provider=provider, server_request_hook=bad_hook)
    async with client(app) as c:
        r = await c.get("/items/1")
    assert r.status_code == 200
    (span,) = exporter.get_finished_spans()
    assert [e.attributes["exception.message"] for e in span.events] == ["hook bug"]


# -- exclusions, streaming, websockets, lifespan ---------------------------------------------


@pytest.mark.anyio
async def test_excluded_path_is_anchored(spans: Any) -> None:
    provider, exporter = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider, exclude_paths=["/health"])
    async with client(app) as c:
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/health/")).status_code in (200, 307)
        assert (await c.get("/healthz")).status_code == 200
    assert [s.attributes["http.target"] for s in exporter.get_finished_spans()] == ["/healthz"]


@pytest.mark.anyio
async def test_streaming_response_one_span_ended_after_last_chunk(spans: Any) -> None:
    provider, exporter = spans
    finished_while_streaming: list[int] = []

    async def chunks() -> Any:
        for i in range(3):
            finished_while_streaming.append(len(exporter.get_finished_spans()))
            yield f"chunk{i};".encode()

    async def stream(request: Any) -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="text/plain")

    app = kitmw.Tracing(Starlette(routes=[Route("/stream", stream)]), tracer_provider=provider)
    async with client(app) as c:
        r = await c.get("/stream")
    assert r.text == "chunk0;chunk1;chunk2;"
    assert finished_while_streaming == [0, 0, 0]
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /stream"
    assert span.attributes["http.response_content_length"] == len(r.content)
    assert span.end_time >= span.start_time


@pytest.mark.anyio
async def test_no_spans_for_send_and_receive(spans: Any) -> None:
    provider, exporter = spans

    async def echo(request: Any) -> StreamingResponse:
        body = b""
        async for part in request.stream():
            body += part

        async def out() -> Any:
            for _ in range(5):
                yield body

        return StreamingResponse(out())

    app = kitmw.Tracing(Starlette(routes=[Route("/echo", echo, methods=["POST"])]), tracer_provider=provider)

    async def body() -> Any:
        for _ in range(5):
            yield b"x" * 1000

    async with client(app) as c:
        r = await c.post("/echo", content=body())
    assert len(r.content) == 25_000
    assert [s.name for s in exporter.get_finished_spans()] == ["POST /echo"]


def test_websocket_and_lifespan_pass_through(spans: Any) -> None:
    provider, exporter = spans
    started: list[str] = []

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi " + await websocket.receive_text())
        await websocket.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        started.append("up")
        yield

    inner = Starlette(routes=[WebSocketRoute("/ws", ws)], lifespan=lifespan)
    app = kitmw.Tracing(inner, tracer_provider=provider)
    with TestClient(app) as tc, tc.websocket_connect("/ws") as conn:
        conn.send_text("there")
        assert conn.receive_text() == "hi there"
    assert started == ["up"]
    assert exporter.get_finished_spans() == ()


# -- the exchange and the context -------------------------------------------------------------


class IdRecorder(Policy):
    name = "ids"

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, str | None]] = []

    def enter(self, ex: Exchange) -> None:
        self.seen.append((ex.trace_id, ex.span_id))
        current = trace.get_current_span().get_span_context()
        self.seen.append((format(current.trace_id, "032x"), format(current.span_id, "016x")))

    def exit(self, ex: Exchange) -> None:
        self.seen.append((ex.trace_id, ex.span_id))


@pytest.mark.anyio
async def test_trace_and_span_ids_visible_to_inner_policies(spans: Any) -> None:
    provider, exporter = spans
    recorder = IdRecorder()
    app = kitmw.asgi.Middleware(starlette_app(), TracingPolicy(tracer_provider=provider), recorder)
    async with client(app) as c:
        await c.get("/items/1", headers={"traceparent": TRACEPARENT})
    (span,) = exporter.get_finished_spans()
    ids = (format(span.context.trace_id, "032x"), format(span.context.span_id, "016x"))
    assert ids[0] == TRACE_ID
    assert recorder.seen == [ids, ids, ids]


@pytest.mark.anyio
async def test_unsampled_parent_no_span_exported_but_ids_for_logs(spans: Any) -> None:
    provider, exporter = spans
    recorder = IdRecorder()
    app = kitmw.asgi.Middleware(starlette_app(), TracingPolicy(tracer_provider=provider), recorder)
    async with client(app) as c:
        r = await c.get("/items/1", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
    assert r.status_code == 200
    assert exporter.get_finished_spans() == ()  # the default sampler follows the parent
    assert recorder.seen[0][0] == TRACE_ID  # logs still correlate with the caller's trace


@pytest.mark.anyio
async def test_response_hook_sees_the_finished_exchange(spans: Any) -> None:
    provider, exporter = spans
    seen: list[tuple[int, str | None]] = []

    def hook(span: Any, ex: Exchange) -> None:
        seen.append((ex.status, ex.route))
        span.set_attribute("app.tenant", "acme")

    app = kitmw.Tracing(starlette_app(), tracer_provider=provider, server_response_hook=hook)
    async with client(app) as c:
        await c.get("/items/3")
    assert seen == [(200, "/items/{item_id}")]
    assert exporter.get_finished_spans()[0].attributes["app.tenant"] == "acme"


@pytest.mark.anyio
async def test_context_is_detached_after_the_request(spans: Any) -> None:
    provider, _ = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider)
    await call(app, "/items/1")
    await call(app, "/fail-not-found")
    assert trace.get_current_span() is trace.INVALID_SPAN


@pytest.mark.anyio
async def test_nested_kitmw_layers_make_one_span(spans: Any) -> None:
    provider, exporter = spans
    inner = kitmw.Tracing(starlette_app(), tracer_provider=provider)
    app = kitmw.stack(inner, tracing={"tracer_provider": provider})
    async with client(app) as c:
        await c.get("/items/1")
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /items/{item_id}"


@pytest.mark.anyio
async def test_contrib_middleware_outside_is_adopted(spans: Any) -> None:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    provider, exporter = spans
    recorder = IdRecorder()
    app = OpenTelemetryMiddleware(
        kitmw.asgi.Middleware(starlette_app(), TracingPolicy(tracer_provider=provider), recorder),
        tracer_provider=provider,
        meter_provider=None,
        exclude_spans=["receive", "send"],
    )
    async with client(app) as c:
        await c.get("/items/5")
    (span,) = server_spans(exporter)
    assert len(exporter.get_finished_spans()) == 1
    assert span.name == "GET /items/{item_id}"  # contrib's raw-path name replaced
    assert recorder.seen[0] == (format(span.context.trace_id, "032x"), format(span.context.span_id, "016x"))


# -- the policy over other protocols ----------------------------------------------------------


def test_wsgi_exchange_gets_wsgi_attributes(spans: Any) -> None:
    from kitmw.wsgi import WsgiExchange

    provider, exporter = spans
    headers = {"Host": "shop.example", "traceparent": TRACEPARENT}
    environ = wsgi_environ("POST", "/orders", headers=headers, remote_addr="10.0.0.1")
    environ.update({"SERVER_NAME": "localhost", "wsgi.url_scheme": "https"})
    ex = WsgiExchange(environ)  # what the WSGI driver makes
    policy = TracingPolicy(tracer_provider=provider)
    hooks = policy.hooks("wsgi", False)  # what the WSGI driver runs: contrib's collector bound
    assert hooks.enter is not None and hooks.enter(ex) is None
    assert ex.trace_id == TRACE_ID
    ex.status = 201
    policy.exit(ex)
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST"
    assert span.attributes["http.method"] == "POST"
    assert span.attributes["http.scheme"] == "https"
    assert span.attributes["net.peer.ip"] == "10.0.0.1"
    assert span.attributes["http.status_code"] == 201


def flask_app() -> Any:
    from flask import Flask

    app = Flask("traced")

    @app.get("/items/<int:item_id>")
    def get_item(item_id: int) -> str:
        return f"item {item_id}"

    @app.get("/fail")
    def fail_view() -> str:
        raise RuntimeError("flask boom")

    return app


def test_wsgi_driver_flask_route_and_parent(spans: Any, serve_wsgi: Any) -> None:
    provider, exporter = spans
    app = kitmw.wsgi.Tracing(flask_app(), tracer_provider=provider)
    with serve_wsgi(app) as server:
        r = httpx.get(server.url + "/items/9", headers={"traceparent": TRACEPARENT}, timeout=10)
    assert r.text == "item 9"
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /items/<int:item_id>"
    assert span.attributes["http.route"] == "/items/<int:item_id>"
    assert span.attributes["http.status_code"] == 200
    assert span.attributes["net.peer.ip"] == "127.0.0.1"  # contrib's WSGI attributes
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == PARENT_ID


def test_wsgi_driver_flask_500_marks_span_error_and_detaches(spans: Any) -> None:
    from werkzeug.test import Client

    provider, exporter = spans
    app = kitmw.wsgi.Tracing(flask_app().wsgi_app, tracer_provider=provider)
    r = Client(app).get("/fail", buffered=True)
    assert r.status_code == 500  # Flask renders its own 500
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert trace.get_current_span() is trace.INVALID_SPAN


# -- client side ----------------------------------------------------------------------------


def test_client_span_injects_traceparent(spans: Any) -> None:
    provider, exporter = spans
    policy = ClientTracingPolicy(tracer_provider=provider)
    request = httpx.Request("GET", "https://user:secret@api.example:8443/v1/items?id=3")
    ex = kitmw.httpx.ClientExchange(request)  # the driver's own
    policy.enter(ex)
    ex.status = 200
    policy.exit(ex)
    (span,) = exporter.get_finished_spans()
    assert span.kind is SpanKind.CLIENT
    assert span.name == "GET"
    assert ex.request.headers["traceparent"].startswith(f"00-{ex.trace_id}-{ex.span_id}-")
    assert format(span.context.span_id, "016x") == ex.span_id
    assert "secret" not in span.attributes["http.url"]
    assert span.attributes["http.url"].endswith("api.example:8443/v1/items?id=3")
    assert span.attributes["http.status_code"] == 200


def test_client_span_stable_semconv_attributes(spans: Any) -> None:
    provider, exporter = spans
    policy = ClientTracingPolicy(tracer_provider=provider, semconv="http")
    ex = kitmw.httpx.ClientExchange(httpx.Request("POST", "http://user:pw@10.1.2.3/submit"))
    policy.enter(ex)
    ex.status = 201
    policy.exit(ex)
    (span,) = exporter.get_finished_spans()
    attrs = span.attributes
    assert attrs["http.request.method"] == "POST"
    assert "pw" not in attrs["url.full"] and "user" not in attrs["url.full"]
    assert attrs["server.address"] == "10.1.2.3"
    assert attrs["server.port"] == 80
    assert attrs["http.response.status_code"] == 201


def test_client_span_host_and_port_are_worked_out_once_per_origin(
    spans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16 (httpx tracing cost): the URL is parsed for host and port once per origin,
    and a URL without query or user info is not sent through the redaction; the
    attributes are those of every call parsed on its own."""
    from kitmw.tracing._common import host_port as real

    parsed: list[str] = []

    def counting(url: str) -> tuple[str | None, int | None]:
        parsed.append(url)
        return real(url)

    monkeypatch.setattr("kitmw.tracing._client.host_port", counting)
    provider, exporter = spans
    policy = ClientTracingPolicy(tracer_provider=provider, semconv="http/dup")
    for url in ("http://API.example:8080/a", "http://api.example:8080/b?Signature=s", "http://u:p@api.example:8080/c"):
        ex = NeutralClientExchange("GET", url) if "@" in url else kitmw.httpx.ClientExchange(httpx.Request("GET", url))
        policy.enter(ex)
        ex.status = 200
        policy.exit(ex)
    assert parsed == ["http://api.example:8080"]
    first, second, third = (s.attributes for s in exporter.get_finished_spans())
    assert first["http.url"] == first["url.full"] == "http://api.example:8080/a"
    assert second["url.full"] == "http://api.example:8080/b?Signature=REDACTED"
    assert "p@" not in third["url.full"]
    for attrs in (first, second, third):
        assert (attrs["net.peer.name"], attrs["net.peer.port"]) == ("api.example", 8080)
        assert (attrs["server.address"], attrs["server.port"]) == ("api.example", 8080)


def test_client_span_is_child_of_current_span(spans: Any) -> None:
    provider, exporter = spans
    policy = ClientTracingPolicy(tracer_provider=provider)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("handler") as parent:
        ex = NeutralClientExchange("GET", "http://upstream/x")
        policy.enter(ex)
        ex.status = 200
        policy.exit(ex)
    client_span = next(s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT)
    assert client_span.context.trace_id == parent.get_span_context().trace_id
    assert client_span.parent.span_id == parent.get_span_context().span_id


def test_client_error_and_5xx_mark_span_error(spans: Any) -> None:
    provider, exporter = spans
    policy = ClientTracingPolicy(tracer_provider=provider)
    ex = NeutralClientExchange("GET", "http://upstream/x")
    policy.enter(ex)
    ex.error = ConnectionError("refused")
    policy.exit(ex)
    ex2 = NeutralClientExchange("GET", "http://upstream/y")
    policy.enter(ex2)
    ex2.status = 503
    policy.exit(ex2)
    failed, unavailable = exporter.get_finished_spans()
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert unavailable.status.status_code is StatusCode.ERROR


@pytest.mark.anyio
async def test_one_trace_across_client_and_server(spans: Any) -> None:
    provider, exporter = spans

    async def upstream_item(request: Any) -> PlainTextResponse:
        return PlainTextResponse("upstream")

    upstream = kitmw.Tracing(
        Starlette(routes=[Route("/stock/{sku}", upstream_item)]), tracer_provider=provider
    )
    outgoing = httpx.AsyncClient(
        transport=kitmw.httpx.AsyncTransport(
            transport=httpx.ASGITransport(app=upstream), tracing={"tracer_provider": provider}
        ),
        base_url="http://stock",
    )

    async def front_item(request: Any) -> PlainTextResponse:
        r = await outgoing.get("/stock/42")
        return PlainTextResponse("front+" + r.text)

    front = kitmw.Tracing(Starlette(routes=[Route("/items/{item_id}", front_item)]), tracer_provider=provider)
    async with client(front) as c, outgoing:
        r = await c.get("/items/1", headers={"traceparent": TRACEPARENT})
    assert r.text == "front+upstream"
    spans_by_name = {s.name: s for s in exporter.get_finished_spans()}
    assert sorted(spans_by_name) == ["GET", "GET /items/{item_id}", "GET /stock/{sku}"]
    front_span = spans_by_name["GET /items/{item_id}"]
    client_span = spans_by_name["GET"]
    upstream_span = spans_by_name["GET /stock/{sku}"]
    assert client_span.kind is SpanKind.CLIENT
    assert {format(s.context.trace_id, "032x") for s in spans_by_name.values()} == {TRACE_ID}
    assert client_span.parent.span_id == front_span.context.span_id
    assert upstream_span.parent.span_id == client_span.context.span_id


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "option"),
    [
        pytest.param({"tracer_provider": object()}, "tracer_provider", id="provider"),
        pytest.param({"propagator": "w3c"}, "propagator", id="propagator"),
        pytest.param({"server_request_hook": 3}, "server_request_hook", id="hook"),
        pytest.param({"semconv": "new"}, "semconv", id="semconv"),
        pytest.param({"exclude_paths": ["health"]}, "exclude_paths", id="exclude"),
        pytest.param({"record_exceptions": "yes"}, "record_exceptions", id="record"),
    ],
)
def test_bad_options_raise_config_error_naming_the_option(options: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        TracingPolicy(**options)


def test_policy_declares_its_shared_options() -> None:
    assert TracingPolicy.name == ClientTracingPolicy.name == "tracing"
    assert TracingPolicy.shared_options == ("exclude_paths",)


# -- parity with opentelemetry-instrumentation-asgi -------------------------------------------

PARITY_SCOPES: list[Any] = [
    pytest.param({}, id="plain"),
    pytest.param({"query_string": b"a=1&b=%20x"}, id="query"),
    pytest.param({"query_string": b"X-Amz-Signature=secret&x=1"}, id="sensitive-query"),
    pytest.param({"headers": [(b"host", b"user:pw@evil.example")]}, id="credentials-in-host"),
    pytest.param({"headers": []}, id="no-host-header"),
    pytest.param({"headers": [(b"host", b"a.example"), (b"host", b"b.example")]}, id="two-hosts"),
    pytest.param({"headers": [(b"Host", b"caps.example"), (b"User-Agent", b"curl/8")]}, id="caps-names"),
    pytest.param({"headers": [(b"host", b"x"), (b"user-agent", b"Googlebot/2.1")]}, id="bot-agent"),
    pytest.param({"headers": [(b"host", b"x"), (b"user-agent", b"\xe2\x98\x83 \xff")]}, id="odd-agent"),
    pytest.param({"method": "get"}, id="lower-method"),
    pytest.param({"method": "PURGE"}, id="unknown-method"),
    pytest.param({"server": ("10.0.0.1", 80), "scheme": "https"}, id="port-80"),
    pytest.param({"server": None, "client": None}, id="no-server-no-client"),
    pytest.param({"path": "/a%3Fb/?X-Amz-Signature=1"}, id="question-mark-in-path"),
    pytest.param({"http_version": "2"}, id="h2"),
]


def parity_scope() -> dict[str, Any]:
    """The request the parity tests vary (a fresh dict each time)."""
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/items/1",
        "query_string": b"",
        "headers": [(b"host", b"api.example:8080"), (b"user-agent", b"Mozilla/5.0")],
        "client": ("192.0.2.7", 51234),
        "server": ("127.0.0.1", 8000),
    }


def _stability_modes() -> dict[str, Any]:
    """kitmw's ``semconv`` option values -> contrib's stability modes."""
    from opentelemetry.instrumentation._semconv import _StabilityMode

    return {
        "default": _StabilityMode.DEFAULT,
        "http": _StabilityMode.HTTP,
        "http/dup": _StabilityMode.HTTP_DUP,
    }


@pytest.mark.parametrize("mode", ["default", "http", "http/dup"])
@pytest.mark.parametrize("overrides", PARITY_SCOPES)
def test_asgi_attributes_equal_contribs(mode: str, overrides: dict[str, Any]) -> None:
    from opentelemetry.instrumentation.asgi import collect_request_attributes

    from kitmw.tracing._asgi import request_attributes as _asgi_request_attributes
    from kitmw.tracing._semconv import Semconv as _Semconv

    scope = parity_scope()
    scope.update(overrides)
    stability = _stability_modes()
    expected = collect_request_attributes(scope, stability[mode])
    assert _asgi_request_attributes(scope, _Semconv(mode), False) == expected


@pytest.mark.parametrize("mode", ["default", "http", "http/dup"])
@pytest.mark.parametrize("status", [200, 302, 404, 500, 503, 99])
def test_status_attributes_equal_contribs(spans: Any, mode: str, status: int) -> None:
    from opentelemetry.instrumentation.asgi import set_status_code

    from kitmw.tracing._semconv import Semconv as _Semconv
    from kitmw.tracing._semconv import status_attributes as _status_attributes

    provider, _ = spans
    stability = _stability_modes()
    span = provider.get_tracer("t").start_span("x")
    set_status_code(span, status, None, stability[mode])
    attrs, error = _status_attributes(status, _Semconv(mode))
    assert attrs == dict(span.attributes)
    assert error == (span.status.status_code is StatusCode.ERROR)


@pytest.mark.parametrize("mode", ["default", "http", "http/dup"])
@pytest.mark.parametrize("overrides", PARITY_SCOPES)
def test_cached_asgi_attributes_equal_contribs_on_every_request(mode: str, overrides: dict[str, Any]) -> None:
    """The per-policy cache (socket, Host, User-Agent) never leaks one request's values into another."""
    from opentelemetry.instrumentation.asgi import collect_request_attributes

    from kitmw.tracing._asgi import request_attributes as _asgi_request_attributes
    from kitmw.tracing._semconv import Semconv as _Semconv

    stability = _stability_modes()
    first = parity_scope()
    first.update(overrides)
    # Same socket, Host and User-Agent (a cache hit), everything else different.
    second = dict(first, path="/other/2", query_string=b"q=%41", method="POST", client=("198.51.100.9", 4000))
    from kitmw._cache import BoundedCache

    cache: BoundedCache[Any, Any] = BoundedCache(256)
    sc = _Semconv(mode)
    for scope in (first, second, first):
        assert _asgi_request_attributes(scope, sc, False, cache) == collect_request_attributes(
            scope, stability[mode]
        )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([(b"host", b"x"), (b"user-agent", b"curl/8")], False, id="none"),
        pytest.param(
            [(b"host", b"x"), (b"traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")],
            True,
            id="traceparent",
        ),
        pytest.param([(b"Baggage", b"k=v")], True, id="baggage-caps"),
        pytest.param([(b"tracestate", b"a=b")], True, id="tracestate"),
    ],
)
def test_attribute_scan_reports_propagation_headers(
    headers: list[tuple[bytes, bytes]], expected: bool
) -> None:
    from kitmw._cache import BoundedCache
    from kitmw.tracing._asgi import scan as _asgi_scan
    from kitmw.tracing._semconv import Semconv as _Semconv

    fields = frozenset({b"traceparent", b"tracestate", b"baggage"})
    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
    assert _asgi_scan(scope, _Semconv("default"), False, BoundedCache(8), fields)[1] is expected


@pytest.mark.anyio
async def test_odd_scope_falls_back_to_neutral_attributes_and_still_reads_traceparent(spans: Any) -> None:
    """A scope the attribute scan cannot read (a one-element client) still yields a child span."""
    provider, exporter = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider)
    status = await call(app, "/items/1", [(b"traceparent", TRACEPARENT.encode())], client=("127.0.0.1",))
    assert status == 200
    (span,) = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.attributes["http.method"] == "GET"
    assert span.attributes["net.peer.ip"] == "127.0.0.1"


# -- OpenTelemetry conventions users rely on (issue 12, item 14) ------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("env", "traced"),
    [
        pytest.param({"OTEL_PYTHON_EXCLUDED_URLS": "health,/internal/.*"}, ["/items/1"], id="generic"),
        pytest.param({"OTEL_PYTHON_ASGI_EXCLUDED_URLS": "health"}, ["/internal/x", "/items/1"], id="asgi"),
        pytest.param(
            {"OTEL_PYTHON_EXCLUDED_URLS": "items", "OTEL_PYTHON_ASGI_EXCLUDED_URLS": "health"},
            ["/internal/x", "/items/1"],
            id="asgi-wins-over-generic",
        ),
        pytest.param(
            {"OTEL_PYTHON_EXCLUDED_URLS": r"^http://test/items/1$"}, ["/health", "/internal/x"], id="full-url"
        ),
        pytest.param(
            {"OTEL_PYTHON_WSGI_EXCLUDED_URLS": "health"}, ["/health", "/internal/x", "/items/1"], id="wsgi-only"
        ),
    ],
)
async def test_otel_excluded_urls_are_honoured_on_asgi(
    spans: Any, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], traced: list[str]
) -> None:
    provider, exporter = spans
    for name in ("OTEL_PYTHON_EXCLUDED_URLS", "OTEL_PYTHON_ASGI_EXCLUDED_URLS", "OTEL_PYTHON_WSGI_EXCLUDED_URLS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = Starlette(routes=[Route("/health", ok), Route("/items/{item_id}", item), Route("/internal/x", ok)])
    app = kitmw.Tracing(app, tracer_provider=provider)
    monkeypatch.delenv("OTEL_PYTHON_EXCLUDED_URLS", raising=False)  # read once, at construction
    async with client(app) as c:
        for path in ["/health", "/internal/x", "/items/1"]:
            assert (await c.get(path)).status_code == 200
    assert [s.attributes["http.target"] for s in exporter.get_finished_spans()] == traced


def test_otel_excluded_urls_are_honoured_on_wsgi(spans: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    provider, exporter = spans
    monkeypatch.delenv("OTEL_PYTHON_EXCLUDED_URLS", raising=False)
    monkeypatch.setenv("OTEL_PYTHON_WSGI_EXCLUDED_URLS", "/health$,^https?://[^/]+/metrics")

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    app = kitmw.wsgi.Tracing(wsgi_app, tracer_provider=provider)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://svc") as c:
        for path in ["/health", "/metrics", "/items/1", "/health/deep"]:
            assert c.get(path).status_code == 200
    urls = [s.attributes["http.url"] for s in exporter.get_finished_spans()]
    assert urls == ["http://svc/items/1", "http://svc/health/deep"]


@pytest.mark.anyio
async def test_otel_excluded_url_gets_no_span_from_fastapi_either(spans: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # FastAPI's native telemetry with its own provider steps aside too, as for exclude_paths.
    from fastapi import FastAPI

    provider, exporter = spans
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "/health")
    api = FastAPI(telemetry={"tracer_provider": provider})

    @api.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app = kitmw.Tracing(api, tracer_provider=provider)
    async with client(app) as c:
        assert (await c.get("/health")).status_code == 200
    assert exporter.get_finished_spans() == ()


@pytest.mark.anyio
async def test_suppress_http_instrumentation_silences_the_server_span(spans: Any) -> None:
    from opentelemetry.instrumentation.utils import suppress_http_instrumentation, suppress_instrumentation

    provider, exporter = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider)
    with suppress_http_instrumentation():
        assert await call(app, "/items/1") == 200
    with suppress_instrumentation():
        assert await call(app, "/items/2") == 200
    assert exporter.get_finished_spans() == ()
    assert await call(app, "/items/3") == 200  # and only while suppressed
    assert [s.name for s in exporter.get_finished_spans()] == ["GET /items/{item_id}"]


def test_suppress_http_instrumentation_silences_client_spans_and_propagation(spans: Any) -> None:
    from opentelemetry.instrumentation.utils import suppress_http_instrumentation

    provider, exporter = spans
    sent: list[httpx.Headers] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers)
        return httpx.Response(200, text="ok")

    transport = kitmw.httpx.Transport(transport=httpx.MockTransport(upstream), tracing={"tracer_provider": provider})
    with httpx.Client(transport=transport) as c:
        with suppress_http_instrumentation():
            assert c.get("http://upstream/a").status_code == 200
        assert c.get("http://upstream/b").status_code == 200
    assert "traceparent" not in sent[0] and "traceparent" in sent[1]
    assert [s.attributes["http.url"] for s in exporter.get_finished_spans()] == ["http://upstream/b"]


@pytest.mark.anyio
async def test_another_frameworks_server_span_is_the_parent_when_no_traceparent_arrives(spans: Any) -> None:
    # A server span kitmw cannot adopt (it names no path of this request) is current and
    # no traceparent arrives: kitmw's span joins its trace as an INTERNAL child, as
    # contrib's middleware does, so the request keeps one SERVER span.
    provider, exporter = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider)
    tracer = provider.get_tracer("another.framework")
    with tracer.start_as_current_span("handle request", kind=SpanKind.SERVER) as outer:
        assert await call(app, "/items/1") == 200
    ours = next(s for s in exporter.get_finished_spans() if s.instrumentation_scope.name == "kitmw")
    assert ours.context.trace_id == outer.get_span_context().trace_id
    assert ours.parent is not None and ours.parent.span_id == outer.get_span_context().span_id
    assert ours.kind is SpanKind.INTERNAL
    assert ours.name == "GET /items/{item_id}"
    assert len(server_spans(exporter)) == 1


@pytest.mark.anyio
async def test_a_current_non_server_span_is_the_parent_of_a_server_span(spans: Any) -> None:
    # A job or a handler's own INTERNAL span calling an app in process: kitmw's span is
    # that request's SERVER span, in the same trace.
    provider, exporter = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider)
    with provider.get_tracer("job").start_as_current_span("nightly job") as job:
        assert await call(app, "/items/1") == 200
    ours = next(s for s in exporter.get_finished_spans() if s.instrumentation_scope.name == "kitmw")
    assert ours.kind is SpanKind.SERVER
    assert ours.parent is not None and ours.parent.span_id == job.get_span_context().span_id


@pytest.mark.anyio
async def test_an_incoming_traceparent_wins_over_the_current_span(spans: Any) -> None:
    provider, exporter = spans
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider)
    with provider.get_tracer("another.framework").start_as_current_span("outer", kind=SpanKind.SERVER):
        assert await call(app, "/items/1", headers=[(b"traceparent", TRACEPARENT.encode())]) == 200
    ours = next(s for s in exporter.get_finished_spans() if s.instrumentation_scope.name == "kitmw")
    assert format(ours.context.trace_id, "032x") == TRACE_ID
    assert ours.parent is not None and format(ours.parent.span_id, "016x") == PARENT_ID
    assert ours.kind is SpanKind.SERVER


@pytest.mark.anyio
async def test_contrib_middleware_outside_kitmw_outside_fastapi_is_the_only_server_span(spans: Any) -> None:
    # contrib's OpenTelemetryMiddleware around kitmw around FastAPI (native telemetry on):
    # kitmw adopts contrib's span and tells FastAPI's native layer to step aside.
    from fastapi import FastAPI
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    provider, exporter = spans
    api = FastAPI(telemetry={"tracer_provider": provider})

    @api.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    app = OpenTelemetryMiddleware(
        kitmw.Tracing(api, tracer_provider=provider),
        tracer_provider=provider,
        meter_provider=None,
        exclude_spans=["receive", "send"],
    )
    async with client(app) as c:
        assert (await c.get("/items/3")).status_code == 200
    (span,) = exporter.get_finished_spans()
    assert span.kind is SpanKind.SERVER
    assert span.instrumentation_scope.name == "opentelemetry.instrumentation.asgi"
    assert span.name == "GET /items/{item_id}"


# -- the endpoint side (kitmw.endpoint): an INTERNAL span per call -------------------------------


def call_endpoint(
    policies: list[Policy], fn: Any, name: str = "charge_card", *, record_rejection_as_error: bool = True
) -> tuple[NeutralEndpointExchange, Any]:
    """Run ``fn()`` through ``policies`` as a sync endpoint driver does (enter, call, exits)."""
    from kitmw.chain import compile_chain, finish

    chain = compile_chain(policies, "endpoint", is_async=False)
    ex = NeutralEndpointExchange("CALL", name)
    exits: list[Any] = []
    try:
        result = chain.run_sync(ex, fn, exits)
    except BaseException as exc:
        if record_rejection_as_error or ex.rejection is None:
            ex.error = exc
        finish(ex, exits, exc)
        return ex, exc
    finish(ex, exits)
    return ex, result


async def acall_endpoint(
    policies: list[Policy], fn: Any, name: str = "charge_card"
) -> tuple[NeutralEndpointExchange, Any]:
    """:func:`call_endpoint` for an async function on the async endpoint driver."""
    from kitmw.chain import afinish, compile_chain

    chain = compile_chain(policies, "endpoint", is_async=True)
    ex = NeutralEndpointExchange("CALL", name)
    exits: list[Any] = []
    try:
        result = await chain.run_async(ex, fn, exits)
    except BaseException as exc:
        ex.error = exc
        await afinish(ex, exits, exc)
        return ex, exc
    await afinish(ex, exits)
    return ex, result


def endpoint_tracing(provider: Any) -> Any:
    from kitmw.concerns import build

    return build("endpoint", "tracing", {"tracer_provider": provider})


def test_endpoint_tracing_is_the_registry_policy_of_the_endpoint_side(spans: Any) -> None:
    from kitmw.concerns import build_all
    from kitmw.tracing import EndpointTracingPolicy

    provider, _ = spans
    assert type(endpoint_tracing(provider)) is EndpointTracingPolicy
    assert [type(p) for p in build_all("endpoint", {"tracing": True})] == [EndpointTracingPolicy]
    with pytest.raises(ConfigError, match="tracing: unknown option 'exclude_paths'"):
        build_all("endpoint", {"tracing": {"exclude_paths": ["/x"]}})


def test_endpoint_span_is_an_internal_child_of_the_current_span_named_after_the_endpoint(spans: Any) -> None:
    provider, exporter = spans
    with provider.get_tracer("test").start_as_current_span("handler") as handler:
        ex, result = call_endpoint([endpoint_tracing(provider)], lambda: "receipt")
    assert result == "receipt"
    span = next(s for s in exporter.get_finished_spans() if s.name == "charge_card")
    assert span.kind is SpanKind.INTERNAL
    assert span.parent.span_id == handler.get_span_context().span_id
    assert span.status.status_code is StatusCode.UNSET
    assert (ex.trace_id, ex.span_id) == (format(span.context.trace_id, "032x"), format(span.context.span_id, "016x"))
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_endpoint_span_is_current_while_the_function_runs(spans: Any) -> None:
    """What the function calls (a traced httpx call, another endpoint) is the span's child."""
    provider, exporter = spans
    policy = endpoint_tracing(provider)
    client_tracing = ClientTracingPolicy(tracer_provider=provider)

    def charge() -> str:
        outgoing = NeutralClientExchange("POST", "http://payments/charge")
        client_tracing.enter(outgoing)
        outgoing.status = 200
        client_tracing.exit(outgoing)
        return call_endpoint([policy], lambda: "ok", "audit")[1]

    call_endpoint([policy], charge)
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    outer = by_name["charge_card"]
    assert outer.parent is None
    assert by_name["POST"].parent.span_id == outer.context.span_id
    assert by_name["audit"].parent.span_id == outer.context.span_id
    assert by_name["audit"].kind is SpanKind.INTERNAL


@pytest.mark.anyio
async def test_async_endpoint_span_is_current_while_the_coroutine_runs(spans: Any) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("test")

    async def charge() -> str:
        with tracer.start_as_current_span("db query"):
            return "receipt"

    _, result = await acall_endpoint([endpoint_tracing(provider)], charge)
    assert result == "receipt"
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    assert by_name["db query"].parent.span_id == by_name["charge_card"].context.span_id
    assert trace.get_current_span() is trace.INVALID_SPAN


@pytest.mark.anyio
async def test_endpoint_exception_sets_error_status_and_an_exception_event(spans: Any) -> None:
    provider, exporter = spans

    async def charge() -> str:
        raise ValueError("card declined")

    _, raised = await acall_endpoint([endpoint_tracing(provider)], charge)
    assert isinstance(raised, ValueError)
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError: card declined"
    assert [e.name for e in span.events] == ["exception"]
    assert span.attributes["error.type"] == "ValueError"
    assert "kitmw.rejection" not in span.attributes
    assert trace.get_current_span() is trace.INVALID_SPAN


@pytest.mark.parametrize("as_error", [True, False], ids=["error-recorded", "rejection-only"])
def test_endpoint_refusal_sets_the_rejection_attribute(spans: Any, as_error: bool) -> None:
    from kitmw.errors import BreakerOpen

    provider, exporter = spans
    called = []

    class Open(Policy):  # an open breaker further in: the function is not called
        def enter(self, ex: Exchange) -> Rejection:
            return Rejection(503, "circuit_open", headers=(("Retry-After", "3"),))

    _, raised = call_endpoint(
        [endpoint_tracing(provider), Open()], lambda: called.append(1), record_rejection_as_error=as_error
    )
    assert isinstance(raised, BreakerOpen) and called == []
    (span,) = exporter.get_finished_spans()
    assert span.attributes["kitmw.rejection"] == "circuit_open"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "rejected: circuit_open"
    assert span.events == ()  # a refusal is no exception of the function


def test_endpoint_records_no_span_under_suppress_instrumentation(spans: Any) -> None:
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    provider, exporter = spans
    with suppress_instrumentation():
        ex, result = call_endpoint([endpoint_tracing(provider)], lambda: "ok")
    assert result == "ok" and ex.span is None
    assert exporter.get_finished_spans() == ()


def test_contribs_private_semconv_helpers_are_still_there() -> None:
    """kitmw reads OTEL_SEMCONV_STABILITY_OPT_IN through contrib's private helpers
    (kitmw/tracing/_semconv.py): a release that moves them fails here, loudly."""
    from opentelemetry import propagate

    from kitmw.tracing._semconv import Semconv, quiet_fields

    for option in (None, "default", "http", "http/dup"):
        sc = Semconv(option)
        assert sc.contrib, option
        assert sc.schema_url
    assert quiet_fields(propagate.get_global_textmap()) == frozenset({b"traceparent", b"tracestate", b"baggage"})


@pytest.mark.anyio
async def test_a_service_called_in_process_on_the_same_path_gets_its_own_span(spans: Any) -> None:
    """A kitmw service calling another in the same process (httpx.ASGITransport) on the same
    path: the caller's SERVER span is current and records that path, but the request
    carries a traceparent naming another parent, so it is not this request's span."""
    provider, exporter = spans

    async def back_view(request: Any) -> PlainTextResponse:
        return PlainTextResponse("back")

    back = kitmw.Tracing(Starlette(routes=[Route("/", back_view)]), tracer_provider=provider)
    downstream = kitmw.httpx.AsyncTransport(
        transport=httpx.ASGITransport(app=back),
        tracing={"tracer_provider": provider},
    )

    async def front_view(request: Any) -> PlainTextResponse:
        async with httpx.AsyncClient(transport=downstream, base_url="http://back") as c:
            return PlainTextResponse((await c.get("/")).text)

    front = kitmw.Tracing(Starlette(routes=[Route("/", front_view)]), tracer_provider=provider)
    async with client(front) as c:
        assert (await c.get("/")).text == "back"
    finished = exporter.get_finished_spans()
    servers = [s for s in finished if s.kind is SpanKind.SERVER]
    assert len(servers) == 2
    outer = next(s for s in servers if s.parent is None)
    inner = next(s for s in servers if s is not outer)
    assert inner.context.trace_id == outer.context.trace_id
    (client_span,) = [s for s in finished if s.kind is SpanKind.CLIENT]
    assert inner.parent.span_id == client_span.context.span_id


WSGI_PARITY_ENVIRONS = [
    pytest.param({}, id="plain"),
    pytest.param({"RAW_URI": "/items/42?a=1", "QUERY_STRING": "a=1"}, id="raw-uri-query"),
    pytest.param({"REQUEST_URI": "/items/42"}, id="request-uri"),
    pytest.param({"QUERY_STRING": "token=s3cret&x=%41"}, id="query"),
    pytest.param({"REQUEST_METHOD": "purge"}, id="unknown-method"),
    pytest.param({"REQUEST_METHOD": "get"}, id="lowercase-method"),
    pytest.param({"HTTP_HOST": ""}, id="no-host"),
    pytest.param({"HTTP_HOST": "user:pw@example.com:8443", "SERVER_PORT": "8443"}, id="host-port-creds"),
    pytest.param({"HTTP_USER_AGENT": "Googlebot/2.1"}, id="bot"),
    pytest.param({"HTTP_USER_AGENT": ""}, id="no-ua"),
    pytest.param({"REMOTE_HOST": "peer.example"}, id="remote-host"),
    pytest.param({"REMOTE_PORT": ""}, id="no-remote-port"),
    pytest.param({"SERVER_PROTOCOL": "HTTP/2"}, id="http2"),
    pytest.param({"wsgi.url_scheme": "https", "SERVER_PORT": "443"}, id="https"),
    pytest.param({"SCRIPT_NAME": ""}, id="no-mount"),
    pytest.param({"PATH_INFO": "/caf\xc3\xa9 x/<a>"}, id="path-to-quote"),
    pytest.param({"PATH_INFO": "/u/me@example.com"}, id="path-with-at"),
    pytest.param({"REQUEST_METHOD": " get"}, id="spaced-method"),
    pytest.param({"REQUEST_METHOD": ""}, id="no-method"),
    pytest.param({"REMOTE_PORT": "x"}, id="odd-remote-port"),
]


def _wsgi_parity_environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "/mount",
        "PATH_INFO": "/items/42",
        "QUERY_STRING": "",
        "SERVER_NAME": "svc.local",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "203.0.113.7",
        "REMOTE_PORT": "51000",
        "HTTP_HOST": "svc.local:8000",
        "HTTP_USER_AGENT": "curl/8.5",
        "wsgi.url_scheme": "http",
    }


@pytest.mark.parametrize("mode", ["default", "http", "http/dup"])
@pytest.mark.parametrize("overrides", WSGI_PARITY_ENVIRONS)
def test_cached_wsgi_attributes_equal_contribs_on_every_request(mode: str, overrides: dict[str, Any]) -> None:
    """The WSGI collector's per-site cache (server, Host, user agent) gives contrib's own
    attributes on every request, and never leaks one request's line or peer into another."""
    from opentelemetry.instrumentation.wsgi import collect_request_attributes

    from kitmw._cache import BoundedCache
    from kitmw.tracing._semconv import Semconv as _Semconv
    from kitmw.tracing._wsgi import cached_collector

    stability = _stability_modes()
    sc = _Semconv(mode)
    collect = cached_collector(collect_request_attributes, sc.mode, BoundedCache(256))
    assert collect is not None
    first = _wsgi_parity_environ()
    first.update(overrides)
    # The same site (a cache hit), another request line and peer.
    second = dict(first, PATH_INFO="/other/2", QUERY_STRING="q=%41", REQUEST_METHOD="POST", REMOTE_ADDR="198.51.100.9")
    second["REMOTE_PORT"] = "4000"
    for environ in (first, second, first):
        assert collect(environ, sc.mode) == collect_request_attributes(environ, stability[mode])
