"""The access log's direct path writes exactly the line ``logging`` would have written.

When every handler an access record reaches is a plain JSON stream handler, the access
policy formats the line itself and writes it under the handler's lock, skipping
``Logger.handle`` (kitmw/logging/_direct.py). Each test runs the same requests through
a real Starlette app twice, once on the direct path and once forced onto the ordinary
one (a pass-through filter on the logger), and compares the lines byte for byte with
only the timestamp and the duration masked.
"""

from __future__ import annotations

import io
import json
import logging
import logging.config
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import kitmw
from kitmw.logging import ContextFilter, JsonFormatter, configure
from kitmw.logging._direct import json_targets

RID = "0f8fad5b-d9cb-469f-a165-70867728950e"
TIME = re.compile(r'"time":"[^"]*"')
DURATION = re.compile(r'"duration_ms":[0-9.e+-]+|(?<= )[0-9.]+ms\b')


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def app() -> Starlette:
    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("kaput\nsecond line")

    async def down(request: Request) -> PlainTextResponse:
        return PlainTextResponse("down", status_code=503)

    return Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/boom", boom),
            Route("/down", down),
            Route("/\u2028odd/{x}", item),
        ]
    )


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    lg = logging.getLogger("kitmw.test.direct")
    saved = (lg.level, lg.propagate, list(lg.handlers), list(lg.filters))
    lg.propagate = False
    yield lg
    lg.setLevel(saved[0])
    lg.propagate = saved[1]
    lg.handlers[:] = saved[2]
    lg.filters[:] = saved[3]


def json_output(logger: logging.Logger, stream: io.StringIO, **options: Any) -> logging.Handler:
    """``configure()`` JSON on ``logger``, then off with the capture handlers pytest attaches
    to every non-propagating logger as a test starts (they rightly force the ordinary path)."""
    handler = configure("json", logger=logger, stream=stream, **options)
    logger.handlers[:] = [h for h in logger.handlers if not type(h).__module__.startswith("_pytest")]
    return handler


async def run(application: Any, requests: list[tuple[str, dict[str, Any]]]) -> None:
    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for path, headers in requests:
            await client.get(path, headers=headers)


REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/items/1", {"x-request-id": RID, "user-agent": "pytest/1"}),
    ("/items/2?token=secret&page=2", {"x-request-id": RID}),
    ("/boom", {"x-request-id": RID}),
    ("/down", {"x-request-id": RID}),
    ("/nowhere", {"x-request-id": RID, "user-agent": "caf\u00e9 \u2028".encode()}),
    ("/%E2%80%A8odd/1", {"x-request-id": RID}),
]


def masked(stream: io.StringIO) -> list[str]:
    return [DURATION.sub("D", TIME.sub('"time":T', line)) for line in stream.getvalue().splitlines()]


async def both_ways(
    logger: logging.Logger, streams: list[io.StringIO], options: dict[str, Any] | None = None
) -> tuple[list[list[str]], list[list[str]]]:
    """(direct, ordinary): the masked lines of every stream, one run each way."""
    application = kitmw.AccessLog(app(), logger=logger, **(options or {}))
    await run(application, REQUESTS)
    direct = [masked(s) for s in streams]
    for s in streams:
        s.seek(0)
        s.truncate()
    logger.addFilter(lambda record: True)  # any logger filter sends records the ordinary way
    await run(application, REQUESTS)
    ordinary = [masked(s) for s in streams]
    return direct, ordinary


@pytest.mark.anyio
async def test_configure_json_takes_the_direct_path_and_writes_the_same_lines(logger: logging.Logger) -> None:
    stream = io.StringIO()
    json_output(logger, stream)
    assert json_targets(logger, logging.INFO, frozenset()) is not None
    direct, ordinary = await both_ways(logger, [stream])
    assert len(direct[0]) == len(REQUESTS)
    assert direct == ordinary
    first = json.loads(stream.getvalue().splitlines()[0])
    assert first["request_id"] == RID and first["route"] == "/items/{item_id}"


@pytest.mark.anyio
async def test_static_fields_query_and_errors_match(logger: logging.Logger) -> None:
    stream = io.StringIO()
    json_output(logger, stream, static={"service": "api", "version": 3})
    direct, ordinary = await both_ways(logger, [stream], {"log_query": True})
    assert direct == ordinary
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[1]["query"] == "token=[REDACTED]&page=2"
    assert lines[2]["error"] == "RuntimeError" and lines[2]["level"] == "error"
    assert all(line["service"] == "api" for line in lines)


@pytest.mark.anyio
async def test_a_static_field_named_like_an_access_field_keeps_the_ordinary_path(
    logger: logging.Logger,
) -> None:
    stream = io.StringIO()
    json_output(logger, stream, static={"method": "static"})
    assert json_targets(logger, logging.INFO, frozenset({"method"})) is None
    direct, ordinary = await both_ways(logger, [stream])
    assert direct == ordinary
    assert json.loads(stream.getvalue().splitlines()[0])["method"] == "static"


@pytest.mark.anyio
async def test_propagation_reaches_every_json_handler_as_logging_would(logger: logging.Logger) -> None:
    """The access logger's own handler, a dictConfig StreamHandler on its parent, and a
    WARNING handler there too that must get only the 5xx records."""
    parent = logging.getLogger("kitmw.test")
    saved = (list(parent.handlers), parent.level, parent.propagate)
    own, shared, warnings = io.StringIO(), io.StringIO(), io.StringIO()
    json_output(logger, own)
    logger.propagate = True
    for stream, level in ((shared, logging.DEBUG), (warnings, logging.WARNING)):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter(static={"env": "test"}))
        handler.addFilter(ContextFilter())
        handler.setLevel(level)
        parent.addHandler(handler)
    parent.propagate = False
    try:
        targets = json_targets(logger, logging.INFO, frozenset())
        assert targets is not None and len(targets) == 2
        direct, ordinary = await both_ways(logger, [own, shared, warnings])
    finally:
        parent.handlers[:] = saved[0]
        parent.setLevel(saved[1])
        parent.propagate = saved[2]
    assert direct == ordinary
    assert len(direct[0]) == len(direct[1]) == len(REQUESTS)
    assert len(direct[2]) == 2  # the exception and the 503


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda lg, h: h.addFilter(lambda r: True), id="handler-filter"),
        pytest.param(lambda lg, h: h.setFormatter(logging.Formatter()), id="plain-formatter"),
        pytest.param(lambda lg, h: lg.addHandler(logging.NullHandler()), id="other-handler"),
        pytest.param(lambda lg, h: setattr(lg, "disabled", True), id="disabled-logger"),
        pytest.param(lambda lg, h: lg.removeHandler(h), id="no-handler-at-all"),
    ],
)
def test_anything_logging_would_do_differently_takes_the_ordinary_path(
    logger: logging.Logger, change: Callable[[logging.Logger, logging.Handler], None]
) -> None:
    handler = json_output(logger, io.StringIO())
    assert json_targets(logger, logging.INFO, frozenset()) is not None
    change(logger, handler)
    try:
        assert json_targets(logger, logging.INFO, frozenset()) is None
    finally:
        logger.disabled = False


def test_a_custom_record_factory_takes_the_ordinary_path(logger: logging.Logger) -> None:
    json_output(logger, io.StringIO())
    factory = logging.getLogRecordFactory()
    logging.setLogRecordFactory(lambda *a, **k: factory(*a, **k))
    try:
        assert json_targets(logger, logging.INFO, frozenset()) is None
    finally:
        logging.setLogRecordFactory(factory)


@pytest.mark.anyio
async def test_a_failing_stream_is_reported_by_the_handler_and_the_request_still_succeeds(
    logger: logging.Logger,
) -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("disk full")

    handler = json_output(logger, Broken())
    reported: list[logging.LogRecord] = []
    handler.handleError = reported.append  # type: ignore[method-assign,assignment]
    transport = httpx.ASGITransport(app=kitmw.AccessLog(app(), logger=logger))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/items/1")
    assert response.status_code == 200
    assert len(reported) == 1 and reported[0].__dict__["route"] == "/items/{item_id}"


# -- one definition of the line: the fields of each kind of kitmw record, in one order --------


@pytest.mark.parametrize("static", [None, {"service": "api"}], ids=["no-static", "static"])
@pytest.mark.parametrize(
    "fields",
    [kitmw.logging.ACCESS_FIELDS, kitmw.logging.CLIENT_FIELDS, kitmw.logging.ENDPOINT_FIELDS],
    ids=["access", "client", "endpoint"],
)
def test_a_kitmw_record_is_written_in_its_kinds_order_whatever_order_it_was_built_in(
    fields: tuple[str, ...], static: dict[str, str] | None
) -> None:
    """The order of the line is the record kind's (context fields first), not the order in
    which the policy happened to set the attributes: the direct path writes that order
    too, so the two paths cannot drift apart through a reordered dict."""
    from kitmw.logging import CONTEXT_FIELDS

    record = logging.LogRecord("kitmw.test.order", logging.INFO, __file__, 0, "m", (), None)
    record.__dict__.update({key: f"v-{key}" for key in reversed(fields)})
    line = json.loads(JsonFormatter(static=static).format(record))
    context = [k for k in CONTEXT_FIELDS if k in fields]
    others = [k for k in fields if k not in CONTEXT_FIELDS]
    assert list(line) == ["time", "level", "logger", "message", *(static or {}), *context, *others]
