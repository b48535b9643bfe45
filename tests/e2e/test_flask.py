"""A real Flask app wrapped with kitmw, served by a real threaded WSGI server."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kitmw

pytestmark = pytest.mark.e2e

THREADS = 8
PER_THREAD = 25


class Gate:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.released: list[bool] = []


def make_app(gate: Gate | None = None) -> Any:
    """A Flask service as users write it: converters, an error, a streaming route."""
    from flask import Flask, Response, request, stream_with_context

    from kitmw.logging import current_request_id

    app = Flask(f"shop-{uuid.uuid4().hex[:8]}")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.get("/users/<name>/files/<path:filename>")
    def user_file(name: str, filename: str) -> str:
        return f"{name}:{filename}"

    @app.get("/error")
    def error() -> str:
        raise RuntimeError("handler failed")

    @app.get("/stream")
    def stream() -> Response:
        def body() -> Iterator[str]:
            yield f"{request.path} {current_request_id()}\n"
            if gate is not None:
                gate.released.append(gate.event.wait(timeout=10))
            yield f"done {current_request_id()}\n"

        return Response(stream_with_context(body()), mimetype="text/plain")

    return app


def requests_total(registry: CollectorRegistry, route: str, status: str) -> float:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == "http_server_requests_total" and s.labels == {
                "method": "GET",
                "route": route,
                "status": status,
            }:
                return s.value
    return 0.0


def routes_seen(registry: CollectorRegistry) -> set[str]:
    found = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == "http_server_requests_total":
                found.add(s.labels["route"])
    return found


def burst(url: str) -> list[int]:
    """THREADS clients, PER_THREAD sequential requests each; every status code."""

    def one_client(_: int) -> list[int]:
        with httpx.Client(timeout=10) as c:
            return [c.get(url).status_code for _ in range(PER_THREAD)]

    with ThreadPoolExecutor(THREADS) as pool:
        return [status for statuses in pool.map(one_client, range(THREADS)) for status in statuses]


def test_route_templates_label_the_metrics(serve_wsgi: Any, registry: CollectorRegistry) -> None:
    app = kitmw.stack(make_app(), access_log=True, metrics={"registry": registry})
    with serve_wsgi(app) as server, httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get("/items/1").json() == {"id": 1}
        assert c.get("/items/2").status_code == 200
        assert c.get("/users/ann/files/a/b.txt").text == "ann:a/b.txt"
        assert c.get("/items/not-a-number").status_code == 404
    assert requests_total(registry, "/items/<int:item_id>", "200") == 2
    assert requests_total(registry, "/users/<name>/files/<path:filename>", "200") == 1
    assert requests_total(registry, "<unmatched>", "404") == 1
    assert routes_seen(registry) == {
        "/items/<int:item_id>",
        "/users/<name>/files/<path:filename>",
        "<unmatched>",
    }


def test_wrapping_wsgi_app_in_place_keeps_route_templates(
    serve_wsgi: Any, registry: CollectorRegistry
) -> None:
    app = make_app()
    app.wsgi_app = kitmw.wsgi.Metrics(app.wsgi_app, registry=registry)  # type: ignore[method-assign]
    with serve_wsgi(app) as server:
        assert httpx.get(server.url + "/items/9", timeout=10).status_code == 200
        metrics = httpx.get(server.url + "/metrics", timeout=10)
    assert 'route="/items/<int:item_id>"' in metrics.text
    assert requests_total(registry, "/items/<int:item_id>", "200") == 1


def test_error_route_is_a_counted_500_that_echoes_the_request_id(
    serve_wsgi: Any, registry: CollectorRegistry
) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    access = logging.getLogger("kitmw.access")
    access.addHandler(handler)
    try:
        app = kitmw.stack(make_app(), access_log=True, metrics={"registry": registry})
        with serve_wsgi(app) as server:
            r = httpx.get(server.url + "/error", headers={"X-Request-ID": "err-1"}, timeout=10)
    finally:
        access.removeHandler(handler)
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "err-1"  # Flask rendered the 500: the header rides on it
    assert requests_total(registry, "/error", "500") == 1
    (record,) = [rec for rec in records if rec.__dict__.get("request_id") == "err-1"]
    assert record.levelno == logging.ERROR


def test_streaming_route_is_not_buffered_and_keeps_the_request_context(serve_wsgi: Any) -> None:
    gate = Gate()
    app = kitmw.stack(make_app(gate), access_log=True)
    with (
        serve_wsgi(app) as server,
        httpx.stream("GET", server.url + "/stream", headers={"X-Request-ID": "s-1"}, timeout=15) as r,
    ):
        chunks = r.iter_text()
        first = next(chunks)
        gate.event.set()
        rest = "".join(chunks)
    assert first == "/stream s-1\n"
    assert rest == "done s-1\n"  # the context is still bound while the body is iterated
    assert gate.released == [True]


@pytest.mark.parametrize("storage", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_rate_limit_is_exact_under_concurrent_threads(
    storage: str, serve_wsgi: Any, registry: CollectorRegistry, request: pytest.FixtureRequest
) -> None:
    uri = "memory://" if storage == "memory" else request.getfixturevalue("redis_url")
    app = kitmw.stack(
        make_app(),
        metrics={"registry": registry},
        ratelimit={"limit": "50/minute", "storage": uri, "namespace": f"flask-{uuid.uuid4().hex[:8]}"},
    )
    with serve_wsgi(app) as server:
        statuses = burst(server.url + "/items/1")
    assert len(statuses) == THREADS * PER_THREAD
    assert statuses.count(200) == 50
    assert statuses.count(429) == THREADS * PER_THREAD - 50
    assert requests_total(registry, "/items/<int:item_id>", "200") == 50
    assert requests_total(registry, "/items/<int:item_id>", "429") == THREADS * PER_THREAD - 50


def test_example_app_under_gunicorn_with_threads() -> None:
    """examples/flask_app.py as deployed: gunicorn, one gthread worker, four threads."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import free_port, wait_for_port

    root = Path(__file__).resolve().parents[2]
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "4", "-w", "1"]
    command += ["-b", f"127.0.0.1:{port}", "--no-control-socket", "examples.flask_app:app"]
    proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=20)
        url = f"http://127.0.0.1:{port}"
        with ThreadPoolExecutor(4) as pool:
            responses = list(
                pool.map(
                    lambda i: httpx.get(
                        f"{url}/items/{1 + i % 2}", headers={"X-Request-ID": f"f-{i}"}, timeout=10
                    ),
                    range(6),
                )
            )
        events = httpx.get(url + "/events", timeout=10)
        metrics = httpx.get(url + "/metrics", timeout=10).text
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=15)
    assert [r.headers["x-request-id"] for r in responses] == [f"f-{i}" for i in range(6)]
    assert events.text == "".join(f"data: {i}\n\n" for i in range(3))
    assert 'http_server_requests_total{method="GET",route="/items/<int:item_id>",status="200"} 6.0' in metrics
    lines = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    for i in range(6):  # the view's record and the access record, both with the request id
        assert sorted(r["logger"] for r in lines if r.get("request_id") == f"f-{i}") == [
            "kitmw.access",
            "shop",
        ]
