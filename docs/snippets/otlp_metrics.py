from fastapi import FastAPI
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

import kitmw


def meter_provider(service_name: str) -> MeterProvider:
    """Metrics every 60 s to the collector at OTEL_EXPORTER_OTLP_ENDPOINT (default localhost:4318)."""
    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    return MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": service_name}))


api = FastAPI()


@api.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


meters = meter_provider("orders")
app = kitmw.stack(api, metrics={"backend": "otel", "meter_provider": meters}, breaker=True)
