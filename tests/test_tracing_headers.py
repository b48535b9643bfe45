"""Header capture on spans: OpenTelemetry's ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*``
variables and the tracing policies' options, credentials always redacted.

Parity is checked against contrib itself: its ASGI middleware run on the same requests
with the same variables, and its ``get_custom_header_attributes`` helper.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from opentelemetry.trace import SpanKind
from opentelemetry.util.http import (
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE,
    normalise_request_header_name,
)
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import kitmw
import kitmw.httpx
from kitmw.errors import ConfigError
from kitmw.testing import wsgi_environ
from kitmw.tracing import ALWAYS_REDACTED, ClientTracingPolicy, TracingPolicy

# Exported by opentelemetry-util-http only after 0.60b0, the lowest version kitmw supports.
OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST"
OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE"

SERVER_VARIABLES = (
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE,
    OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS,
)
#: Request headers with every case the capture must get right: a repeated header, a
#: list-valued one, mixed case, credentials, non-UTF-8 bytes, a name with an underscore.
REQUEST_HEADERS = [
    (b"host", b"shop.example"),
    (b"x-tenant", b"acme"),
    (b"x-tenant", b"beta"),
    (b"accept", b"text/html, application/json"),
    (b"authorization", b"Bearer s3cret"),
    (b"cookie", b"session=abc"),
    (b"x-api-key", b"k-123"),
    (b"x-private-note", b"hush"),
    (b"x-latin", "caf\u00e9".encode()),
    (b"x-raw", b"\xff\xfe"),
    (b"user-agent", b"curl/8"),
]


@pytest.fixture(autouse=True)
def no_capture_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SERVER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def answer(request: Any) -> PlainTextResponse:
    response = PlainTextResponse("ok", headers={"x-answer": "42", "x-request-cost": "7"})
    response.set_cookie("sid", "abc")
    response.set_cookie("theme", "dark")
    return response


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/", answer)])


async def drive(app: Any, headers: list[tuple[bytes, bytes]] = REQUEST_HEADERS) -> None:
    """One request with raw header bytes (httpx would refuse the non-UTF-8 ones)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": list(headers),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    await app(scope, receive, send)


def header_attributes(span: Any) -> dict[str, Any]:
    return {k: v for k, v in span.attributes.items() if k.startswith(("http.request.header.", "http.response.header."))}


RID = "8a5d6b1f3c2e4d7f9a0b1c2d3e4f5a6"  # + one digit: a valid request id


def server_span(exporter: Any) -> Any:
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    return span


# -- parity with contrib ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("request_patterns", "response_patterns", "sanitize"),
    [
        pytest.param("x-tenant,accept", "x-answer", "", id="names"),
        pytest.param("X-TENANT, Accept", "X-Answer", "", id="case-and-spaces"),
        pytest.param("x-.*", "x-.*,set-cookie", "x-private.*", id="regexes-and-sanitize"),
        pytest.param(".*", ".*", "note", id="everything"),
        pytest.param("tenant", "answer", "", id="whole-name-only"),
    ],
)
async def test_captured_headers_equal_contribs_asgi_middleware(
    spans: Any, monkeypatch: pytest.MonkeyPatch, request_patterns: str, response_patterns: str, sanitize: str
) -> None:
    """The same variables, read by contrib's middleware and by kitmw, give the same
    attributes (contrib told to sanitize what kitmw always redacts)."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    provider, exporter = spans
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST, request_patterns)
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE, response_patterns)
    # (no empty item: contrib would search for "" and redact every captured value)
    sanitize_all = ",".join([*ALWAYS_REDACTED, sanitize] if sanitize else ALWAYS_REDACTED)
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS, sanitize_all)
    contrib = OpenTelemetryMiddleware(
        starlette_app(), tracer_provider=provider, meter_provider=None, exclude_spans=["receive", "send"]
    )
    await drive(contrib)
    expected = header_attributes(server_span(exporter))
    exporter.clear()
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS, sanitize)  # kitmw adds its own
    await drive(kitmw.Tracing(starlette_app(), tracer_provider=provider))
    assert header_attributes(server_span(exporter)) == expected
    if request_patterns == ".*":
        assert expected["http.request.header.x_tenant"] == ("acme", "beta")  # one item per line
        assert expected["http.request.header.authorization"] == ("[REDACTED]",)


def test_neutral_capture_equals_contribs_helper() -> None:
    """The helper contrib's httpx and other instrumentations call, on name -> values."""
    from kitmw.tracing._headers import HeaderCapture

    util_http = pytest.importorskip("opentelemetry.util.http")
    if not hasattr(util_http, "get_custom_header_attributes"):
        pytest.skip("opentelemetry-util-http has get_custom_header_attributes only after 0.60b0")
    get_custom_header_attributes = util_http.get_custom_header_attributes
    headers = {"x-tenant": ["acme", "beta"], "Accept": ["a, b"], "X-Api-Key": ["k"], "x-secret-sauce": ["s"]}
    captured, sensitive = ["x-.*", "accept"], [*ALWAYS_REDACTED, "sauce"]
    expected = get_custom_header_attributes(headers, captured, sensitive, normalise_request_header_name)
    pairs = [(name, value) for name, values in headers.items() for value in values]
    assert HeaderCapture(captured, sensitive, normalise_request_header_name).collect(pairs) == expected


# -- variables and options --------------------------------------------------------------------


@pytest.mark.anyio
async def test_variables_are_read_once_when_the_middleware_is_built(spans: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    provider, exporter = spans
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST, "x-tenant")
    app = kitmw.Tracing(starlette_app(), tracer_provider=provider)
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST, "accept")
    await drive(app)
    assert header_attributes(server_span(exporter)) == {"http.request.header.x_tenant": ("acme", "beta")}


@pytest.mark.anyio
async def test_options_replace_the_variables_and_an_empty_list_captures_nothing(
    spans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, exporter = spans
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST, "x-tenant")
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE, "x-answer")
    app = kitmw.stack(
        starlette_app(),
        tracing={"tracer_provider": provider, "capture_request_headers": ["accept"], "capture_response_headers": []},
    )
    await drive(app)
    assert header_attributes(server_span(exporter)) == {"http.request.header.accept": ("text/html, application/json",)}


@pytest.mark.anyio
async def test_credentials_are_redacted_even_when_listed_and_sanitize_adds_to_them(spans: Any) -> None:
    provider, exporter = spans
    app = kitmw.Tracing(
        starlette_app(),
        tracer_provider=provider,
        capture_request_headers=["authorization", "cookie", "x-api-key", "x-private-note", "x-tenant"],
        capture_response_headers=["set-cookie", "x-answer"],
        sanitize_headers=["private"],
    )
    await drive(app)
    assert header_attributes(server_span(exporter)) == {
        "http.request.header.authorization": ("[REDACTED]",),
        "http.request.header.cookie": ("[REDACTED]",),
        "http.request.header.x_api_key": ("[REDACTED]",),
        "http.request.header.x_private_note": ("[REDACTED]",),
        "http.request.header.x_tenant": ("acme", "beta"),
        "http.response.header.set_cookie": ("[REDACTED]", "[REDACTED]"),
        "http.response.header.x_answer": ("42",),
    }


@pytest.mark.parametrize(
    ("options", "named"),
    [
        pytest.param({"capture_request_headers": ["x-(unclosed"]}, "capture_request_headers", id="request"),
        pytest.param({"capture_response_headers": ["*"]}, "capture_response_headers", id="response"),
        pytest.param({"sanitize_headers": ["[z-a]"]}, "sanitize_headers", id="sanitize"),
        pytest.param({"capture_request_headers": [3]}, "capture_request_headers", id="not-a-string"),
        pytest.param({"capture_request_headers": 3}, "capture_request_headers", id="not-a-list"),
    ],
)
@pytest.mark.parametrize("policy", [TracingPolicy, ClientTracingPolicy])
def test_bad_patterns_raise_config_error_naming_the_option(policy: Any, options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        policy(**options)


def test_a_bad_pattern_in_a_variable_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE, "x-ok,x-(bad")
    with pytest.raises(ConfigError, match=OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE):
        TracingPolicy()
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST, "(")
    with pytest.raises(ConfigError, match=OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST):
        ClientTracingPolicy()


def test_without_capture_nothing_is_bound_to_read_headers() -> None:
    """The lazy path: no capture configured, no header reader in the hooks drivers run."""
    from kitmw.tracing import _asgi, _wsgi
    from kitmw.tracing._common import neutral_server_helpers
    from kitmw.tracing._semconv import Semconv

    policy = TracingPolicy()
    assert policy.hooks("asgi", True).exit is policy.hooks("wsgi", False).exit  # the shared exit
    sc = Semconv(None)
    for helpers in (_asgi.server_helpers(sc, False, None), _wsgi.server_helpers(sc), neutral_server_helpers(sc)):  # type: ignore[arg-type]
        assert (helpers.request_headers, helpers.response_headers) == (None, None)


# -- where headers go ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_request_headers_go_on_an_adopted_span_redacted_over_its_owners_values(
    spans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """contrib's middleware outside kitmw captures from the variables without redacting;
    kitmw adopts its span and writes the request headers again, redacted. contrib ends
    its span at the last body byte, before kitmw's exit: the response headers stay
    contrib's own (docs/tracing.md says so)."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    provider, exporter = spans
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST, "authorization,x-tenant")
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE, "x-answer")
    app = OpenTelemetryMiddleware(
        kitmw.Tracing(starlette_app(), tracer_provider=provider),
        tracer_provider=provider,
        meter_provider=None,
        exclude_spans=["receive", "send"],
    )
    await drive(app)
    assert len(exporter.get_finished_spans()) == 1
    assert header_attributes(server_span(exporter)) == {
        "http.request.header.authorization": ("[REDACTED]",),  # contrib alone would show the token
        "http.request.header.x_tenant": ("acme", "beta"),
        "http.response.header.x_answer": ("42",),  # contrib's
    }


@pytest.mark.anyio
async def test_fastapi_native_span_gets_the_request_headers(spans: Any) -> None:
    """Inside FastAPI's native telemetry kitmw adopts FastAPI's span: the request headers
    are added; FastAPI ends its span at the last body byte, before kitmw could add the
    response headers (docs/tracing.md says so)."""
    import inspect

    from fastapi import FastAPI

    if "telemetry" not in inspect.signature(FastAPI).parameters:
        pytest.skip("this FastAPI has no native telemetry (a later release than kitmw's minimum)")
    provider, exporter = spans
    app = FastAPI(telemetry={"tracer_provider": provider, "operation_spans": False, "metrics": False})

    @app.get("/")
    def root() -> PlainTextResponse:
        return PlainTextResponse("ok", headers={"x-answer": "42"})

    app.add_middleware(kitmw.Tracing, capture_request_headers=["x-tenant"], capture_response_headers=["x-answer"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/", headers={"x-tenant": "acme"})).status_code == 200
    span = server_span(exporter)
    assert header_attributes(span) == {"http.request.header.x_tenant": ("acme",)}


@pytest.mark.anyio
async def test_an_internal_span_gets_no_headers(spans: Any) -> None:
    """Under another framework's SERVER span kitmw's span is INTERNAL: headers belong on
    SERVER spans (contrib's rule)."""
    provider, exporter = spans
    app = kitmw.Tracing(
        starlette_app(), tracer_provider=provider, capture_request_headers=[".*"], capture_response_headers=[".*"]
    )
    with provider.get_tracer("other").start_as_current_span("framework", kind=SpanKind.SERVER):
        await drive(app)
    (internal,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.INTERNAL]
    assert header_attributes(internal) == {}


def test_wsgi_captures_content_type_and_each_response_header_line(spans: Any) -> None:
    from flask import Flask, Response

    provider, exporter = spans
    flask_app = Flask("headers")

    @flask_app.post("/")
    def post() -> Response:
        response = Response("ok")
        response.headers.add("X-Answer", "1")
        response.headers.add("X-Answer", "2")
        return response

    app = kitmw.wsgi.Tracing(
        flask_app,
        tracer_provider=provider,
        capture_request_headers=["content-type", "x-tenant", "authorization"],
        capture_response_headers=["x-answer"],
    )
    environ = wsgi_environ(
        "POST", "/", headers={"Content-Type": "text/plain", "X-Tenant": "acme", "Authorization": "Basic x"}
    )
    body = app(environ, lambda status, headers, exc_info=None: None)
    b"".join(body)
    body.close()  # type: ignore[attr-defined]
    assert header_attributes(server_span(exporter)) == {
        "http.request.header.content_type": ("text/plain",),
        "http.request.header.x_tenant": ("acme",),
        "http.request.header.authorization": ("[REDACTED]",),
        "http.response.header.x_answer": ("1", "2"),
    }


def test_wsgi_reads_the_server_variables_and_sanitize_fields(spans: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused WSGI layer (``stack()`` on a Flask app), configured by the variables only."""
    from flask import Flask, Response

    provider, exporter = spans
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST, "x-.*, user-agent")
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE, "x-answer,set-cookie")
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS, "x-private-.*")
    flask_app = Flask("headers-env")

    @flask_app.get("/")
    def get() -> Response:
        response = Response("ok", headers={"X-Answer": "42"})
        response.set_cookie("sid", "abc")
        return response

    app = kitmw.stack(flask_app, tracing={"tracer_provider": provider})
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as c:
        headers = {"X-Tenant": "acme", "X-Private-Note": "hush", "X-Api-Key": "k-1", "User-Agent": "curl/8"}
        assert c.get("/", headers=headers).status_code == 200
    assert header_attributes(server_span(exporter)) == {
        "http.request.header.x_tenant": ("acme",),
        "http.request.header.x_private_note": ("[REDACTED]",),
        "http.request.header.x_api_key": ("[REDACTED]",),
        "http.request.header.user_agent": ("curl/8",),
        "http.response.header.x_answer": ("42",),
        "http.response.header.set_cookie": ("[REDACTED]",),
    }


@pytest.mark.parametrize("protocol", ["asgi", "wsgi"])
def test_an_early_answer_of_kitmw_has_its_response_headers_captured(spans: Any, protocol: str) -> None:
    """A 429 from the rate limit never reaches the app: its headers (Retry-After, the
    request id kitmw added) are still the response's, on the span."""
    from flask import Flask

    provider, exporter = spans
    if protocol == "asgi":
        inner: Any = starlette_app()
    else:
        inner = Flask("early")
        inner.add_url_rule("/", "root", lambda: "ok")
    tracing = {"tracer_provider": provider, "capture_response_headers": ["retry-after", "x-request-id"]}
    app = kitmw.stack(inner, tracing=tracing, access_log=True, ratelimit="1/minute")
    transport: Any = httpx.ASGITransport(app=app) if protocol == "asgi" else httpx.WSGITransport(app=app)
    if protocol == "asgi":
        import asyncio

        async def twice() -> list[int]:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return [(await c.get("/", headers={"X-Request-ID": f"{RID}{n}"})).status_code for n in range(2)]

        statuses = asyncio.run(twice())
    else:
        with httpx.Client(transport=transport, base_url="http://t") as c:
            statuses = [c.get("/", headers={"X-Request-ID": f"{RID}{n}"}).status_code for n in range(2)]
    assert statuses == [200, 429]
    refused = header_attributes(exporter.get_finished_spans()[1])
    assert refused == {"http.response.header.retry_after": ("60",), "http.response.header.x_request_id": (f"{RID}1",)}


# -- client side -----------------------------------------------------------------------------------


def upstream(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        headers=[("x-upstream", "a"), ("x-upstream", "b"), ("set-cookie", "s=1"), ("date", "Tue, 03 Jun 2026 10:00:00 GMT")],
        text="ok",
    )


def test_client_variables_capture_request_headers_before_traceparent_and_response_lines(
    spans: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, exporter = spans
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST, "x-.*,traceparent,authorization")
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE, "x-upstream,set-cookie,date")
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST, "x-server-only")
    transport = kitmw.httpx.Transport(transport=httpx.MockTransport(upstream), tracing={"tracer_provider": provider})
    with httpx.Client(transport=transport) as c:
        r = c.get("http://api.example/", headers={"x-tenant": "acme", "Authorization": "Bearer t"})
    assert "traceparent" in r.request.headers
    (span,) = exporter.get_finished_spans()
    assert header_attributes(span) == {
        "http.request.header.x_tenant": ("acme",),
        "http.request.header.authorization": ("[REDACTED]",),
        "http.response.header.x_upstream": ("a", "b"),
        "http.response.header.set_cookie": ("[REDACTED]",),
        "http.response.header.date": ("Tue, 03 Jun 2026 10:00:00 GMT",),  # one line, one item
    }


def test_client_options_replace_the_variables(spans: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    provider, exporter = spans
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST, "x-tenant")
    tracing = {"tracer_provider": provider, "capture_request_headers": [], "capture_response_headers": "x-upstream"}
    transport = kitmw.httpx.Transport(transport=httpx.MockTransport(upstream), tracing=tracing)
    with httpx.Client(transport=transport) as c:
        c.get("http://api.example/", headers={"x-tenant": "acme"})
    (span,) = exporter.get_finished_spans()
    assert header_attributes(span) == {"http.response.header.x_upstream": ("a", "b")}


@pytest.mark.anyio
async def test_async_transport_captures_from_the_variables(spans: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    provider, exporter = spans
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST, "x-tenant,x-auth-token")
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE, "x-upstream")
    monkeypatch.setenv(OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS, "tenant")
    transport = kitmw.httpx.AsyncTransport(transport=httpx.MockTransport(upstream), tracing={"tracer_provider": provider})
    async with httpx.AsyncClient(transport=transport) as c:
        await c.get("http://api.example/", headers={"x-tenant": "acme", "x-auth-token": "t0k"})
    (span,) = exporter.get_finished_spans()
    assert header_attributes(span) == {
        "http.request.header.x_tenant": ("[REDACTED]",),
        "http.request.header.x_auth_token": ("[REDACTED]",),
        "http.response.header.x_upstream": ("a", "b"),
    }
