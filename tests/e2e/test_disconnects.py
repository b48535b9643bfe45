"""An aborted upload under real uvicorn and FastAPI is a 499, never a server failure.

A client sends ``Content-Length: 100000``, writes 1 KB and closes the socket. FastAPI
answers Starlette's ``ClientDisconnect`` with a 500 that nobody receives; kitmw records a
499 at INFO in the access log and metrics, and the breaker does not count it (issue 12,
item 7). The raw socket is the only way to send half a body.
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kitmw

pytestmark = pytest.mark.e2e


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.arrived = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.arrived:
            self.records.append(record)
            self.arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[logging.LogRecord]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.records) >= count, timeout=timeout), self.records
            return list(self.records)


@pytest.fixture
def access() -> Iterator[Keep]:
    logger = logging.getLogger("kitmw.access")
    handler = Keep()
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(saved)


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @app.post("/items")
    async def create(item: dict[str, Any]) -> dict[str, Any]:  # FastAPI reads and parses the body
        return item

    @app.get("/items/{item_id}")
    async def read(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    return app


def abort_upload(port: int, path: str) -> None:
    """Announce 100000 bytes, send 1 KB, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        sock.sendall(head.encode() + b"x" * 1024)


def requests_total(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == "http_server_requests_total":
                found[(s.labels["route"], s.labels["status"])] = s.value
    return found


@pytest.mark.parametrize("path", ["/upload", "/items"])
def test_aborted_uploads_are_499_at_info_and_never_open_the_breaker(
    path: str, access: Keep, serve_asgi: Any
) -> None:
    registry = CollectorRegistry()
    app = kitmw.stack(
        fastapi_app(),
        access_log=True,
        metrics={"registry": registry},
        breaker={"fail_max": 2, "reset_timeout": 600, "name": f"aborted-{uuid.uuid4().hex[:8]}"},
    )
    with serve_asgi(app) as server:
        for n in range(5):
            abort_upload(server.port, path)
            access.wait_for(n + 1)
        after = httpx.get(server.url + "/items/1", timeout=10)
    records = access.wait_for(6)
    assert [(r.__dict__["status"], r.levelno) for r in records[:5]] == [(499, logging.INFO)] * 5
    assert all(r.__dict__["error"] is None for r in records[:5])
    assert after.status_code == 200  # five "failures" would have opened a fail_max=2 breaker
    assert requests_total(registry) == {(path, "499"): 5.0, ("/items/{item_id}", "200"): 1.0}


def test_a_completed_upload_stays_200(access: Keep, serve_asgi: Any) -> None:
    registry = CollectorRegistry()
    app = kitmw.stack(fastapi_app(), access_log=True, metrics={"registry": registry})
    with serve_asgi(app) as server:
        r = httpx.post(server.url + "/upload", content=b"x" * 100_000, timeout=10)
        assert r.json() == {"size": 100_000}
    assert [r.__dict__["status"] for r in access.wait_for(1)] == [200]
    assert requests_total(registry) == {("/upload", "200"): 1.0}
