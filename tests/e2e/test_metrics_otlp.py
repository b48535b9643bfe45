"""End to end: kitmw's OpenTelemetry metrics leave the process through the real OTLP
exporter (HTTP/protobuf) and reach a receiver on loopback, which decodes them with
opentelemetry-proto, as a collector would. The app runs under a real uvicorn and is called
through a kitmw.httpx transport, so server and client metrics travel together."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import kitmw
import kitmw.httpx

pytestmark = pytest.mark.e2e

otlp = pytest.importorskip("opentelemetry.exporter.otlp.proto.http.metric_exporter")
metrics_service = pytest.importorskip("opentelemetry.proto.collector.metrics.v1.metrics_service_pb2")


class Receiver:
    """An OTLP/HTTP metrics receiver: POST /v1/metrics, ExportMetricsServiceRequest bodies."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.paths: list[str] = []
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                message = metrics_service.ExportMetricsServiceRequest()
                message.ParseFromString(body)
                received.paths.append(self.path)
                received.requests.append((self.headers.get("Content-Type"), message))
                answer = metrics_service.ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/metrics"

    def metrics(self) -> dict[str, list[dict[str, Any]]]:
        """Metric name -> the attributes of each data point, over every export."""
        found: dict[str, list[dict[str, Any]]] = {}
        for _, message in self.requests:
            for rm in message.resource_metrics:
                for sm in rm.scope_metrics:
                    assert sm.scope.name == "kitmw"
                    for metric in sm.metrics:
                        data = getattr(metric, metric.WhichOneof("data"))
                        for p in data.data_points:
                            attributes = {a.key: _value(a.value) for a in p.attributes}
                            found.setdefault(metric.name, []).append(attributes)
        return found


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    found.thread.start()
    yield found
    found.server.shutdown()
    found.thread.join(timeout=10)


def test_semconv_metrics_reach_a_real_otlp_receiver(receiver: Receiver, serve_asgi: Any) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    exporter = otlp.OTLPMetricExporter(endpoint=receiver.endpoint)
    # A long interval: the test exports once, with force_flush, never on a timer.
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": "checkout"}))
    metrics = {"backend": "otel", "meter_provider": provider}

    async def order(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = kitmw.stack(
        Starlette(routes=[Route("/orders/{order_id}", order)]),
        metrics=metrics,
        breaker={"name": "orders", "per_route": False},
    )
    with serve_asgi(app) as server:
        transport = kitmw.httpx.Transport(metrics=metrics)
        with httpx.Client(transport=transport, base_url=server.url, timeout=10) as client:
            assert client.get("/orders/7").status_code == 200
            assert client.get("/nowhere").status_code == 404
    assert provider.force_flush(timeout_millis=10_000)
    provider.shutdown()

    assert receiver.paths and set(receiver.paths) == {"/v1/metrics"}
    assert {content for content, _ in receiver.requests} == {"application/x-protobuf"}
    resource = {a.key: _value(a.value) for a in receiver.requests[0][1].resource_metrics[0].resource.attributes}
    assert resource["service.name"] == "checkout"
    found = receiver.metrics()
    assert {
        "http.server.request.duration",
        "http.server.active_requests",
        "http.server.request.body.size",
        "http.server.response.body.size",
        "http.client.request.duration",
        "kitmw.breaker.state",
    } <= set(found)
    assert {
        "http.request.method": "GET",
        "url.scheme": "http",
        "http.route": "/orders/{order_id}",
        "http.response.status_code": 200,
    } in found["http.server.request.duration"]
    port = int(server.url.rpartition(":")[2])
    assert {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": port,
        "http.response.status_code": 404,
        "error.type": "404",
    } in found["http.client.request.duration"]
