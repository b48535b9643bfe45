"""Constant labels (``metrics={"labels": {"service": "checkout"}}``): on every kitmw
Prometheus metric of the registry (server, client, endpoint, breaker, rate limit),
through prometheus-client's multiprocess mode, checked at construction. (The dashboard's
queries with the label: tests/test_dashboard.py.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import kitmw
import kitmw.httpx
from kitmw.errors import ConfigError
from kitmw.metrics import ClientMetricsPolicy, EndpointMetricsPolicy, MetricsPolicy, instruments

SERVICE = {"service": "checkout", "team": "payments"}


def families(text: str) -> dict[str, list[dict[str, str]]]:
    """Sample name -> the labels of each of its samples."""
    found: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append(dict(s.labels))
    return found


def app() -> Starlette:
    async def item(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def unavailable(request: Request) -> Response:
        return Response(status_code=503)

    return Starlette(routes=[Route("/items/{item_id}", item), Route("/unavailable", unavailable)])


@pytest.mark.anyio
async def test_every_kitmw_metric_of_the_registry_carries_the_labels(registry: CollectorRegistry) -> None:
    wrapped = kitmw.stack(
        app(),
        metrics={"registry": registry, "labels": SERVICE},
        ratelimit={"limit": "100/minute", "namespace": "labels-test"},
        breaker={"name": "labels-test", "fail_max": 1, "per_route": False},
    )
    # The transport and the endpoint take the registry's labels (None: the registry's).
    transport = kitmw.httpx.AsyncTransport(transport=httpx.ASGITransport(app=wrapped), metrics={"registry": registry})
    async with httpx.AsyncClient(transport=transport, base_url="http://svc.test") as c:
        assert (await c.get("/items/1")).status_code == 200
        assert (await c.get("/unavailable")).status_code == 503
        assert (await c.get("/items/1")).status_code == 503  # the breaker is open
        exposition = (await c.get("/metrics")).text
    kitmw.endpoint("charge_card", metrics={"registry": registry})(lambda: None)()
    found = families(exposition) | families(generate_latest(registry).decode())
    for family in (
        "http_server_requests_total",
        "http_server_request_duration_seconds_bucket",
        "http_server_requests_in_progress",
        "http_server_response_size_bytes_sum",
        "http_client_requests_total",
        "http_client_request_duration_seconds_count",
        "kitmw_endpoint_calls_total",
        "kitmw_endpoint_duration_seconds_count",
        "kitmw_breaker_state",
        "kitmw_breaker_transitions_total",
        "kitmw_breaker_rejections_total",
        "kitmw_ratelimit_decisions_total",
    ):
        assert family in found, family
    for name, samples in found.items():
        for labels in samples:
            assert labels["service"] == "checkout" and labels["team"] == "payments", (name, labels)
    assert instruments(registry).constant_labels == SERVICE


def test_each_policy_may_name_the_labels_if_they_agree(registry: CollectorRegistry) -> None:
    MetricsPolicy(registry=registry, labels=SERVICE)
    ClientMetricsPolicy(registry=registry, labels=dict(SERVICE))
    EndpointMetricsPolicy(registry=registry, labels=None)  # the registry's
    with pytest.raises(ConfigError, match=r"labels: .*same labels"):
        ClientMetricsPolicy(registry=registry, labels={"service": "other"})


@pytest.mark.anyio
async def test_labels_after_metrics_made_without_them_are_a_config_error(registry: CollectorRegistry) -> None:
    wrapped = kitmw.Metrics(app(), registry=registry)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="http://svc.test") as c:
        await c.get("/items/1")
    with pytest.raises(ConfigError, match="labels: kitmw metrics on this registry were made without"):
        MetricsPolicy(registry=registry, labels={"service": "checkout"})


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"1service": "x"}, "not a Prometheus label name"),
        ({"service-name": "x"}, "not a Prometheus label name"),
        ({"__service": "x"}, "not a Prometheus label name"),
        ({"service\n": "x"}, "not a Prometheus label name"),  # '$' matches before a final newline
        ({"": "x"}, "non-empty string"),
        ({"route": "x"}, "already sets"),  # kitmw's own
        ({"status": "x"}, "already sets"),
        ({"breaker": "x"}, "already sets"),
        ({"le": "x"}, "already sets"),  # prometheus-client's
        ({"pid": "x"}, "already sets"),  # multiprocess liveall gauges
        ({"job": "x"}, "already sets"),  # the scraper's
        ({"service": 1}, "must be a string"),
        (["service"], "mapping"),
        ("service=checkout", "mapping"),
    ],
)
def test_bad_labels_raise_config_error_naming_the_option(labels: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=f"labels: .*{message}"):
        MetricsPolicy(registry=CollectorRegistry(), labels=labels)
    with pytest.raises(ConfigError, match="labels"):
        kitmw.stack(app(), metrics={"registry": CollectorRegistry(), "labels": labels})


def test_an_otel_only_label_may_be_any_attribute_key_but_not_kitmws() -> None:
    from opentelemetry.sdk.metrics import MeterProvider

    provider = MeterProvider()
    policy = MetricsPolicy(backend="otel", meter_provider=provider, labels={"deployment.environment": "prod"})
    assert policy.instruments.constant_labels == {"deployment.environment": "prod"}
    with pytest.raises(ConfigError, match=r"labels: 'http\.route' is an attribute kitmw records"):
        MetricsPolicy(backend="otel", meter_provider=MeterProvider(), labels={"http.route": "/x"})
    # Names only Prometheus or its scraper reserve are attribute keys like any other.
    other = MeterProvider()
    scraped = MetricsPolicy(backend="otel", meter_provider=other, labels={"job": "batch", "instance": "a"})
    assert scraped.instruments.constant_labels == {"job": "batch", "instance": "a"}
    other.shutdown()
    # Both backends: the Prometheus rules hold.
    with pytest.raises(ConfigError, match="not a Prometheus label name"):
        MetricsPolicy(
            registry=CollectorRegistry(),
            backend=["prometheus", "otel"],
            meter_provider=MeterProvider(),
            labels={"deployment.environment": "prod"},
        )
    provider.shutdown()


WORKER = textwrap.dedent(
    """
    import anyio, httpx, kitmw, kitmw.httpx

    async def item(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = kitmw.stack(
        item,
        metrics={"labels": {"service": "checkout"}, "expose": None},
        breaker={"name": "mp", "per_route": False},
        ratelimit={"limit": "100/minute", "namespace": "mp-labels"},
    )

    async def main():
        transport = kitmw.httpx.AsyncTransport(transport=httpx.ASGITransport(app=app), metrics=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc.test") as c:
            assert (await c.get("/")).status_code == 200

    anyio.run(main)
    """
)


def test_multiprocess_mode_keeps_the_labels(tmp_path: Path) -> None:
    """Two worker processes write PROMETHEUS_MULTIPROC_DIR; MultiProcessCollector (what
    kitmw's /metrics and ``python -m kitmw.metrics`` use there) sums them, labels kept."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory), "PATH": "/usr/bin:/bin"}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", WORKER], env=env, check=True, timeout=60, capture_output=True)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    assert found
    for name, labels in found:
        assert ("service", "checkout") in labels, name
    server = {"method": "GET", "route": "<unmatched>", "status": "200", "service": "checkout"}  # no router
    assert found[("http_server_requests_total", frozenset(server.items()))] == 2
    client = {"method": "GET", "host": "svc.test:80", "status": "200", "service": "checkout"}
    assert found[("http_client_requests_total", frozenset(client.items()))] == 2
    limited = {"side": "server", "decision": "allowed", "service": "checkout"}
    assert found[("kitmw_ratelimit_decisions_total", frozenset(limited.items()))] == 2
    # liveall gauges: one series per process, each with its pid and the labels.
    closed = [labels for name, labels in found if name == "kitmw_breaker_state" and ("state", "closed") in labels]
    assert len(closed) == 2 and all({"pid", "service"} <= dict(labels).keys() for labels in closed)
