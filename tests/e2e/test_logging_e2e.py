"""Access log end to end: a FastAPI app behind a real uvicorn on loopback."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import kitmw
from kitmw.logging import configure, current_request_id

pytestmark = pytest.mark.e2e

NGINX = "8a5d6b1f3c2e4d7f9a0b1c2d3e4f5a6b"


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """JSON output of ``kitmw.access`` and ``app.e2e`` (uvicorn runs in this process)."""
    stream = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("kitmw.access", "app.e2e")]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    handlers = []
    for lg in loggers:
        handlers.append(configure("json", logger=lg, stream=stream))
        lg.propagate = False
    yield stream
    for lg, handler, (level, propagate) in zip(loggers, handlers, saved, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)
        lg.propagate = propagate


def make_app() -> Any:
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, Any]:
        logging.getLogger("app.e2e").info("loading order %d", order_id)
        return {"order_id": order_id, "request_id": current_request_id()}

    @app.get("/crash")
    def crash() -> None:
        raise RuntimeError("db gone")

    return kitmw.AccessLog(app)


def test_uvicorn_request_id_reaches_response_app_log_and_access_log(
    serve_asgi: Any, json_lines: io.StringIO
) -> None:
    with serve_asgi(make_app()) as server:
        r = httpx.get(server.url + "/orders/9", headers={"X-Request-ID": NGINX}, timeout=10)
    assert r.headers["x-request-id"] == NGINX == r.json()["request_id"]
    app_line, access_line = (json.loads(line) for line in json_lines.getvalue().splitlines())
    assert (app_line["message"], app_line["request_id"]) == ("loading order 9", NGINX)
    assert access_line["request_id"] == NGINX
    assert (access_line["route"], access_line["status"], access_line["client"]) == (
        "/orders/{order_id}",
        200,
        "127.0.0.1",
    )


def test_uvicorn_500_carries_the_request_id_and_logs_an_error(
    serve_asgi: Any, json_lines: io.StringIO
) -> None:
    with serve_asgi(make_app()) as server:
        r = httpx.get(server.url + "/crash", timeout=10)
    assert r.status_code == 500
    (line,) = (json.loads(line) for line in json_lines.getvalue().splitlines())
    assert line["request_id"] == r.headers["x-request-id"]
    assert (line["level"], line["error"], line["error_message"]) == ("error", "RuntimeError", "db gone")
