"""A Flask service observed by kitmw through its Flask extension, as users write it.

Run it with the development server (``flask --app examples.flask_app run``) or in
production with gunicorn's threaded worker::

    SHOP_ADMIN_KEY=... gunicorn -k gthread --threads 8 'examples.flask_app:app'

``Kitmw(app)`` reads the options of ``kitmw.stack()`` from ``app.config["KITMW"]`` and
installs one fused layer on ``app.wsgi_app`` (``app`` stays the Flask object, so
``flask run``, ``app.test_client()`` and other extensions keep working): a request id
echoed as ``X-Request-ID`` and carried by every log record, RED metrics labelled with
the url rule (``/items/<int:item_id>``), ``/metrics``, a deadline, a rate limit per
client, an API key for ``/admin``, and a breaker per route. The auth backend holds a
secret, so it is given in code: keywords are merged with the config, concern by
concern.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterator

from flask import Flask, Response, abort, stream_with_context

import kitmw.auth
import kitmw.timeout
from kitmw.flask import Kitmw, principal, request_id
from kitmw.logging import configure

configure(format="json")  # kitmw.access and the app's records, one JSON object per line
log = logging.getLogger("shop")

app = Flask(__name__)
app.config["KITMW"] = {
    "access_log": True,
    "metrics": True,  # also serves /metrics
    "timeout": 5.0,  # WSGI: exposed to views (kitmw.timeout.remaining()) and to kitmw.httpx calls
    "ratelimit": "20/second",
    "auth": {"optional": True, "scopes": {"/admin": ["admin"]}},  # a key is needed under /admin only
    "breaker": True,  # one breaker per url rule
    "exclude_paths": ["/metrics", "/health", "/livez", "/readyz"],  # scrapes and probes
}
# Unset, no key opens /admin: a random one nobody knows.
ADMIN_KEY = os.environ.get("SHOP_ADMIN_KEY") or secrets.token_urlsafe(32)
Kitmw(app, auth={"backend": kitmw.auth.APIKey(keys={ADMIN_KEY: "ops"}, scopes={"ops": ["admin"]})})

ITEMS = {1: "hammer", 2: "nails"}


@app.get("/items/<int:item_id>")
def item(item_id: int) -> dict[str, object]:
    if item_id not in ITEMS:
        abort(404)
    log.info("item %d looked up", item_id)  # carries request_id (and trace_id with tracing)
    return {"id": item_id, "name": ITEMS[item_id]}


@app.get("/me")
def me() -> dict[str, object]:
    caller = principal()  # None for an anonymous request
    return {"caller": caller and caller.identity, "request_id": request_id()}


@app.get("/admin/stats")
def stats() -> dict[str, object]:
    caller = principal()  # always set here: kitmw answered 401/403 otherwise
    budget = kitmw.timeout.remaining() or 0.0  # seconds left before the request's deadline
    return {"caller": caller and caller.identity, "items": len(ITEMS), "budget_ms": int(budget * 1000)}


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


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=8000, threaded=True)
