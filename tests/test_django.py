"""kitmw.django: the middleware in settings.MIDDLEWARE, configured by settings.KITMW.

Each test configures Django as a project does (``override_settings(MIDDLEWARE=...,
KITMW=...)``), builds Django's own WSGI or ASGI handler (``get_wsgi_application()`` /
``get_asgi_application()``, so Django loads the middleware as it does in production)
and serves it with a real server on loopback: werkzeug's threaded server for WSGI,
uvicorn for ASGI. Most tests run in both modes (the ``mode`` fixture). This module is
also the URLconf of those projects (its ``urlpatterns``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import django
import django_project
import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kitmw
import kitmw.auth
import kitmw.logging

django_project.setup()

from django.http import (  # noqa: E402  (settings first)
    FileResponse,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import include, path, re_path  # noqa: E402

URLCONF = __name__
log = logging.getLogger("tests.django")

# -- the project's views ----------------------------------------------------------------------

#: Events the views wait on, by the ``gate`` query parameter (set by the test).
GATES: dict[str, threading.Event] = {}
#: What views saw, by the ``probe`` query parameter.
SEEN: dict[str, Any] = {}


def item(request: Any, pk: int) -> HttpResponse:
    log.info("item %s", pk)
    return HttpResponse(f"item {pk}", content_type="text/plain")


async def aitem(request: Any, pk: int) -> HttpResponse:
    log.info("aitem %s", pk)
    return HttpResponse(f"aitem {pk}", content_type="text/plain")


def boom(request: Any) -> HttpResponse:
    raise RuntimeError("boom")


def status(request: Any, code: int) -> HttpResponse:
    return HttpResponse(b"x" * 3, status=code)


def whoami(request: Any) -> JsonResponse:
    from kitmw.django import principal

    found = principal(request)
    return JsonResponse(
        {
            "principal": getattr(request.kitmw_principal, "identity", None),
            "helper": None if found is None else found.identity,
            "scopes": sorted(found.scopes) if found is not None else [],
            "remote_user": request.META.get("REMOTE_USER"),
            "has_user": hasattr(request, "user"),
        }
    )


def stream(request: Any) -> StreamingHttpResponse:
    gate = GATES.get(request.GET.get("gate", ""))

    def body() -> Iterator[bytes]:
        log.info("streaming first")
        yield b"first\n"
        if gate is not None:
            gate.wait(timeout=10)
        log.info("streaming second")
        yield b"second\n"

    return StreamingHttpResponse(body(), content_type="text/plain")


def astream(request: Any) -> StreamingHttpResponse:
    gate = GATES.get(request.GET.get("gate", ""))

    async def body() -> AsyncIterator[bytes]:
        log.info("astreaming first")
        yield b"first\n"
        if gate is not None:
            for _ in range(1000):
                if gate.is_set():
                    break
                await asyncio.sleep(0.01)
        log.info("astreaming second")
        yield b"second\n"

    return StreamingHttpResponse(body(), content_type="text/plain")


def stream_fails(request: Any) -> StreamingHttpResponse:
    def body() -> Iterator[bytes]:
        yield b"partial\n"
        raise RuntimeError("mid-stream")

    return StreamingHttpResponse(body(), content_type="text/plain")


def file(request: Any) -> FileResponse:
    return FileResponse(open(__file__, "rb"), content_type="text/plain")


def wait(request: Any) -> HttpResponse:
    """Blocks until its gate opens (a request holding a concurrency slot)."""
    GATES[request.GET["gate"]].wait(timeout=10)
    return HttpResponse("done")


async def asleep(request: Any) -> HttpResponse:
    await asyncio.sleep(float(request.GET.get("s", "0")))
    return HttpResponse("slept")


def sleep(request: Any) -> HttpResponse:
    time.sleep(float(request.GET.get("s", "0")))
    return HttpResponse("slept")


def echo(request: Any) -> HttpResponse:
    return HttpResponse(request.body)


def cache_id(request: Any) -> HttpResponse:
    from django.core.cache import caches

    return HttpResponse(str(id(caches["default"])))


def traced(request: Any) -> HttpResponse:
    from opentelemetry import trace

    with trace.get_tracer("tests").start_as_current_span("inside-the-view"):
        return HttpResponse("traced")


def sync_only(get_response: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A middleware as many are written: sync only (Django's default for a function)."""

    def middleware(request: Any) -> Any:
        return get_response(request)

    return middleware


urlpatterns = [
    path("items/<int:pk>", item),
    path("aitems/<int:pk>", aitem),
    path("boom", boom),
    path("status/<int:code>", status),
    path("whoami", whoami),
    path("admin/whoami", whoami),
    path("stream", stream),
    path("astream", astream),
    path("stream-fails", stream_fails),
    path("file", file),
    path("wait", wait),
    path("asleep", asleep),
    path("sleep", sleep),
    path("echo", echo),
    path("cache-id", cache_id),
    path("traced", traced),
    path("health", item, {"pk": 0}),
    path("api/v1/", include([path("items/<int:pk>", item)])),
    re_path(r"^articles/(?P<pk>[0-9]{4})/$", item),
]

MIDDLEWARE = "kitmw.django.Middleware"


# -- serving the project ---------------------------------------------------------------------


@contextlib.contextmanager
def project(kitmw_settings: Any = None, *, middleware: list[str] | None = None, **more: Any) -> Iterator[None]:
    """Django configured as a project that adopted kitmw: MIDDLEWARE and KITMW."""
    from django.test.utils import override_settings

    options: dict[str, Any] = {"MIDDLEWARE": [MIDDLEWARE] if middleware is None else middleware}
    if kitmw_settings is not None:
        options["KITMW"] = kitmw_settings
    with override_settings(ROOT_URLCONF=URLCONF, ALLOWED_HOSTS=["*"], **options, **more):
        yield


def handler(mode: str) -> Any:
    """Django's own handler for ``mode``, loading the middleware from the settings."""
    if mode == "wsgi":
        from django.core.wsgi import get_wsgi_application

        return get_wsgi_application()
    from django.core.asgi import get_asgi_application

    return get_asgi_application()


@pytest.fixture(params=["wsgi", "asgi"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def serve(mode: str, serve_wsgi: Any, serve_asgi: Any) -> Callable[..., Any]:
    """``with serve(KITMW) as url:`` the project on a real server of the mode."""

    @contextlib.contextmanager
    def run(kitmw_settings: Any, **settings: Any) -> Iterator[str]:
        with project(kitmw_settings, **settings):
            app = handler(mode)
            server = serve_wsgi(app) if mode == "wsgi" else serve_asgi(app, lifespan="off")
            with server:
                yield server.url

    return run


class Records(logging.Handler):
    """The records of a logger (and of its children) while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(kitmw.logging.ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def of(self, name: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.name == name]


@pytest.fixture
def records() -> Iterator[Records]:
    """Records of kitmw's access log, the views' logger and django.request, as they reach
    the root logger (Django's logging setup resets the handlers of its own loggers)."""
    handler = Records()
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("kitmw.access", "tests.django")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.INFO)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == name:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


def requests_total(registry: CollectorRegistry, route: str, status: str, method: str = "GET") -> float:
    key = (("method", method), ("route", route), ("status", status))
    return samples(registry, "http_server_requests_total").get(key, 0.0)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll for what another thread finishes (the end of an exchange after the response)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


# -- the concerns, from settings --------------------------------------------------------------


def test_metrics_are_labelled_with_the_pattern_django_matched(
    serve: Any, registry: CollectorRegistry
) -> None:
    with serve({"metrics": {"registry": registry}}) as url, httpx.Client(base_url=url, timeout=10) as c:
        assert c.get("/items/1").text == "item 1"
        assert c.get("/api/v1/items/2").text == "item 2"
        assert c.get("/articles/2024/").text == "item 2024"
        assert c.get("/nowhere/3").status_code == 404
        assert c.get("/items/x").status_code == 404
    assert requests_total(registry, "/items/<int:pk>", "200") == 1
    assert requests_total(registry, "/api/v1/items/<int:pk>", "200") == 1
    assert requests_total(registry, "/articles/(?P<pk>[0-9]{4})/", "200") == 1
    assert requests_total(registry, "<unmatched>", "404") == 2


def test_metrics_path_serves_the_exposition(serve: Any, registry: CollectorRegistry) -> None:
    with serve({"metrics": {"registry": registry}}) as url, httpx.Client(base_url=url, timeout=10) as c:
        c.get("/items/1")
        exposition = c.get("/metrics")
        openmetrics = c.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert exposition.status_code == 200
    assert exposition.headers["content-type"].startswith("text/plain")
    assert 'http_server_requests_total{method="GET",route="/items/<int:pk>",status="200"} 1.0' in exposition.text
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert requests_total(registry, "/metrics", "200") == 0  # a scrape is not counted


def test_request_id_is_echoed_and_on_the_access_log_and_the_views_records(
    serve: Any, records: Records
) -> None:
    with serve({"access_log": True}) as url:
        response = httpx.get(url + "/items/4", headers={"X-Request-ID": "dj-native-1"}, timeout=10)
        generated = httpx.get(url + "/aitems/5", timeout=10)
    assert response.headers["x-request-id"] == "dj-native-1"
    access = records.of("kitmw.access")
    assert [(r.path, r.route, r.status, r.request_id) for r in access] == [
        ("/items/4", "/items/<int:pk>", 200, "dj-native-1"),
        ("/aitems/5", "/aitems/<int:pk>", 200, generated.headers["x-request-id"]),
    ]
    views = records.of("tests.django")
    assert [(r.getMessage(), r.request_id) for r in views] == [  # type: ignore[attr-defined]
        ("item 4", "dj-native-1"),
        ("aitem 5", generated.headers["x-request-id"]),
    ]


def test_djangos_own_record_of_an_error_answer_carries_the_request_id(serve: Any, records: Records) -> None:
    with serve({"access_log": True}) as url:
        httpx.get(url + "/nowhere", headers={"X-Request-ID": "dj-404"}, timeout=10)
        httpx.get(url + "/status/418", headers={"X-Request-ID": "dj-418"}, timeout=10)
    django = records.of("django.request")
    assert [(r.getMessage(), r.request_id) for r in django] == [  # type: ignore[attr-defined]
        ("Not Found: /nowhere", "dj-404"),
        ("I'm a Teapot: /status/418", "dj-418"),
    ]


def test_rate_limit_answers_429_with_its_headers_and_json_body(serve: Any, registry: CollectorRegistry) -> None:
    kitmw_settings = {"metrics": {"registry": registry}, "ratelimit": "2/minute", "access_log": True}
    with serve(kitmw_settings) as url, httpx.Client(base_url=url, timeout=10) as c:
        statuses = [c.get("/items/1") for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    refused = statuses[2]
    assert refused.json() == {"error": "rate_limited"}
    assert refused.headers["content-type"] == "application/json"
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["ratelimit-policy"] == '"default";q=2;w=60'
    assert refused.headers["x-request-id"]  # the access log's header, on kitmw's own answer too
    assert statuses[0].headers["ratelimit"] == '"default";r=1;t=60'
    assert requests_total(registry, "/items/<int:pk>", "429") == 1


def test_auth_refuses_401_and_403_and_publishes_the_principal(serve: Any) -> None:
    backend = kitmw.auth.APIKey(keys={"k-ops": "ops", "k-reader": "reader"}, scopes={"ops": ["admin"]})
    kitmw_settings = {"auth": {"backend": backend, "scopes": {"/admin": ["admin"]}}}
    with serve(kitmw_settings) as url, httpx.Client(base_url=url, timeout=10) as c:
        missing = c.get("/whoami")
        wrong = c.get("/whoami", headers={"X-API-Key": "nope"})
        forbidden = c.get("/admin/whoami", headers={"X-API-Key": "k-reader"})
        reader = c.get("/whoami", headers={"X-API-Key": "k-reader"})
        ops = c.get("/admin/whoami", headers={"X-API-Key": "k-ops"})
    assert (missing.status_code, missing.json()) == (401, {"error": "unauthorized"})
    assert missing.headers["www-authenticate"] == 'APIKey realm="kitmw", header="X-API-Key"'
    assert wrong.status_code == 401
    assert (forbidden.status_code, forbidden.json()) == (403, {"error": "forbidden"})
    assert reader.json() == {
        "principal": "reader",
        "helper": "reader",
        "scopes": [],
        "remote_user": "reader",
        "has_user": False,  # request.user stays Django's (no AuthenticationMiddleware here)
    }
    assert ops.json()["principal"] == "ops" and ops.json()["scopes"] == ["admin"]


def test_optional_auth_lets_anonymous_requests_through_without_a_principal(serve: Any) -> None:
    backend = kitmw.auth.APIKey(keys={"k-reader": "reader"})
    with serve({"auth": {"backend": backend, "optional": True}}) as url:
        anonymous = httpx.get(url + "/whoami", timeout=10)
    assert anonymous.json() == {
        "principal": None,
        "helper": None,
        "scopes": [],
        "remote_user": None,
        "has_user": False,
    }


def test_metrics_path_is_guarded_by_auth_like_any_path(serve: Any, registry: CollectorRegistry) -> None:
    backend = kitmw.auth.APIKey(keys={"k-prom": "prometheus"})
    kitmw_settings = {"metrics": {"registry": registry}, "auth": backend}
    with serve(kitmw_settings) as url, httpx.Client(base_url=url, timeout=10) as c:
        refused = c.get("/metrics")
        scraped = c.get("/metrics", headers={"X-API-Key": "k-prom"})
    assert refused.status_code == 401
    assert scraped.status_code == 200 and "http_server_requests_total" in scraped.text


def test_breaker_opens_on_the_failing_route_only(serve: Any, registry: CollectorRegistry) -> None:
    kitmw_settings = {"metrics": {"registry": registry}, "breaker": {"fail_max": 2, "reset_timeout": 60}}
    with serve(kitmw_settings) as url, httpx.Client(base_url=url, timeout=10) as c:
        failing = [c.get("/status/503") for _ in range(2)]
        healthy = c.get("/items/1")
        refused = c.get("/status/503")
    assert [r.content for r in failing] == [b"xxx", b"xxx"]  # the view's own 503s
    assert healthy.status_code == 200
    assert refused.json() == {"error": "circuit_open"} and int(refused.headers["retry-after"]) > 0
    open_ = {dict(k)["breaker"].partition(":")[2] for k, v in samples(registry, "kitmw_breaker_state").items()
             if dict(k)["state"] == "open" and v == 1}  # fmt: skip
    assert open_ == {"/status/<int:code>"}  # one breaker per route: /items/<int:pk> stays closed


def test_view_exception_is_recorded_as_the_error_of_djangos_500(
    serve: Any, records: Records, registry: CollectorRegistry
) -> None:
    kitmw_settings = {"access_log": True, "metrics": {"registry": registry}, "breaker": {"fail_max": 1}}
    with serve(kitmw_settings, DEBUG_PROPAGATE_EXCEPTIONS=False) as url:
        first = httpx.get(url + "/boom", headers={"X-Request-ID": "dj-boom"}, timeout=10)
        second = httpx.get(url + "/boom", timeout=10)
    assert first.status_code == 500 and first.headers["x-request-id"] == "dj-boom"
    assert second.status_code == 503  # one failure opened the route's breaker
    record = records.of("kitmw.access")[0]
    assert (record.status, record.route, record.levelname) == (500, "/boom", "ERROR")
    assert (record.error, record.error_message) == ("RuntimeError", "boom")
    djangos = records.of("django.request")[0]
    assert djangos.getMessage() == "Internal Server Error: /boom"
    assert djangos.request_id == "dj-boom"  # type: ignore[attr-defined]
    assert requests_total(registry, "/boom", "500") == 1


def test_http404_from_a_view_is_no_error(serve: Any, records: Records) -> None:
    with serve({"access_log": True}) as url:
        assert httpx.get(url + "/items/x", timeout=10).status_code == 404
    record = records.of("kitmw.access")[0]
    assert record.status == 404 and record.error is None


def test_excluded_paths_are_neither_logged_counted_nor_limited(
    serve: Any, records: Records, registry: CollectorRegistry
) -> None:
    kitmw_settings = {
        "access_log": True,
        "metrics": {"registry": registry},
        "ratelimit": "1/minute",
        "exclude_paths": ["/metrics", "/health"],
    }
    with serve(kitmw_settings) as url, httpx.Client(base_url=url, timeout=10) as c:
        health = [c.get("/health").status_code for _ in range(3)]
    assert health == [200, 200, 200]
    assert records.of("kitmw.access") == []
    assert requests_total(registry, "/health", "200") == 0


def test_concurrency_limit_refuses_past_its_slots(serve: Any, registry: CollectorRegistry) -> None:
    gate = "conc"
    GATES[gate] = threading.Event()
    kitmw_settings = {"metrics": {"registry": registry}, "concurrency": 1}
    try:
        with serve(kitmw_settings) as url, httpx.Client(base_url=url, timeout=10) as c:
            holder = threading.Thread(target=c.get, args=(f"/wait?gate={gate}",))
            holder.start()
            wait_until(lambda: samples(registry, "kitmw_concurrency_in_flight").get(
                (("scope", "<all>"), ("side", "server")), 0.0) == 1)  # fmt: skip
            refused = httpx.get(url + "/items/1", timeout=10)
            GATES[gate].set()
            holder.join(timeout=10)
            after = httpx.get(url + "/items/1", timeout=10)
    finally:
        GATES.pop(gate).set()
    assert (refused.status_code, refused.json()) == (503, {"error": "concurrency_limited"})
    assert after.status_code == 200


def test_timeout_answers_504_under_asgi_and_counts_under_wsgi(
    mode: str, serve: Any, registry: CollectorRegistry
) -> None:
    kitmw_settings = {"metrics": {"registry": registry}, "timeout": 0.2}
    view = "/asleep?s=5" if mode == "asgi" else "/sleep?s=0.4"
    with serve(kitmw_settings) as url:
        response = httpx.get(url + view, timeout=10)
        wait_until(lambda: sum(samples(registry, "kitmw_timeouts_total").values()) == 1)
    if mode == "asgi":  # the view is cancelled at its deadline
        assert (response.status_code, response.json()) == (504, {"error": "timeout"})
    else:  # WSGI cannot cut a running view: the late answer is counted
        assert response.status_code == 200


def test_tracing_gives_one_server_span_named_by_the_pattern_with_the_views_spans_inside(
    serve: Any, spans: Any
) -> None:
    provider, exporter = spans
    parent_trace = "0af7651916cd43dd8448eb211c80319c"
    with serve({"tracing": {"tracer_provider": provider}, "access_log": True}) as url:
        response = httpx.get(
            url + "/items/7",
            headers={"traceparent": f"00-{parent_trace}-b7ad6b7169203331-01"},
            timeout=10,
        )
        assert response.status_code == 200
        wait_until(lambda: len(exporter.get_finished_spans()) == 1)
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /items/<int:pk>"
    assert span.kind.name == "SERVER"
    assert span.attributes["http.route"] == "/items/<int:pk>"
    assert f"{span.context.trace_id:032x}" == parent_trace
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "b7ad6b7169203331"


def test_tracing_captures_the_views_response_headers_and_the_request_headers(serve: Any, spans: Any) -> None:
    provider, exporter = spans
    tracing = {
        "tracer_provider": provider,
        "capture_request_headers": ["x-probe"],
        "capture_response_headers": ["content-type", "x-request-id"],
    }
    with serve({"tracing": tracing, "access_log": True}) as url:
        response = httpx.get(url + "/items/7", headers={"x-probe": "p1"}, timeout=10)
        assert response.status_code == 200
        wait_until(lambda: len(exporter.get_finished_spans()) == 1)
    (span,) = exporter.get_finished_spans()
    assert span.attributes["http.request.header.x_probe"] == ("p1",)
    assert span.attributes["http.response.header.content_type"] == ("text/plain",)
    # a header a policy added (the access log's request id) is captured too
    assert span.attributes["http.response.header.x_request_id"] == (response.headers["x-request-id"],)


def test_a_span_the_view_starts_is_a_child_of_the_server_span(serve: Any, spans: Any) -> None:
    provider, exporter = spans
    from opentelemetry import trace

    previous = trace._TRACER_PROVIDER  # the view uses the global API, as views do
    trace._TRACER_PROVIDER = provider
    try:
        with serve({"tracing": {"tracer_provider": provider}}) as url:
            assert httpx.get(url + "/traced", timeout=10).text == "traced"
            wait_until(lambda: len(exporter.get_finished_spans()) == 2)
    finally:
        trace._TRACER_PROVIDER = previous
    inner, server = exporter.get_finished_spans()
    assert (inner.name, server.name) == ("inside-the-view", "GET /traced")
    assert inner.parent is not None and inner.parent.span_id == server.context.span_id


# -- streaming bodies ------------------------------------------------------------------------


@pytest.mark.parametrize("view", ["/stream", "/astream"])
def test_streaming_response_is_not_buffered_and_ends_the_exchange_at_its_last_chunk(
    view: str, mode: str, serve: Any, records: Records, registry: CollectorRegistry
) -> None:
    if (mode, view) in (("asgi", "/stream"), ("wsgi", "/astream")):
        pytest.skip("Django consumes an iterator of the other kind whole before sending it (and warns)")
    gate = f"stream-{mode}-{view}"
    GATES[gate] = threading.Event()
    kitmw_settings = {"access_log": True, "metrics": {"registry": registry}}
    try:
        with (
            serve(kitmw_settings) as url,
            httpx.stream("GET", f"{url}{view}?gate={gate}", headers={"X-Request-ID": "dj-s"}, timeout=15) as r,
        ):
            chunks = r.iter_raw()
            first = next(chunks)
            assert records.of("kitmw.access") == []  # the exchange is not over
            GATES[gate].set()
            rest = b"".join(chunks)
            wait_until(lambda: len(records.of("kitmw.access")) == 1)
    finally:
        GATES.pop(gate).set()
    assert first + rest == b"first\nsecond\n"
    (access,) = records.of("kitmw.access")
    assert (access.status, access.bytes_out, access.request_id) == (200, 13, "dj-s")
    assert access.duration_ms > 0
    # the body's own records carry the request id too
    body_records = [r for r in records.of("tests.django") if "streaming" in r.getMessage()]
    assert [r.request_id for r in body_records] == ["dj-s", "dj-s"]  # type: ignore[attr-defined]
    sizes = samples(registry, "http_server_response_size_bytes_sum")
    assert sizes[(("method", "GET"), ("route", view), ("status", "200"))] == 13


#: Django's ASGI handler stops a streaming response whose client went away from 5.0 on
#: (before, it streams to the end and the exchange ends with it).
STOPS_ON_DISCONNECT = django.VERSION >= (5, 0)


@pytest.mark.skipif(not STOPS_ON_DISCONNECT, reason="Django < 5.0 streams on after the client left")
def test_a_client_gone_mid_stream_is_recorded_as_499_under_asgi_without_context_errors(
    serve_asgi: Any, records: Records, spans: Any
) -> None:
    """The exchange ends where Django stops streaming (a cancelled task, then close()
    in a worker thread): the trace context is still detached where it was attached."""
    provider, exporter = spans
    gate = "gone"
    GATES[gate] = threading.Event()
    kitmw_settings = {"access_log": True, "tracing": {"tracer_provider": provider}}
    try:
        with project(kitmw_settings), serve_asgi(handler("asgi"), lifespan="off") as server:
            with httpx.stream("GET", f"{server.url}/astream?gate={gate}", timeout=10) as r:
                next(r.iter_raw())
            wait_until(lambda: len(records.of("kitmw.access")) == 1)
    finally:
        GATES.pop(gate).set()
    (access,) = records.of("kitmw.access")
    assert access.status == 499 and access.bytes_out == len(b"first\n")
    assert [s.name for s in exporter.get_finished_spans()] == ["GET /astream"]
    assert [r for r in records.records if r.levelno >= logging.ERROR] == []  # no "Failed to detach context"


def test_an_exchange_finished_in_another_thread_resets_its_context_there(
    mode: str, serve: Any, records: Records, spans: Any
) -> None:
    """A streaming response under tracing: no context error, whichever thread ends it."""
    provider, exporter = spans
    with serve({"access_log": True, "tracing": {"tracer_provider": provider}}) as url:
        view = "/astream" if mode == "asgi" else "/stream"
        assert httpx.get(url + view, timeout=10).content == b"first\nsecond\n"
        assert httpx.get(url + "/file", timeout=10).status_code == 200
        wait_until(lambda: len(exporter.get_finished_spans()) == 2)
    assert [r for r in records.records if r.levelno >= logging.ERROR] == []


def test_a_body_that_fails_mid_stream_is_recorded(serve: Any, records: Records) -> None:
    with serve({"access_log": True}) as url, contextlib.suppress(httpx.HTTPError):
        httpx.get(url + "/stream-fails", timeout=10)
    wait_until(lambda: len(records.of("kitmw.access")) == 1)
    (access,) = records.of("kitmw.access")
    assert (access.error, access.error_message) == ("RuntimeError", "mid-stream")
    assert access.bytes_out == len(b"partial\n")


def test_file_response_is_counted(serve: Any, records: Records) -> None:
    size = Path(__file__).stat().st_size
    with serve({"access_log": True}) as url:
        response = httpx.get(url + "/file", timeout=10)
        wait_until(lambda: len(records.of("kitmw.access")) == 1)
    assert len(response.content) == size
    assert records.of("kitmw.access")[0].bytes_out == size


def test_file_response_keeps_the_wsgi_servers_file_wrapper(records: Records) -> None:
    """The server still sends the file itself (sendfile); the exchange ends in its close()."""
    from wsgiref.util import FileWrapper, setup_testing_defaults

    with project({"access_log": True}):
        app = handler("wsgi")
        environ: dict[str, Any] = {"PATH_INFO": "/file", "wsgi.file_wrapper": FileWrapper}
        setup_testing_defaults(environ)
        result = app(environ, lambda status, headers, exc_info=None: None)
        assert isinstance(result, FileWrapper)
        sent = b"".join(result)
        assert records.of("kitmw.access") == []
        result.close()
    (access,) = records.of("kitmw.access")
    assert access.bytes_out == len(sent) == Path(__file__).stat().st_size


# -- where the policies run --------------------------------------------------------------------


def test_under_asgi_the_middleware_is_async_and_the_request_never_leaves_the_loop(
    serve_asgi: Any, records: Records
) -> None:
    """No thread hop: Django sees a coroutine function, and every hook runs on the loop."""
    from asgiref.sync import iscoroutinefunction

    with project({"access_log": True}):
        app = handler("asgi")
        assert iscoroutinefunction(app._middleware_chain)
        with serve_asgi(app, lifespan="off") as server:
            httpx.get(server.url + "/aitems/1", timeout=10)
            loop_thread = server.thread.ident
    access, view = records.of("kitmw.access")[0], records.of("tests.django")[0]
    assert access.thread == view.thread == loop_thread


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume")
def test_under_asgi_with_a_sync_only_middleware_below_it_the_policies_still_run_in_their_context(
    serve_asgi: Any, records: Records, spans: Any
) -> None:
    """Django then runs kitmw in a worker thread (sync), and sends the body from its task."""
    provider, exporter = spans
    kitmw_settings = {"access_log": True, "tracing": {"tracer_provider": provider}}
    with project(kitmw_settings, middleware=[MIDDLEWARE, f"{URLCONF}.sync_only"]):
        app = handler("asgi")
        with serve_asgi(app, lifespan="off") as server, httpx.Client(base_url=server.url, timeout=10) as c:
            assert c.get("/items/2", headers={"X-Request-ID": "so-1"}).text == "item 2"
            assert c.get("/astream", headers={"X-Request-ID": "so-2"}).content == b"first\nsecond\n"
            assert c.get("/stream", headers={"X-Request-ID": "so-3"}).content == b"first\nsecond\n"
            wait_until(lambda: len(records.of("kitmw.access")) == 3)
    assert [(r.path, r.bytes_out, r.request_id) for r in records.of("kitmw.access")] == [
        ("/items/2", 6, "so-1"),
        ("/astream", 13, "so-2"),
        ("/stream", 13, "so-3"),
    ]
    assert [r.request_id for r in records.of("tests.django")] == ["so-1", "so-2", "so-2", "so-3", "so-3"]  # type: ignore[attr-defined]
    assert sorted(s.name for s in exporter.get_finished_spans()) == ["GET /astream", "GET /items/<int:pk>", "GET /stream"]
    assert [r for r in records.records if r.levelno >= logging.ERROR] == []


def test_the_middleware_runs_sync_under_wsgi() -> None:
    from asgiref.sync import iscoroutinefunction

    from kitmw.django import Middleware

    with project({"access_log": True}):
        sync = Middleware(lambda request: HttpResponse())

        async def get_response(request: Any) -> HttpResponse:
            return HttpResponse()

        assert not iscoroutinefunction(sync) and iscoroutinefunction(Middleware(get_response))
    assert Middleware.sync_capable and Middleware.async_capable


def test_request_context_does_not_leak_and_djangos_thread_state_stays(records: Records) -> None:
    """Under WSGI the views run in the server thread's own context: Django's per-thread
    state (cache connections) lives on from one request to the next, and nothing kitmw set
    stays behind once the response left."""
    with project({"access_log": True}):
        app = handler("wsgi")
        transport = httpx.WSGITransport(app=app)
        with httpx.Client(transport=transport, base_url="http://test") as c:
            ids = {c.get("/cache-id").text for _ in range(3)}
        assert kitmw.logging.current_request_id() is None
    assert len(ids) == 1


def test_the_request_body_size_is_counted(serve: Any, registry: CollectorRegistry) -> None:
    with serve({"metrics": {"registry": registry}}) as url:
        assert httpx.post(url + "/echo", content=b"0123456789", timeout=10).content == b"0123456789"
    sizes = samples(registry, "http_server_request_size_bytes_sum")
    assert sizes[(("method", "POST"), ("route", "/echo"), ("status", "200"))] == 10


# -- same output as the wrapping form ----------------------------------------------------------


def _observe(app: Any, mode: str, registry: CollectorRegistry, exporter: Any, serve_wsgi: Any, serve_asgi: Any) -> Any:
    handler_ = Records()
    access = logging.getLogger("kitmw.access")
    access.addHandler(handler_)
    access.setLevel(logging.INFO)
    try:
        server = serve_wsgi(app) if mode == "wsgi" else serve_asgi(app, lifespan="off")
        with server, httpx.Client(base_url=server.url, timeout=10) as c:
            for target in ("/items/3?q=1", "/boom", "/nowhere"):
                c.get(target, headers={"X-Request-ID": "same", "User-Agent": "parity"})
            wait_until(lambda: len(handler_.records) == 3)
    finally:
        access.removeHandler(handler_)
    ignored = {"duration_ms", "trace_id", "span_id", "client_port", "error", "error_message"}
    logged = [
        {k: v for k, v in vars(r).items() if k in kitmw.logging.ACCESS_FIELDS and k not in ignored}
        for r in handler_.records
    ]
    metric_names = (
        "http_server_requests_total",
        "http_server_response_size_bytes_sum",
        "http_server_request_duration_seconds_count",
    )
    metrics = {name: samples(registry, name) for name in metric_names}
    # the two servers listen on two ports; the native form also knows the view's exception
    skip = {"client.port", "net.peer.port", "server.port", "net.host.port", "error.type"}
    port = re.compile(r"(127\.0\.0\.1):\d+")
    traced = [
        (
            s.name,
            s.kind,
            s.status.status_code,
            {k: port.sub(r"\1:P", v) if isinstance(v, str) else v for k, v in s.attributes.items() if k not in skip},
        )
        for s in exporter.get_finished_spans()
    ]
    exporter.clear()
    return logged, metrics, traced


def test_records_metrics_and_spans_are_those_of_the_wrapping_form(
    mode: str, serve_wsgi: Any, serve_asgi: Any, spans: Any
) -> None:
    provider, exporter = spans
    seen = []
    for form in ("wrapping", "native"):
        registry = CollectorRegistry()
        options = {"access_log": True, "metrics": {"registry": registry}, "tracing": {"tracer_provider": provider}}
        if form == "wrapping":
            with project(None, middleware=[]):
                app = kitmw.stack(handler(mode), **options)
                seen.append(_observe(app, mode, registry, exporter, serve_wsgi, serve_asgi))
        else:
            with project(options):
                seen.append(_observe(handler(mode), mode, registry, exporter, serve_wsgi, serve_asgi))
    wrapping, native = seen
    assert native[0] == wrapping[0]  # access-log records, field by field
    assert native[1] == wrapping[1]  # metric samples
    assert native[2] == wrapping[2]  # spans: name, kind, status, attributes


def test_inside_a_wrapping_layer_the_middleware_joins_its_exchange(
    mode: str, serve_wsgi: Any, serve_asgi: Any, records: Records, registry: CollectorRegistry
) -> None:
    """kitmw.stack() around Django and the middleware inside: one exchange, one record,
    one count, one request id; the middleware's own concerns (auth here) still apply."""
    backend = kitmw.auth.APIKey(keys={"k": "reader"})
    inner = {"access_log": True, "metrics": {"registry": registry}, "auth": backend}
    with project(inner):
        app = kitmw.stack(handler(mode), access_log=True, metrics={"registry": registry})
        server = serve_wsgi(app) if mode == "wsgi" else serve_asgi(app, lifespan="off")
        with server, httpx.Client(base_url=server.url, timeout=10) as c:
            refused = c.get("/whoami", headers={"X-Request-ID": "j-1"})
            allowed = c.get("/whoami", headers={"X-API-Key": "k", "X-Request-ID": "j-2"})
            streamed = c.get("/astream" if mode == "asgi" else "/stream", headers={"X-API-Key": "k"})
            wait_until(lambda: len(records.of("kitmw.access")) == 3)
    assert refused.status_code == 401 and allowed.json()["principal"] == "reader"
    assert streamed.content == b"first\nsecond\n"
    assert [r.headers.get_list("x-request-id") for r in (refused, allowed)] == [["j-1"], ["j-2"]]
    assert [(r.status, r.principal, r.bytes_out) for r in records.of("kitmw.access")] == [
        (401, None, len(refused.content)),
        (200, "reader", len(allowed.content)),
        (200, "reader", 13),
    ]
    assert requests_total(registry, "/whoami", "401") == requests_total(registry, "/whoami", "200") == 1
    sizes = samples(registry, "http_server_response_size_bytes_sum")
    assert sizes[(("method", "GET"), ("route", "/whoami"), ("status", "200"))] == len(allowed.content)


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kitmw_settings", "message"),
    [
        pytest.param({"metrcs": True}, "settings.KITMW: unknown concern(s): metrcs; did you mean 'metrics'?", id="concern"),
        pytest.param(
            {"ratelimit": {"limt": "1/second"}},
            "settings.KITMW: ratelimit: unknown option 'limt'; did you mean 'limit'?",
            id="option",
        ),
        pytest.param({"ratelimit": "100/minnute"}, "settings.KITMW: ratelimit: limit:", id="value"),
        pytest.param({"retry": 3}, "settings.KITMW: retry: not available on the server side", id="client-only"),
        pytest.param({"protocol": "asgi"}, "settings.KITMW: protocol: not a Django option", id="stack-only"),
        pytest.param(["metrics"], "settings.KITMW: expected a dict of kitmw.stack() options", id="not-a-dict"),
    ],
)
def test_a_misconfigured_kitmw_stops_django_naming_the_option(kitmw_settings: Any, message: str) -> None:
    from django.core.exceptions import ImproperlyConfigured

    with project(kitmw_settings), pytest.raises(ImproperlyConfigured) as raised:
        handler("wsgi")
    assert str(raised.value).startswith(message), str(raised.value)
    assert isinstance(raised.value.__cause__, kitmw.ConfigError)


@pytest.mark.parametrize("kitmw_settings", [None, {}, {"metrics": False}])
def test_a_kitmw_enabling_nothing_leaves_the_middleware_out(kitmw_settings: Any) -> None:
    with project(kitmw_settings):
        app = handler("wsgi")
        transport = httpx.WSGITransport(app=app)
        with httpx.Client(transport=transport, base_url="http://test") as c:
            response = c.get("/items/1")
    assert response.status_code == 200 and "x-request-id" not in response.headers


def _check(**settings: Any) -> list[Any]:
    from kitmw.django.checks import check_settings

    with project(**settings):
        return check_settings()


def test_check_reports_a_misconfigured_kitmw_with_the_options_name() -> None:
    (error,) = _check(kitmw_settings={"ratelimit": {"limt": "1/second"}})
    assert error.id == "kitmw.E001" and error.level >= 40
    assert error.msg.startswith("settings.KITMW: ratelimit: unknown option 'limt'; did you mean 'limit'?")


def test_check_is_silent_for_a_good_configuration() -> None:
    assert _check(kitmw_settings={"metrics": True}) == []


def test_check_warns_when_the_middleware_is_missing_not_first_or_idle() -> None:
    (missing,) = _check(kitmw_settings={"metrics": True}, middleware=[])
    assert missing.id == "kitmw.W001"
    (late,) = _check(
        kitmw_settings={"metrics": True},
        middleware=["django.middleware.common.CommonMiddleware", MIDDLEWARE],
    )
    assert late.id == "kitmw.W002" and "django.middleware.common.CommonMiddleware" in late.msg
    (idle,) = _check(kitmw_settings=None)
    assert idle.id == "kitmw.W003"


def test_check_knows_the_middleware_by_its_module_path_too() -> None:
    """``kitmw.django.middleware.Middleware`` is the same class: listed that way, it is
    neither missing (W001) nor out of place (W002)."""
    assert _check(kitmw_settings={"metrics": True}, middleware=["kitmw.django.middleware.Middleware"]) == []
    (late,) = _check(
        kitmw_settings={"metrics": True},
        middleware=["django.middleware.common.CommonMiddleware", "kitmw.django.middleware.Middleware"],
    )
    assert late.id == "kitmw.W002"


def test_manage_py_check_runs_kitmws_check_when_the_app_is_installed() -> None:
    """``"kitmw.django"`` in INSTALLED_APPS: Django's check command reports KITMW."""
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    with project({"ratelimit": "100/minnute"}, INSTALLED_APPS=["kitmw.django"]), pytest.raises(
        SystemCheckError
    ) as raised:
        call_command("check")
    assert "(kitmw.E001) settings.KITMW: ratelimit: limit:" in str(raised.value)


def test_the_settings_type_has_exactly_the_options_the_middleware_takes() -> None:
    """``KITMW: kitmw.django.Options``: stack()'s options (StackOptions) but those the
    middleware refuses, each of which it refuses naming it."""
    from django.core.exceptions import ImproperlyConfigured

    from kitmw.django import Options, _config
    from kitmw.stack import StackOptions

    left_out = set(StackOptions.__optional_keys__) - set(Options.__optional_keys__)
    assert left_out == set(_config._NOT_HERE) == {"protocol", "handle_errors"}
    assert set(Options.__optional_keys__) <= set(StackOptions.__optional_keys__)
    assert not Options.__required_keys__
    for name in left_out:
        with project({"metrics": True, name: None}), pytest.raises(ImproperlyConfigured, match=f"KITMW: {name}: "):
            handler("wsgi")
    with project({"metrics": True, "exclude_paths": ["/health"]}):
        handler("wsgi")  # the one layer option it keeps


#: A project's settings.py, annotated: ``# E: text`` marks a line mypy must reject with ``text``.
TYPED_SETTINGS = """
from __future__ import annotations

import kitmw.auth
from kitmw.django import Options

KITMW: Options = {
    "tracing": True,
    "access_log": {"request_id_header": "X-Request-ID"},
    "metrics": {"buckets": [0.1, 1.0]},
    "timeout": 2.0,
    "ratelimit": "100/minute",
    "auth": {"backend": kitmw.auth.APIKey(keys={"k": "ops"}), "optional": True},
    "concurrency": 64,
    "breaker": {"fail_max": 5},
    "exclude_paths": ["/metrics", "/health"],
}
MISSPELLED: Options = {"ratelimt": "100/minute"}  # E: Extra key "ratelimt" for TypedDict "Options"
WRONG: Options = {"breaker": {"fail_max": "5"}}  # E: Incompatible types
CLIENT_ONLY: Options = {"retry": 3}  # E: Extra key "retry" for TypedDict "Options"
NOT_HERE: Options = {"protocol": "asgi"}  # E: Extra key "protocol" for TypedDict "Options"
"""


def test_mypy_checks_an_annotated_kitmw_setting(tmp_path: Path) -> None:
    """Run as a user's project does it: mypy --strict on its settings.py, outside the repository."""
    import subprocess
    import sys

    (tmp_path / "settings.py").write_text(TYPED_SETTINGS)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--python-version", "3.10", "--cache-dir", "/dev/null", "settings.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors: dict[int, str] = {}
    for line in done.stdout.splitlines():
        found = re.match(r"^settings\.py:(\d+): error: (.*)$", line)
        if found:
            errors[int(found[1])] = errors.get(int(found[1]), "") + found[2]
    expected = {n: line.split("# E: ", 1)[1] for n, line in enumerate(TYPED_SETTINGS.splitlines(), 1) if "# E: " in line}
    assert set(errors) == set(expected), done.stdout
    for n, text in expected.items():
        assert text in errors[n], (n, errors[n])


# -- the documentation's settings ---------------------------------------------------------------


def _settings_blocks() -> list[dict[str, Any]]:
    """(MIDDLEWARE, KITMW) after each python block of docs/django.md that sets KITMW, the
    blocks run in page order in one namespace, as test_docs runs them."""
    from test_docs import DOCS, extract

    found = []
    ns: dict[str, Any] = {"__name__": "docs_settings"}
    for block in extract(DOCS / "django.md"):
        if "get_asgi_application" in block.source or "get_wsgi_application" in block.source:
            continue  # the wrapping form's entry points
        exec(compile(block.source, block.id, "exec"), ns)
        if re.search(r"^KITMW(: \w+)? = ", block.source, re.M):
            found.append({"MIDDLEWARE": ns["MIDDLEWARE"], "KITMW": ns["KITMW"]})
    return found


def test_docs_settings_blocks_configure_a_project_that_gets_every_concern(mode: str, serve: Any) -> None:
    blocks = _settings_blocks()
    assert blocks, "docs/django.md shows no KITMW"
    for ns in blocks:
        assert ns["MIDDLEWARE"][0] == MIDDLEWARE
        exclude = ns["KITMW"].get("exclude_paths", [])
        assert "/metrics" in exclude and "/health" in exclude
        with serve(ns["KITMW"], middleware=[m for m in ns["MIDDLEWARE"] if "kitmw" in m]) as url:
            response = httpx.get(url + "/items/1", timeout=10)
            assert response.status_code == 200, response.text
            assert response.headers["x-request-id"]


def test_principal_helper_reads_the_wrapping_forms_keys_too() -> None:
    from types import SimpleNamespace

    from kitmw.auth import Principal
    from kitmw.django import principal

    caller = Principal("svc", ["read"])
    assert principal(SimpleNamespace(META={"kitmw.user": caller})) is caller
    assert principal(SimpleNamespace(META={}, scope={"user": caller})) is caller
    assert principal(SimpleNamespace(META={"kitmw.user": None}, scope={"user": object()})) is None
    assert principal(SimpleNamespace(kitmw_principal=caller, META={})) is caller


def test_json_body_of_refusals_is_kitmws(serve: Any) -> None:
    with serve({"ratelimit": "1/minute"}) as url, httpx.Client(base_url=url, timeout=10) as c:
        c.get("/items/1")
        refused = c.get("/items/1")
    assert json.loads(refused.content) == {"error": "rate_limited"}
    assert refused.headers["content-length"] == str(len(refused.content))


REMOTE_USER_PROJECT = '''
import json, sys, asyncio
import django
from django.conf import settings
from django.http import JsonResponse
from django.urls import path
import kitmw.auth

def me(request):
    return JsonResponse({"user": request.user.get_username(), "authenticated": request.user.is_authenticated})

urlpatterns = [path("me", me)]
settings.configure(
    SECRET_KEY="tests", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, USE_TZ=True,
    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": sys.argv[1]}},
    MIDDLEWARE=[
        "kitmw.django.Middleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.auth.middleware.RemoteUserMiddleware",
    ],
    AUTHENTICATION_BACKENDS=["django.contrib.auth.backends.RemoteUserBackend"],
    KITMW={"auth": {"backend": kitmw.auth.APIKey(keys={"k-alice": "alice"}), "optional": True}},
)
django.setup()
from django.core.management import call_command
from django.contrib.auth.models import User
from django.test import AsyncClient, Client
call_command("migrate", verbosity=0)
seen = {
    "wsgi": Client().get("/me", HTTP_X_API_KEY="k-alice").json(),
    "anonymous": Client().get("/me").json(),
    "asgi": asyncio.run(AsyncClient().get("/me", headers={"X-API-Key": "k-alice"})).json(),
    "spoofed": asyncio.run(AsyncClient().get("/me", headers={"Remote-User": "mallory"})).json(),
    "users": list(User.objects.values_list("username", flat=True)),
}
print(json.dumps(seen))
'''


def test_remote_user_middleware_makes_the_kitmw_principal_djangos_user(tmp_path: Path) -> None:
    """Django's documented way for a caller authenticated in front of it: kitmw sets
    REMOTE_USER, RemoteUserMiddleware + RemoteUserBackend log that user into
    django.contrib.auth (created on first sight). A process of its own: its settings
    (auth, sessions, a database) differ from this module's project."""
    import subprocess
    import sys

    script = tmp_path / "remote_user_project.py"
    script.write_text(REMOTE_USER_PROJECT)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "db.sqlite3")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["wsgi"] == {"user": "alice", "authenticated": True}
    assert seen["asgi"] == {"user": "alice", "authenticated": True}
    assert seen["anonymous"] == {"user": "", "authenticated": False}
    # Django 5.2's async RemoteUserMiddleware reads the Remote-User request header: kitmw's
    # verdict replaces what a client sends there
    assert seen["spoofed"] == {"user": "", "authenticated": False}
    assert seen["users"] == ["alice"]


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume")
def test_policies_that_await_redis_run_on_the_loop_wherever_the_exchange_ends(
    serve_asgi: Any, records: Records, redis_url: str, registry: CollectorRegistry
) -> None:
    """A shared breaker and rate limit (Redis): awaited enters and exits, for an ordinary
    response, a streamed one and one whose client left mid-stream (ended in close(), in
    Django's worker thread, then run on the event loop)."""
    gate = "redis-gone"
    GATES[gate] = threading.Event()
    kitmw_settings = {
        "access_log": True,
        "metrics": {"registry": registry},
        "ratelimit": {"limit": "100/minute", "storage": redis_url},
        "breaker": {"storage": redis_url, "fail_max": 1},
    }
    try:
        with project(kitmw_settings), serve_asgi(handler("asgi"), lifespan="off") as server:
            with httpx.Client(base_url=server.url, timeout=10) as c:
                assert c.get("/items/1").status_code == 200
                assert c.get("/astream").content == b"first\nsecond\n"
                assert c.get("/stream").content == b"first\nsecond\n"  # ends in Django's worker thread
                assert c.get("/status/500").status_code == 500
                assert c.get("/status/500").json() == {"error": "circuit_open"}
            if STOPS_ON_DISCONNECT:
                with httpx.stream("GET", f"{server.url}/astream?gate={gate}", timeout=10) as r:
                    next(r.iter_raw())
            wait_until(lambda: len(records.of("kitmw.access")) == 5 + STOPS_ON_DISCONNECT)
    finally:
        GATES.pop(gate).set()
    assert [(r.path, r.status) for r in records.of("kitmw.access")] == [
        ("/items/1", 200),
        ("/astream", 200),
        ("/stream", 200),
        ("/status/500", 500),
        ("/status/500", 503),
        *([("/astream", 499)] if STOPS_ON_DISCONNECT else []),
    ]
    allowed = samples(registry, "kitmw_ratelimit_decisions_total")[(("decision", "allowed"), ("side", "server"))]
    assert allowed == 5 + STOPS_ON_DISCONNECT
    errors = [r for r in records.records if r.levelno >= logging.ERROR]
    assert [r for r in errors if r.name not in ("django.request", "kitmw.access")] == []


# -- no reference cycles per request (issue 16) ----------------------------------------------


def _environ(path: str) -> dict[str, Any]:
    import io

    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
    }


def _drive(app: Any, mode: str, path: str, n: int) -> None:
    if mode == "wsgi":
        for _ in range(n):
            body = app(_environ(path), lambda status, headers, exc_info=None: None)
            b"".join(body)
            body.close()
        return

    async def many() -> None:
        for _ in range(n):
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "root_path": "",
                "query_string": b"",
                "headers": [(b"host", b"testserver")],
                "client": ("127.0.0.1", 5000),
                "server": ("testserver", 80),
            }
            sent = False

            async def receive() -> dict[str, Any]:
                nonlocal sent
                if sent:  # the client stays: Django stops listening once it answered
                    await asyncio.Event().wait()
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                pass

            await app(scope, receive, send)

    asyncio.run(many())


def _cyclic_garbage_per_request(app: Any, mode: str, path: str, n: int = 30) -> float:
    import gc

    _drive(app, mode, path, 10)
    gc.collect()
    gc.disable()
    try:
        _drive(app, mode, path, n)
        return gc.collect() / n
    finally:
        gc.enable()


@pytest.mark.parametrize("path", ["/items/1", "/boom", "/nowhere"], ids=["ok", "view raises", "404"])
def test_the_middleware_leaves_no_cyclic_garbage(mode: str, path: str, registry: CollectorRegistry) -> None:
    """Every concern through the settings form: what a request leaves is freed by reference
    counting when it ends (the request held the run, which held the exchange, which held
    the request: 51 objects per request for the collector before)."""
    from opentelemetry.sdk.trace import TracerProvider

    every = {
        "access_log": True,
        "metrics": {"registry": registry},
        "tracing": {"tracer_provider": TracerProvider()},
        "breaker": {"registry": registry, "fail_max": 1_000_000},
        "ratelimit": {"limit": "1000000/minute", "registry": registry},
    }
    with project(middleware=[]):
        bare = _cyclic_garbage_per_request(handler(mode), mode, path)
    with project(every):
        with_kitmw = _cyclic_garbage_per_request(handler(mode), mode, path)
    if bare == 0:
        assert with_kitmw == 0, (mode, path, with_kitmw)
        return
    # Django leaves cyclic garbage of its own here (under ASGI: asgiref's and asyncio's; on
    # a 404 the Resolver404's traceback; on Python 3.10 asgiref.local's exceptions hold
    # the handler's frames): those frames hold the request, which held kitmw's run, so the
    # run and its exchange wait for the collector with Django's garbage. That is at most
    # what one request's run holds, never a cycle of kitmw's making (docs/django.md).
    assert with_kitmw <= bare + 40, (mode, path, bare, with_kitmw)
