"""Websockets under real uvicorn with a real websocket client (issue 12, item 12).

* Only the policies that handle websockets (auth) see a websocket connection: it is
  never counted, logged or traced as an HTTP request, whichever other concerns are in
  the stack.
* A refused handshake gets the policy's real answer (401 with ``WWW-Authenticate``, 403)
  through the ASGI ``websocket.http.response`` extension, which every uvicorn websocket
  implementation offers. Without the extension (in-process below), the connection is
  closed before ``accept``, which a server turns into an HTTP 403.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

import kitmw
from kitmw.auth import APIKey

pytestmark = pytest.mark.e2e

BACKEND = APIKey(keys={"key-alice": "alice", "key-bob": "bob"}, scopes={"alice": ["chat"]})
IMPLEMENTATIONS = ["websockets-sansio", "wsproto"]  # uvicorn deprecates plain "websockets"


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


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


def chat_app() -> Starlette:
    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(f"{websocket.user.identity}: {text}")
        await websocket.close()

    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse("page")

    return Starlette(routes=[WebSocketRoute("/chat", chat), Route("/page", page)])


def stacked(registry: CollectorRegistry, provider: Any) -> Any:
    return kitmw.stack(
        chat_app(),
        tracing={"tracer_provider": provider},
        access_log=True,
        metrics={"registry": registry},
        auth={"backend": BACKEND, "scopes": {"/chat": ["chat"]}},
    )


def routes_counted(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == "http_server_requests_total":
                found[(s.labels["route"], s.labels["status"])] = s.value
    return found


def ws_url(server: Any, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


@pytest.mark.parametrize("ws", IMPLEMENTATIONS)
def test_a_websocket_is_never_counted_logged_or_traced_with_auth_in_the_stack(
    ws: str, serve_asgi: Any, access: Keep, spans: Any
) -> None:
    provider, exporter = spans
    registry = CollectorRegistry()
    with serve_asgi(stacked(registry, provider), ws=ws) as server:
        with connect(
            ws_url(server, "/chat"), additional_headers={"X-API-Key": "key-alice"}, open_timeout=10
        ) as c:
            c.send("hello")
            assert c.recv(timeout=10) == "alice: hello"  # auth ran: the user reached the app
        refused = pytest.raises(InvalidStatus)
        with refused:
            connect(ws_url(server, "/chat"), open_timeout=10)
        page = httpx.get(server.url + "/page", headers={"X-API-Key": "key-bob"}, timeout=10)
    assert page.status_code == 200
    assert routes_counted(registry) == {("/page", "200"): 1.0}  # the HTTP request only
    assert [r.__dict__["path"] for r in access.records] == ["/page"]
    assert [s.name for s in exporter.get_finished_spans()] == ["GET /page"]


@pytest.mark.parametrize("ws", IMPLEMENTATIONS)
def test_a_refused_handshake_gets_the_real_401_with_its_challenge(
    ws: str, serve_asgi: Any, spans: Any
) -> None:
    provider, _ = spans
    with serve_asgi(stacked(CollectorRegistry(), provider), ws=ws) as server:
        with pytest.raises(InvalidStatus) as missing:
            connect(ws_url(server, "/chat"), open_timeout=10)
        with pytest.raises(InvalidStatus) as forbidden:
            connect(ws_url(server, "/chat"), additional_headers={"X-API-Key": "key-bob"}, open_timeout=10)
    response = missing.value.response
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("APIKey")
    assert json.loads(response.body) == {"error": "unauthorized"}
    assert forbidden.value.response.status_code == 403
    assert json.loads(forbidden.value.response.body) == {"error": "forbidden"}


# -- a server without the websocket.http.response extension -----------------------------------


@pytest.mark.anyio
async def test_without_the_extension_a_refused_handshake_is_closed_before_accept() -> None:
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/chat",
        "raw_path": b"/chat",
        "root_path": "",
        "scheme": "ws",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "subprotocols": [],
        "asgi": {"version": "3.0"},
        "extensions": {},
    }
    await kitmw.Auth(chat_app(), backend=BACKEND)(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "unauthorized"}]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
