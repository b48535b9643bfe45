"""A Flask service with every kitmw concern from ``app.config["KITMW"]`` and the extension only.

Served by gunicorn in tests/e2e/test_flask.py. The environment gives it an upstream
(``UPSTREAM_URL``, a server the test controls) and a file for its spans (``SPANS_FILE``:
one JSON object per finished span, since the test process cannot read the worker's memory).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Any

import httpx
from flask import Blueprint, Flask
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import kitmw.auth
import kitmw.httpx
import kitmw.timeout
from kitmw.flask import Kitmw, principal, request_id, scopes
from kitmw.logging import configure


class FileExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.lock, open(self.path, "a", encoding="utf-8") as out:
            for span in spans:
                assert span.context is not None
                out.write(
                    json.dumps(
                        {
                            "name": span.name,
                            "kind": span.kind.name,
                            "trace_id": format(span.context.trace_id, "032x"),
                            "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
                            "route": (span.attributes or {}).get("http.route"),
                            "status": (span.attributes or {}).get("http.response.status_code")
                            or (span.attributes or {}).get("http.status_code"),
                        }
                    )
                    + "\n"
                )
        return SpanExportResult.SUCCESS


configure(format="json")
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter(os.environ["SPANS_FILE"])))
UPSTREAM = os.environ["UPSTREAM_URL"]
upstream = httpx.Client(transport=kitmw.httpx.Transport(), base_url=UPSTREAM, timeout=10)

app = Flask(__name__)
app.config["KITMW"] = {
    "tracing": {"tracer_provider": provider},
    "access_log": True,
    "metrics": True,
    "timeout": {"seconds": 10.0, "routes": {"/call-upstream": 0.5}},
    "ratelimit": {"routes": {"/limited": "3/minute"}},
    "auth": {
        "backend": kitmw.auth.APIKey(keys={"k-ann": "ann", "k-bob": "bob"}, scopes={"bob": ["admin"]}),
        "scopes": {"/admin": ["admin"]},
    },
    "concurrency": {"routes": {"/busy": 1}},
    "breaker": {"fail_max": 2, "reset_timeout": 60, "name": "shop"},
    "exclude_paths": ["/metrics", "/health"],
}
Kitmw(app)


@app.get("/items/<int:item_id>")
def item(item_id: int) -> dict[str, Any]:
    caller = principal()
    return {
        "id": item_id,
        "caller": caller and caller.identity,
        "scopes": sorted(scopes()),
        "request_id": request_id(),
    }


@app.get("/admin/stats")
def stats() -> dict[str, Any]:
    caller = principal()
    return {"caller": caller and caller.identity}


@app.get("/limited")
def limited() -> str:
    return "ok"


@app.get("/flaky")
def flaky() -> str:
    raise RuntimeError("the database is down")


@app.get("/busy")
def busy() -> str:
    # Held inside the view until the test lets the upstream answer.
    return upstream.get("/hold").text


@app.get("/call-upstream")
def call_upstream() -> dict[str, Any]:
    budget = kitmw.timeout.remaining()
    try:
        answer = upstream.get("/hang")  # httpx's timeout is 10 s: the deadline cuts it
    except (httpx.TimeoutException, TimeoutError) as exc:
        return {"budget": budget, "upstream": type(exc).__name__}
    return {"budget": budget, "upstream": answer.text}


orders = Blueprint("orders", __name__, url_prefix="/api")


@orders.get("/orders/<int:order_id>")
def order(order_id: int) -> dict[str, Any]:
    return {"order": order_id}


app.register_blueprint(orders)


@app.get("/health")
def health() -> str:
    return "ok"
