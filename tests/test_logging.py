"""Access log and request id: one record per request, ids that cannot be forged, context on
every record, and formatters that never let a value break a line.

Apps are real FastAPI/Starlette apps driven in process through ``httpx.ASGITransport``
(one raw ASGI scope where httpx cannot send the bytes); records are read from a handler
attached for the test, or from ``configure()``'s own output parsed line by line.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import kitmw
from kitmw.errors import ConfigError, Rejection
from kitmw.exchange import Exchange, Policy
from kitmw.logging import (
    AccessLogPolicy,
    ClientLogPolicy,
    ContextFilter,
    bind_context,
    configure,
    current_request_id,
    current_trace_id,
    is_valid_request_id,
    structlog_processor,
)
from kitmw.testing import NeutralClientExchange, NeutralExchange

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
NGINX = "8a5d6b1f3c2e4d7f9a0b1c2d3e4f5a6b"
ULID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Capture(logging.Handler):
    """Collects records (with the context filter, as a user's handler would have it)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def named(self, name: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.name == name]


@pytest.fixture
def capture() -> Iterator[Capture]:
    """Records of ``kitmw.access``, ``kitmw.client`` and ``app``, at INFO and above."""
    handler = Capture()
    loggers = [logging.getLogger(n) for n in ("kitmw.access", "kitmw.client", "app")]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    yield handler
    for lg, (level, propagate) in zip(loggers, saved, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)
        lg.propagate = propagate


@pytest.fixture
def output() -> Iterator[Any]:
    """``output("json")``: configure() on ``kitmw.access`` and ``app``; returns the stream."""
    names = ("kitmw.access", "app")
    saved = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names}

    def make(fmt: str) -> io.StringIO:
        stream = io.StringIO()
        for n in names:
            configure(fmt, logger=n, stream=stream)
            logging.getLogger(n).propagate = False
        return stream

    yield make
    for n, (level, propagate) in saved.items():
        lg = logging.getLogger(n)
        for h in list(lg.handlers):
            if type(h).__name__ == "KitmwHandler":
                lg.removeHandler(h)
        lg.setLevel(level)
        lg.propagate = propagate


def fastapi_app() -> FastAPI:
    app = FastAPI()
    app_log = logging.getLogger("app")

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, Any]:
        app_log.info("reading item %s", item_id)
        return {"item_id": item_id, "request_id": current_request_id()}

    @app.get("/sync")
    def sync_handler() -> dict[str, Any]:
        app_log.info("sync handler")
        return {"request_id": current_request_id()}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    @app.get("/down")
    async def down() -> PlainTextResponse:
        return PlainTextResponse("down", status_code=503)

    @app.get("/health")
    async def health() -> dict[str, str]:
        app_log.info("health")
        return {"status": "ok"}

    @app.post("/items/{item_id}")
    async def upload(item_id: int, request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("203.0.113.7", 4321)),
        base_url="http://test",
    )


# -- request id in ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "rid",
    [
        pytest.param(UUID, id="uuid"),
        pytest.param(UUID.replace("-", ""), id="uuid-no-dashes"),
        pytest.param(NGINX, id="nginx-32-hex"),
        pytest.param(ULID, id="ulid"),
        pytest.param(TRACE_ID, id="w3c-trace-id"),
        pytest.param("req_42.a:b+c/d=", id="safe-chars"),
    ],
)
async def test_well_formed_request_id_is_kept(rid: str) -> None:
    async with client(kitmw.AccessLog(fastapi_app())) as c:
        r = await c.get("/items/1", headers={"X-Request-ID": rid})
    assert r.headers["x-request-id"] == rid
    assert r.json()["request_id"] == rid


@pytest.mark.anyio
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"abc\r\nX-Injected: 1", id="crlf"),
        pytest.param(b"a" * 10_000, id="10kB"),
        pytest.param(b"a" * 129, id="129-chars"),
        pytest.param(b"has space", id="space"),
        pytest.param(b'quote"d', id="quote"),
        pytest.param(b"\xe9t\xe9\xff", id="non-utf8"),
        pytest.param(b"", id="empty"),
        # the placeholder text and logfmt lines write for "no request id": JSON dropped it
        pytest.param(b"-", id="lone-dash"),
    ],
)
async def test_malformed_request_id_is_replaced(raw: bytes, capture: Capture) -> None:
    async with client(kitmw.AccessLog(fastapi_app())) as c:
        r = await c.get("/items/1", headers=[(b"x-request-id", raw)])
    assert HEX32.fullmatch(r.headers["x-request-id"])
    assert r.json()["request_id"] == r.headers["x-request-id"]
    (record,) = capture.named("kitmw.access")
    assert record.request_id == r.headers["x-request-id"]


@pytest.mark.anyio
async def test_non_utf8_request_id_in_a_raw_scope_is_replaced_and_never_logged(capture: Capture) -> None:
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        logging.getLogger("app").info("inside")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw = b"\xff\xfe\r\n\x00evil"
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "query_string": b"",
        "headers": [(b"x-request-id", raw)],
        "client": ("127.0.0.1", 1),
    }
    await kitmw.AccessLog(app)(scope, receive, send)
    echoed = dict(sent[0]["headers"])[b"x-request-id"].decode("ascii")
    assert HEX32.fullmatch(echoed)
    assert [r.request_id for r in capture.records] == [echoed, echoed]
    for record in capture.records:
        assert "evil" not in json.dumps(vars(record), default=str)


@pytest.mark.anyio
async def test_missing_request_id_is_generated() -> None:
    async with client(kitmw.AccessLog(fastapi_app())) as c:
        first = await c.get("/items/1")
        second = await c.get("/items/1")
    assert HEX32.fullmatch(first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.anyio
async def test_untrusted_mode_always_generates() -> None:
    async with client(kitmw.AccessLog(fastapi_app(), trust_request_id=False)) as c:
        r = await c.get("/items/1", headers={"X-Request-ID": UUID})
    assert r.headers["x-request-id"] != UUID


@pytest.mark.anyio
async def test_extra_validator_is_stricter_not_looser() -> None:
    def uuid_only(value: str) -> bool:
        return len(value) == 36

    async with client(kitmw.AccessLog(fastapi_app(), validate=uuid_only)) as c:
        kept = await c.get("/items/1", headers={"X-Request-ID": UUID})
        replaced = await c.get("/items/1", headers={"X-Request-ID": NGINX})
    assert kept.headers["x-request-id"] == UUID
    assert replaced.headers["x-request-id"] != NGINX


@pytest.mark.anyio
async def test_reject_invalid_answers_400_with_a_fresh_id(capture: Capture) -> None:
    async with client(kitmw.AccessLog(fastapi_app(), reject_invalid=True)) as c:
        r = await c.get("/items/1", headers={"X-Request-ID": "no way"})
    assert r.status_code == 400
    assert r.json()["error"] == "bad_request_id"
    assert HEX32.fullmatch(r.headers["x-request-id"])
    (record,) = capture.named("kitmw.access")
    assert record.status == 400


@pytest.mark.anyio
async def test_custom_header_name_and_generator() -> None:
    counter = iter(range(1, 1000))
    app = kitmw.AccessLog(
        fastapi_app(), request_id_header="X-Correlation-ID", generate=lambda: f"id-{next(counter)}"
    )
    async with client(app) as c:
        kept = await c.get("/items/1", headers={"X-Correlation-ID": ULID})
        made = await c.get("/items/1")
    assert kept.headers["x-correlation-id"] == ULID
    assert made.headers["x-correlation-id"].startswith("id-")
    assert "x-request-id" not in made.headers


# -- echo on every response --------------------------------------------------------------------


@pytest.mark.anyio
async def test_request_id_echoed_on_500_from_an_exception() -> None:
    # kitmw wraps the FastAPI app from outside: Starlette's ServerErrorMiddleware renders
    # the 500 inside kitmw, so the header rides on it.
    async with client(kitmw.AccessLog(fastapi_app())) as c:
        r = await c.get("/boom", headers={"X-Request-ID": UUID})
    assert r.status_code == 500
    assert r.headers["x-request-id"] == UUID


@pytest.mark.anyio
async def test_request_id_echoed_on_an_early_rejection(capture: Capture) -> None:
    class Deny(Policy):
        name = "deny"

        def enter(self, ex: Exchange) -> Rejection | None:
            return Rejection(429, headers=(("Retry-After", "1"),))

    app = kitmw.asgi.Middleware(fastapi_app(), AccessLogPolicy(), Deny())
    async with client(app) as c:
        r = await c.get("/items/1", headers={"X-Request-ID": UUID})
    assert r.status_code == 429
    assert r.headers["x-request-id"] == UUID
    (record,) = capture.named("kitmw.access")
    assert (record.status, record.request_id) == (429, UUID)


# -- context on the application's records ------------------------------------------------------


@pytest.mark.anyio
async def test_async_handler_log_carries_the_request_id(capture: Capture) -> None:
    async with client(kitmw.AccessLog(fastapi_app())) as c:
        await c.get("/items/7", headers={"X-Request-ID": UUID})
    (record,) = capture.named("app")
    assert record.getMessage() == "reading item 7"
    assert record.request_id == UUID


@pytest.mark.anyio
async def test_sync_handler_log_carries_the_request_id(capture: Capture) -> None:
    async with client(kitmw.AccessLog(fastapi_app())) as c:
        r = await c.get("/sync", headers={"X-Request-ID": NGINX})
    (record,) = capture.named("app")
    assert record.request_id == NGINX
    assert r.json()["request_id"] == NGINX


@pytest.mark.anyio
async def test_context_does_not_leak_between_requests(capture: Capture) -> None:
    async with client(kitmw.AccessLog(fastapi_app())) as c:
        await c.get("/items/1", headers={"X-Request-ID": UUID})
        assert current_request_id() is None
        logging.getLogger("app").info("between requests")
        await c.get("/items/2")
    first, between, second = capture.named("app")
    assert first.request_id == UUID
    assert between.request_id is None
    assert second.request_id not in (None, UUID)


@pytest.mark.anyio
async def test_trace_and_principal_set_by_other_policies_reach_every_record(capture: Capture) -> None:
    class FakeTracing(Policy):  # runs outside the access log, like kitmw's tracing
        name = "tracing"

        def enter(self, ex: Exchange) -> Rejection | None:
            ex.trace_id, ex.span_id = TRACE_ID, SPAN_ID
            return None

    class FakeAuth(Policy):  # runs inside the access log, like kitmw's auth
        name = "auth"

        def enter(self, ex: Exchange) -> Rejection | None:
            ex.set_user("alice", ["read"])
            return None

    app = kitmw.asgi.Middleware(fastapi_app(), FakeTracing(), AccessLogPolicy(), FakeAuth())
    async with client(app) as c:
        await c.get("/items/1")
    for record in capture.records:
        assert (record.trace_id, record.span_id, record.principal) == (TRACE_ID, SPAN_ID, "alice")


@pytest.mark.anyio
async def test_use_trace_id_seeds_the_request_id() -> None:
    class FakeTracing(Policy):
        name = "tracing"

        def enter(self, ex: Exchange) -> Rejection | None:
            ex.trace_id = TRACE_ID
            return None

    app = kitmw.asgi.Middleware(fastapi_app(), FakeTracing(), AccessLogPolicy(use_trace_id=True))
    async with client(app) as c:
        r = await c.get("/items/1")
    assert r.headers["x-request-id"] == TRACE_ID


# -- the access record -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_one_access_record_per_request_with_its_fields(capture: Capture) -> None:
    async with client(kitmw.AccessLog(fastapi_app())) as c:
        r = await c.post(
            "/items/5", headers={"X-Request-ID": UUID, "User-Agent": "probe/1.0"}, content=b"12345"
        )
    (record,) = capture.named("kitmw.access")
    assert record.levelno == logging.INFO
    assert record.method == "POST"
    assert record.path == "/items/5"
    assert record.route == "/items/{item_id}"
    assert record.status == r.status_code == 200
    assert record.bytes_in == 5
    assert record.bytes_out == len(r.content)
    assert record.client == "203.0.113.7"
    assert record.user_agent == "probe/1.0"
    assert record.request_id == UUID
    assert record.duration_ms >= 0
    assert record.error is None
    assert record.exc_info is None
    assert record.getMessage().startswith("POST /items/5 200 ")


@pytest.mark.anyio
async def test_5xx_response_is_logged_at_error(capture: Capture) -> None:
    async with client(kitmw.AccessLog(fastapi_app())) as c:
        await c.get("/down")
    (record,) = capture.named("kitmw.access")
    assert (record.levelno, record.status, record.error) == (logging.ERROR, 503, None)


@pytest.mark.anyio
async def test_exception_is_logged_at_error_without_a_traceback(capture: Capture) -> None:
    async with client(kitmw.AccessLog(fastapi_app())) as c:
        await c.get("/boom")
    (record,) = capture.named("kitmw.access")
    assert record.levelno == logging.ERROR
    assert (record.status, record.error, record.error_message) == (500, "RuntimeError", "kaput")
    assert record.exc_info is None


@pytest.mark.anyio
async def test_exc_info_option_attaches_the_traceback(capture: Capture) -> None:
    async with client(kitmw.AccessLog(fastapi_app(), exc_info=True)) as c:
        await c.get("/boom")
    (record,) = capture.named("kitmw.access")
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


@pytest.mark.anyio
async def test_excluded_path_gets_an_id_but_no_record(capture: Capture) -> None:
    async with client(kitmw.AccessLog(fastapi_app(), exclude_paths=["/health"])) as c:
        r = await c.get("/health")
    assert HEX32.fullmatch(r.headers["x-request-id"])
    assert capture.named("kitmw.access") == []
    (app_record,) = capture.named("app")  # the handler's own records still carry the id
    assert app_record.request_id == r.headers["x-request-id"]


@pytest.mark.anyio
async def test_disabled_logger_emits_nothing_but_still_echoes(capture: Capture) -> None:
    logging.getLogger("kitmw.access").setLevel(logging.CRITICAL)
    async with client(kitmw.AccessLog(fastapi_app())) as c:
        r = await c.get("/boom")
    assert "x-request-id" in r.headers
    assert capture.named("kitmw.access") == []


@pytest.mark.anyio
async def test_query_is_left_out_by_default_and_redacted_when_asked(capture: Capture) -> None:
    async with client(kitmw.AccessLog(fastapi_app())) as c:
        await c.get("/items/1?access_token=s3cret&page=2")
    async with client(kitmw.AccessLog(fastapi_app(), log_query=True)) as c:
        await c.get("/items/1?access_token=s3cret&page=2&API%5FKEY=k")
    plain, with_query = capture.named("kitmw.access")
    assert not hasattr(plain, "query")
    assert with_query.query == "access_token=[REDACTED]&page=2&API%5FKEY=[REDACTED]"


@pytest.mark.anyio
async def test_authorization_cookie_and_body_never_logged(output: Any) -> None:
    stream = output("json")
    async with client(kitmw.AccessLog(fastapi_app(), log_query=True)) as c:
        await c.post(
            "/items/1",
            headers={"Authorization": "Bearer tok-SECRET-1", "Cookie": "session=SECRET-2"},
            content=b"password=SECRET-3",
        )
    text = stream.getvalue()
    assert '"logger":"kitmw.access"' in text
    assert "SECRET" not in text


@pytest.mark.anyio
async def test_starlette_add_middleware_works(capture: Capture) -> None:
    async def hello(request: Any) -> PlainTextResponse:
        logging.getLogger("app").info("hello")
        return PlainTextResponse("hi")

    app = Starlette(
        routes=[Route("/hello/{name}", hello)],
        middleware=[Middleware(kitmw.AccessLog, request_id_header="X-Request-ID")],
    )
    async with client(app) as c:
        r = await c.get("/hello/bob", headers={"X-Request-ID": ULID})
    assert r.headers["x-request-id"] == ULID
    (access,) = capture.named("kitmw.access")
    assert access.route == "/hello/{name}"
    assert capture.named("app")[0].request_id == ULID


@pytest.mark.anyio
async def test_stack_passes_exclude_paths_to_the_access_log(capture: Capture) -> None:
    app = kitmw.stack(fastapi_app(), access_log=True, exclude_paths=["/health"])
    async with client(app) as c:
        await c.get("/health")
        await c.get("/items/1")
    assert [r.path for r in capture.named("kitmw.access")] == ["/items/1"]


def test_wsgi_flask_handler_log_carries_the_request_id(capture: Capture) -> None:
    flask = pytest.importorskip("flask")
    app = flask.Flask(__name__)

    @app.get("/users/<int:uid>")
    def user(uid: int) -> str:
        logging.getLogger("app").info("user %s", uid)
        return "ok"

    wrapped = kitmw.wsgi.AccessLog(app)
    with httpx.Client(transport=httpx.WSGITransport(app=wrapped), base_url="http://test") as c:
        r = c.get("/users/3", headers={"X-Request-ID": UUID})
    assert r.headers["x-request-id"] == UUID
    (app_record,) = capture.named("app")
    (access,) = capture.named("kitmw.access")
    assert app_record.request_id == access.request_id == UUID
    assert access.route == "/users/<int:uid>"
    assert current_request_id() is None


# -- output formats: one line per record, whatever the values hold ---------------------------

HOSTILE_PATH = "/items/1%0d%0a%7b%22level%22:%22info%22%7d%0aforged=1%E2%80%A8"
DECODED_PATH = '/items/1\r\n{"level":"info"}\nforged=1\u2028'
# Header bytes are latin-1: \x85 (NEL) is a line break for str.splitlines and some viewers.
HOSTILE_UA = 'ua\r\n{"forged": 1}\x1b[31m\x85x" level=forged'


async def hostile_request() -> None:
    async with client(kitmw.AccessLog(fastapi_app())) as c:
        await c.get(HOSTILE_PATH, headers={"User-Agent": HOSTILE_UA.encode("latin-1"), "X-Request-ID": UUID})


@pytest.mark.anyio
async def test_json_output_cannot_be_forged(output: Any) -> None:
    stream = output("json")
    await hostile_request()
    lines = stream.getvalue().splitlines()  # splitlines also breaks on U+2028
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["path"] == DECODED_PATH
    assert record["user_agent"] == HOSTILE_UA
    assert record["request_id"] == UUID and record["level"] == "info"


def parse_logfmt(line: str) -> dict[str, str]:
    """A strict logfmt reader: bare tokens or JSON-style quoted strings."""
    pairs: dict[str, str] = {}
    pattern = re.compile(r'([A-Za-z0-9_.\-]+)=("(?:[^"\\]|\\.)*"|[^\s"=]+)(?: |$)')
    pos = 0
    while pos < len(line):
        m = pattern.match(line, pos)
        assert m, f"unparsable logfmt at {pos}: {line[pos:]!r}"
        key, value = m.group(1), m.group(2)
        assert key not in pairs, f"duplicate key {key}"
        pairs[key] = json.loads(value) if value.startswith('"') else value
        pos = m.end()
    return pairs


@pytest.mark.anyio
async def test_logfmt_output_cannot_be_forged(output: Any) -> None:
    stream = output("logfmt")
    await hostile_request()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    fields = parse_logfmt(lines[0])
    assert fields["path"] == DECODED_PATH
    assert fields["user_agent"] == HOSTILE_UA
    assert fields["level"] == "info"
    assert "forged" not in fields


@pytest.mark.anyio
async def test_text_output_escapes_message_arguments(output: Any) -> None:
    stream = output("text")
    async with client(kitmw.AccessLog(fastapi_app())) as c:
        await c.get(HOSTILE_PATH, headers={"X-Request-ID": UUID})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert f"[{UUID}]" in lines[0] and "\\r\\n" in lines[0]


def test_text_formatter_escapes_app_arguments_but_keeps_its_format() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("app.text")
    handler = configure("text", logger=logger, stream=stream)
    try:
        logger.propagate = False
        logger.info("user said %r / %s", "x", "evil\nINFO forged")
    finally:
        logger.removeHandler(handler)
    (line,) = stream.getvalue().splitlines()
    assert line.endswith("INFO app.text [-] user said 'x' / evil\\nINFO forged")


def test_configure_json_outside_a_request_and_inside_bind_context() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("app.json")
    handler = configure("json", logger=logger, stream=stream, static={"service": "api"})
    try:
        logger.propagate = False
        logger.info("plain")
        with bind_context(request_id="job-1", principal="cron"):
            logger.warning("bound %d", 2, extra={"attempt": 3})
    finally:
        logger.removeHandler(handler)
    plain, bound = (json.loads(line) for line in stream.getvalue().splitlines())
    assert plain["message"] == "plain" and "request_id" not in plain and plain["service"] == "api"
    assert bound["level"] == "warning" and bound["message"] == "bound 2"
    assert (bound["request_id"], bound["principal"], bound["attempt"]) == ("job-1", "cron", 3)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", bound["time"])


def test_configure_twice_replaces_its_own_handler() -> None:
    logger = logging.getLogger("app.twice")
    first = configure("json", logger=logger, stream=io.StringIO())
    second = configure("logfmt", logger=logger, stream=io.StringIO())
    try:
        assert first not in logger.handlers and second in logger.handlers
    finally:
        logger.removeHandler(second)


def test_json_exception_is_one_line() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("app.exc")
    handler = configure("json", logger=logger, stream=stream)
    try:
        logger.propagate = False
        try:
            raise ValueError("line1\nline2")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    (line,) = stream.getvalue().splitlines()
    assert "ValueError: line1\nline2" in json.loads(line)["exc_info"]


# -- helpers ---------------------------------------------------------------------------------


def test_bind_context_restores_the_outer_values() -> None:
    with bind_context(request_id="outer", trace_id=TRACE_ID):
        with bind_context(request_id="inner"):
            assert (current_request_id(), current_trace_id()) == ("inner", TRACE_ID)
        assert current_request_id() == "outer"
    assert current_request_id() is None


def test_structlog_processor_adds_the_context() -> None:
    with bind_context(request_id="r1"):
        event = structlog_processor(None, "info", {"event": "x"})
    assert event == {"event": "x", "request_id": "r1"}


@pytest.mark.parametrize(
    ("value", "ok"),
    [(UUID, True), (NGINX, True), (ULID, True), ("a" * 128, True), ("a" * 129, False), ("a\nb", False)],
)
def test_is_valid_request_id(value: str, ok: bool) -> None:
    assert is_valid_request_id(value) is ok


@pytest.mark.parametrize(
    ("options", "option"),
    [
        pytest.param({"request_id_header": ""}, "request_id_header", id="empty-header"),
        pytest.param({"request_id_header": "X Request"}, "request_id_header", id="bad-header"),
        pytest.param({"generate": "uuid4"}, "generate", id="non-callable-generate"),
        pytest.param({"generate": lambda: "a b"}, "generate", id="generate-bad-id"),
        pytest.param({"validate": 3}, "validate", id="validate"),
        pytest.param({"logger": 3}, "logger", id="logger"),
        pytest.param({"level": "LOUD"}, "level", id="level"),
        pytest.param({"error_level": True}, "error_level", id="error-level"),
        pytest.param({"exclude_paths": ["health"]}, "exclude_paths", id="exclude-paths"),
        pytest.param({"redact_query": "token"}, "redact_query", id="redact-query"),
        pytest.param({"trust_request_id": "yes"}, "trust_request_id", id="trust"),
    ],
)
def test_bad_option_raises_config_error_naming_it(options: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError, match=f"^{option}:"):
        AccessLogPolicy(**options)


def test_configure_rejects_an_unknown_format() -> None:
    with pytest.raises(ConfigError, match=r"^format:"):
        configure("xml")


# -- client side -----------------------------------------------------------------------------


def test_client_record_has_the_call_and_the_current_request_id(capture: Capture) -> None:
    ex = NeutralClientExchange("GET", "http://users:8080/u/1?api_key=s3cret&x=1", status=200, duration=0.0025)
    ex.state["attempts"] = 2
    with bind_context(request_id=UUID):
        ClientLogPolicy().exit(ex)
    (record,) = capture.named("kitmw.client")
    assert record.levelno == logging.INFO
    assert (record.method, record.url, record.host, record.status) == (
        "GET",
        "http://users:8080/u/1",
        "users:8080",
        200,
    )
    assert (record.duration_ms, record.attempts, record.request_id) == (2.5, 2, UUID)
    assert "s3cret" not in record.getMessage()


def test_client_failure_is_logged_at_error_with_its_type(capture: Capture) -> None:
    refused = httpx.ConnectError("refused")
    ex = NeutralClientExchange("POST", "http://users:8080/u", error=refused, duration=0.0025)
    ClientLogPolicy().exit(ex)
    (record,) = capture.named("kitmw.client")
    assert record.levelno == logging.ERROR
    assert (record.status, record.error, record.error_message) == (None, "ConnectError", "refused")
    assert record.request_id is None


def test_client_query_is_redacted_when_kept(capture: Capture) -> None:
    ex = NeutralClientExchange("GET", "http://api/search?q=shoes&token=abc", status=200, duration=0.0025)
    ClientLogPolicy(log_query=True).exit(ex)
    (record,) = capture.named("kitmw.client")
    assert record.url == "http://api/search?q=shoes&token=[REDACTED]"


def test_client_upstream_5xx_is_logged_at_error(capture: Capture) -> None:
    ClientLogPolicy().exit(NeutralClientExchange("GET", "http://api/x", status=502, duration=0.0025))
    (record,) = capture.named("kitmw.client")
    assert record.levelno == logging.ERROR and record.status == 502


@pytest.mark.anyio
async def test_add_middleware_still_logs_an_exception_with_the_request_id(capture: Capture) -> None:
    app = fastapi_app()
    app.add_middleware(kitmw.AccessLog)  # inside ServerErrorMiddleware: see docs/access-log.md
    async with client(app) as c:
        r = await c.get("/boom", headers={"X-Request-ID": UUID})
    assert r.status_code == 500
    (record,) = capture.named("kitmw.access")
    assert (record.request_id, record.error, record.levelno) == (UUID, "RuntimeError", logging.ERROR)


def test_a_failing_record_never_breaks_the_request_and_still_unbinds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(NeutralExchange):  # a router that fails
        __slots__ = ()

        @property
        def route(self) -> str | None:
            raise LookupError("router exploded")

    policy = AccessLogPolicy()
    ex = Broken("GET", "/x")
    with caplog.at_level(logging.INFO):
        policy.enter(ex)
        assert current_request_id() == ex.request_id
        policy.exit(ex)
    assert current_request_id() is None
    (failure,) = [r for r in caplog.records if r.name == "kitmw"]
    assert failure.exc_info is not None and failure.exc_info[0] is LookupError


@pytest.mark.anyio
async def test_real_tracing_ids_reach_the_records(capture: Capture, spans: Any) -> None:
    provider, exporter = spans
    app = kitmw.stack(fastapi_app(), tracing={"tracer_provider": provider}, access_log=True)
    async with client(app) as c:
        await c.get("/items/1")
    (span,) = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
    trace_id, span_id = f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"
    assert [(r.trace_id, r.span_id) for r in capture.records] == [(trace_id, span_id)] * 2
