"""Metrics: RED metrics with route templates, /metrics negotiation, registries, exemplars."""

from __future__ import annotations

import gzip
import sys
import time
from collections.abc import AsyncIterator, Callable
from time import perf_counter_ns
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

import kitmw
from kitmw.errors import ConfigError, Rejection
from kitmw.exchange import Exchange, Policy
from kitmw.metrics import ClientMetricsPolicy, MetricsPolicy, instruments
from kitmw.testing import NeutralClientExchange

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by (name, labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def samples(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def series(found: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in found if n == name]


def requests_total(found: Samples, route: str, status: str = "200", method: str = "GET") -> float | None:
    return value(found, "http_server_requests_total", method=method, route=route, status=status)


def client(app: Any, *, raise_app_exceptions: bool = False) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


# -- apps as users write them -----------------------------------------------------------


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    users = APIRouter(prefix="/api/v1")

    @users.get("/users/{uid}")
    async def get_user(uid: str) -> dict[str, str]:
        return {"uid": uid}

    app.include_router(users)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    return app


def starlette_app() -> Starlette:
    async def get_item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"]})

    async def get_user(request: Request) -> JSONResponse:
        return JSONResponse({"uid": request.path_params["uid"]})

    async def boom(request: Request) -> None:
        raise RuntimeError("boom")

    return Starlette(
        routes=[
            Route("/items/{item_id}", get_item),
            Mount("/api/v1", routes=[Route("/users/{uid}", get_user)]),
            Route("/boom", boom),
        ]
    )


def wrapped(make: Callable[[], Any], how: str, registry: CollectorRegistry, **options: Any) -> Any:
    app = make()
    if how == "wrap":
        return kitmw.Metrics(app, registry=registry, **options)
    app.add_middleware(kitmw.Metrics, registry=registry, **options)
    return app


APPS = [
    pytest.param(fastapi_app, "wrap", id="fastapi-wrap"),
    pytest.param(fastapi_app, "add_middleware", id="fastapi-add_middleware"),
    pytest.param(starlette_app, "wrap", id="starlette-wrap"),
    pytest.param(starlette_app, "add_middleware", id="starlette-add_middleware"),
]


class TracePolicyStub(Policy):
    """Stands in for tracing, which runs outside metrics and sets the trace id."""

    name = "trace-stub"

    def __init__(self, trace_id: str | None) -> None:
        self.trace_id = trace_id

    def enter(self, ex: Exchange) -> Rejection | None:
        ex.trace_id = self.trace_id
        return None


# -- the public contract --------------------------------------------------------------

CONTRACT = {
    "server_requests": ("counter", "http_server_requests", ("method", "route", "status")),
    "server_duration": ("histogram", "http_server_request_duration_seconds", ("method", "route", "status")),
    "server_in_progress": ("gauge", "http_server_requests_in_progress", ("method",)),
    "server_request_size": ("histogram", "http_server_request_size_bytes", ("method", "route", "status")),
    "server_response_size": ("histogram", "http_server_response_size_bytes", ("method", "route", "status")),
    "client_requests": ("counter", "http_client_requests", ("method", "host", "status")),
    "client_duration": ("histogram", "http_client_request_duration_seconds", ("method", "host", "status")),
    "client_retries": ("counter", "http_client_retries", ("method", "host")),
    "ratelimit_decisions": ("counter", "kitmw_ratelimit_decisions", ("side", "decision")),
    "storage_errors": ("counter", "kitmw_storage_errors", ("component",)),
    "breaker_state": ("gauge", "kitmw_breaker_state", ("breaker", "state")),
    "breaker_transitions": ("counter", "kitmw_breaker_transitions", ("breaker", "from_state", "to_state")),
    "breaker_rejections": ("counter", "kitmw_breaker_rejections", ("breaker",)),
}


@pytest.mark.parametrize("attr", sorted(CONTRACT))
def test_instrument_names_and_labels_are_the_documented_contract(
    registry: CollectorRegistry, attr: str
) -> None:
    kind, name, labels = CONTRACT[attr]
    metric = getattr(instruments(registry), attr)
    assert (metric._type, metric._name, metric._labelnames) == (kind, name, labels)


def test_instruments_are_cached_per_registry(registry: CollectorRegistry) -> None:
    first = instruments(registry)
    assert instruments(registry) is first
    assert instruments(CollectorRegistry()) is not first
    assert instruments() is instruments(None)


def test_instruments_are_created_on_first_use(registry: CollectorRegistry) -> None:
    inst = instruments(registry)
    inst.ratelimit_decisions.labels("server", "allowed").inc()
    found = samples(registry)
    assert value(found, "kitmw_ratelimit_decisions_total", side="server", decision="allowed") == 1
    assert not series(found, "http_server_requests_total")
    assert inst.created() == ["ratelimit_decisions"]


def test_a_foreign_metric_with_a_kitmw_name_is_a_config_error(registry: CollectorRegistry) -> None:
    from prometheus_client import Counter

    Counter("http_server_requests", "someone else's", registry=registry)
    with pytest.raises(ConfigError, match="registry"):
        MetricsPolicy(registry=registry)


# -- options ------------------------------------------------------------------------------


def test_two_policies_on_one_registry_share_instruments(registry: CollectorRegistry) -> None:
    a = MetricsPolicy(registry=registry)
    b = MetricsPolicy(registry=registry)
    assert a.instruments is b.instruments
    assert a.registry is registry and b.registry is registry


def test_policies_on_the_default_registry_never_raise_duplicated_timeseries() -> None:
    first = MetricsPolicy()
    second = MetricsPolicy()
    from prometheus_client import REGISTRY

    assert first.registry is REGISTRY and second.instruments is first.instruments


def test_different_buckets_on_one_registry_raise_config_error(registry: CollectorRegistry) -> None:
    MetricsPolicy(registry=registry, buckets=(0.1, 1.0))
    MetricsPolicy(registry=registry, buckets=[0.1, 1])  # the same bounds are fine
    with pytest.raises(ConfigError, match="buckets"):
        MetricsPolicy(registry=registry, buckets=(0.5, 5.0))


@pytest.mark.parametrize(
    ("options", "option"),
    [
        pytest.param({"buckets": (1.0, 0.5)}, "buckets", id="decreasing-buckets"),
        pytest.param({"buckets": "fast"}, "buckets", id="string-buckets"),
        pytest.param({"buckets": ()}, "buckets", id="no-buckets"),
        pytest.param({"expose": "metrics"}, "expose", id="relative-expose"),
        pytest.param({"exclude_paths": ["health"]}, "exclude_paths", id="relative-exclude"),
        pytest.param({"registry": "default"}, "registry", id="not-a-registry"),
    ],
)
def test_bad_options_raise_config_error_naming_the_option(options: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        MetricsPolicy(**options)


def test_shared_options_for_stack() -> None:
    assert MetricsPolicy.name == "metrics"
    assert set(MetricsPolicy.shared_options) == {"exclude_paths", "registry"}


@pytest.mark.anyio
async def test_custom_buckets_are_used(registry: CollectorRegistry) -> None:
    app = kitmw.Metrics(starlette_app(), registry=registry, buckets=(0.5, 2.0))
    async with client(app) as c:
        await c.get("/items/1")
    found = samples(registry)
    les = {labels["le"] for labels in series(found, "http_server_request_duration_seconds_bucket")}
    assert les == {"0.5", "2.0", "+Inf"}


# -- server requests ----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("make", "how"), APPS)
async def test_route_templates_are_labels_with_exact_counts(
    registry: CollectorRegistry, make: Callable[[], Any], how: str
) -> None:
    app = wrapped(make, how, registry)
    async with client(app) as c:
        for i in range(3):
            assert (await c.get(f"/items/{i}")).status_code == 200
        for uid in ("ann", "bob"):
            assert (await c.get(f"/api/v1/users/{uid}")).status_code == 200
        found = parse((await c.get("/metrics")).text)
    assert requests_total(found, "/items/{item_id}") == 3
    assert requests_total(found, "/api/v1/users/{uid}") == 2
    routes = {labels["route"] for labels in series(found, "http_server_requests_total")}
    assert routes == {"/items/{item_id}", "/api/v1/users/{uid}"}  # /metrics itself is not counted
    count = value(
        found,
        "http_server_request_duration_seconds_count",
        method="GET",
        route="/items/{item_id}",
        status="200",
    )
    assert count == 3


@pytest.mark.anyio
@pytest.mark.parametrize(("make", "how"), APPS)
async def test_random_unmatched_paths_add_one_series(
    registry: CollectorRegistry, make: Callable[[], Any], how: str
) -> None:
    import random

    rng = random.Random(7)
    app = wrapped(make, how, registry)
    async with client(app) as c:
        for _ in range(100):
            path = "/" + "/".join(str(rng.getrandbits(32)) for _ in range(rng.randint(1, 3)))
            assert (await c.get(path)).status_code == 404
    found = samples(registry)
    labels = series(found, "http_server_requests_total")
    assert labels == [{"method": "GET", "route": "<unmatched>", "status": "404"}]
    assert requests_total(found, "<unmatched>", "404") == 100


@pytest.mark.anyio
@pytest.mark.parametrize(("make", "how"), APPS)
async def test_app_exception_counted_as_500_and_propagated(
    registry: CollectorRegistry, make: Callable[[], Any], how: str
) -> None:
    app = wrapped(make, how, registry)
    async with client(app, raise_app_exceptions=True) as c:
        with pytest.raises(RuntimeError, match="boom"):
            await c.get("/boom")
    found = samples(registry)
    assert requests_total(found, "/boom", "500") == 1
    assert value(found, "http_server_requests_in_progress", method="GET") == 0


@pytest.mark.anyio
async def test_exception_in_a_raw_asgi_app_is_a_500(registry: CollectorRegistry) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("no response at all")

    async with client(kitmw.Metrics(app, registry=registry), raise_app_exceptions=True) as c:
        with pytest.raises(ValueError):
            await c.get("/x")
    assert requests_total(samples(registry), "<unmatched>", "500") == 1


@pytest.mark.anyio
async def test_rejection_from_an_inner_policy_is_counted(registry: CollectorRegistry) -> None:
    class Deny(Policy):
        name = "deny"

        def enter(self, ex: Exchange) -> Rejection | None:
            return Rejection(429)

    app = kitmw.asgi.Middleware(starlette_app(), MetricsPolicy(registry=registry), Deny())
    async with client(app) as c:
        assert (await c.get("/items/1")).status_code == 429
    assert requests_total(samples(registry), "/items/{item_id}", "429") == 1


@pytest.mark.anyio
async def test_streaming_sizes_come_from_messages_and_duration_ends_at_last_chunk(
    registry: CollectorRegistry,
) -> None:
    stamps: dict[str, int] = {}
    chunks = [b"a" * 1000, b"b" * 2000, b"c" * 3]

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk
        stamps["last_chunk_yielded"] = perf_counter_ns()

    async def upload(request: Request) -> StreamingResponse:
        received = 0
        async for part in request.stream():
            received += len(part)
        stamps["request_read"] = received
        return StreamingResponse(body(), media_type="text/plain")

    class Clock(Policy):
        """Outside metrics: sees the exchange metrics saw, after the app returned."""

        name = "clock"

        def exit(self, ex: Exchange) -> None:
            stamps["start_ns"], stamps["end_ns"] = ex.start_ns, ex.end_ns
            stamps["exit_ns"] = perf_counter_ns()

    async def background_task() -> None:
        stamps["background_ns"] = perf_counter_ns()

    async def upload_with_background(request: Request) -> StreamingResponse:
        from starlette.background import BackgroundTask

        response = await upload(request)
        response.background = BackgroundTask(background_task)
        return response

    app = Starlette(routes=[Route("/upload", upload_with_background, methods=["POST"])])
    mw = kitmw.asgi.Middleware(app, Clock(), MetricsPolicy(registry=registry))

    async def request_body() -> AsyncIterator[bytes]:
        for part in (b"x" * 700, b"y" * 300, b"z" * 24):
            yield part

    async with client(mw) as c:
        r = await c.post("/upload", content=request_body())
    assert r.content == b"".join(chunks)
    assert "content-length" not in r.headers  # sizes cannot come from a header here
    found = samples(registry)
    labels = {"method": "POST", "route": "/upload", "status": "200"}
    assert value(found, "http_server_response_size_bytes_sum", **labels) == 3003
    assert value(found, "http_server_request_size_bytes_sum", **labels) == 1024 == stamps["request_read"]
    seconds = value(found, "http_server_request_duration_seconds_sum", **labels)
    # The clock stopped at the last body chunk: after the generator finished, before the
    # background task ran, and the histogram holds exactly that interval.
    assert stamps["last_chunk_yielded"] <= stamps["end_ns"] <= stamps["background_ns"]
    assert seconds == pytest.approx((stamps["end_ns"] - stamps["start_ns"]) / 1e9)


@pytest.mark.anyio
async def test_request_bytes_not_counted_when_disabled(registry: CollectorRegistry) -> None:
    policy = MetricsPolicy(registry=registry, counts_request_bytes=False)
    assert policy.counts_request_bytes is False
    async with client(kitmw.asgi.Middleware(starlette_app(), policy)) as c:
        await c.get("/items/1")
    assert not series(samples(registry), "http_server_request_size_bytes_count")


def test_websocket_and_lifespan_pass_through(registry: CollectorRegistry) -> None:
    events: list[str] = []

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(routes=[WebSocketRoute("/ws", echo)], lifespan=lifespan)
    with TestClient(kitmw.Metrics(app, registry=registry)) as tc, tc.websocket_connect("/ws") as ws:
        ws.send_text("ping")
        assert ws.receive_text() == "ping"
    assert events == ["startup", "shutdown"]
    found = samples(registry)
    assert not series(found, "http_server_requests_total")
    assert all(v == 0 for (n, _), v in found.items() if n == "http_server_requests_in_progress")


@pytest.mark.anyio
async def test_in_progress_gauge_counts_running_requests(registry: CollectorRegistry) -> None:
    seen: list[float | None] = []

    async def slow(request: Request) -> PlainTextResponse:
        seen.append(value(samples(registry), "http_server_requests_in_progress", method="GET"))
        return PlainTextResponse("ok")

    app = kitmw.Metrics(Starlette(routes=[Route("/slow", slow)]), registry=registry)
    async with client(app) as c:
        await c.get("/slow")
    assert seen == [1]
    assert value(samples(registry), "http_server_requests_in_progress", method="GET") == 0


@pytest.mark.anyio
async def test_unknown_methods_are_labelled_other(registry: CollectorRegistry) -> None:
    app = kitmw.Metrics(starlette_app(), registry=registry)
    async with client(app) as c:
        for method in ("BREW", "PROPFIND"):
            await c.request(method, "/items/1")
    found = samples(registry)
    assert requests_total(found, "/items/{item_id}", "405", method="_OTHER") == 2
    assert {labels["method"] for labels in series(found, "http_server_requests_total")} == {"_OTHER"}


@pytest.mark.anyio
async def test_status_class_groups_statuses(registry: CollectorRegistry) -> None:
    app = kitmw.Metrics(starlette_app(), registry=registry, status_class=True)
    async with client(app) as c:
        await c.get("/items/1")
        await c.get("/nope")
    found = samples(registry)
    assert requests_total(found, "/items/{item_id}", "2xx") == 1
    assert requests_total(found, "<unmatched>", "4xx") == 1


@pytest.mark.anyio
async def test_excluded_paths_are_not_counted(registry: CollectorRegistry) -> None:
    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/health", health), Route("/static/{p:path}", health)])
    mw = kitmw.Metrics(app, registry=registry, exclude_paths=["/health", "/static/*"])
    async with client(mw) as c:
        for path in ("/health", "/health/", "/static/a.css", "/healthz"):
            await c.get(path)
    labels = series(samples(registry), "http_server_requests_total")
    assert labels == [{"method": "GET", "route": "<unmatched>", "status": "404"}]  # /healthz only


@pytest.mark.anyio
async def test_two_apps_with_two_registries_do_not_collide() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    app1 = kitmw.Metrics(starlette_app(), registry=first)
    app2 = kitmw.Metrics(fastapi_app(), registry=second)
    async with client(app1) as c1, client(app2) as c2:
        await c1.get("/items/1")
        for _ in range(2):
            await c2.get("/items/1")
        text1, text2 = (await c1.get("/metrics")).text, (await c2.get("/metrics")).text
    assert requests_total(parse(text1), "/items/{item_id}") == 1
    assert requests_total(parse(text2), "/items/{item_id}") == 2


@pytest.mark.anyio
async def test_two_middlewares_on_one_registry_add_up(registry: CollectorRegistry) -> None:
    app1 = kitmw.Metrics(starlette_app(), registry=registry)
    app2 = kitmw.Metrics(fastapi_app(), registry=registry, expose=None)
    async with client(app1) as c1, client(app2) as c2:
        await c1.get("/items/1")
        await c2.get("/items/2")
        assert (await c2.get("/metrics")).status_code == 404  # expose=None: not served
        found = parse((await c1.get("/metrics")).text)
    assert requests_total(found, "/items/{item_id}") == 2
    assert requests_total(found, "<unmatched>", "404") == 1


# -- /metrics -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_metrics_text_format_by_default(registry: CollectorRegistry) -> None:
    app = kitmw.Metrics(starlette_app(), registry=registry)
    async with client(app) as c:
        await c.get("/items/1")
        r = await c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert requests_total(parse(r.text), "/items/{item_id}") == 1


@pytest.mark.anyio
async def test_openmetrics_negotiated_with_trace_id_exemplar(registry: CollectorRegistry) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    app = kitmw.asgi.Middleware(starlette_app(), TracePolicyStub(trace_id), MetricsPolicy(registry=registry))
    async with client(app) as c:
        await c.get("/items/1")
        text = (await c.get("/metrics")).text
        r = await c.get("/metrics", headers={"accept": OPENMETRICS})
    assert "trace_id" not in text  # exemplars exist in OpenMetrics only
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    exemplars = [
        (s.name, s.exemplar.labels)
        for family in openmetrics_families(r.text)
        for s in family.samples
        if s.exemplar is not None
    ]
    # One on the counter, one on the duration bucket the observation fell in (which
    # bucket depends on the machine's speed), none elsewhere.
    assert sorted(exemplars) == [
        ("http_server_request_duration_seconds_bucket", {"trace_id": trace_id}),
        ("http_server_requests_total", {"trace_id": trace_id}),
    ]


@pytest.mark.anyio
async def test_no_exemplar_without_trace_id(registry: CollectorRegistry) -> None:
    app = kitmw.asgi.Middleware(starlette_app(), TracePolicyStub(None), MetricsPolicy(registry=registry))
    async with client(app) as c:
        await c.get("/items/1")
        r = await c.get("/metrics", headers={"accept": OPENMETRICS})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert all(s.exemplar is None for family in openmetrics_families(r.text) for s in family.samples)


@pytest.mark.anyio
async def test_metrics_gzipped_when_accepted(registry: CollectorRegistry) -> None:
    app = kitmw.Metrics(starlette_app(), registry=registry)
    async with client(app) as c:
        await c.get("/items/1")
        async with c.stream("GET", "/metrics", headers={"accept-encoding": "gzip"}) as r:
            raw = b"".join([chunk async for chunk in r.aiter_raw()])
        plain = await c.get("/metrics", headers={"accept-encoding": "identity"})
    assert r.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    assert requests_total(parse(gzip.decompress(raw).decode()), "/items/{item_id}") == 1


@pytest.mark.anyio
async def test_metrics_path_answers_get_and_head_only(registry: CollectorRegistry) -> None:
    async def post_metrics(request: Request) -> PlainTextResponse:
        return PlainTextResponse("app's own", status_code=201)

    app = Starlette(routes=[Route("/metrics", post_metrics, methods=["POST"])])
    async with client(kitmw.Metrics(app, registry=registry, expose="/metrics")) as c:
        head = await c.head("/metrics")
        post = await c.post("/metrics")
    assert head.status_code == 200 and head.headers["content-type"].startswith("text/plain")
    assert (post.status_code, post.text) == (201, "app's own")
    labels = series(samples(registry), "http_server_requests_total")
    assert labels == [{"method": "POST", "route": "/metrics", "status": "201"}]


@pytest.mark.anyio
async def test_metrics_name_filter(registry: CollectorRegistry) -> None:
    app = kitmw.Metrics(starlette_app(), registry=registry)
    async with client(app) as c:
        await c.get("/items/1")
        r = await c.get("/metrics", params={"name[]": "http_server_requests_total"})
    names = {family.name for family in text_string_to_metric_families(r.text)}
    assert names == {"http_server_requests"}


@pytest.mark.anyio
async def test_standalone_asgi_metrics_app(registry: CollectorRegistry) -> None:
    instruments(registry).storage_errors.labels("jwks").inc()
    app = kitmw.metrics.metrics_app(registry)
    async with client(app) as c:
        r = await c.get("/anything", headers={"accept": OPENMETRICS})
        bad = await c.post("/")
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    found = {s.name: s.value for f in openmetrics_families(r.text) for s in f.samples}
    assert found["kitmw_storage_errors_total"] == 1
    assert bad.status_code == 405


def test_standalone_wsgi_metrics_app(registry: CollectorRegistry, serve_wsgi: Any) -> None:
    instruments(registry).breaker_rejections.labels("payments").inc(2)
    with serve_wsgi(kitmw.metrics.metrics_wsgi_app(registry)) as server:
        r = httpx.get(server.url + "/metrics", timeout=10)
        bad = httpx.delete(server.url + "/metrics", timeout=10)
    assert value(parse(r.text), "kitmw_breaker_rejections_total", breaker="payments") == 2
    assert bad.status_code == 405


def test_start_server_serves_the_registry_on_its_own_port(registry: CollectorRegistry) -> None:
    instruments(registry).breaker_rejections.labels("payments").inc(3)
    with kitmw.metrics.start_server(0, host="127.0.0.1", registry=registry) as server:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
        r = httpx.get(server.url, timeout=10)
        om = httpx.get(server.url, headers={"accept": OPENMETRICS}, timeout=10)
        bad = httpx.post(server.url, timeout=10)
    assert value(parse(r.text), "kitmw_breaker_rejections_total", breaker="payments") == 3
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert bad.status_code == 405


@pytest.mark.parametrize(
    ("options", "option"),
    [
        pytest.param({"port": -1}, "port", id="negative-port"),
        pytest.param({"port": "9464"}, "port", id="string-port"),
        pytest.param({"port": 0, "host": ""}, "host", id="empty-host"),
        pytest.param({"port": 0, "registry": object()}, "registry", id="not-a-registry"),
    ],
)
def test_start_server_rejects_bad_options(options: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        kitmw.metrics.start_server(**options)


def test_client_status_outside_100_599_is_other(registry: CollectorRegistry) -> None:
    policy = ClientMetricsPolicy(registry=registry)
    for status in (200, 999, 600, 42):
        ex = Exchange("GET", "/")
        ex.status = status
        policy.exit(ex)
    labels = {d["status"] for d in series(samples(registry), "http_client_requests_total")}
    assert labels == {"200", "other"}


# -- Django --------------------------------------------------------------------------------


def _django_view(request: Any, pk: int) -> Any:
    from django.http import HttpResponse

    return HttpResponse(f"item {pk}")


def _django_urlpatterns() -> list[Any]:
    from django.urls import path

    return [path("kitmw-metrics/items/<int:pk>", _django_view)]


@pytest.mark.anyio
async def test_django_asgi_app_gets_the_route_template(registry: CollectorRegistry) -> None:
    import django
    from django.conf import settings
    from django.test.utils import override_settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="kitmw-tests",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
        )
        django.setup()
    from django.core.asgi import get_asgi_application

    module = sys.modules[__name__]
    module.urlpatterns = _django_urlpatterns()  # type: ignore[attr-defined]
    with override_settings(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"]):
        app = kitmw.Metrics(get_asgi_application(), registry=registry)
        async with client(app) as c:
            for pk in (1, 2):
                r = await c.get(f"/kitmw-metrics/items/{pk}")
                assert r.status_code == 200
            await c.get("/kitmw-metrics/nowhere")
    found = samples(registry)
    assert requests_total(found, "/kitmw-metrics/items/<int:pk>") == 2
    assert requests_total(found, "<unmatched>", "404") == 1


# -- client policy ------------------------------------------------------------------------


def _client_exchange(status: int = 0, error: BaseException | None = None) -> NeutralClientExchange:
    url = "https://api.example/v1/things"
    return NeutralClientExchange("GET", url, status=status, error=error, duration=0.25)


def test_client_policy_counts_by_method_host_status(registry: CollectorRegistry) -> None:
    policy = ClientMetricsPolicy(registry=registry)
    for ex in (_client_exchange(200), _client_exchange(200), _client_exchange(503)):
        policy.exit(ex)
    found = samples(registry)
    labels = {"method": "GET", "host": "api.example:443"}
    assert value(found, "http_client_requests_total", status="200", **labels) == 2
    assert value(found, "http_client_requests_total", status="503", **labels) == 1
    assert value(found, "http_client_request_duration_seconds_sum", status="200", **labels) == 0.5


def test_client_policy_labels_errors_with_a_bounded_set(registry: CollectorRegistry) -> None:
    class AppSpecificError(Exception):
        pass

    policy = ClientMetricsPolicy(registry=registry)
    for error in (httpx.ConnectTimeout("slow"), kitmw.BreakerOpen(), AppSpecificError(), None):
        policy.exit(_client_exchange(0, error))
    statuses = {labels["status"] for labels in series(samples(registry), "http_client_requests_total")}
    assert statuses == {"ConnectTimeout", "BreakerOpen", "error"}


# -- multiprocess helpers -----------------------------------------------------------------


def test_gunicorn_child_exit_drops_the_dead_workers_live_gauges(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for name in ("gauge_livesum_4242.db", "gauge_liveall_4242.db", "counter_4242.db", "gauge_livesum_7.db"):
        (tmp_path / name).write_bytes(b"")
    kitmw.metrics.gunicorn_child_exit(None, SimpleNamespace(pid=4242))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_4242.db", "gauge_livesum_7.db"]


def test_mark_process_dead_is_a_no_op_without_multiprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
    kitmw.metrics.mark_process_dead(4242)


# -- with the other kitmw pieces -----------------------------------------------------------


@pytest.mark.anyio
async def test_stack_passes_exclude_paths_and_exposes_the_registry(registry: CollectorRegistry) -> None:
    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/health", health), Route("/items/{item_id}", health)])
    stacked = kitmw.stack(app, metrics={"registry": registry}, exclude_paths=["/health"])
    async with client(stacked) as c:
        await c.get("/health")
        await c.get("/items/1")
    labels = series(samples(registry), "http_server_requests_total")
    assert labels == [{"method": "GET", "route": "/items/{item_id}", "status": "200"}]


@pytest.mark.anyio
async def test_exemplar_carries_the_trace_id_of_the_real_span(
    registry: CollectorRegistry, spans: Any
) -> None:
    provider, exporter = spans
    app = kitmw.stack(starlette_app(), tracing={"tracer_provider": provider}, metrics={"registry": registry})
    async with client(app) as c:
        await c.get("/items/1")
        r = await c.get("/metrics", headers={"accept": OPENMETRICS})
    trace_ids = {format(span.context.trace_id, "032x") for span in exporter.get_finished_spans()}
    exemplars = [
        s.exemplar.labels["trace_id"]
        for family in openmetrics_families(r.text)
        for s in family.samples
        if s.name == "http_server_requests_total" and s.exemplar is not None
    ]
    assert len(exemplars) == 1 and exemplars[0] in trace_ids


def test_flask_wsgi_app_gets_the_url_rule(registry: CollectorRegistry, serve_wsgi: Any) -> None:
    from flask import Flask

    flask_app = Flask("kitmw_metrics_test")

    @flask_app.get("/items/<int:item_id>")
    def get_item(item_id: int) -> str:
        return f"item {item_id}"

    app = kitmw.wsgi.Metrics(flask_app, registry=registry)
    with serve_wsgi(app) as server, httpx.Client(base_url=server.url, timeout=10) as c:
        for i in range(3):
            assert c.get(f"/items/{i}").status_code == 200
        c.get("/nope/1")
        # A request is counted when its body is closed, after the client has read the last
        # byte: on a threaded server the next scrape may come first.
        for _ in range(200):
            found = parse(c.get("/metrics").text)
            if requests_total(found, "<unmatched>", "404") is not None:
                break
            time.sleep(0.01)
    assert requests_total(found, "/items/<int:item_id>") == 3
    assert requests_total(found, "<unmatched>", "404") == 1
    assert value(found, "http_server_requests_in_progress", method="GET") == 0


@pytest.mark.anyio
async def test_httpx_transport_counts_calls_per_host(registry: CollectorRegistry) -> None:
    import kitmw.httpx

    upstream = httpx.ASGITransport(app=starlette_app())
    transport = kitmw.httpx.AsyncTransport(transport=upstream, metrics={"registry": registry})
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream:8080") as c:
        await c.get("/items/1")
        await c.get("/items/2")
        await c.get("/nope")
    found = samples(registry)
    labels = {"method": "GET", "host": "upstream:8080"}
    assert value(found, "http_client_requests_total", status="200", **labels) == 2
    assert value(found, "http_client_requests_total", status="404", **labels) == 1


# -- hot-path writers (kitmw.metrics._instruments) ------------------------------------------


def _writer_pair() -> tuple[CollectorRegistry, Any, CollectorRegistry, Any]:
    from prometheus_client import Counter, Histogram

    fast, public = CollectorRegistry(), CollectorRegistry()
    made = []
    for registry in (fast, public):
        made.append(
            (
                Counter("w_requests", "d", ["route"], registry=registry).labels("/a"),
                Histogram("w_seconds", "d", ["route"], registry=registry, buckets=(0.01, 0.1, 1.0)).labels(
                    "/a"
                ),
            )
        )
    return fast, made[0], public, made[1]


def test_writers_write_what_the_public_methods_write() -> None:
    from kitmw.metrics._instruments import (
        add_writer,
        counter_exemplar_writer,
        histogram_exemplar_writer,
        histogram_writer,
    )

    fast, (counter, histogram), public, (counter2, histogram2) = _writer_pair()
    add, add_ex = add_writer(counter), counter_exemplar_writer(counter)
    observe, observe_ex = histogram_writer(histogram), histogram_exemplar_writer(histogram)
    # This prometheus-client has the layout the writers expect: they are not its methods.
    assert add != counter.inc and observe != histogram.observe
    # Amounts on, below, between and above the bounds, negative, zero, huge, infinite.
    amounts = [0.0, -1.0, 0.01, 0.010001, 0.05, 0.1, 1.0, 1.5, 1e9, float("inf"), 3, 0]
    for amount in amounts:
        add(1)
        observe(amount)
        counter2.inc()
        histogram2.observe(amount)
    add_ex({"trace_id": "a" * 32})
    observe_ex(0.05, {"trace_id": "a" * 32})
    counter2.inc(1, {"trace_id": "a" * 32})
    histogram2.observe(0.05, {"trace_id": "a" * 32})

    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_text

    def exposed(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float, Any]]:
        return [
            (s.name, s.labels, s.value, None if s.exemplar is None else (s.exemplar.labels, s.exemplar.value))
            for family in openmetrics_families(openmetrics_text(registry).decode())
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert exposed(fast) == exposed(public)


def test_writers_fall_back_to_the_public_methods_on_a_parent_metric() -> None:
    # A parent of a labelled metric has no value objects: the writers are its public
    # methods, which refuse it exactly as prometheus-client does.
    from prometheus_client import Counter, Histogram

    from kitmw.metrics._instruments import add_writer, histogram_writer

    registry = CollectorRegistry()
    counter = Counter("p_requests", "d", ["route"], registry=registry)
    histogram = Histogram("p_seconds", "d", ["route"], registry=registry)
    assert add_writer(counter) == counter.inc
    assert histogram_writer(histogram) == histogram.observe
    with pytest.raises(ValueError, match="missing label values"):
        histogram_writer(histogram)(0.5)


@pytest.mark.anyio
async def test_a_trace_id_too_long_for_an_exemplar_counts_the_request_once(
    registry: CollectorRegistry,
) -> None:
    app = kitmw.asgi.Middleware(starlette_app(), TracePolicyStub("f" * 200), MetricsPolicy(registry=registry))
    async with client(app) as c:
        await c.get("/items/1")
        r = await c.get("/metrics", headers={"accept": OPENMETRICS})
    families = openmetrics_families(r.text)
    assert all(s.exemplar is None for family in families for s in family.samples)
    assert requests_total(samples(registry), "/items/{item_id}") == 1


def test_a_scrape_in_multiprocess_mode_skips_a_file_a_worker_has_just_created(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker creates its file empty, then sizes it: a scrape in between must still
    answer with every other worker's values (it answered 500 under gunicorn in CI)."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key
    from prometheus_client.parser import text_string_to_metric_families

    from kitmw.metrics import render

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    written = MmapedDict(str(tmp_path / "counter_100.db"))  # a worker's real file
    key = mmap_key("orders", "orders_total", ["route"], ["/pay"], "orders taken")
    written.write_value(key, 3.0, 0.0)
    written.close()
    (tmp_path / "counter_101.db").write_bytes(b"")  # another worker, mid-creation
    body, _, _ = render()
    (family,) = [f for f in text_string_to_metric_families(body.decode()) if f.name == "orders"]
    assert [(s.labels, s.value) for s in family.samples] == [({"route": "/pay"}, 3.0)]
