"""A real Django WSGI app wrapped with kitmw, served by real threaded WSGI servers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import django_project
import httpx
import pytest
from conftest import free_port, wait_for_port
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kitmw

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "django_wsgi"
THREADS = 8
PER_THREAD = 25


@pytest.fixture
def django_wsgi() -> Iterator[Any]:
    """Django's WSGI handler over tests/django_project.py's URLs."""
    with django_project.urls():
        from django.core.wsgi import get_wsgi_application

        yield get_wsgi_application()


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


def test_url_patterns_label_the_metrics(
    django_wsgi: Any, serve_wsgi: Any, registry: CollectorRegistry
) -> None:
    app = kitmw.stack(django_wsgi, access_log=True, metrics={"registry": registry})
    with serve_wsgi(app) as server, httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get("/items/1").text == "item 1"
        assert c.get("/items/2").status_code == 200
        assert c.get("/items/x").status_code == 404
    assert requests_total(registry, "/items/<int:pk>", "200") == 2
    assert requests_total(registry, "<unmatched>", "404") == 1


def test_included_and_regex_patterns_are_labelled_by_their_pattern(
    django_wsgi: Any, registry: CollectorRegistry
) -> None:
    app = kitmw.stack(django_wsgi, metrics={"registry": registry})
    transport = httpx.WSGITransport(app=app)
    with httpx.Client(transport=transport, base_url="http://test") as c:
        assert c.get("/api/v1/items/5").text == "item 5"
        assert c.get("/articles/2024/").text == "item 2024"
    assert requests_total(registry, "/api/v1/items/<int:pk>", "200") == 1
    assert requests_total(registry, "/articles/(?P<pk>[0-9]{4})/", "200") == 1


def test_error_view_is_a_counted_500_that_echoes_the_request_id(
    django_wsgi: Any, serve_wsgi: Any, registry: CollectorRegistry
) -> None:
    app = kitmw.stack(django_wsgi, access_log=True, metrics={"registry": registry})
    with serve_wsgi(app) as server:
        r = httpx.get(server.url + "/boom", headers={"X-Request-ID": "dj-err"}, timeout=10)
    assert r.status_code == 500  # Django rendered it; kitmw counted it
    assert r.headers["x-request-id"] == "dj-err"
    assert requests_total(registry, "/boom", "500") == 1


def test_streaming_response_is_not_buffered(django_wsgi: Any, serve_wsgi: Any) -> None:
    gate_id = uuid.uuid4().hex
    event, released = threading.Event(), []
    django_project.GATES[gate_id] = (event, released)
    app = kitmw.stack(django_wsgi, access_log=True, metrics={"registry": CollectorRegistry()})
    try:
        with (
            serve_wsgi(app) as server,
            httpx.stream("GET", server.url + "/stream", headers={"X-Gate": gate_id}, timeout=15) as r,
        ):
            chunks = r.iter_raw()
            first = next(chunks)
            event.set()
            rest = b"".join(chunks)
    finally:
        del django_project.GATES[gate_id]
    assert first + rest == b"first\nsecond\n"
    assert released == [True]


@pytest.mark.parametrize("storage", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_rate_limit_is_exact_under_concurrent_threads(
    storage: str,
    django_wsgi: Any,
    serve_wsgi: Any,
    registry: CollectorRegistry,
    request: pytest.FixtureRequest,
) -> None:
    uri = "memory://" if storage == "memory" else request.getfixturevalue("redis_url")
    app = kitmw.stack(
        django_wsgi,
        metrics={"registry": registry},
        ratelimit={"limit": "50/minute", "storage": uri, "namespace": f"dj-{uuid.uuid4().hex[:8]}"},
    )

    def one_client(url: str) -> list[int]:
        with httpx.Client(timeout=10) as c:
            return [c.get(url).status_code for _ in range(PER_THREAD)]

    with serve_wsgi(app) as server, ThreadPoolExecutor(THREADS) as pool:
        runs = list(pool.map(one_client, [server.url + "/items/1"] * THREADS))
    statuses = [s for run in runs for s in run]
    assert statuses.count(200) == 50
    assert statuses.count(429) == THREADS * PER_THREAD - 50
    assert requests_total(registry, "/items/<int:pk>", "200") == 50
    assert requests_total(registry, "/items/<int:pk>", "429") == THREADS * PER_THREAD - 50


def test_example_project_under_gunicorn_with_threads() -> None:
    """examples/django_wsgi as deployed: gunicorn, one gthread worker, four threads."""
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(EXAMPLE), env.get("PYTHONPATH", "")])
    env["DJANGO_SETTINGS_MODULE"] = "kitmw_example.settings"
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class",
            "gthread",
            "--threads",
            "4",
            "--workers",
            "1",
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            str(EXAMPLE),
            "--no-control-socket",
            "kitmw_example.wsgi:application",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, timeout=20)
        url = f"http://127.0.0.1:{port}"
        with ThreadPoolExecutor(4) as pool:
            responses = list(
                pool.map(
                    lambda i: httpx.get(f"{url}/items/{i}", headers={"X-Request-ID": f"g-{i}"}, timeout=10),
                    range(8),
                )
            )
        metrics = httpx.get(url + "/metrics", timeout=10).text
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=15)
    assert [r.json() for r in responses] == [{"id": i} for i in range(8)]
    assert [r.headers["x-request-id"] for r in responses] == [f"g-{i}" for i in range(8)]
    assert 'http_server_requests_total{method="GET",route="/items/<int:pk>",status="200"} 8.0' in metrics
    log = output.decode()
    for i in range(8):  # the view's own record and the access record carry the request id
        assert log.count(f'"request_id":"g-{i}"') == 2, log
