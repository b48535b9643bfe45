"""``examples/fastapi_service.py`` (instrument, require, limit, breaker) served by real uvicorn.

The example is imported as a service module would be, then served over loopback. Its
metrics go to prometheus-client's default registry, shared by the test process: counts
are compared before and after. State the example keeps (rate-limit budgets, the pay
route's breaker) lives as long as the module, so each test uses its own caller and only
one test opens the breaker.
"""

import importlib
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import jwt
import pytest
from prometheus_client import REGISTRY

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The imported example; the root logger (its ``kitmw.logging.configure``) restored after."""
    monkeypatch.syspath_prepend(str(ROOT))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield importlib.import_module("examples.fastapi_service")
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


@pytest.fixture
def server(service: ModuleType, serve_asgi: Any) -> Iterator[httpx.Client]:
    with serve_asgi(service.app) as running, httpx.Client(base_url=running.url, timeout=10) as client:
        yield client


def caller(service: ModuleType, scope: str = "orders:read orders:write") -> dict[str, str]:
    return {"Authorization": f"Bearer {service.token(subject=f'user-{uuid.uuid4().hex[:8]}', scope=scope)}"}


def served(route: str, status: str, method: str = "GET") -> float:
    labels = {"method": method, "route": route, "status": status}
    return REGISTRY.get_sample_value("http_server_requests_total", labels) or 0.0


def test_require_answers_401_403_and_200(service: ModuleType, server: httpx.Client) -> None:
    before = served("/orders/{order_id}", "403")
    anonymous = server.get("/orders/7")
    assert anonymous.status_code == 401 and anonymous.json() == {"error": "unauthorized"}
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="kitmw"'
    reader_only = server.post("/orders", headers=caller(service, "orders:read"))
    assert reader_only.status_code == 403 and reader_only.json() == {"error": "forbidden"}
    assert 'scope="orders:write"' in reader_only.headers["www-authenticate"]
    wrong = server.get("/orders/7", headers=caller(service, "profile"))
    assert wrong.status_code == 403
    ok = server.get("/orders/7", headers={**caller(service), "X-Request-ID": "e2e-orders-1"})
    assert ok.status_code == 200 and ok.json()["order_id"] == 7
    assert ok.headers["x-request-id"] == "e2e-orders-1"
    assert served("/orders/{order_id}", "403") == before + 1


def test_openapi_lists_the_scheme_and_swagger_ui_is_served(server: httpx.Client) -> None:
    schema = server.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {
        "JWT": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    }
    assert schema["paths"]["/orders/{order_id}"]["get"]["security"] == [{"JWT": ["orders:read"]}]
    assert schema["paths"]["/orders"]["post"]["security"] == [{"JWT": ["orders:write"]}]
    assert "/health" in schema["paths"] and "security" not in schema["paths"]["/health"]["get"]
    docs = server.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text


def test_limit_gives_each_caller_five_orders_a_minute(service: ModuleType, server: httpx.Client) -> None:
    alice, bob = caller(service), caller(service)
    answers = [server.post("/orders", headers=alice) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    refused = answers[-1]
    assert refused.json() == {"error": "rate_limited"}
    assert refused.headers["retry-after"].isdigit()
    assert '"default";q=5;w=60' in refused.headers.get_list("ratelimit-policy")
    assert server.post("/orders", headers=bob).status_code == 200  # bob's own budget


def test_dependency_overrides_and_the_routes_own_breaker(service: ModuleType, server: httpx.Client) -> None:
    headers = caller(service)
    subject = jwt.decode(headers["Authorization"][7:], options={"verify_signature": False})["sub"]
    assert server.post("/orders/1/pay", headers=headers).json() == {"charge": "ch_1", "by": subject}

    class Down:
        async def charge(self, order_id: int) -> str:
            raise ConnectionError("payment provider down")

    service.app.dependency_overrides[service.payment_provider] = Down
    # uvicorn drops a keep-alive connection whose request raised (bare FastAPI too): one each.
    once = {**headers, "Connection": "close"}
    try:
        codes = [server.post("/orders/2/pay", headers=once).status_code for _ in range(5)]
    finally:
        service.app.dependency_overrides.clear()
    assert codes == [500, 500, 500, 503, 503]  # fail_max=3 on this route
    open_ = server.post("/orders/3/pay", headers=headers)
    assert open_.status_code == 503 and open_.json() == {"error": "circuit_open"}
    assert int(open_.headers["retry-after"]) > 5
    assert server.get("/orders/3", headers=headers).status_code == 200  # other routes unaffected


def test_health_and_metrics_need_no_token(server: httpx.Client) -> None:
    assert server.get("/health").json() == {"status": "ok"}
    metrics = server.get("/metrics")
    assert metrics.status_code == 200 and "http_server_requests_total" in metrics.text


def test_the_printed_token_is_accepted(service: ModuleType, server: httpx.Client) -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "examples.fastapi_service", "token"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    answer = server.get("/orders/9", headers={"Authorization": f"Bearer {printed}"})
    assert answer.status_code == 200 and answer.json() == {"order_id": 9, "owner": "alice"}
