"""Real Flask apps with kitmw, served by real servers: werkzeug's threaded one, and gunicorn
(one gthread worker on loopback, started per test, every wait bounded)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port, wait_for_port
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kitmw

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

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


class Gunicorn:
    """``gunicorn -k gthread`` serving ``app`` (``module:attr``); its output once stopped."""

    def __init__(self, app: str, *, threads: int = 4, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = dict(os.environ)
        paths = [str(ROOT), str(Path(__file__).parent), environ.get("PYTHONPATH", "")]
        environ["PYTHONPATH"] = os.pathsep.join(paths)
        environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        environ.update(env or {})
        command = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", str(threads), "-w", "1"]
        command += ["-b", f"127.0.0.1:{self.port}", "--no-control-socket", "--timeout", "30", app]
        self.proc = subprocess.Popen(command, cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = ""

    def __enter__(self) -> Gunicorn:
        try:
            wait_for_port(self.port, timeout=20)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            output, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            output, _ = self.proc.communicate(timeout=15)
        self.output = output.decode()

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines (kitmw.logging.configure("json")) the service wrote."""
        return [json.loads(line) for line in self.output.splitlines() if line.startswith("{")]


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def test_example_app_under_gunicorn_with_threads() -> None:
    """examples/flask_app.py as deployed: the extension, gunicorn, one gthread worker."""
    with Gunicorn("examples.flask_app:app", env={"SHOP_ADMIN_KEY": "k-ops"}) as server:
        url = server.url
        with ThreadPoolExecutor(4) as pool:
            responses = list(
                pool.map(
                    lambda i: httpx.get(
                        f"{url}/items/{1 + i % 2}", headers={"X-Request-ID": f"f-{i}"}, timeout=10
                    ),
                    range(6),
                )
            )
        me = httpx.get(url + "/me", headers={"X-API-Key": "k-ops", "X-Request-ID": "me-1"}, timeout=10)
        anonymous = httpx.get(url + "/admin/stats", timeout=10)
        admin = httpx.get(url + "/admin/stats", headers={"X-API-Key": "k-ops"}, timeout=10)
        events = httpx.get(url + "/events", timeout=10)
        metrics = httpx.get(url + "/metrics", timeout=10).text
    assert [r.headers["x-request-id"] for r in responses] == [f"f-{i}" for i in range(6)]
    assert me.json() == {"caller": "ops", "request_id": "me-1"}
    assert anonymous.status_code == 401 and anonymous.json() == {"error": "unauthorized"}
    stats = admin.json()
    assert stats["caller"] == "ops" and 0 < stats["budget_ms"] <= 5000
    assert events.text == "".join(f"data: {i}\n\n" for i in range(3))
    assert 'http_server_requests_total{method="GET",route="/items/<int:item_id>",status="200"} 6.0' in metrics
    assert 'http_server_requests_total{method="GET",route="/admin/stats",status="401"} 1.0' in metrics
    lines = server.records()
    for i in range(6):  # the view's record and the access record, both with the request id
        assert sorted(r["logger"] for r in lines if r.get("request_id") == f"f-{i}") == [
            "kitmw.access",
            "shop",
        ]
    (access,) = [r for r in lines if r.get("request_id") == "me-1"]
    assert access["principal"] == "ops" and access["route"] == "/me"


class Upstream:
    """The service's upstream, run by the test: ``/hold`` and ``/hang`` answer when released."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.seen: list[tuple[str, str | None]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"]
        self.seen.append((path, environ.get("HTTP_X_REQUEST_ID")))
        if path == "/hold":
            self.arrived.set()
        self.release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"released"]


def test_a_flask_app_with_only_the_extension_gets_every_concern_under_gunicorn(
    serve_wsgi: Any, tmp_path: Path
) -> None:
    """tests/e2e/flask_service.py: tracing, access log, metrics, timeout, rate limit, auth,
    concurrency and breaker, all from app.config["KITMW"], under gunicorn."""
    upstream = Upstream()
    spans_file = tmp_path / "spans.jsonl"
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{'ab' * 8}-01"
    ann = {"X-API-Key": "k-ann"}
    with (
        serve_wsgi(upstream) as upstream_server,
        Gunicorn(
            "flask_service:app", env={"UPSTREAM_URL": upstream_server.url, "SPANS_FILE": str(spans_file)}
        ) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        try:
            # auth: the caller reaches the view; none, or a missing scope, is refused before it
            item = client.get("/items/1", headers={**ann, "X-Request-ID": "every-1", "traceparent": traceparent})
            order = client.get("/api/orders/7", headers=ann)
            anonymous = client.get("/items/1")
            forbidden = client.get("/admin/stats", headers=ann)
            admin = client.get("/admin/stats", headers={"X-API-Key": "k-bob"})
            # rate limit: 3/minute on /limited only
            limited = [client.get("/limited", headers=ann) for _ in range(4)]
            # breaker: per route, opens after two failures; other routes go on
            flaky = [client.get("/flaky", headers=ann).status_code for _ in range(3)]
            still = client.get("/items/2", headers=ann)
            # concurrency: one request at a time in /busy
            with ThreadPoolExecutor(1) as pool:
                busy = {**ann, "X-Request-ID": "busy-1"}
                held = pool.submit(httpx.get, server.url + "/busy", headers=busy, timeout=10)
                assert upstream.arrived.wait(10)
                refused = client.get("/busy", headers=ann)
                upstream.release.set()
                first = held.result(timeout=10)
            upstream.release.clear()
            # timeout: the view sees its 0.5 s budget; its upstream call is cut at the deadline
            deadline = client.get("/call-upstream", headers={**ann, "X-Request-ID": "deadline-1"})
            exposition = client.get("/metrics").text
        finally:
            upstream.release.set()

    assert item.status_code == 200
    assert item.json() == {"id": 1, "caller": "ann", "scopes": [], "request_id": "every-1"}
    assert item.headers["x-request-id"] == "every-1"
    assert order.json() == {"order": 7}
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("APIKey")
    assert forbidden.status_code == 403 and forbidden.json() == {"error": "forbidden"}
    assert admin.json() == {"caller": "bob"}

    assert [r.status_code for r in limited] == [200, 200, 200, 429]
    assert limited[3].json() == {"error": "rate_limited"} and int(limited[3].headers["retry-after"]) > 0

    assert flaky == [500, 500, 503]
    assert still.status_code == 200

    assert first.status_code == 200 and first.text == "released"
    assert refused.status_code == 503 and refused.json() == {"error": "concurrency_limited"}
    assert ("/hold", "busy-1") in upstream.seen  # the request id went on to the upstream

    answer = deadline.json()
    assert 0 < answer["budget"] <= 0.5  # exposed: the view's budget is its route's
    assert answer["upstream"] == "ReadTimeout"  # propagated: httpx's 10 s read timeout cut to the budget
    assert ("/hang", "deadline-1") in upstream.seen

    metrics = samples(exposition)

    def requests(route: str, status: str) -> float:
        key = ("http_server_requests_total", (("method", "GET"), ("route", route), ("status", status)))
        return metrics.get(key, 0.0)

    assert requests("/items/<int:item_id>", "200") == 2
    assert requests("/items/<int:item_id>", "401") == 1
    assert requests("/admin/stats", "403") == 1
    assert requests("/api/orders/<int:order_id>", "200") == 1  # a blueprint's rule, its prefix included
    assert requests("/limited", "429") == 1
    assert (requests("/flaky", "500"), requests("/flaky", "503")) == (2, 1)
    assert (requests("/busy", "200"), requests("/busy", "503")) == (1, 1)
    assert metrics[("kitmw_breaker_state", (("breaker", "shop:/flaky"), ("state", "open")))] == 1
    assert metrics[("kitmw_concurrency_rejections_total", (("scope", "/busy"), ("side", "server")))] == 1
    assert metrics[("kitmw_ratelimit_decisions_total", (("decision", "limited"), ("side", "server")))] == 1
    assert metrics[("kitmw_timeouts_total", (("scope", "/call-upstream"), ("side", "server")))] == 1

    records = server.records()
    (access,) = [r for r in records if r["logger"] == "kitmw.access" and r.get("request_id") == "every-1"]
    assert access["route"] == "/items/<int:item_id>" and access["principal"] == "ann"
    assert access["trace_id"] == trace_id  # tracing gave the access log the caller's trace

    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    (span,) = [s for s in spans if s["trace_id"] == trace_id]
    assert span["name"] == "GET /items/<int:item_id>" and span["kind"] == "SERVER"
    assert span["parent_id"] == "ab" * 8 and span["route"] == "/items/<int:item_id>"
    assert {s["name"] for s in spans} >= {"GET /limited", "GET /flaky", "GET /busy", "GET /call-upstream"}


def test_under_script_name_gunicorn_labels_and_routes_options_by_the_rule(tmp_path: Path) -> None:
    """The same service mounted at /shop (gunicorn's SCRIPT_NAME): labels, a per-route limit
    and auth's path scopes follow Flask's rules, without the prefix."""
    env = {"SCRIPT_NAME": "/shop", "UPSTREAM_URL": "http://127.0.0.1:9", "SPANS_FILE": str(tmp_path / "s")}
    ann = {"X-API-Key": "k-ann"}
    with Gunicorn("flask_service:app", env=env) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        order = client.get("/shop/api/orders/7", headers={**ann, "X-Request-ID": "mounted-1"})
        limited = [client.get("/shop/limited", headers=ann).status_code for _ in range(4)]
        forbidden = client.get("/shop/admin/stats", headers=ann)
    assert order.json() == {"order": 7}
    assert limited == [200, 200, 200, 429]
    assert forbidden.status_code == 403
    (access,) = [r for r in server.records() if r.get("request_id") == "mounted-1"]
    assert access["path"] == "/shop/api/orders/7" and access["route"] == "/api/orders/<int:order_id>"
    routes = {r["route"] for r in server.records() if r.get("logger") == "kitmw.access"}
    assert routes == {"/api/orders/<int:order_id>", "/limited", "/admin/stats"}
