"""``python otel_boot.py MODULE ARGS...``: run ``python -m MODULE ARGS...`` (a server:
gunicorn, uvicorn) with a global OpenTelemetry SDK tracer provider, as
``opentelemetry-instrument`` sets one in a deployment, so that an application configured
with ``tracing=True`` (the global provider) is traced without a line of its own.

Each finished span is appended to ``$SPANS_FILE`` as one JSON object (the test process
cannot read a worker's memory): its name, kind, trace and parent ids, status code and
the HTTP attributes.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import threading
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


class FileExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.lock, open(self.path, "a", encoding="utf-8") as out:
            for span in spans:
                assert span.context is not None
                attributes = dict(span.attributes or {})
                record = {
                    "name": span.name,
                    "kind": span.kind.name,
                    "trace_id": format(span.context.trace_id, "032x"),
                    "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
                    "status_code": span.status.status_code.name,
                    "route": attributes.get("http.route"),
                    "status": attributes.get("http.response.status_code", attributes.get("http.status_code")),
                    "error_type": attributes.get("error.type"),
                    "exceptions": [
                        (event.attributes or {}).get("exception.type") for event in span.events if event.name == "exception"
                    ],
                    "pid": os.getpid(),
                }
                out.write(json.dumps(record) + "\n")
        return SpanExportResult.SUCCESS


if __name__ == "__main__":
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter(os.environ["SPANS_FILE"])))
    trace.set_tracer_provider(provider)
    module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
