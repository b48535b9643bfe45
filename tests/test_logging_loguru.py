"""loguru: ``kitmw.logging.loguru_patcher`` puts the request context on every loguru record.

Real loguru (its global logger, configured as users configure it:
``logger.configure(patcher=...)``), real sinks, real Starlette and Flask apps behind
kitmw, real spans from the SDK, a real kitmw httpx transport between two services.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import kitmw
import kitmw.httpx
from kitmw.logging import LoguruPatcher, bind_context, loguru_patcher

loguru = pytest.importorskip("loguru")
logger = loguru.logger

RID = "8a5d6b1f3c2e4d7f9a0b1c2d3e4f5a6b"
KEYS = ("request_id", "trace_id", "span_id", "principal")


def _no_patch(record: Any) -> None:
    pass


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    """The records loguru's sinks see, with kitmw's patcher configured the documented way."""
    seen: list[dict[str, Any]] = []
    logger.configure(patcher=loguru_patcher)
    sink = logger.add(lambda message: seen.append(message.record), level="DEBUG")
    yield seen
    logger.remove(sink)
    logger.configure(patcher=_no_patch)  # loguru has no way back to "no patcher"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def context_of(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record["extra"][k] for k in KEYS}


def ids_of(span: Any) -> tuple[str, str]:
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


async def async_view(request: Request) -> PlainTextResponse:
    logger.info("async view")
    return PlainTextResponse("ok")


def sync_view(request: Request) -> PlainTextResponse:  # run in Starlette's thread pool
    logger.info("sync view")
    return PlainTextResponse("ok")


def starlette_app(**options: Any) -> Any:
    routes = [Route("/async", async_view), Route("/sync", sync_view)]
    return kitmw.stack(Starlette(routes=routes), **options)


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/async", "/sync"])
async def test_asgi_records_carry_the_requests_ids_and_principal(
    records: list[dict[str, Any]], spans: Any, path: str
) -> None:
    provider, exporter = spans
    served = starlette_app(
        tracing={"tracer_provider": provider}, access_log=True, auth=kitmw.auth.Basic(users={"alice": "pw"})
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=served), base_url="http://t") as c:
        r = await c.get(path, headers={"X-Request-ID": RID}, auth=("alice", "pw"))
    assert r.status_code == 200
    (span,) = exporter.get_finished_spans()
    (record,) = records
    trace_id, span_id = ids_of(span)
    assert context_of(record) == {"request_id": RID, "trace_id": trace_id, "span_id": span_id, "principal": "alice"}


def test_wsgi_records_carry_the_requests_ids_and_principal(records: list[dict[str, Any]], spans: Any) -> None:
    from flask import Flask

    provider, exporter = spans
    flask_app = Flask("loguru")

    @flask_app.get("/")
    def view() -> str:
        logger.info("flask view")
        return "ok"

    served = kitmw.stack(
        flask_app, tracing={"tracer_provider": provider}, access_log=True, auth=kitmw.auth.Basic(users={"bob": "pw"})
    )
    with httpx.Client(transport=httpx.WSGITransport(app=served), base_url="http://t") as c:
        assert c.get("/", headers={"X-Request-ID": RID}, auth=("bob", "pw")).status_code == 200
    (span,) = exporter.get_finished_spans()
    (record,) = records
    trace_id, span_id = ids_of(span)
    assert context_of(record) == {"request_id": RID, "trace_id": trace_id, "span_id": span_id, "principal": "bob"}


@pytest.mark.anyio
async def test_across_a_kitmw_httpx_call_both_services_records_share_the_request_and_trace(
    records: list[dict[str, Any]], spans: Any
) -> None:
    """front calls back through a kitmw transport: back's records carry the request id the
    call forwarded and the same trace, under back's own SERVER span (child of the CLIENT span)."""
    provider, exporter = spans
    tracing: Any = {"tracer_provider": provider}

    async def back_view(request: Request) -> PlainTextResponse:
        logger.info("back")
        return PlainTextResponse("from back")

    back = kitmw.stack(Starlette(routes=[Route("/users", back_view)]), tracing=tracing, access_log=True)
    transport = kitmw.httpx.AsyncTransport(transport=httpx.ASGITransport(app=back), tracing=tracing)

    async def front_view(request: Request) -> PlainTextResponse:
        logger.info("front, before the call")
        async with httpx.AsyncClient(transport=transport) as c:
            answer = await c.get("http://back.internal/users")
        logger.info("front, after the call")
        return PlainTextResponse(answer.text)

    front = kitmw.stack(Starlette(routes=[Route("/", front_view)]), tracing=tracing, access_log=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front), base_url="http://t") as c:
        assert (await c.get("/", headers={"X-Request-ID": RID})).text == "from back"
    by_message = {r["message"]: context_of(r) for r in records}
    assert set(by_message) == {"front, before the call", "back", "front, after the call"}
    servers = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
    (client_span,) = [s for s in exporter.get_finished_spans() if s.kind.name == "CLIENT"]
    (back_span,) = [s for s in servers if s.parent is not None and s.parent.span_id == client_span.context.span_id]
    (front_span,) = [s for s in servers if s is not back_span]
    front_ids = dict(zip(("trace_id", "span_id"), ids_of(front_span), strict=True))
    back_ids = dict(zip(("trace_id", "span_id"), ids_of(back_span), strict=True))
    assert by_message["front, before the call"] == by_message["front, after the call"]
    assert by_message["front, before the call"] == {"request_id": RID, **front_ids, "principal": None}
    assert by_message["back"] == {"request_id": RID, **back_ids, "principal": None}
    assert front_ids["trace_id"] == back_ids["trace_id"]


def test_outside_a_request_the_keys_are_there_with_the_default(records: list[dict[str, Any]]) -> None:
    logger.info("startup")
    assert records[0]["extra"] == dict.fromkeys(KEYS)
    text: list[str] = []
    logger.configure(patcher=LoguruPatcher(default="-"))  # the text-format recipe
    sink = logger.add(text.append, format="[{extra[request_id]}] {message}")
    try:
        logger.info("job")  # no KeyError in a text format
    finally:
        logger.remove(sink)
    assert text == ["[-] job\n"]


def test_values_bound_by_the_application_are_kept(records: list[dict[str, Any]]) -> None:
    with bind_context(request_id="from-context", trace_id="t" * 32):
        logger.bind(request_id="explicit").info("bound")
    assert records[0]["extra"]["request_id"] == "explicit"
    assert records[0]["extra"]["trace_id"] == "t" * 32


def test_a_principal_cannot_break_a_text_line(records: list[dict[str, Any]]) -> None:
    with bind_context(principal="mallory\r\nforged line"):
        logger.info("x")
    assert records[0]["extra"]["principal"] == "mallory\\r\\nforged line"


def test_an_enqueued_sink_gets_the_context_of_the_caller_not_of_its_thread(records: list[dict[str, Any]]) -> None:
    """``enqueue=True`` writes from loguru's own thread: the patcher has run by then, in
    the thread that logged, so the record carries that thread's request."""
    out = io.StringIO()
    sink = logger.add(out, serialize=True, enqueue=True)
    try:
        with bind_context(request_id=RID, principal="alice"):
            logger.info("hello")
        logger.complete()
    finally:
        logger.remove(sink)
    extra = json.loads(out.getvalue())["record"]["extra"]
    assert (extra["request_id"], extra["principal"]) == (RID, "alice")


def test_the_default_may_be_any_value_and_the_patcher_has_a_repr() -> None:
    assert repr(LoguruPatcher(default="-")) == "LoguruPatcher(default='-')"
    record: dict[str, Any] = {"extra": {}}
    LoguruPatcher(default=0)(record)  # a patcher is a function of the record dict
    assert record["extra"] == dict.fromkeys(KEYS, 0)


BLOCK_LOGURU = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"loguru", "structlog"}:
            raise ImportError(f"{name} is blocked: an optional extra")
sys.meta_path.insert(0, Block())
import kitmw, kitmw.logging
from kitmw.logging import bind_context, loguru_patcher
record = {"extra": {}}
with bind_context(request_id="r1"):
    loguru_patcher(record)
assert record["extra"]["request_id"] == "r1", record
print("ok")
"""


def test_kitmw_logging_imports_and_the_patcher_runs_without_loguru() -> None:
    done = subprocess.run([sys.executable, "-c", BLOCK_LOGURU], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def docs_recipe(index: int) -> str:
    """The ``index``-th python block of docs/logging.md's loguru section."""
    import re
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "logging.md").read_text()
    section = page[page.index("## loguru") : page.index("## The servers' own lines")]
    return str(re.findall(r"```python\n(.*?)```", section, re.S)[index])


@pytest.mark.anyio
async def test_the_docs_recipe_writes_the_request_and_trace_ids(spans: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/logging.md's loguru recipe, run as the page shows it (tests/test_docs.py runs it
    too): its sink writes the request id and the trace id of a request, ``-`` outside one."""
    from opentelemetry import trace

    provider, exporter = spans
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)  # the reader's provider
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    ns: dict[str, Any] = {"__name__": "recipe"}
    try:
        exec(compile(docs_recipe(0), "docs/logging.md", "exec"), ns)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ns["app"]), base_url="http://t") as c:
            assert (await c.get("/checkout", headers={"X-Request-ID": RID})).text == "paid"
        logger.info("outside")
    finally:
        logger.remove()
        logger.configure(patcher=_no_patch)
    (span,) = exporter.get_finished_spans()
    inside, outside = out.getvalue().splitlines()
    assert inside.endswith(f"INFO [{RID}] [{format(span.context.trace_id, '032x')}] charging the card")
    assert outside.endswith("INFO [-] [-] outside")


@pytest.mark.anyio
async def test_the_docs_recipe_brings_kitmws_records_to_loguru_with_their_own_ids(
    records: list[dict[str, Any]], spans: Any
) -> None:
    """docs/logging.md's ``ToLoguru``: the access and client records reach loguru's sinks
    with their fields; the client record keeps its CLIENT span's ids."""
    import logging

    provider, exporter = spans
    tracing: Any = {"tracer_provider": provider}
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    ns: dict[str, Any] = {"__name__": "recipe"}
    exec(compile(docs_recipe(1), "docs/logging.md", "exec"), ns)
    try:
        upstream = kitmw.httpx.AsyncTransport(
            transport=httpx.MockTransport(lambda request: httpx.Response(200)), tracing=tracing, access_log=True
        )

        async def view(request: Request) -> PlainTextResponse:
            logger.info("in the view")
            async with httpx.AsyncClient(transport=upstream) as c:
                await c.get("http://users.internal/u/1")
            return PlainTextResponse("ok")

        app = kitmw.stack(Starlette(routes=[Route("/", view)]), tracing=tracing, access_log=True)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            assert (await c.get("/", headers={"X-Request-ID": RID})).status_code == 200
    finally:
        root.handlers[:], root.level = saved
    spans_by_kind = {s.kind.name: s for s in exporter.get_finished_spans()}
    server, client_span = ids_of(spans_by_kind["SERVER"]), ids_of(spans_by_kind["CLIENT"])
    by_logger = {r["extra"].get("logger_name", "loguru"): r for r in records}
    assert {"loguru", "kitmw.client", "kitmw.access"} <= set(by_logger)  # and httpx's own line
    assert (by_logger["loguru"]["extra"]["trace_id"], by_logger["loguru"]["extra"]["span_id"]) == server
    assert (by_logger["kitmw.access"]["extra"]["trace_id"], by_logger["kitmw.access"]["extra"]["span_id"]) == server
    client_extra = by_logger["kitmw.client"]["extra"]
    assert (client_extra["trace_id"], client_extra["span_id"]) == client_span
    assert (client_extra["request_id"], client_extra["url"], client_extra["status"]) == (
        RID,
        "http://users.internal/u/1",
        200,
    )
    assert by_logger["kitmw.access"]["extra"]["route"] == "/"
    assert by_logger["kitmw.access"]["level"].name == "INFO"
