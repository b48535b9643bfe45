"""Every example in examples/ runs as written.

The app examples are imported and driven in-process (``httpx.ASGITransport`` /
``WSGITransport``); ``examples/httpx_client.py`` runs as a script (it needs no network:
its upstreams are an ``httpx.MockTransport``). The gunicorn runs of the Flask and Django
examples live in ``tests/e2e/test_flask.py`` and ``tests/e2e/test_django_wsgi.py``.

The examples register their metrics on prometheus-client's default registry, shared by
the whole test process: counts are compared before and after each request. Importing an
example configures logging (``kitmw.logging.configure``) as a service would; the
``example`` fixture puts the root logger back as it was, so no other test sees it.
"""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
DJANGO_EXAMPLE = ROOT / "examples" / "django_wsgi"
BASE = "http://example.test"


def requests_total(route: str, status: str, method: str = "GET") -> float:
    value = REGISTRY.get_sample_value(
        "http_server_requests_total", {"method": method, "route": route, "status": status}
    )
    return value or 0.0


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], ModuleType]]:
    """``example("examples.fastapi_app")``: the imported module, root logger restored after."""
    monkeypatch.syspath_prepend(str(ROOT))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield importlib.import_module
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


@pytest.fixture
def django_example(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example project's URLs, on whatever settings this process configured.

    Django configures its settings once per process, and other tests use
    ``tests/django_project.py``'s; the example's ``settings.py`` would also replace the
    logging configuration of the whole test process (its ``LOGGING``), so only its
    URLconf is used here. Its settings and logging are exercised under gunicorn by
    ``tests/e2e/test_django_wsgi.py``.
    """
    import django_project
    from django.test.utils import override_settings

    monkeypatch.syspath_prepend(str(DJANGO_EXAMPLE))
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "kitmw_example.settings")  # as the entry points set it
    django_project.setup()
    with override_settings(ROOT_URLCONF="kitmw_example.urls", ALLOWED_HOSTS=["*"]):
        yield


# ---------------------------------------------------------------------------- FastAPI


@pytest.mark.anyio
async def test_fastapi_example_serves_an_authorized_caller(example: Any) -> None:
    mod = example("examples.fastapi_app")
    before = requests_total("/items/{item_id}", "200")
    headers = {"Authorization": f"Bearer {mod.token()}", "X-Request-ID": "ex-fastapi-1"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mod.app), base_url=BASE) as client:
        response = await client.get("/items/3", headers=headers)
    assert response.status_code == 200
    assert response.json() == {"item_id": 3, "owner": "alice", "scopes": ["items:read"]}
    assert response.headers["x-request-id"] == "ex-fastapi-1"
    assert requests_total("/items/{item_id}", "200") == before + 1


@pytest.mark.anyio
async def test_fastapi_example_refuses_a_missing_token_and_a_missing_scope(example: Any) -> None:
    mod = example("examples.fastapi_app")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mod.app), base_url=BASE) as client:
        anonymous = await client.get("/items/3")
        wrong_scope = await client.get(
            "/items/3", headers={"Authorization": f"Bearer {mod.token(scope='orders:read')}"}
        )
    assert anonymous.status_code == 401 and anonymous.json() == {"error": "unauthorized"}
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert wrong_scope.status_code == 403 and wrong_scope.json() == {"error": "forbidden"}


@pytest.mark.anyio
async def test_fastapi_example_health_and_metrics_need_no_token_and_are_not_counted(example: Any) -> None:
    mod = example("examples.fastapi_app")
    before = requests_total("/health", "200")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mod.app), base_url=BASE) as client:
        health = await client.get("/health")
        metrics = await client.get("/metrics")
    assert health.json() == {"status": "ok"}
    assert metrics.status_code == 200 and "http_server_requests_total" in metrics.text
    assert requests_total("/health", "200") == before


@pytest.mark.anyio
async def test_fastapi_example_posts_with_a_token_and_maps_app_errors(example: Any) -> None:
    mod = example("examples.fastapi_app")
    headers = {"Authorization": f"Bearer {mod.token()}"}
    before = requests_total("/items/{item_id}", "404")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mod.app), base_url=BASE) as client:
        created = await client.post("/items", json={"name": "hammer"}, headers=headers)
        missing = await client.get("/items/0", headers=headers)
    assert created.json() == {"created": {"name": "hammer"}}
    assert missing.status_code == 404
    assert requests_total("/items/{item_id}", "404") == before + 1


def test_fastapi_example_prints_a_token_that_the_app_accepts(example: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.fastapi_app", "token"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    import jwt

    mod = example("examples.fastapi_app")
    claims = jwt.decode(result.stdout.strip(), mod.SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["scope"] == "items:read"


# ---------------------------------------------------------------------------- Starlette, raw ASGI


@pytest.mark.anyio
async def test_starlette_example_labels_a_mounted_route_by_its_template(example: Any) -> None:
    mod = example("examples.starlette_app")
    before = requests_total("/api/v1/users/{uid}", "200")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mod.app), base_url=BASE) as client:
        response = await client.get("/api/v1/users/42")
    assert response.json() == {"user": "42"}
    assert "x-request-id" in response.headers
    assert requests_total("/api/v1/users/{uid}", "200") == before + 1


@pytest.mark.anyio
async def test_starlette_example_streams_server_sent_events(example: Any) -> None:
    mod = example("examples.starlette_app")
    before = requests_total("/events", "200")
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=mod.app), base_url=BASE) as client,
        client.stream("GET", "/events") as response,
    ):
        chunks = [chunk async for chunk in response.aiter_text()]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "".join(chunks) == "".join(f"data: {i}\n\n" for i in range(3))
    assert requests_total("/events", "200") == before + 1


@pytest.mark.anyio
async def test_raw_asgi_example_answers_and_counts_as_unmatched(example: Any) -> None:
    mod = example("examples.raw_asgi")
    before = requests_total("<unmatched>", "200")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mod.app), base_url=BASE) as client:
        response = await client.get("/any/path")
    assert response.text == "hello\n"
    assert "x-request-id" in response.headers
    assert requests_total("<unmatched>", "200") == before + 1


# ---------------------------------------------------------------------------- Flask, Django


def test_flask_example_labels_by_url_rule_and_serves_metrics(example: Any) -> None:
    mod = example("examples.flask_app")
    assert mod.app.extensions["kitmw"].middleware is mod.app.wsgi_app  # installed by the extension
    before = requests_total("/items/<int:item_id>", "200")
    with httpx.Client(transport=httpx.WSGITransport(app=mod.app), base_url=BASE) as client:
        found = client.get("/items/1", headers={"X-Request-ID": "ex-flask-1"})
        missing = client.get("/items/9")
        health = client.get("/health")
        metrics = client.get("/metrics")
    assert found.json() == {"id": 1, "name": "hammer"}
    assert found.headers["x-request-id"] == "ex-flask-1"
    assert missing.status_code == 404 and health.text == "ok"
    assert requests_total("/items/<int:item_id>", "200") == before + 1
    assert 'route="/items/<int:item_id>"' in metrics.text


def test_flask_example_views_read_the_caller_the_request_id_and_the_budget(example: Any) -> None:
    mod = example("examples.flask_app")
    admin = {"X-API-Key": mod.ADMIN_KEY}
    with httpx.Client(transport=httpx.WSGITransport(app=mod.app), base_url=BASE) as client:
        anonymous = client.get("/me", headers={"X-Request-ID": "ex-flask-me"})
        me = client.get("/me", headers=admin)
        refused = client.get("/admin/stats")
        stats = client.get("/admin/stats", headers=admin)
    assert anonymous.json() == {"caller": None, "request_id": "ex-flask-me"}
    assert me.json()["caller"] == "ops" and me.json()["request_id"] == me.headers["x-request-id"]
    assert refused.status_code == 401 and refused.json() == {"error": "unauthorized"}
    assert stats.json()["caller"] == "ops" and 0 < stats.json()["budget_ms"] <= 5000


def test_django_wsgi_example_labels_by_url_pattern(example: Any, django_example: None) -> None:
    mod = example("kitmw_example.wsgi")
    before = requests_total("/items/<int:pk>", "200")
    with httpx.Client(transport=httpx.WSGITransport(app=mod.application), base_url=BASE) as client:
        item = client.get("/items/7")
        events = client.get("/events")
        metrics = client.get("/metrics")
    assert item.json() == {"id": 7}
    assert events.text == "".join(f"data: {i}\n\n" for i in range(3))
    assert requests_total("/items/<int:pk>", "200") == before + 1
    assert 'route="/items/<int:pk>"' in metrics.text


@pytest.mark.anyio
# Django's advice for sync streaming views under ASGI; the example serves WSGI and ASGI.
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
async def test_django_asgi_example_labels_by_url_pattern(example: Any, django_example: None) -> None:
    mod = example("kitmw_example.asgi")
    before = requests_total("/items/<int:pk>", "200")
    health_before = requests_total("/health", "200")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mod.application), base_url=BASE) as client:
        item = await client.get("/items/8", headers={"X-Request-ID": "ex-django-asgi"})
        health = await client.get("/health")
        events = await client.get("/events")
    assert item.json() == {"id": 8}
    assert item.headers["x-request-id"] == "ex-django-asgi"
    assert health.text == "ok"
    assert events.text == "".join(f"data: {i}\n\n" for i in range(3))
    assert requests_total("/items/<int:pk>", "200") == before + 1
    assert requests_total("/health", "200") == health_before  # excluded


def test_examples_share_the_default_registry_without_duplicates(example: Any, django_example: None) -> None:
    """All app examples in one process: one set of kitmw families on the default registry."""
    for name in (
        "examples.fastapi_app",
        "examples.starlette_app",
        "examples.raw_asgi",
        "examples.flask_app",
        "kitmw_example.wsgi",
        "kitmw_example.asgi",
    ):
        example(name)
    families = [f.name for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())]
    assert len(families) == len(set(families))
    import kitmw
    from kitmw.metrics import instruments

    # Building one more app on the default registry reuses the same metrics.
    kitmw.Metrics(example("examples.raw_asgi").hello)
    assert instruments().registry is REGISTRY


# ---------------------------------------------------------------------------- httpx client


def test_httpx_client_example_runs_offline_and_balances_away_from_the_dead_instance() -> None:
    result = subprocess.run(
        [sys.executable, "examples/httpx_client.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:6] == [f"{{'order': '{n}', 'by': 'orders-1.internal'}}" for n in range(6)]
    assert 'http_client_requests_total{host="orders-1.internal:8000",method="GET",status="200"} 6.0' in lines
    assert any(line.startswith('http_client_retries_total{host="orders-2.internal:8000"') for line in lines)
    log = result.stderr.splitlines()
    calls = [line for line in log if "logger=kitmw.client" in line]
    assert len(calls) == 6 and all("request_id=example-1" in line for line in calls)
    assert any("closed -> open" in line and "orders-2.internal" in line for line in log)
