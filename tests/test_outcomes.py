"""One answer for odd endings, the same in the access log, metrics, span and breaker.

* A client that leaves before the response is complete is a **499** at INFO, never a
  breaker failure, whatever the framework sent after the disconnect (FastAPI answers
  Starlette's ``ClientDisconnect`` with a 500). A disconnect the server reports *after* a
  complete response does not turn it into a 499 (issue 12, item 7).
* An application that returns without sending a response is a **500** (what ASGI and
  WSGI servers answer then) with the error ``NoResponse``, and the span says no response
  was sent (issue 12, item 9).

In-process: the ASGI driver with a scripted ``receive``, the WSGI driver through
httpx's ``WSGITransport``. The same through real uvicorn is in ``tests/e2e/test_disconnects.py``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

import kitmw


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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def statuses(registry: CollectorRegistry) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == "http_server_requests_total":
                found[s.labels["status"]] = found.get(s.labels["status"], 0) + s.value
    return found


def stacked(app: Any, registry: CollectorRegistry, provider: Any) -> Any:
    return kitmw.stack(
        app,
        tracing={"tracer_provider": provider},
        access_log=True,
        metrics={"registry": registry},
        breaker={
            "fail_max": 1,
            "reset_timeout": 600,
            "name": f"outcomes-{uuid.uuid4().hex[:8]}",
            "per_route": False,  # these apps route nothing: one breaker, read below
        },
    )


def breaker_state(app: Any) -> str:
    (policy,) = [p for p in app.policies if p.name == "breaker"]
    return str(policy.breaker.state)


async def call(app: Any, incoming: list[dict[str, Any]], path: str = "/upload") -> list[dict[str, Any]]:
    """Drive ``app`` with the given ``receive`` messages (then ``http.disconnect`` forever)."""
    sent: list[dict[str, Any]] = []
    messages = list(incoming)

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-length", b"100000"), (b"host", b"test")],
        "client": ("127.0.0.1", 40000),
        "server": ("test", 80),
        "scheme": "http",
        "root_path": "",
    }
    try:
        await app(scope, receive, send)
    except ClientDisconnect:
        pass  # what Starlette's ServerErrorMiddleware re-raises after its 500
    return sent


# -- a client that left: 499 ---------------------------------------------------------------


def fastapi_upload_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    return app


@pytest.mark.anyio
async def test_aborted_upload_is_a_499_at_info_whatever_fastapi_sent(access: Keep, spans: Any) -> None:
    provider, exporter = spans
    registry = CollectorRegistry()
    app = stacked(fastapi_upload_app(), registry, provider)
    partial = {"type": "http.request", "body": b"x" * 1024, "more_body": True}
    for _ in range(3):
        sent = await call(app, [partial])
        assert sent[0]["status"] == 500  # FastAPI's answer to ClientDisconnect, sent to nobody
    assert [(r.__dict__["status"], r.levelno) for r in access.records] == [(499, logging.INFO)] * 3
    assert all(r.__dict__["error"] is None for r in access.records)
    assert statuses(registry) == {"499": 3.0}
    assert breaker_state(app) == "closed"  # fail_max=1: a single failure would have opened it
    assert all(span.attributes["http.status_code"] == 499 for span in exporter.get_finished_spans())


@pytest.mark.anyio
async def test_a_disconnect_after_a_complete_response_keeps_its_status(access: Keep, spans: Any) -> None:
    provider, _ = spans
    registry = CollectorRegistry()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the whole body
        await JSONResponse({"ok": True})(scope, receive, send)
        message = await receive()  # servers answer http.disconnect once the response is done
        assert message["type"] == "http.disconnect"

    stack = stacked(app, registry, provider)
    sent = await call(stack, [{"type": "http.request", "body": b"{}", "more_body": False}])
    assert sent[0]["status"] == 200
    assert [r.__dict__["status"] for r in access.records] == [200]
    assert statuses(registry) == {"200": 1.0}


@pytest.mark.anyio
async def test_a_disconnect_while_the_app_still_answers_is_a_499(access: Keep, spans: Any) -> None:
    """The app noticed the client left (``is_disconnected``) and answered anyway."""
    provider, _ = spans
    registry = CollectorRegistry()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        assert await request.is_disconnected()
        await JSONResponse({"late": True})(scope, receive, send)

    await call(stacked(app, registry, provider), [{"type": "http.disconnect"}])
    assert [(r.__dict__["status"], r.levelno) for r in access.records] == [(499, logging.INFO)]
    assert statuses(registry) == {"499": 1.0}


@pytest.mark.anyio
async def test_an_inner_layer_sees_the_same_499_and_500(access: Keep, spans: Any) -> None:
    """A stack() outside and add_middleware inside: the inner layer's exits run first."""
    provider, _ = spans
    outer, inner = CollectorRegistry(), CollectorRegistry()
    api = fastapi_upload_app()
    api.add_middleware(kitmw.Metrics, registry=inner)
    app = stacked(api, outer, provider)
    await call(app, [{"type": "http.request", "body": b"x" * 1024, "more_body": True}])
    assert statuses(inner) == statuses(outer) == {"499": 1.0}

    async def silent(scope: Any, receive: Any, send: Any) -> None:
        return None

    outer, inner = CollectorRegistry(), CollectorRegistry()
    app = stacked(kitmw.Metrics(silent, registry=inner), outer, provider)
    await call(app, [{"type": "http.request", "body": b"", "more_body": False}], path="/silent")
    assert statuses(inner) == statuses(outer) == {"500": 1.0}


# -- an app that sends no response: 500 -----------------------------------------------------


@pytest.mark.anyio
async def test_asgi_app_that_sends_no_response_is_one_500_everywhere(access: Keep, spans: Any) -> None:
    provider, exporter = spans
    registry = CollectorRegistry()

    async def silent(scope: Any, receive: Any, send: Any) -> None:
        return None

    app = stacked(silent, registry, provider)
    await call(app, [{"type": "http.request", "body": b"", "more_body": False}], path="/silent")
    (record,) = access.records
    assert (record.__dict__["status"], record.levelno, record.__dict__["error"]) == (
        500,
        logging.ERROR,
        "NoResponse",
    )
    assert statuses(registry) == {"500": 1.0}
    (span,) = exporter.get_finished_spans()
    assert span.attributes["http.status_code"] == 500
    assert not span.status.is_ok and "without sending a response" in (span.status.description or "")
    assert breaker_state(app) == "open"  # fail_max=1: it counted as the app's failure


def test_wsgi_app_that_never_calls_start_response_is_one_500_everywhere(access: Keep, spans: Any) -> None:
    provider, exporter = spans
    registry = CollectorRegistry()

    def silent(environ: Any, start_response: Any) -> list[bytes]:
        return []

    app = stacked(silent, registry, provider)
    with (
        httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as client,
        pytest.raises(Exception),  # noqa: B017  (the server's complaint; werkzeug's differs from httpx's)
    ):
        client.get("/silent")
    (record,) = access.records
    assert (record.__dict__["status"], record.levelno, record.__dict__["error"]) == (
        500,
        logging.ERROR,
        "NoResponse",
    )
    assert statuses(registry) == {"500": 1.0}
    (span,) = exporter.get_finished_spans()
    assert span.attributes["http.status_code"] == 500
    assert "without sending a response" in (span.status.description or "")
    assert breaker_state(app) == "open"
