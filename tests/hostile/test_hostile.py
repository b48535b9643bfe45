"""Hostile input through the full six-concern ``kitmw.stack()``, on both server drivers.

Every example is a request built by hand: a raw ASGI scope (raw bytes in header names
and values, control characters, 64 kB values, paths with no leading slash, garbage
``client`` tuples) or a raw WSGI environ (the same bytes as latin-1 strings, as PEP 3333
servers hand them over). The app is a Starlette (ASGI) or Flask (WSGI) service written
as users write them, wrapped in tracing, access log, metrics, rate limit, JWT auth and
breaker. The invariants, checked for every example:

* kitmw never raises and never answers 500 on its own account: the status is one the
  stack or the app gives on purpose (200, 400, 401, 403, 404, 405, 429);
* every log line (access log and the app's own, in JSON, logfmt and text) is exactly
  one printable line, parses back, and carries the request's own id;
* the response carries one well-formed ``X-Request-ID``, the one the app saw;
* after all examples, every metric label value comes from a bounded set (route
  templates or ``<unmatched>``, known methods or ``_OTHER``, real statuses), the
  in-progress gauges are back to zero and kitmw's caches are within their bounds.

Hypothesis runs derandomized without a database (reproducible in CI);
``KITMW_HOSTILE_EXAMPLES`` scales the number of examples for a deeper local run.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kitmw
import kitmw.auth
from kitmw.logging import (
    ContextFilter,
    JsonFormatter,
    LogfmtFormatter,
    TextFormatter,
    current_request_id,
    is_valid_request_id,
)

pytestmark = pytest.mark.faults

EXAMPLES = int(os.environ.get("KITMW_HOSTILE_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("KITMW_HOSTILE_RANDOM"),  # set it to hunt with fresh seeds
    database=None,
    suppress_health_check=list(HealthCheck),
)

SECRET = b"hostile-input-secret-0123456789-abcdef"
NOW = int(time.time())

# The app's route templates per driver (what the route label may be), and the bounded sets.
ASGI_TEMPLATES = frozenset(
    {"/", "/items/{item_id}", "/users/{name}/posts/{post_id:int}", "/admin/stats", "/api/v1/{thing}"}
)
WSGI_TEMPLATES = frozenset(
    {"/", "/items/<item_id>", "/users/<name>/posts/<int:post_id>", "/admin/stats", "/api/v1/<thing>"}
)
METHOD_LABELS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE", "_OTHER"}
)
STATUSES = frozenset({200, 308, 400, 401, 403, 404, 405, 429})  # 308: werkzeug adds the slash to ""
STATUS_LABELS = frozenset(str(s) for s in STATUSES)
SPAN_METHODS = METHOD_LABELS - {"_OTHER"} | {"HTTP"}
_HEX32 = re.compile(r"[0-9a-f]{32}").fullmatch
_ids = itertools.count()


# -- tokens ------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign(header: Any, payload: Any, *, secret: bytes = SECRET, digest: Any = hashlib.sha256) -> str:
    """A compact JWS over any JSON header and payload, HMAC-signed (no PyJWT checks)."""
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    sig = hmac.new(secret, signing_input.encode("ascii"), digest).digest()
    return signing_input + "." + b64(sig)


def good_token(sub: str = "alice", scope: str = "read") -> str:
    return sign({"alg": "HS256", "typ": "JWT"}, {"sub": sub, "scope": scope, "exp": NOW + 86400})


TOKEN = good_token()
ADMIN_TOKEN = good_token("root", "read admin")
BEARER = (b"authorization", f"Bearer {TOKEN}".encode())


# -- log capture -------------------------------------------------------------------------------


class Capture(logging.Handler):
    """Formats every record in JSON, logfmt and text; a formatter error is kept, not printed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(ContextFilter())
        self.formatters = {"json": JsonFormatter(), "logfmt": LogfmtFormatter(), "text": TextFormatter()}
        self.lines: list[dict[str, str]] = []
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append({name: f.format(record) for name, f in self.formatters.items()})
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.errors.append(exc)


_LOGFMT_PAIR = re.compile(r'([A-Za-z0-9_.\-]+)=("(?:[^"\\]|\\.)*"|[^ "=\\]+)')


def parse_logfmt(line: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pos = 0
    while pos < len(line):
        m = _LOGFMT_PAIR.match(line, pos)
        assert m is not None, f"not logfmt at {pos}: {line[pos : pos + 120]!r}"
        key, raw = m.groups()
        assert key not in out, f"duplicate key {key!r}: {line[:300]!r}"
        out[key] = json.loads(raw) if raw.startswith('"') else raw
        pos = m.end()
        if pos < len(line):
            assert line[pos] == " ", line[pos : pos + 40]
            pos += 1
    return out


def check_lines(formatted: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each format: one printable line (no C0/C1, no U+2028); JSON and logfmt parse back."""
    for name, line in formatted.items():
        assert "\n" not in line and "\r" not in line, f"{name} line split: {line[:300]!r}"
        assert line.isprintable(), f"{name} line has a control character: {line[:300]!r}"
    record = json.loads(formatted["json"])
    assert isinstance(record, dict)
    pairs = parse_logfmt(formatted["logfmt"])
    return record, pairs


# -- the apps ----------------------------------------------------------------------------------


def starlette_app(app_log: logging.Logger) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request as StarletteRequest
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def endpoint(request: StarletteRequest) -> PlainTextResponse:
        rid = current_request_id()
        app_log.info("serving %s for %s", request.scope["path"], request.headers.get("user-agent"))
        return PlainTextResponse(rid or "", headers={"x-app-rid": rid or "-"})

    async def admin(request: StarletteRequest) -> PlainTextResponse:
        response = await endpoint(request)
        response.headers["x-app-admin"] = "served"
        return response

    app = Starlette(
        routes=[
            Route("/", endpoint),
            Route("/items/{item_id}", endpoint),
            Route("/users/{name}/posts/{post_id:int}", endpoint),
            Route("/admin/stats", admin),
            Route("/healthz", endpoint),
            Mount("/api", routes=[Route("/v1/{thing}", endpoint)]),
        ]
    )
    for router in (app.router, app.router.routes[-1].app):  # the redirects are not under test
        router.redirect_slashes = False  # (they parse the Host header)
    return app


def flask_app(app_log: logging.Logger) -> Any:
    from flask import Blueprint, Flask, request

    app = Flask(f"hostile{next(_ids)}", static_folder=None)

    def endpoint(**_: Any) -> Any:
        rid = current_request_id()
        app_log.info("serving %s for %s", request.environ.get("PATH_INFO"), request.headers.get("User-Agent"))
        return rid or "", 200, {"x-app-rid": rid or "-"}

    for rule in ("/", "/items/<item_id>", "/users/<name>/posts/<int:post_id>", "/healthz"):
        app.add_url_rule(rule, rule, endpoint)

    @app.get("/admin/stats")
    def admin() -> Any:
        body, status, headers = endpoint()
        return body, status, {**headers, "x-app-admin": "served"}

    api = Blueprint("api", __name__, url_prefix="/api")
    api.add_url_rule("/v1/<thing>", "thing", endpoint)
    app.register_blueprint(api)
    return app


# -- requests and the harness ------------------------------------------------------------------


@dataclass
class Request:
    method: str = "GET"
    path: str = "/items/1"
    headers: list[tuple[bytes, bytes]] = field(default_factory=lambda: [BEARER])
    query: bytes = b""
    client: Any = ("198.51.100.20", 40000)
    drop: tuple[str, ...] = ()  # optional ASGI scope keys left out
    mount: str = ""  # the app is mounted here: ASGI root_path, WSGI SCRIPT_NAME


@dataclass
class Result:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    access: dict[str, Any] | None  # the JSON access record, if one was written
    access_logfmt: dict[str, Any] | None
    spans: list[Any]

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name]


def _latin1(text: str) -> str:
    """``text`` as a PEP 3333 server passes it: its UTF-8 bytes, one char per byte."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


class Harness:
    """The full stack on one driver, fresh registry / provider / loggers, and the checks."""

    def __init__(
        self,
        protocol: str,
        *,
        limit: str = "1000000/minute",
        trusted: Any = (),
        key: Any = "client",
        routes: Any = None,
    ) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        n = next(_ids)
        self.protocol = protocol
        self.registry = CollectorRegistry()
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.access_capture = Capture()
        self.app_capture = Capture()
        self.kitmw_capture = Capture()
        self.kitmw_capture.setLevel(logging.ERROR)
        self.loggers: list[tuple[logging.Logger, logging.Handler]] = []
        access_name = f"tests.hostile.access.{n}"
        app_name = f"tests.hostile.app.{n}"
        for name, handler in (
            (access_name, self.access_capture),
            (app_name, self.app_capture),
            ("kitmw", self.kitmw_capture),
        ):
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            if name != "kitmw":
                logger.setLevel(logging.INFO)
                logger.propagate = False
            self.loggers.append((logger, handler))
        app_log = logging.getLogger(app_name)
        inner = starlette_app(app_log) if protocol == "asgi" else flask_app(app_log)
        self.templates = ASGI_TEMPLATES if protocol == "asgi" else WSGI_TEMPLATES
        self.app = kitmw.stack(
            inner,
            tracing={"tracer_provider": self.provider},
            access_log={"logger": access_name, "log_query": True},
            metrics={"registry": self.registry},
            ratelimit={"limit": limit, "trusted_proxies": trusted, "key": key, "routes": routes},
            auth={
                "backend": kitmw.auth.JWT(key=SECRET, algorithms=["HS256"]),
                "scopes": {"/admin": ["admin"]},
            },
            breaker={"name": f"hostile-{n}"},
            exclude_paths=["/healthz"],
        )
        self.policies = {p.name: p for p in self.app.policies}
        self.loop = asyncio.new_event_loop() if protocol == "asgi" else None
        self.requests = 0
        self.app_ids_seen = 0

    def close(self) -> None:
        for logger, handler in self.loggers:
            logger.removeHandler(handler)
        if self.loop is not None:
            self.loop.close()
        self.provider.shutdown()

    # -- drivers -------------------------------------------------------------------------------

    def _asgi(self, req: Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        assert self.loop is not None
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": req.method,
            "scheme": "http",
            "path": req.mount + req.path,  # ASGI: path includes root_path
            "root_path": req.mount,
            "query_string": req.query,
            "headers": list(req.headers),
            "client": req.client,
            "server": ("testserver", 80),
        }
        for key in req.drop:
            scope.pop(key, None)
        messages: list[dict[str, Any]] = []
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.sleep(3600)  # pragma: no cover - nothing here reads twice
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        async def drive() -> None:
            await self.app(scope, receive, send)  # awaited in this task: a leak would show
            assert current_request_id() is None, "request id leaked out of the request"
            assert not trace.get_current_span().get_span_context().is_valid, "span context leaked"

        self.loop.run_until_complete(drive())
        starts = [m for m in messages if m["type"] == "http.response.start"]
        assert len(starts) == 1, messages
        bodies = [m for m in messages if m["type"] == "http.response.body"]
        assert bodies and not bodies[-1].get("more_body", False)
        return (
            starts[0]["status"],
            list(starts[0].get("headers", [])),
            b"".join(m.get("body", b"") for m in bodies),
        )

    def environ(self, req: Request) -> dict[str, Any]:
        env: dict[str, Any] = {
            "REQUEST_METHOD": _latin1(req.method),
            "SCRIPT_NAME": _latin1(req.mount),
            "PATH_INFO": _latin1(req.path),
            "QUERY_STRING": req.query.decode("latin-1"),
            "SERVER_NAME": "testserver",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        if req.client:
            env["REMOTE_ADDR"] = _latin1(str(req.client[0]))
            env["REMOTE_PORT"] = str(req.client[1])
        for name, value in req.headers:
            key = name.decode("latin-1").upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            text = value.decode("latin-1")
            if key in env and key.startswith("HTTP_"):
                env[key] += "," + text  # servers join repeated header lines
            else:
                env[key] = text
        return env

    def _wsgi(self, req: Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        environ = self.environ(req)
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started.append((status, headers))
            return lambda data: None

        result = self.app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        assert current_request_id() is None, "request id leaked into the server thread"
        assert len(started) == 1, started
        status, headers = started[0]
        return int(status[:3]), [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers], body

    # -- one request, every invariant -----------------------------------------------------------

    def expected_path(self, req: Request) -> str:
        if self.protocol == "asgi":
            return req.mount + req.path
        raw = _latin1(req.mount + req.path) or "/"
        return raw if raw.isascii() else raw.encode("latin-1").decode("utf-8", "replace")

    def call(self, req: Request, *, statuses: frozenset[int] = STATUSES) -> Result:
        self.exporter.clear()
        n_access = len(self.access_capture.lines)
        n_app = len(self.app_capture.lines)
        status, headers, body = self._asgi(req) if self.protocol == "asgi" else self._wsgi(req)
        self.requests += 1
        assert status in statuses, (status, body[:300])
        assert not self.access_capture.errors and not self.app_capture.errors
        assert not self.kitmw_capture.lines, [d["text"] for d in self.kitmw_capture.lines]

        rids = [v for k, v in headers if k.lower() == b"x-request-id"]
        assert len(rids) == 1, headers
        rid = rids[0].decode("latin-1")
        assert is_valid_request_id(rid), rid
        app_rids = [v for k, v in headers if k.lower() == b"x-app-rid"]
        if app_rids:  # the app ran and saw exactly this request's id
            assert app_rids == [rids[0]], (app_rids, rid)
            self.app_ids_seen += 1

        path = self.expected_path(req)
        access_lines = self.access_capture.lines[n_access:]
        excluded = (path.rstrip("/") or "/") == "/healthz"
        assert len(access_lines) == (0 if excluded else 1), access_lines
        record = pairs = None
        for formatted in access_lines:
            record, pairs = check_lines(formatted)
            assert record["request_id"] == rid and pairs["request_id"] == rid
            assert record["status"] == status and pairs["status"] == str(status)
            assert record["path"] == path and pairs["path"] == path
            assert record["method"] == self.expected_method(req)
            trace_id = record.get("trace_id")
            assert trace_id is not None and _HEX32(trace_id) and trace_id != "0" * 32, trace_id
            route = record.get("route")
            assert route is None or route in self.templates or route == "/healthz", route
        for formatted in self.app_capture.lines[n_app:]:
            app_record, app_pairs = check_lines(formatted)
            assert app_record["request_id"] == rid and app_pairs["request_id"] == rid
        self.app_capture.lines.clear()
        self.access_capture.lines.clear()

        spans = list(self.exporter.get_finished_spans())
        assert len(spans) <= (0 if excluded else 1), spans
        for span in spans:
            name_method, _, route = span.name.partition(" ")
            assert name_method in SPAN_METHODS, span.name
            assert route == "" or route in self.templates, span.name
        if status == 401:
            assert [v for k, v in headers if k.lower() == b"www-authenticate"], headers
        return Result(status, headers, body, record, pairs, spans)

    def expected_method(self, req: Request) -> str:
        return req.method if self.protocol == "asgi" else _latin1(req.method)

    # -- after all examples --------------------------------------------------------------------

    def check_bounded(self) -> None:
        text = generate_latest(self.registry).decode("utf-8")
        server_series: set[tuple[str, str, str]] = set()
        samples = 0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples += 1
                for name, value in sample.labels.items():
                    assert len(value) <= 64, (family.name, name, value[:100])
                labels = sample.labels
                if family.name.startswith("http_server_"):
                    assert labels["method"] in METHOD_LABELS, labels
                    if "route" in labels:
                        assert labels["route"] in self.templates | {"<unmatched>"}, labels
                        assert labels["status"] in STATUS_LABELS, labels
                        server_series.add((labels["method"], labels["route"], labels["status"]))
                if family.name == "http_server_requests_in_progress":
                    assert sample.value == 0, labels  # every enter was matched by an exit
        bound = len(METHOD_LABELS) * (len(self.templates) + 1) * len(STATUSES)
        assert len(server_series) <= bound
        assert samples < 20 * bound, samples
        metrics = self.policies["metrics"]
        assert len(metrics._children) <= 4096
        from kitmw import routes

        assert len(routes._walks) <= 2048 and len(routes._django) <= 2048
        jwt_backend = self.policies["auth"]._backends[0]
        assert len(jwt_backend._cache) <= 1024
        storage = self.policies["ratelimit"].backend.sync
        assert all(len(k) < 400 for k in storage.held_keys()), "a storage key grew with the input"
        # one breaker per route template, one for everything unmatched: whatever the paths
        assert len(self.policies["breaker"].breakers) <= len(self.templates) + 1


@pytest.fixture(params=["asgi", "wsgi"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    h = Harness(request.param)
    yield h
    h.close()


def make_harness(protocol: str, **options: Any) -> Harness:
    return Harness(protocol, **options)


# -- strategies --------------------------------------------------------------------------------

NASTY = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b"\x1b[31m",
    b"\x7f",
    b"\x85",
    b"\x9b",
    b"\xe2\x80\xa8",
    b'"',
    b"\\",
    b"=",
    b" ",
]


def big(seed: bytes, size: int) -> bytes:
    return (seed * (size // max(len(seed), 1) + 1))[:size]


huge_bytes = st.builds(big, st.binary(min_size=1, max_size=8), st.sampled_from([4096, 10240, 65536]))
nasty_bytes = st.lists(st.sampled_from(NASTY) | st.binary(max_size=4), max_size=12).map(b"".join)
header_bytes = st.one_of(
    st.binary(max_size=64), nasty_bytes, huge_bytes, st.text(max_size=30).map(str.encode)
)
known_names = st.sampled_from(
    [
        b"user-agent",
        b"x-request-id",
        b"x-forwarded-for",
        b"forwarded",
        b"traceparent",
        b"tracestate",
        b"baggage",
        b"host",
        b"accept",
        b"content-type",
        b"content-length",
        b"cookie",
        b"X-Request-ID",
        b"Authorization",
    ]
)
header_names = st.one_of(known_names, st.binary(max_size=32), nasty_bytes, huge_bytes)
headers = st.lists(st.tuples(header_names, header_bytes), max_size=8)

segment = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=12),
    st.sampled_from(
        ["..", ".", "%00", "%2e%2e", "%2F", "%ff", "\x00", "\r\n", "\u2028", "\udcff", "ü", "😀"]
    ),
)
paths = st.one_of(
    st.sampled_from(
        ["/", "", "items/1", "*", "//", "/items/", "/healthz", "/healthz/", "/metrics", "/admin/stats"]
    ),
    st.builds(lambda s: "/items/" + s, segment),
    st.builds(lambda a, b: f"/users/{a}/posts/{b}", segment, st.integers(-5, 10**30).map(str) | segment),
    st.builds(lambda s: "/api/v1/" + s, segment),
    st.lists(segment, max_size=6).map(lambda parts: "/" + "/".join(parts)),
    st.text(max_size=40),
    st.builds(
        lambda s, n: big(s.encode("utf-8", "surrogatepass"), n).decode("utf-8", "replace"),
        segment.filter(bool),
        st.sampled_from([1024, 10240]),
    ),
)
methods = st.one_of(
    st.sampled_from(
        ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "QUERY"]
    ),
    st.sampled_from(["get", "", "G ET", "GET\r\n", "PROPFIND", "\x00", "Ü"]),
    st.text(max_size=12),
)
queries = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    st.lists(
        st.tuples(st.sampled_from([b"token", b"password", b"q", b"%ff", b"api_key"]), header_bytes),
        max_size=4,
    ).map(lambda kv: b"&".join(k + b"=" + v for k, v in kv)),
)
clients = st.one_of(
    st.just(("198.51.100.20", 40000)),
    st.none(),
    st.tuples(
        st.sampled_from(["", "::1", "2001:db8::1", "garbage\r\n", "x" * 70000, "10.0.0.1", "unix:sock"]),
        st.integers(0, 70000),
    ),
)


# -- header names and values -------------------------------------------------------------------


def test_header_names_and_values_are_harmless(harness: Harness) -> None:
    @FUZZ
    @given(extra=headers)
    def run(extra: list[tuple[bytes, bytes]]) -> None:
        req = Request(
            headers=[*extra, BEARER] if not any(k.lower() == b"authorization" for k, _ in extra) else extra
        )
        result = harness.call(req)
        if result.status == 200:
            assert result.access is not None and result.access["principal"] == "alice"

    run()
    assert harness.app_ids_seen > 0
    harness.check_bounded()


# -- request ids ---------------------------------------------------------------------------------

request_ids = st.one_of(
    st.text(st.sampled_from("abcXYZ019._:+/=-"), min_size=1, max_size=140).map(str.encode),
    st.binary(max_size=140),
    nasty_bytes,
    huge_bytes,
    st.sampled_from(
        [
            b"",
            b" ",
            b"a b",
            b"\xfc",
            b"../../etc/passwd",
            b"<script>",
            b"a\r\nX-Injected: 1",
            b"x" * 128,
            b"x" * 129,
        ]
    ),
)


def test_request_ids_of_every_shape(harness: Harness) -> None:
    @FUZZ
    @given(
        ids=st.lists(request_ids, min_size=1, max_size=3),
        header=st.sampled_from([b"x-request-id", b"X-Request-ID"]),
    )
    def run(ids: list[bytes], header: bytes) -> None:
        req = Request(headers=[BEARER, *((header, i) for i in ids)])
        result = harness.call(req)
        echoed = result.header(b"x-request-id")[0].decode("ascii")
        if harness.protocol == "asgi":
            first = ids[0].decode("latin-1")
        else:
            first = ",".join(i.decode("latin-1") for i in ids)  # one environ value
        if is_valid_request_id(first):
            assert echoed == first
        else:
            assert echoed != first and re.fullmatch(r"[0-9a-f]{32}", echoed), echoed

    run()
    harness.check_bounded()


# -- forwarding headers -------------------------------------------------------------------------

REAL_CLIENT = "203.0.113.7"
garbage_entry = st.one_of(
    st.sampled_from(
        [
            "unknown",
            "_hidden",
            '"[2001:db8::1]:80"',
            "[::1",
            "1.2.3.4:99999",
            "999.1.1.1",
            "",
            " ",
            "::ffff:1.2.3.4",
            "8.8.8.8",
            "10.0.0.5",
            "fd00::1",
        ]
    ),
    st.text(max_size=20),
    st.ip_addresses().map(str),
)
garbage_chain = st.lists(garbage_entry, max_size=6).map(lambda xs: ",".join(xs))
trusted_hops = st.lists(st.sampled_from(["10.1.1.1", "10.200.0.9", "::ffff:10.3.3.3", "fd00::7"]), max_size=3)


def _fwd(entry: str) -> str:
    return f"for={entry}"


@pytest.mark.parametrize("protocol", ["asgi", "wsgi"])
@pytest.mark.parametrize("trusted", [(), ["10.0.0.0/8"]], ids=["no-proxies", "other-proxies"])
def test_spoofed_forwarding_headers_cannot_escape_the_limit(protocol: str, trusted: Any) -> None:
    """From a peer that is not a trusted proxy, no forwarding header changes the key."""
    h = make_harness(protocol, limit="2/hour", trusted=trusted)
    try:
        peer = ("198.51.100.7", 5555)
        for _ in range(2):
            assert h.call(Request(client=peer)).status == 200
        assert h.call(Request(client=peer)).status == 429

        @FUZZ
        @given(
            xff=st.lists(garbage_chain | header_bytes.map(lambda b: b.decode("latin-1")), max_size=2),
            fwd=st.lists(garbage_chain.map(_fwd), max_size=2),
            extra=headers,
        )
        def run(xff: list[str], fwd: list[str], extra: list[tuple[bytes, bytes]]) -> None:
            spoof = [(b"x-forwarded-for", v.encode("latin-1", "replace")) for v in xff]
            spoof += [(b"forwarded", v.encode("latin-1", "replace")) for v in fwd]
            spoof += [(b"x-real-ip", b"1.1.1.1")]
            extra = [(k, v) for k, v in extra if k.lower() != b"authorization"]
            result = h.call(Request(client=peer, headers=[BEARER, *spoof, *extra]), statuses=frozenset({429}))
            assert result.header(b"retry-after")

        run()
        h.check_bounded()
    finally:
        h.close()


@pytest.mark.parametrize("protocol", ["asgi", "wsgi"])
def test_garbage_left_of_the_real_client_cannot_change_its_key(protocol: str) -> None:
    """Through trusted proxies, whatever a client writes left of its own entry is ignored."""
    h = make_harness(protocol, limit="2/hour", trusted=["10.0.0.0/8", "fd00::/8"])
    try:
        proxy = ("10.0.0.1", 443)
        for _ in range(2):
            assert (
                h.call(
                    Request(client=proxy, headers=[BEARER, (b"x-forwarded-for", REAL_CLIENT.encode())])
                ).status
                == 200
            )
        forms = st.sampled_from(
            [
                REAL_CLIENT,
                f"{REAL_CLIENT}:4711",
                f'"{REAL_CLIENT}"',
                f"::ffff:{REAL_CLIENT}",
                f'"[::ffff:{REAL_CLIENT}]:80"',
            ]
        )

        @FUZZ
        @given(
            left=garbage_chain,
            form=forms,
            hops=trusted_hops,
            which=st.sampled_from(["xff", "forwarded", "both", "xff-lines"]),
        )
        def run(left: str, form: str, hops: list[str], which: str) -> None:
            xff = ", ".join([left, form.strip('"') if "[" not in form else REAL_CLIENT, *hops])
            fwd = ", ".join(
                [
                    *(_fwd(e) for e in left.split(",")),
                    f"for={form};proto=https",
                    *(f'for="[{h}]"' if ":" in h else _fwd(h) for h in hops),
                ]
            )
            spoof: list[tuple[bytes, bytes]] = []
            if which in ("xff", "both"):
                spoof.append((b"x-forwarded-for", xff.encode("utf-8")))
            if which in ("forwarded", "both"):
                spoof.append((b"Forwarded", fwd.encode("utf-8")))
            if which == "xff-lines":
                spoof += [
                    (b"x-forwarded-for", left.encode("utf-8")),
                    (b"x-forwarded-for", ", ".join([REAL_CLIENT, *hops]).encode()),
                ]
            result = h.call(Request(client=proxy, headers=[BEARER, *spoof]), statuses=frozenset({429}))
            assert result.header(b"retry-after")

        run()
        h.check_bounded()
    finally:
        h.close()


@pytest.mark.parametrize("protocol", ["asgi", "wsgi"])
def test_garbage_forwarding_through_a_trusted_proxy_is_a_decision_not_a_failure(protocol: str) -> None:
    h = make_harness(protocol, limit="2/hour", trusted=["10.0.0.0/8", "fd00::/8"])
    try:

        @FUZZ
        @given(
            xff=st.lists(header_bytes, max_size=3),
            fwd=st.lists(header_bytes | garbage_chain.map(_fwd).map(str.encode), max_size=3),
            peer=st.sampled_from(["10.0.0.1", "fd00::1", "::ffff:10.0.0.1"]),
        )
        def run(xff: list[bytes], fwd: list[bytes], peer: str) -> None:
            spoof = [(b"x-forwarded-for", v) for v in xff] + [(b"forwarded", v) for v in fwd]
            h.call(Request(client=(peer, 1), headers=[BEARER, *spoof]), statuses=frozenset({200, 429}))

        run()
        h.check_bounded()
    finally:
        h.close()


@pytest.mark.parametrize("protocol", ["asgi", "wsgi"])
def test_distinct_api_keys_never_share_a_budget(protocol: str) -> None:
    """Keyed by a header: any two different values (``/``, ``%``, huge, binary) are two budgets."""
    h = make_harness(protocol, limit="1/hour", key="header:X-API-Key")
    try:
        values = st.one_of(
            st.binary(min_size=1, max_size=40),
            st.sampled_from([b"a/b", b"a%2Fb", b"a%252Fb", b"a", b"A", b"a ", b"sha256:" + b"0" * 64]),
            huge_bytes,
            st.builds(lambda n: b"k" * n, st.integers(195, 210)),  # around the hashing threshold
        )
        seen: set[str] = set()

        @FUZZ
        @given(value=values)
        def run(value: bytes) -> None:
            text = value.decode("latin-1").strip(" \t")  # what a server hands over
            if not text or text in seen or (protocol == "wsgi" and "," in text):
                return
            seen.add(text)
            request = Request(headers=[BEARER, (b"x-api-key", value)])
            assert h.call(request, statuses=frozenset({200})).status == 200  # a budget of its own
            assert h.call(request, statuses=frozenset({429})).status == 429

        run()
        assert len(seen) > 10
        h.check_bounded()
    finally:
        h.close()


@pytest.mark.parametrize("protocol", ["asgi", "wsgi"])
def test_repeated_slashes_do_not_escape_a_per_route_limit(protocol: str) -> None:
    """werkzeug serves ``//api/x`` as ``/api/x``: a limit on ``/api/*`` must count it too."""
    h = make_harness(protocol, routes={"/api/*": "2/hour"})
    try:
        for _ in range(2):
            assert h.call(Request(path="/api/v1/a")).status == 200
        slashes = st.integers(1, 4).map(lambda n: "/" * n)

        @FUZZ
        @given(a=slashes, b=slashes, c=slashes, rest=segment)
        def run(a: str, b: str, c: str, rest: str) -> None:
            h.call(Request(path=f"{a}api{b}v1{c}{rest}"), statuses=frozenset({429}))

        run()
        h.check_bounded()
    finally:
        h.close()


ADMIN_WORDS = [
    "admin",
    "Admin",
    "ADMIN",
    "stats",
    "",
    ".",
    "..",
    "%2f",
    "%2F",
    "%00",
    ";x",
    "stats/",
    " ",
    "\\",
]


def test_path_confusion_never_reaches_the_admin_endpoint_without_the_scope(harness: Harness) -> None:
    """``/admin`` needs the ``admin`` scope: no spelling of the path gets the app to serve it."""
    variants = st.one_of(
        st.sampled_from(
            [
                "/admin/stats",
                "//admin/stats",
                "/admin//stats",
                "/./admin/stats",
                "/x/../admin/stats",
                "/admin/./stats",
                "/admin/stats/",
                "/%61dmin/stats",
                "/admin/stats;",
                "admin/stats",
                "/admin/stats\x00",
            ]
        ),
        st.lists(st.sampled_from(ADMIN_WORDS), min_size=1, max_size=5).map(lambda ws: "/" + "/".join(ws)),
    )

    @FUZZ
    @given(path=variants, method=st.sampled_from(["GET", "HEAD", "OPTIONS", "get"]), preflight=st.booleans())
    def run(path: str, method: str, preflight: bool) -> None:
        if harness.protocol == "wsgi" and not path.startswith("/"):
            path = "/" + path
        headers = [BEARER, (b"access-control-request-method", b"GET")] if preflight else [BEARER]
        result = harness.call(Request(method=method, path=path, headers=headers))
        assert not result.header(b"x-app-admin"), (path, method, result.status)

    run()
    ok = harness.call(
        Request(path="/admin/stats", headers=[(b"authorization", f"Bearer {ADMIN_TOKEN}".encode())])
    )
    assert ok.header(b"x-app-admin") == [b"served"]  # the endpoint does serve an admin
    harness.check_bounded()


def test_scope_rules_protect_an_app_mounted_under_a_prefix(harness: Harness) -> None:
    """Behind ``uvicorn --root-path`` or a WSGI ``SCRIPT_NAME``, ``/admin`` still needs the scope."""
    mounts = st.sampled_from(["/api", "/v2/app", "/admin", "/x y"]) | st.text("abc/", max_size=8).map(
        lambda t: "/" + t
    )

    @FUZZ
    @given(mount=mounts, tail=st.sampled_from(["/admin/stats", "//admin/stats", "/admin/stats/"]))
    def run(mount: str, tail: str) -> None:
        mount = mount.rstrip("/")
        result = harness.call(Request(path=tail, mount=mount))
        assert not result.header(b"x-app-admin"), (mount, tail, result.status)

    run()
    admin = [(b"authorization", f"Bearer {ADMIN_TOKEN}".encode())]
    served = harness.call(Request(path="/admin/stats", mount="/api", headers=admin))
    assert served.header(b"x-app-admin") == [b"served"]
    harness.check_bounded()


# -- trace context -----------------------------------------------------------------------------

hexes = st.text("0123456789abcdef", min_size=0, max_size=34)
traceparents = st.one_of(
    st.builds(
        lambda v, t, s, f: f"{v}-{t}-{s}-{f}",
        st.sampled_from(["00", "01", "ff", "0", "zz", "FF"]),
        hexes | st.just("0" * 32),
        hexes | st.just("0" * 16),
        st.sampled_from(["00", "01", "ff", "1", "zz"]),
    ),
    st.builds(
        lambda t, s: f"00-{t}-{s}-01",
        st.text("0123456789abcdef", min_size=32, max_size=32),
        st.text("0123456789abcdef", min_size=16, max_size=16),
    ),
    st.builds(
        lambda t, s, rest: f"00-{t}-{s}-01{rest}",
        st.text("0123456789abcdefABCDEF", min_size=32, max_size=32),
        st.text("0123456789abcdef", min_size=16, max_size=16),
        st.sampled_from(["", "-x", " ", "\t", "-00"]),
    ),
    st.text(max_size=60),
    st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
)
_STRICT_TP = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def test_trace_context_fuzz(harness: Harness) -> None:
    @FUZZ
    @given(
        tps=st.lists(traceparents, min_size=1, max_size=2),
        states=st.lists(header_bytes, max_size=2),
        baggage=st.lists(header_bytes, max_size=2),
    )
    def run(tps: list[str], states: list[bytes], baggage: list[bytes]) -> None:
        hdrs = [BEARER, *((b"traceparent", tp.encode("latin-1", "replace")) for tp in tps)]
        hdrs += [(b"tracestate", s) for s in states] + [(b"baggage", b) for b in baggage]
        result = harness.call(Request(headers=hdrs))
        assert result.access is not None
        m = _STRICT_TP.fullmatch(tps[0])
        if len(tps) == 1 and m and m.group(1) != "0" * 32 and m.group(2) != "0" * 16:
            assert result.access["trace_id"] == m.group(1)  # a valid parent is continued
            if int(m.group(3), 16) & 1:
                assert len(result.spans) == 1 and result.spans[0].parent.span_id == int(m.group(2), 16)
        elif not m:
            assert len(result.spans) == 1 and result.spans[0].parent is None  # a new root

    run()
    harness.check_bounded()


# -- JWT -----------------------------------------------------------------------------------------


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20), _containers, max_leaves=8
)
algs = st.sampled_from(
    [
        "none",
        "None",
        "NONE",
        "nOnE",
        "",
        "HS256",
        "HS384",
        "HS512",
        "RS256",
        "ES256",
        "PS256",
        "EdDSA",
        "hs256",
    ]
) | st.text(max_size=8)
jose_headers = (
    st.fixed_dictionaries(
        {"alg": algs | json_values},
        optional={
            "typ": st.sampled_from(["JWT", "at+jwt"]) | json_values,
            "kid": json_values,
            "jku": st.text(max_size=30),
            "crit": json_values,
            "b64": st.booleans(),
        },
    )
    | json_values
)
claim_names = st.sampled_from(["sub", "exp", "iat", "nbf", "aud", "iss", "scope", "scp", "jti"]) | st.text(
    max_size=6
)
payloads = st.dictionaries(claim_names, json_values, max_size=8) | json_values
segments = st.one_of(st.binary(max_size=48).map(b64), st.text(max_size=24), st.just(""), huge_bytes.map(b64))


def _forged(kind: str, header: Any, payload: Any, seg: str) -> str:
    if kind == "segments":
        return seg
    h = b64(json.dumps(header).encode())
    p = b64(json.dumps(payload).encode())
    if kind == "unsigned":
        return f"{h}.{p}."
    if kind == "random-signature":
        return f"{h}.{p}.{seg}"
    if kind == "other-secret":
        return sign(header, payload, secret=b"not-the-secret-0123456789-abcdefgh")
    if kind == "confused-alg":  # our secret, but the header names another algorithm
        hdr = dict(header) if isinstance(header, dict) else {}
        hdr["alg"] = "RS256" if hdr.get("alg") == "HS256" else hdr.get("alg", "RS256")
        if hdr["alg"] == "HS256":
            hdr["alg"] = "HS512"
        return sign(hdr, payload)
    if kind == "wrong-digest":
        return sign({"alg": "HS256"}, payload, digest=hashlib.sha512)
    return ".".join([seg, seg, seg])


def _authorization(shape: str, token: str) -> bytes:
    return {
        "bearer": f"Bearer {token}",
        "lower": f"bearer {token}",
        "spaces": f"Bearer   {token}  ",
        "tab": f"Bearer\t{token}",
        "bare": token,
        "basic": f"Basic {token}",
    }[shape].encode("utf-8", "surrogatepass")


def test_forged_tokens_are_always_401(harness: Harness) -> None:
    @FUZZ
    @given(
        kind=st.sampled_from(
            [
                "segments",
                "unsigned",
                "random-signature",
                "other-secret",
                "confused-alg",
                "wrong-digest",
                "three",
            ]
        ),
        header=jose_headers,
        payload=payloads,
        seg=segments,
        shape=st.sampled_from(["bearer", "lower", "spaces", "tab", "bare", "basic"]),
        path=st.sampled_from(["/items/1", "/admin/stats", "/", "/nowhere"]),
    )
    def run(kind: str, header: Any, payload: Any, seg: str, shape: str, path: str) -> None:
        token = _forged(kind, header, payload, seg)
        result = harness.call(
            Request(path=path, headers=[(b"authorization", _authorization(shape, token))]),
            statuses=frozenset({401}),
        )
        assert result.access is not None and result.access.get("principal") is None

    run()
    harness.check_bounded()


def test_signed_tokens_with_hostile_claims(harness: Harness) -> None:
    subjects = st.text(max_size=20) | nasty_bytes.map(lambda b: b.decode("latin-1")) | json_values
    exps = st.one_of(
        st.just(NOW + 3600),
        st.just(NOW - 10),
        st.integers(),
        st.floats(),
        st.text(max_size=12),
        st.just(str(NOW + 3600)),
        json_values,
    )

    @FUZZ
    @given(
        sub=subjects,
        exp=exps,
        claims=st.dictionaries(claim_names, json_values, max_size=5),
        scope=st.text(max_size=30) | json_values,
        path=st.sampled_from(["/items/1", "/admin/stats"]),
    )
    def run(sub: Any, exp: Any, claims: dict[str, Any], scope: Any, path: str) -> None:
        payload = {**claims, "sub": sub, "exp": exp, "scope": scope}
        token = sign({"alg": "HS256", "typ": "JWT"}, payload)
        result = harness.call(Request(path=path, headers=[(b"authorization", f"Bearer {token}".encode())]))
        if result.status in (200, 403):
            # admitted: a non-empty string subject and an expiry still in the future
            assert isinstance(sub, str) and sub and result.access is not None
            assert result.access["principal"] == sub and result.access_logfmt["principal"] == sub
            assert float(exp) > NOW - 1
        else:
            assert result.status == 401

    run()
    harness.check_bounded()


def test_huge_tokens_are_refused_before_parsing(harness: Harness) -> None:
    for size in (16385, 65536, 1 << 20):
        for value in (
            b"Bearer " + b"a" * size,
            b"Bearer " + big(b"eyJhbGciOiJIUzI1NiJ9.", size),
            b"Bearer " + TOKEN.encode() * (size // len(TOKEN) + 1),
        ):
            assert (
                harness.call(Request(headers=[(b"authorization", value)]), statuses=frozenset({401})).status
                == 401
            )
    harness.check_bounded()


# -- paths, methods, queries, clients ----------------------------------------------------------


def test_paths_methods_queries_and_clients_of_every_shape(harness: Harness) -> None:
    @FUZZ
    @given(path=paths, method=methods, query=queries, client=clients)
    def run(path: str, method: str, query: bytes, client: Any) -> None:
        if harness.protocol == "wsgi" and not path.startswith("/"):
            path = "/" + path  # a WSGI server never passes a PATH_INFO without one (or empty)
        result = harness.call(Request(method=method, path=path, query=query, client=client))
        if result.access is not None and query and harness.protocol == "asgi":
            logged = result.access["query"]
            for secret in re.findall(r"(?:^|&)(?:token|password|api_key)=([^&]+)", query.decode("latin-1")):
                assert secret not in logged.split("&"), logged[:200]

    run()
    harness.check_bounded()


def test_scopes_without_optional_keys() -> None:
    """ASGI servers may leave out ``client``, ``server``, ``query_string``, ``root_path``..."""
    h = make_harness("asgi")
    try:
        optional = ["client", "server", "query_string", "root_path", "scheme", "http_version", "asgi"]

        @FUZZ
        @given(drop=st.sets(st.sampled_from(optional)), path=paths, method=methods, extra=headers)
        def run(drop: set[str], path: str, method: str, extra: list[tuple[bytes, bytes]]) -> None:
            h.call(Request(method=method, path=path, headers=[BEARER, *extra], drop=tuple(sorted(drop))))

        run()
        h.check_bounded()
    finally:
        h.close()


# -- the /metrics exposition: content negotiation is input too ---------------------------------

media_params = st.lists(
    st.tuples(
        st.sampled_from(["version", "escaping", "charset", "q", "", "Version"]),
        st.sampled_from(
            ["1.0.0", "0.0.1", "2.0.0", "a", "1.a", "", "1..0", "allow-utf-8", "values", "dots", "x"]
        )
        | st.text(max_size=6),
    ),
    max_size=3,
).map(lambda ps: "".join(f"; {k}={v}" for k, v in ps))
accepts = st.one_of(
    st.lists(
        st.tuples(
            st.sampled_from(["application/openmetrics-text", "text/plain", "*/*", "application/json", ""]),
            media_params,
        ),
        max_size=3,
    ).map(lambda xs: ", ".join(t + p for t, p in xs)),
    header_bytes.map(lambda b: b.decode("latin-1")),
)


def test_metrics_exposition_under_hostile_negotiation(harness: Harness) -> None:
    harness.call(Request())  # something to expose

    @FUZZ
    @given(
        accept=accepts,
        encoding=st.sampled_from(["", "gzip", "GZIP;q=0", "br, gzip", "\x00"]) | st.text(max_size=10),
        query=queries
        | st.sampled_from([b"name[]=http_server_requests_total", b"name[]=%ff&name[]=", b"name=x" * 50]),
        method=st.sampled_from(["GET", "HEAD"]),
    )
    def run(accept: str, encoding: str, query: bytes, method: str) -> None:
        hdrs = [
            (b"accept", accept.encode("latin-1", "replace")),
            (b"accept-encoding", encoding.encode("latin-1", "replace")),
            BEARER,  # /metrics is behind the stack's auth like any path: an authorized scraper
        ]
        result = harness.call(
            Request(method=method, path="/metrics", headers=hdrs, query=query), statuses=frozenset({200})
        )
        (content_type,) = result.header(b"content-type")
        assert content_type.startswith((b"text/plain", b"application/openmetrics-text")), content_type

    run()
    harness.check_bounded()


# -- a fixed corpus of known-nasty requests ------------------------------------------------------

CRLF_JSON = '\r\n{"level":"error","message":"forged"}'
CORPUS: list[Request] = [
    Request(path="/items/x" + CRLF_JSON),
    Request(path="/items/%00"),
    Request(path="/items/\x00\x01\x1b[2J"),
    Request(path="/../../etc/passwd"),
    Request(path="/..%2f..%2fetc%2fpasswd"),
    Request(path="/items/\u2028\u2029\x85"),
    Request(path="/items/\udcff\udc80"),
    Request(path="/" + "a" * 10240),
    Request(path="/" + "/" * 10240),
    Request(path="/items/" + "é" * 5000),
    Request(path=""),
    Request(path="items/1"),
    Request(path="*"),
    Request(path="/healthz\r\n"),
    Request(method="", path="/"),
    Request(method="get"),
    Request(method="G\r\nET"),
    Request(method="X" * 10000),
    Request(headers=[BEARER, (b"user-agent", CRLF_JSON.encode())]),
    Request(headers=[BEARER, (b"user-agent", b"\xff\xfe\x00" * 30000)]),
    Request(headers=[BEARER, (b"x-request-id", b"abc\r\nX-Injected: 1")]),
    Request(headers=[BEARER, (b"x-request-id", b"x" * 129)]),
    Request(headers=[BEARER, (b"x-request-id", b"\xfc")]),
    Request(headers=[BEARER, (b"x-request-id", b"")]),
    Request(headers=[BEARER, (b"", b""), (b"\xff\xfe", b"\x00\x01"), (b"a:b", b"c"), (b" ", b" ")]),
    Request(headers=[BEARER, *((f"x-h{i}".encode(), b"v" * 64) for i in range(1000))]),
    Request(headers=[BEARER, (b"x" * 65536, b"y" * 65536)]),
    Request(headers=[BEARER, (b"traceparent", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01")]),
    Request(headers=[BEARER, (b"traceparent", b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]),
    Request(headers=[BEARER, (b"traceparent", b"00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01")]),
    Request(
        headers=[BEARER, (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra")]
    ),
    Request(headers=[BEARER, (b"traceparent", b"00-" + b"a" * 65536)]),
    Request(headers=[BEARER, (b"tracestate", b"k=v," * 16384), (b"baggage", b"k=v;" * 16384)]),
    Request(headers=[BEARER, (b"tracestate", b"\x00=\r\n"), (b"baggage", b"%ff=%fe;\r\n")]),
    Request(headers=[(b"authorization", b"Bearer")]),
    Request(headers=[(b"authorization", b"Bearer ")]),
    Request(headers=[(b"authorization", b"Bearer .")]),
    Request(headers=[(b"authorization", b"Bearer ..")]),
    Request(headers=[(b"authorization", b"Bearer a.b.c")]),
    Request(headers=[(b"authorization", b"Bearer \xff\xfe.\x00.\r\n")]),
    Request(
        headers=[
            (b"authorization", ("Bearer " + sign({"alg": "none"}, {"sub": "root", "exp": NOW + 99})).encode())
        ]
    ),
    Request(headers=[(b"authorization", ("Bearer " + good_token('evil\r\n{"principal":"root"}')).encode())]),
    Request(headers=[(b"authorization", ("Bearer " + good_token("\u2028\x85\x1b[31m")).encode())]),
    Request(path="/admin/stats"),
    Request(path="/admin/stats", headers=[(b"authorization", f"Bearer {ADMIN_TOKEN}".encode())]),
    Request(headers=[BEARER, (b"x-forwarded-for", b"unknown, " * 10000)]),
    Request(headers=[BEARER, (b"forwarded", b'for="_gazonk", for="[2001:db8:cafe::17]:4711", for=unknown')]),
    Request(client=None),
    Request(client=("", 0)),
    Request(client=("garbage\r\n", 0)),
    Request(client=("2001:db8::1", 1)),
    Request(path="/metrics", headers=[(b"accept", b"text/plain; version=a")]),
    Request(
        path="/metrics", headers=[(b"accept", b"application/openmetrics-text; version=1.x; escaping=\xff")]
    ),
    Request(query=b"token=supersecret&password=hunter2&%ff%fe=\r\n&q=" + b"z" * 20000),
]


def _corpus_id(req: Request) -> str:
    text = f"{req.method[:8]!r} {req.path[:24]!r} {[k[:16] for k, _ in req.headers[-2:]]!r}"
    return re.sub(r"[^A-Za-z0-9_./'-]", "_", text)[:60]


@pytest.mark.parametrize("protocol", ["asgi", "wsgi"])
def test_fixed_corpus(protocol: str) -> None:
    h = make_harness(protocol)
    try:
        seen: list[tuple[str, int]] = []
        for req in CORPUS:
            if protocol == "wsgi" and req.path and not req.path.startswith("/"):
                req = Request(req.method, "/" + req.path, req.headers, req.query, req.client)
            result = h.call(req)
            seen.append((_corpus_id(req), result.status))
            if result.access is not None and b"supersecret" in req.query:
                assert "supersecret" not in json.dumps(result.access) and "hunter2" not in json.dumps(
                    result.access
                )
        statuses = {status for _, status in seen}
        assert {200, 401, 403, 404} <= statuses, seen
        h.check_bounded()
    finally:
        h.close()
