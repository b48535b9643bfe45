"""Metrics through the OpenTelemetry metrics API (``metrics={"backend": "otel"}``): the HTTP
semantic conventions' names, units and attributes on every driver (ASGI, WSGI, httpx sync
and async, kitmw.endpoint), kitmw's own breaker and rate-limit metrics, both backends at
once, constant labels as attributes, and the options' errors. Read with the SDK's
InMemoryMetricReader."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import kitmw
import kitmw.httpx
from kitmw.errors import ConfigError
from kitmw.metrics import DEFAULT_BUCKETS, METER_NAME, ClientMetricsPolicy, MetricsPolicy, instruments

#: The HTTP semantic conventions' advice for http.server/client.request.duration (seconds).
SEMCONV_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)

Point = tuple[dict[str, Any], Any]


@pytest.fixture
def otel() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


def collect(reader: InMemoryMetricReader) -> dict[str, Any]:
    """Every metric of kitmw's meter, by name."""
    found: dict[str, Any] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            assert sm.scope.name == METER_NAME
            for metric in sm.metrics:
                found[metric.name] = metric
    return found


def points(metric: Any) -> list[Point]:
    return [(dict(p.attributes), p) for p in metric.data.data_points]


def point(metric: Any, **wanted: Any) -> Any:
    """The one data point whose attributes are exactly ``wanted`` (dots spelled ``__``)."""
    wanted = {k.replace("__", "."): v for k, v in wanted.items()}
    found = [p for attributes, p in points(metric) if attributes == wanted]
    assert len(found) == 1, f"{metric.name}: no point {wanted} in {[a for a, _ in points(metric)]}"
    return found[0]


def kitmw_samples() -> list[str]:
    """The kitmw lines of prometheus-client's default registry."""
    return [line for line in generate_latest().decode().splitlines() if line.startswith(("http_", "kitmw_"))]


def starlette_app() -> Starlette:
    async def item(request: Request) -> Response:
        await request.body()
        return PlainTextResponse("x" * 10)

    async def boom(request: Request) -> Response:
        raise RuntimeError("boom")

    async def unavailable(request: Request) -> Response:
        return Response(status_code=503)

    return Starlette(
        routes=[
            Route("/items/{item_id}", item, methods=["GET", "POST", "PURGE"]),
            Route("/boom", boom),
            Route("/unavailable", unavailable),
        ]
    )


@pytest.mark.anyio
async def test_asgi_server_records_the_http_semantic_conventions(otel: Any) -> None:
    provider, reader = otel
    app = kitmw.stack(starlette_app(), metrics={"backend": "otel", "meter_provider": provider})
    default_registry = kitmw_samples()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc.test") as c:
        assert (await c.get("/items/1")).status_code == 200
        assert (await c.post("/items/2", content=b"abc")).status_code == 200
        assert (await c.get("/boom")).status_code == 500
        assert (await c.get("/unavailable")).status_code == 503
        assert (await c.get("/nowhere")).status_code == 404
        assert (await c.request("PURGE", "/items/3")).status_code == 200
        assert (await c.get("/metrics")).status_code == 404  # no exposition without Prometheus
    found = collect(reader)
    duration = found["http.server.request.duration"]
    assert duration.unit == "s"
    common = {"url__scheme": "http"}
    ok = point(duration, http__request__method="GET", http__route="/items/{item_id}", http__response__status_code=200, **common)
    assert ok.count == 1 and tuple(ok.explicit_bounds) == SEMCONV_BUCKETS == DEFAULT_BUCKETS
    point(duration, http__request__method="POST", http__route="/items/{item_id}", http__response__status_code=200, **common)
    # An exception is its class, a 5xx its status code; a 404 has no route.
    point(
        duration,
        http__request__method="GET",
        http__route="/boom",
        http__response__status_code=500,
        error__type="RuntimeError",
        **common,
    )
    point(
        duration,
        http__request__method="GET",
        http__route="/unavailable",
        http__response__status_code=503,
        error__type="503",
        **common,
    )
    point(duration, http__request__method="GET", http__response__status_code=404, **common)
    point(duration, http__request__method="_OTHER", http__route="/items/{item_id}", http__response__status_code=200, **common)
    active = found["http.server.active_requests"]
    assert active.unit == "{request}" and not active.data.is_monotonic
    assert point(active, http__request__method="GET", url__scheme="http").value == 0
    sizes = found["http.server.response.body.size"]
    assert sizes.unit == "By"
    body = point(sizes, http__request__method="GET", http__route="/items/{item_id}", http__response__status_code=200, **common)
    assert body.sum == 10
    received = found["http.server.request.body.size"]
    post = point(received, http__request__method="POST", http__route="/items/{item_id}", http__response__status_code=200, **common)
    assert post.sum == 3
    # Nothing went to prometheus-client's default registry.
    assert kitmw_samples() == default_registry


@pytest.mark.anyio
async def test_active_requests_counts_a_request_being_served(otel: Any) -> None:
    provider, reader = otel
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        metric = collect(reader)["http.server.active_requests"]
        seen.append(point(metric, http__request__method="GET", url__scheme="https").value)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = kitmw.Metrics(app, backend="otel", meter_provider=provider)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="https://svc.test") as c:
        assert (await c.get("/")).status_code == 204
    assert seen == [1]
    assert point(collect(reader)["http.server.active_requests"], http__request__method="GET", url__scheme="https").value == 0


def test_wsgi_server_records_the_http_semantic_conventions(otel: Any) -> None:
    provider, reader = otel
    flask_app = Flask(__name__)

    @flask_app.get("/users/<int:uid>")
    def user(uid: int) -> str:
        return "u" * uid

    app = kitmw.stack(flask_app, metrics={"backend": "otel", "meter_provider": provider})
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://svc.test") as c:
        assert c.get("/users/4").status_code == 200
        assert c.get("/nowhere").status_code == 404
    found = collect(reader)
    duration = found["http.server.request.duration"]
    common = {"http__request__method": "GET", "url__scheme": "http"}
    assert point(duration, http__route="/users/<int:uid>", http__response__status_code=200, **common).count == 1
    point(duration, http__response__status_code=404, **common)
    assert point(found["http.server.response.body.size"], http__route="/users/<int:uid>", http__response__status_code=200, **common).sum == 4


def upstream() -> Starlette:
    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def gone(request: Request) -> Response:
        return Response(status_code=404)

    async def broken(request: Request) -> Response:
        return Response(status_code=502)

    return Starlette(routes=[Route("/ok", ok), Route("/gone", gone), Route("/broken", broken)])


def check_client(reader: InMemoryMetricReader) -> None:
    duration = collect(reader)["http.client.request.duration"]
    assert duration.unit == "s"
    common = {"http__request__method": "GET", "server__address": "api.test", "server__port": 8443}
    ok = point(duration, http__response__status_code=200, **common)
    assert ok.count == 2 and tuple(ok.explicit_bounds) == SEMCONV_BUCKETS
    # The client's errors start at 4xx.
    point(duration, http__response__status_code=404, error__type="404", **common)
    point(duration, http__response__status_code=502, error__type="502", **common)
    # No response: the transport error's class.
    point(
        duration,
        http__request__method="GET",
        server__address="down.test",
        server__port=80,  # the scheme's, as the URL leaves it out
        error__type="httpx.ConnectError",
    )


class _Refused(httpx.BaseTransport, httpx.AsyncBaseTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)


def test_sync_httpx_client_records_http_client_request_duration(otel: Any) -> None:
    provider, reader = otel
    options = {"backend": "otel", "meter_provider": provider}
    up = kitmw.httpx.Transport(transport=httpx.WSGITransport(app=_wsgi_upstream()), metrics=options)
    with httpx.Client(transport=up, base_url="https://api.test:8443") as c:
        assert [c.get(p).status_code for p in ("/ok", "/ok", "/gone", "/broken")] == [200, 200, 404, 502]
    down = kitmw.httpx.Transport(transport=_Refused(), metrics=options)
    with httpx.Client(transport=down) as c, pytest.raises(httpx.ConnectError):
        c.get("http://down.test/")
    check_client(reader)


def _wsgi_upstream() -> Flask:
    app = Flask(__name__)

    @app.get("/ok")
    def ok() -> str:
        return "ok"

    @app.get("/gone")
    def gone() -> tuple[str, int]:
        return "", 404

    @app.get("/broken")
    def broken() -> tuple[str, int]:
        return "", 502

    return app


@pytest.mark.anyio
async def test_async_httpx_client_records_http_client_request_duration(otel: Any) -> None:
    provider, reader = otel
    options = {"backend": "otel", "meter_provider": provider}
    up = kitmw.httpx.AsyncTransport(transport=httpx.ASGITransport(app=upstream()), metrics=options)
    async with httpx.AsyncClient(transport=up, base_url="https://api.test:8443") as c:
        assert [(await c.get(p)).status_code for p in ("/ok", "/ok", "/gone", "/broken")] == [200, 200, 404, 502]
    down = kitmw.httpx.AsyncTransport(transport=_Refused(), metrics=options)
    async with httpx.AsyncClient(transport=down) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get("http://down.test/")
    check_client(reader)


def test_endpoint_records_kitmw_endpoint_duration(otel: Any) -> None:
    provider, reader = otel

    @kitmw.endpoint("charge_card", metrics={"backend": "otel", "meter_provider": provider})
    def charge(fail: bool) -> str:
        if fail:
            raise ValueError("declined")
        return "ok"

    charge(False)
    charge(False)
    with pytest.raises(ValueError):
        charge(True)
    duration = collect(reader)["kitmw.endpoint.duration"]
    assert duration.unit == "s"
    assert point(duration, kitmw__endpoint__name="charge_card", kitmw__endpoint__outcome="ok").count == 2
    assert point(duration, kitmw__endpoint__name="charge_card", kitmw__endpoint__outcome="error").count == 1


@pytest.mark.anyio
async def test_breaker_and_rate_limit_metrics_go_where_the_stack_records(otel: Any) -> None:
    provider, reader = otel
    app = kitmw.stack(
        starlette_app(),
        metrics={"backend": "otel", "meter_provider": provider},
        ratelimit={"limit": "3/minute", "namespace": "otel-test"},
        breaker={"name": "otel-test", "fail_max": 1, "reset_timeout": 60, "per_route": False},
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc.test") as c:
        statuses = [(await c.get(p)).status_code for p in ("/items/1", "/unavailable", "/items/1", "/items/1")]
    assert statuses == [200, 503, 503, 429]
    found = collect(reader)
    decisions = found["kitmw.ratelimit.decisions"]
    assert point(decisions, kitmw__side="server", kitmw__ratelimit__decision="allowed").value == 3
    assert point(decisions, kitmw__side="server", kitmw__ratelimit__decision="limited").value == 1
    state = found["kitmw.breaker.state"]
    assert point(state, kitmw__breaker__name="otel-test", kitmw__breaker__state="open").value == 1
    assert point(state, kitmw__breaker__name="otel-test", kitmw__breaker__state="closed").value == 0
    transitions = found["kitmw.breaker.transitions"]
    moved = point(
        transitions,
        kitmw__breaker__name="otel-test",
        kitmw__breaker__from_state="closed",
        kitmw__breaker__to_state="open",
    )
    assert moved.value == 1
    assert point(found["kitmw.breaker.rejections"], kitmw__breaker__name="otel-test").value == 1


@pytest.mark.anyio
async def test_both_backends_record_every_request(otel: Any) -> None:
    provider, reader = otel
    registry = CollectorRegistry()
    app = kitmw.stack(
        starlette_app(),
        metrics={"backend": ["prometheus", "otel"], "meter_provider": provider, "registry": registry},
        breaker={"name": "both-test", "fail_max": 5, "per_route": False},
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc.test") as c:
        assert (await c.get("/items/1")).status_code == 200
        exposition = (await c.get("/metrics")).text
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }
    labels = frozenset({"method": "GET", "route": "/items/{item_id}", "status": "200"}.items())
    assert samples[("http_server_requests_total", labels)] == 1
    assert samples[("kitmw_breaker_state", frozenset({"breaker": "both-test", "state": "closed"}.items()))] == 1
    found = collect(reader)
    # The scrape of /metrics is the exposition's, not a request of the app: on neither backend.
    assert [a.get("http.route") for a, _ in points(found["http.server.request.duration"])] == ["/items/{item_id}"]
    assert point(found["kitmw.breaker.state"], kitmw__breaker__name="both-test", kitmw__breaker__state="closed").value == 1


@pytest.mark.anyio
async def test_constant_labels_are_attributes_on_every_otel_data_point(otel: Any) -> None:
    provider, reader = otel
    app = kitmw.stack(
        starlette_app(),
        metrics={"backend": "otel", "meter_provider": provider, "labels": {"service": "checkout"}},
        ratelimit={"limit": "100/minute", "namespace": "otel-labels"},
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc.test") as c:
        assert (await c.get("/items/1")).status_code == 200
    found = collect(reader)
    assert found
    for metric in found.values():
        for attributes, _ in points(metric):
            assert attributes["service"] == "checkout", metric.name


def test_the_global_meter_provider_is_used_when_none_is_given() -> None:
    """In a process of its own: the global provider can be set once per process."""
    script = """
import httpx, kitmw
from opentelemetry.metrics import set_meter_provider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

wrapped = kitmw.stack(app, metrics={"backend": "otel"})  # before the provider is set
reader = InMemoryMetricReader()
set_meter_provider(MeterProvider(metric_readers=[reader]))
with httpx.Client(transport=httpx.WSGITransport(app=kitmw.stack(lambda e, s: [s("200 OK", [])] and [b""],
        metrics={"backend": "otel"}))) as c:
    c.get("http://x/")
import anyio
async def main():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped)) as c:
        await c.get("http://x/")
anyio.run(main)
names = {m.name: sum(p.count for p in m.data.data_points) for rm in reader.get_metrics_data().resource_metrics
         for sm in rm.scope_metrics for m in sm.metrics if m.name == "http.server.request.duration"}
print(names)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "{'http.server.request.duration': 2}", out.stderr


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"backend": "statsd"}, "backend"),
        ({"backend": []}, "backend"),
        ({"backend": ["prometheus", "graphite"]}, "backend"),
        ({"backend": "prometheus", "meter_provider": MeterProvider()}, "meter_provider"),
        ({"backend": "otel", "meter_provider": object()}, "meter_provider"),
        ({"backend": "otel", "registry": CollectorRegistry()}, "registry"),
    ],
)
def test_bad_backend_options_raise_config_error_naming_the_option(options: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        MetricsPolicy(**options)
    with pytest.raises(ConfigError, match=option):
        kitmw.stack(starlette_app(), metrics=options)


def test_instruments_of_a_meter_provider_are_shared(otel: Any) -> None:
    provider, _ = otel
    one = instruments(backend="otel", meter_provider=provider)
    assert instruments(backend="otel", meter_provider=provider) is one
    both = instruments(CollectorRegistry(), backend=["otel", "prometheus"], meter_provider=provider)
    assert both.otel is one and both.prometheus is not None
    assert MetricsPolicy(backend="otel", meter_provider=provider).backends == ("otel",)


@pytest.mark.anyio
async def test_otel_buckets_follow_the_policy_and_must_agree(otel: Any) -> None:
    provider, reader = otel
    app = kitmw.Metrics(starlette_app(), backend="otel", meter_provider=provider, buckets=[0.1, 1])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc.test") as c:
        assert (await c.get("/items/1")).status_code == 200
    duration = collect(reader)["http.server.request.duration"]
    assert [tuple(p.explicit_bounds) for _, p in points(duration)] == [(0.1, 1.0)]
    with pytest.raises(ConfigError, match="buckets"):
        MetricsPolicy(backend="otel", meter_provider=provider, buckets=[0.5])


def test_client_attributes_of_odd_hosts_statuses_and_errors(otel: Any) -> None:
    from kitmw.testing import NeutralClientExchange

    provider, reader = otel

    class AppSpecificError(Exception):
        pass

    policy = ClientMetricsPolicy(backend="otel", meter_provider=provider)
    calls = [
        NeutralClientExchange("GET", "http://[::1]:8080/x", status=200, duration=0.1),
        NeutralClientExchange("GET", "/x", host="bare-host", status=200, duration=0.1),
        NeutralClientExchange("GET", "https://api.test/x", status=999, duration=0.1),
        NeutralClientExchange("GET", "https://api.test/x", error=AppSpecificError(), duration=0.1),
        NeutralClientExchange("GET", "https://api.test/x", error=httpx.ReadTimeout("slow"), duration=0.1),
    ]
    for ex in calls:
        policy.exit(ex)
    duration = collect(reader)["http.client.request.duration"]
    get = {"http__request__method": "GET"}
    point(duration, server__address="::1", server__port=8080, http__response__status_code=200, **get)
    point(duration, server__address="bare-host", http__response__status_code=200, **get)
    api = {"server__address": "api.test", "server__port": 443, **get}
    point(duration, error__type="_OTHER", **api)  # 999: no status attribute; an unknown error: the same
    assert point(duration, error__type="_OTHER", **api).count == 2
    point(duration, error__type="httpx.ReadTimeout", **api)


def test_policies_sharing_a_meter_provider_must_agree_on_labels(otel: Any) -> None:
    provider, _ = otel
    MetricsPolicy(backend="otel", meter_provider=provider, labels={"service": "checkout"})
    ClientMetricsPolicy(backend="otel", meter_provider=provider)  # the provider's labels
    with pytest.raises(ConfigError, match="labels: kitmw metrics on this meter provider carry"):
        ClientMetricsPolicy(backend="otel", meter_provider=provider, labels={"service": "cart"})


@pytest.mark.anyio
async def test_the_sdk_exemplars_carry_the_trace_id_of_kitmws_span(otel: Any, spans: Any) -> None:
    provider, reader = otel
    tracer_provider, exporter = spans
    app = kitmw.stack(
        starlette_app(),
        tracing={"tracer_provider": tracer_provider},
        metrics={"backend": "otel", "meter_provider": provider},
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc.test") as c:
        assert (await c.get("/items/1")).status_code == 200
    (span,) = exporter.get_finished_spans()
    duration = collect(reader)["http.server.request.duration"]
    ((_, p),) = points(duration)
    assert [e.trace_id for e in p.exemplars] == [span.context.trace_id]
