from fastapi import FastAPI
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import kitmw


def tracer_provider(service_name: str) -> TracerProvider:
    """Spans in batches to the collector at OTEL_EXPORTER_OTLP_ENDPOINT (default localhost:4318)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


api = FastAPI()


@api.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


provider = tracer_provider("orders")
app = kitmw.stack(api, tracing={"tracer_provider": provider}, access_log=True, metrics=True)
