"""A Flask service observed by kitmw, as users write it.

Run it with the development server (``python -m examples.flask_app``) or in production
with gunicorn's threaded worker::

    gunicorn -k gthread --threads 8 'examples.flask_app:app'

``kitmw.stack`` wraps ``app.wsgi_app`` in place, so ``app`` stays the Flask object
(``flask run``, ``app.test_client()`` and the extensions keep working) and every request
passes through one fused layer: a request id echoed as ``X-Request-ID`` and carried by
every log record, RED metrics labelled with the url rule (``/items/<int:item_id>``),
``/metrics``, and a rate limit per client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from flask import Flask, Response, abort, stream_with_context

import kitmw
from kitmw.logging import configure

configure(format="json")  # kitmw.access and the app's records, one JSON object per line
log = logging.getLogger("shop")

app = Flask(__name__)
ITEMS = {1: "hammer", 2: "nails"}


@app.get("/items/<int:item_id>")
def item(item_id: int) -> dict[str, object]:
    if item_id not in ITEMS:
        abort(404)
    log.info("item %d looked up", item_id)  # carries request_id (and trace_id with tracing)
    return {"id": item_id, "name": ITEMS[item_id]}


@app.get("/events")
def events() -> Response:
    """Server-sent events: each chunk leaves as soon as it is yielded (never buffered)."""

    @stream_with_context
    def stream() -> Iterator[str]:
        for i in range(3):
            yield f"data: {i}\n\n"
            time.sleep(0.5)

    return Response(stream(), mimetype="text/event-stream")


@app.get("/health")
def health() -> str:
    return "ok"


app.wsgi_app = kitmw.stack(  # type: ignore[method-assign]
    app.wsgi_app,
    access_log=True,
    metrics=True,
    ratelimit="20/second",
    exclude_paths=["/metrics", "/health", "/livez", "/readyz"],  # scrapes and probes
)

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=8000, threaded=True)
