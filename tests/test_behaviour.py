"""One behaviour suite, run over every server driver (ASGI and WSGI).

The same tiny service is written twice as users write it (Starlette for ASGI, Flask for
WSGI), wrapped with ``kitmw.stack(...)`` and called through httpx's in-process
transports (``ASGITransport`` / ``WSGITransport``), or through a real server where the
behaviour needs one (streaming). Each test checks one behaviour on both drivers.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio.from_thread
import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kitmw

APP_LOGGER = "tests.behaviour.app"
app_log = logging.getLogger(APP_LOGGER)


class Service:
    """Per-test state both apps share: a gate for the streaming route, raised errors."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.released: list[bool] = []
        self.raised: list[BaseException] = []

    def stream(self) -> Iterator[bytes]:
        yield b"first\n"
        self.released.append(self.gate.wait(timeout=10))  # False: the client saw nothing yet
        yield b"second\n"

    def boom(self) -> None:
        error = RuntimeError("boom")
        self.raised.append(error)
        raise error


def starlette_app(service: Service) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    async def item(request: Request) -> PlainTextResponse:
        app_log.info("handling item")
        return PlainTextResponse(f"item {request.path_params['item_id']}")

    async def admin(request: Request) -> PlainTextResponse:
        return PlainTextResponse("admin")

    async def fail(request: Request) -> PlainTextResponse:
        return PlainTextResponse("down", status_code=500)

    async def boom(request: Request) -> PlainTextResponse:
        service.boom()
        raise AssertionError("unreachable")

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
            Route("/stream", stream),
            Route("/status/{code:int}", status),
        ]
    )


def flask_app(service: Service) -> Any:
    from flask import Flask, Response

    app = Flask(f"behaviour-{uuid.uuid4().hex[:8]}")
    app.config["PROPAGATE_EXCEPTIONS"] = True  # as in tests: the error reaches the WSGI layer

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        app_log.info("handling item")
        return f"item {item_id}"

    @app.get("/admin")
    def admin() -> str:
        return "admin"

    @app.get("/fail")
    def fail() -> tuple[str, int]:
        return "down", 500

    @app.get("/boom")
    def boom() -> str:
        service.boom()
        raise AssertionError("unreachable")

    @app.get("/stream")
    def stream() -> Response:
        return Response(service.stream(), mimetype="text/plain")

    @app.get("/status/<int:code>")
    def status(code: int) -> tuple[str, int]:
        return "odd", code

    return app


class Harness:
    """Builds the service for one protocol, wraps it with ``kitmw.stack`` and calls it."""

    protocol: str
    item_route: str
    status_route: str

    def __init__(self, server: Callable[..., Any]) -> None:
        self.service = Service()
        self._server = server
        self.app: Any = None

    def build(self, **concerns: Any) -> Harness:
        self.app = kitmw.stack(self.framework_app(), **concerns)
        return self

    def framework_app(self) -> Any:
        raise NotImplementedError

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        raise NotImplementedError

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        with self._server(self.app) as server:
            yield server.url


class AsgiHarness(Harness):
    protocol = "asgi"
    item_route = "/items/{item_id:int}"
    status_route = "/status/{code:int}"

    def __init__(self, server: Callable[..., Any], portal: Any) -> None:
        super().__init__(server)
        self.portal = portal

    def framework_app(self) -> Any:
        return starlette_app(self.service)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                return await c.request(method, path, **kw)

        return self.portal.call(go)  # type: ignore[no-any-return]


class WsgiHarness(Harness):
    protocol = "wsgi"
    item_route = "/items/<int:item_id>"
    status_route = "/status/<int:code>"

    def framework_app(self) -> Any:
        return flask_app(self.service)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        transport = httpx.WSGITransport(app=self.app, remote_addr="127.0.0.1")
        with httpx.Client(transport=transport, base_url="http://test") as c:
            return c.request(method, path, **kw)


@pytest.fixture(params=["asgi", "wsgi"])
def h(request: pytest.FixtureRequest, serve_asgi: Any, serve_wsgi: Any) -> Iterator[Harness]:
    if request.param == "asgi":
        with anyio.from_thread.start_blocking_portal() as portal:
            yield AsgiHarness(serve_asgi, portal)
    else:
        yield WsgiHarness(serve_wsgi)


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
    """Records of the access log and of the app's own logger, with the context filter."""
    from kitmw.logging import ContextFilter

    handler = Records()
    handler.addFilter(ContextFilter())
    loggers = [logging.getLogger(name) for name in ("kitmw.access", APP_LOGGER)]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
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


def count(registry: CollectorRegistry, route: str, status: str, method: str = "GET") -> float:
    key = (("method", method), ("route", route), ("status", status))
    return samples(registry, "http_server_requests_total").get(key, 0.0)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- request id and logs ---------------------------------------------------------------


def test_request_id_is_kept_and_echoed(h: Harness, records: Records) -> None:
    h.build(access_log=True)
    r = h.get("/items/1", headers={"X-Request-ID": "req-abc.123"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "req-abc.123"
    (access,) = records.named("kitmw.access")
    assert access.request_id == "req-abc.123"  # type: ignore[attr-defined]


def test_request_id_is_generated_when_missing_or_malformed(h: Harness) -> None:
    h.build(access_log=True)
    generated = h.get("/items/1").headers["x-request-id"]
    replaced = h.get("/items/1", headers={"X-Request-ID": "x" * 500}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert re.fullmatch(r"[0-9a-f]{32}", replaced) and replaced != generated


def test_app_log_records_carry_the_request_id(h: Harness, records: Records) -> None:
    h.build(access_log=True)
    r = h.get("/items/1", headers={"X-Request-ID": "from-the-app"})
    (inside,) = records.named(APP_LOGGER)
    assert inside.request_id == "from-the-app" == r.headers["x-request-id"]  # type: ignore[attr-defined]


def test_access_record_has_route_status_and_bytes(h: Harness, records: Records) -> None:
    h.build(access_log=True)
    h.get("/items/7")
    (access,) = records.named("kitmw.access")
    fields = access.__dict__
    assert (fields["route"], fields["status"], fields["bytes_out"]) == (h.item_route, 200, len("item 7"))
    assert access.levelno == logging.INFO


# -- metrics ---------------------------------------------------------------------------


def test_metrics_count_route_templates_exactly(h: Harness, registry: CollectorRegistry) -> None:
    h.build(metrics={"registry": registry})
    for path in ("/items/1", "/items/2", "/items/3", "/no/such/page"):
        h.get(path)
    assert count(registry, h.item_route, "200") == 3
    assert count(registry, "<unmatched>", "404") == 1
    routes = {dict(k)["route"] for k in samples(registry, "http_server_requests_total")}
    assert routes == {h.item_route, "<unmatched>"}  # never a raw path


def test_metrics_are_served_on_the_expose_path(h: Harness, registry: CollectorRegistry) -> None:
    h.build(metrics={"registry": registry})
    h.get("/items/1")
    r = h.get("/metrics")
    assert r.status_code == 200
    assert 'route="' + h.item_route + '"' in r.text


def test_the_metrics_page_goes_through_auth_and_the_rate_limit(h: Harness, registry: CollectorRegistry) -> None:
    from kitmw.auth import APIKey

    h.build(
        metrics={"registry": registry},
        ratelimit={"limit": "5/minute", "namespace": unique("beh")},
        auth=APIKey(keys={"key-ops": "prometheus"}),
    )
    anonymous = h.get("/metrics")
    assert anonymous.status_code == 401 and "www-authenticate" in anonymous.headers
    assert "http_server" not in anonymous.text
    scrapes = [h.get("/metrics", headers={"X-API-Key": "key-ops"}) for _ in range(5)]
    assert [r.status_code for r in scrapes] == [200, 200, 200, 200, 429]
    assert 'route="<unmatched>",status="401"' not in scrapes[0].text  # the page itself is never counted
    assert "kitmw_ratelimit_decisions_total" in scrapes[0].text


def test_an_excluded_metrics_page_is_served_to_anyone(h: Harness, registry: CollectorRegistry) -> None:
    from kitmw.auth import APIKey

    h.build(
        metrics={"registry": registry},
        ratelimit={"limit": "1/minute", "namespace": unique("beh")},
        auth=APIKey(keys={"key-ops": "prometheus"}),
        exclude_paths=["/metrics"],
    )
    assert [h.get("/metrics").status_code for _ in range(3)] == [200, 200, 200]
    assert h.get("/items/1").status_code == 401


def test_the_breaker_never_sees_the_metrics_page(h: Harness, registry: CollectorRegistry) -> None:
    h.build(metrics={"registry": registry}, breaker={"fail_max": 2, "reset_timeout": 600, "name": unique("beh"), "per_route": False})
    assert [h.get("/fail").status_code for _ in range(2)] == [500, 500]
    assert h.get("/items/1").status_code == 503  # open
    r = h.get("/metrics")
    assert r.status_code == 200  # scraped while the breaker is open, and not refused
    rejections = samples(registry, "kitmw_breaker_rejections_total")
    assert list(rejections.values()) == [1.0]  # /items/1 only


def test_status_codes_outside_100_599_share_one_label(h: Harness, registry: CollectorRegistry) -> None:
    h.build(metrics={"registry": registry})
    for code in (999, 600, 777, 999):
        assert h.get(f"/status/{code}").status_code == code
    h.get("/status/418")
    statuses = {dict(k)["status"]: v for k, v in samples(registry, "http_server_requests_total").items()}
    assert statuses == {"other": 4.0, "418": 1.0}


# -- tracing ---------------------------------------------------------------------------


def test_one_server_span_named_by_route_and_parented_by_traceparent(h: Harness, spans: Any) -> None:
    provider, exporter = spans
    h.build(tracing={"tracer_provider": provider})
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    h.get("/items/5", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    (span,) = exporter.get_finished_spans()
    assert span.name == f"GET {h.item_route}"
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == "00f067aa0ba902b7"


def test_access_record_carries_the_trace_id(h: Harness, spans: Any, records: Records) -> None:
    provider, exporter = spans
    h.build(tracing={"tracer_provider": provider}, access_log=True)
    h.get("/items/5")
    (span,) = exporter.get_finished_spans()
    (access,) = records.named("kitmw.access")
    assert access.trace_id == format(span.context.trace_id, "032x")  # type: ignore[attr-defined]


# -- early answers ---------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(h: Harness) -> None:
    h.build(access_log=True, ratelimit={"limit": "2/minute", "namespace": unique("beh")})
    statuses = [h.get("/items/1").status_code for _ in range(3)]
    r = h.get("/items/1")
    assert statuses == [200, 200, 429]
    assert r.status_code == 429 and r.json() == {"error": "rate_limited"}
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["x-request-id"]  # added by an outer policy, carried by the answer


def test_rejections_are_counted_in_metrics(h: Harness, registry: CollectorRegistry) -> None:
    h.build(metrics={"registry": registry}, ratelimit={"limit": "1/minute", "namespace": unique("beh")})
    h.get("/items/1")
    h.get("/items/2")
    assert count(registry, h.item_route, "200") == 1
    assert count(registry, h.item_route, "429") == 1


def _auth(h: Harness) -> None:
    from kitmw.auth import APIKey

    backend = APIKey(keys={"key-alice": "alice", "key-bob": "bob"}, scopes={"alice": ["admin"]})
    h.build(auth={"backend": backend, "scopes": {"/admin": ["admin"]}})


def test_missing_credentials_get_401_with_a_challenge(h: Harness) -> None:
    _auth(h)
    r = h.get("/items/1")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert "www-authenticate" in r.headers


def test_missing_scope_gets_403_and_granted_scope_passes(h: Harness) -> None:
    _auth(h)
    denied = h.get("/admin", headers={"X-API-Key": "key-bob"})
    allowed = h.get("/admin", headers={"X-API-Key": "key-alice"})
    assert denied.status_code == 403 and denied.json()["error"] == "forbidden"
    assert allowed.status_code == 200 and allowed.text == "admin"


def test_open_breaker_answers_503_on_its_route_only(h: Harness) -> None:
    h.build(breaker={"fail_max": 2, "reset_timeout": 600, "name": unique("beh")})
    assert [h.get("/fail").status_code for _ in range(2)] == [500, 500]
    r = h.get("/fail")
    assert r.status_code == 503 and r.json() == {"error": "circuit_open"}
    assert int(r.headers["retry-after"]) >= 1
    assert h.get("/items/1").status_code == 200  # one breaker per route


def test_service_wide_breaker_answers_503_everywhere(h: Harness) -> None:
    h.build(breaker={"fail_max": 2, "reset_timeout": 600, "name": unique("beh"), "per_route": False})
    assert [h.get("/fail").status_code for _ in range(2)] == [500, 500]
    r = h.get("/items/1")
    assert r.status_code == 503 and r.json() == {"error": "circuit_open"}


# -- errors and streaming --------------------------------------------------------------


def test_app_exception_is_reraised_unchanged_and_recorded(
    h: Harness, registry: CollectorRegistry, records: Records
) -> None:
    h.build(access_log=True, metrics={"registry": registry})
    with pytest.raises(RuntimeError) as info:
        h.get("/boom")
    assert h.service.raised == [info.value]
    assert count(registry, "/boom", "500") == 1
    (access,) = records.named("kitmw.access")
    assert access.levelno == logging.ERROR
    assert access.__dict__["error"] == "RuntimeError"


def test_streaming_response_is_not_buffered(h: Harness, registry: CollectorRegistry) -> None:
    h.build(access_log=True, metrics={"registry": registry})
    with h.serve() as url, httpx.stream("GET", url + "/stream", timeout=15) as r:
        chunks = r.iter_raw()
        first = next(chunks)
        h.service.gate.set()  # only now may the generator finish
        rest = b"".join(chunks)
    assert first + rest == b"first\nsecond\n" and first.startswith(b"first")
    assert h.service.released == [True]  # the first chunk arrived while the generator waited


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
