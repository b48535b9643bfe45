"""The ``asgi`` suite of ``kitmw bench`` (the default): ASGI middlewares in-process.

Every configuration wraps the same Starlette app (one route, ``/items/{item_id}``) and
is driven directly through ASGI (no server, no sockets), in interleaved rounds
(:mod:`kitmw.bench.harness`); overhead and ratio are against the bare Starlette app of
the same run.

Peer packages are optional (the ``bench`` extra): a configuration whose package is
missing is left out of the table, and one note names the missing packages and the extra
that installs them; a configuration that fails for another reason is listed as skipped
with that reason.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from .harness import (
    JWT_SECRET,
    SIX,
    Configuration,
    Env,
    Suite,
    Target,
    clock,
    concern_options,
    hs256_token,
    kitmw_options,
    null_stream,
    per_request,
    registry,
)

__all__ = [
    "SUITE",
    "TARGETS",
    "configurations",
    "drive",
    "peer_stack",
    "request_scope",
    "run",
    "starlette_app",
]

#: ``detail`` of a configuration that is a plain call (a dependency floor, a JWT
#: verification), timed call by call rather than driven through ASGI.
CALL = "call"

Builder = Callable[[Env], Any]


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/items/{item_id}", item)])


def _fastapi_app() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})  # type: ignore[call-arg]

    @app.get("/items/{item_id}", response_class=PlainTextResponse)
    async def item(item_id: int) -> str:
        return "ok"

    return app


async def _raw_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def configurations() -> list[Configuration]:
    """(name, group, builder, needs_token); builders get the env and return an ASGI app."""
    import kitmw

    def kitmw_one(concern: str) -> Builder:
        def build(env: Env) -> Any:
            return kitmw.stack(starlette_app(), **concern_options(env, [concern]))

        return build

    def kitmw_nested(concerns: list[str]) -> Builder:
        classes = {
            "tracing": kitmw.Tracing,
            "access_log": kitmw.AccessLog,
            "metrics": kitmw.Metrics,
            "ratelimit": kitmw.RateLimit,
            "auth": kitmw.Auth,
            "breaker": kitmw.CircuitBreaker,
        }

        def build(env: Env) -> Any:
            app = starlette_app()
            for concern in reversed(concerns):
                app = classes[concern](app, **kitmw_options(env, concern))
            return app

        return build

    def kitmw_stack(concerns: list[str], counting: bool = False) -> Builder:
        def build(env: Env) -> Any:
            return kitmw.stack(starlette_app(), **concern_options(env, concerns, counting=counting))

        return build

    def kitmw_metrics(backends: list[Literal["prometheus", "otel"]], labels: dict[str, str] | None = None) -> Builder:
        """The metrics concern on the OpenTelemetry backend (an SDK meter provider whose
        reader is never collected: the cost of recording, not of exporting) or on both."""

        def build(env: Env) -> Any:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader

            from ..metrics import MetricsOptions

            options: MetricsOptions = {"backend": backends, "labels": labels}
            if "otel" in backends:
                options["meter_provider"] = MeterProvider(metric_readers=[InMemoryMetricReader()])
            if "prometheus" in backends:
                options["registry"] = registry()
            return kitmw.stack(starlette_app(), metrics=options)

        return build

    three = list(SIX[:3])
    six = list(SIX)
    configs: list[Configuration] = [
        ("bare Starlette app", "bare", lambda env: starlette_app(), False),
        ("bare raw ASGI app", "reference", lambda env: _raw_app, False),
        ("bare FastAPI app", "reference", lambda env: _fastapi_app(), False),
        ("no-op pure-ASGI middleware", "reference", _noop_middleware, False),
        ("kitmw driver, one no-op exit policy", "reference", _kitmw_driver, False),
    ]
    for concern, title in [
        ("access_log", "kitmw AccessLog"),
        ("metrics", "kitmw Metrics"),
        ("tracing", "kitmw Tracing"),
        ("ratelimit", "kitmw RateLimit (memory)"),
        ("auth", "kitmw Auth (HS256 JWT)"),
        ("breaker", "kitmw CircuitBreaker"),
    ]:
        configs.append((title, "kitmw", kitmw_one(concern), concern == "auth"))
    configs += [
        ("kitmw Metrics, constant labels", "kitmw", kitmw_metrics(["prometheus"], {"service": "bench"}), False),
        ("kitmw Metrics, otel backend", "kitmw", kitmw_metrics(["otel"]), False),
        ("kitmw Metrics, prometheus + otel", "kitmw", kitmw_metrics(["prometheus", "otel"]), False),
        ("kitmw 3 nested (tracing, log, metrics)", "kitmw", kitmw_nested(three), False),
        ("kitmw stack() of 3", "kitmw", kitmw_stack(three), False),
        ("kitmw 6 nested", "kitmw", kitmw_nested(six), True),
        ("kitmw stack() of 6", "kitmw", kitmw_stack(six), True),
        ("kitmw stack() of 6, tracing off", "kitmw", kitmw_stack(six[1:]), True),
        ("kitmw Tracing (counting processor)", "kitmw", kitmw_stack(["tracing"], counting=True), False),
        ("kitmw stack() of 6 (counting processor)", "kitmw", kitmw_stack(six, counting=True), True),
        ("asgi-correlation-id", "peer", _peer_correlation_id, False),
        ("asgi-correlation-id + JSON access log (python-json-logger)", "peer", _peer_access_pair, False),
        ("starlette_exporter", "peer", _peer_starlette_exporter, False),
        ("prometheus-fastapi-instrumentator", "peer", _peer_instrumentator, False),
        ("OpenTelemetryMiddleware (exclude send/receive)", "peer", _peer_otel(True), False),
        ("OpenTelemetryMiddleware (default)", "peer", _peer_otel(False), False),
        (
            "OpenTelemetryMiddleware (exclude send/receive, counting processor)",
            "peer",
            _peer_otel(True, counting=True),
            False,
        ),
        ("slowapi ASGI middleware (memory)", "peer", _peer_slowapi, False),
        ("Starlette AuthenticationMiddleware + PyJWT", "peer", _peer_auth, True),
        ("pybreaker-guarded endpoint", "peer", _peer_pybreaker, False),
        ("peer stack (all six peers)", "peer", peer_stack, True),
        ("peer stack (all six peers, counting processor)", "peer", _peer_stack_counting, True),
        ("peer stack without the access line (the previous rounds' peer stack)", "peer", _peer_stack_no_line, True),
    ]
    configs += floors()
    configs += jwt_calls()
    return configs


def _noop_middleware(env: Env) -> Any:
    inner = starlette_app()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def send_wrapper(message: Any) -> None:
            await send(message)

        await inner(scope, receive, send_wrapper)

    return app


def _kitmw_driver(env: Env) -> Any:
    """kitmw's ASGI driver with a policy that does nothing at the end of the exchange:
    what every kitmw layer costs before its concern does anything (the Exchange, the
    compiled chain, the send wrapper, the finish)."""
    from ..asgi import Middleware
    from ..exchange import Exchange, Policy

    class Noop(Policy):
        name = "noop"

        def exit(self, ex: Exchange) -> None:
            return None

    return Middleware(starlette_app(), Noop())


def _with_middleware(*middleware: Any, state: dict[str, Any] | None = None, guard: bool = False) -> Any:
    """A Starlette app like `starlette_app()`, peers added the way their docs say."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    route = Route("/items/{item_id}", item)
    if guard:
        route.app = _pybreaker_guard(route.app)
    app = Starlette(routes=[route], middleware=list(middleware))
    for key, value in (state or {}).items():
        setattr(app.state, key, value)
    return app


def _pybreaker_guard(inner: Any) -> Any:
    import pybreaker

    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        with breaker.calling():
            await inner(scope, receive, send)

    return guarded


def _mw_correlation_id(env: Env) -> Any:
    from asgi_correlation_id import CorrelationIdMiddleware
    from starlette.middleware import Middleware

    return Middleware(CorrelationIdMiddleware)


def _mw_exporter(env: Env) -> Any:
    from starlette.middleware import Middleware
    from starlette_exporter import PrometheusMiddleware

    return Middleware(PrometheusMiddleware, app_name=f"bench{time.monotonic_ns()}", group_paths=True)


def _mw_otel(env: Env, exclude: bool = True, counting: bool = False) -> Any:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette.middleware import Middleware

    kwargs: dict[str, Any] = {"tracer_provider": env.counting_provider if counting else env.provider}
    if exclude:
        kwargs["exclude_spans"] = ["receive", "send"]
    return Middleware(OpenTelemetryMiddleware, **kwargs)


def _slowapi_limiter() -> Any:
    from slowapi import Limiter
    from slowapi.util import get_remote_address

    return Limiter(key_func=get_remote_address, default_limits=["1000000/minute"])


def _mw_slowapi(env: Env) -> Any:
    from slowapi.middleware import SlowAPIASGIMiddleware
    from starlette.middleware import Middleware

    return Middleware(SlowAPIASGIMiddleware)


def _mw_auth(env: Env) -> Any:
    import jwt
    from starlette.authentication import (
        AuthCredentials,
        AuthenticationBackend,
        AuthenticationError,
        SimpleUser,
    )
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware

    class JWTBackend(AuthenticationBackend):
        async def authenticate(self, conn: Any) -> Any:
            header = conn.headers.get("authorization")
            if not header or not header.startswith("Bearer "):
                return None
            try:
                claims = jwt.decode(header[7:], JWT_SECRET, algorithms=["HS256"])
            except jwt.PyJWTError as exc:
                raise AuthenticationError("invalid token") from exc
            return AuthCredentials(claims.get("scope", "").split()), SimpleUser(claims["sub"])

    return Middleware(AuthenticationMiddleware, backend=JWTBackend())


def _peer_correlation_id(env: Env) -> Any:
    return _with_middleware(_mw_correlation_id(env))


def _peer_starlette_exporter(env: Env) -> Any:
    return _with_middleware(_mw_exporter(env))


def _peer_instrumentator(env: Env) -> Any:
    from prometheus_fastapi_instrumentator import Instrumentator

    app = starlette_app()
    Instrumentator(registry=registry()).instrument(app)
    return app


def _peer_otel(exclude: bool, counting: bool = False) -> Builder:
    def build(env: Env) -> Any:
        return _with_middleware(_mw_otel(env, exclude, counting))

    return build


def _peer_slowapi(env: Env) -> Any:
    return _with_middleware(_mw_slowapi(env), state={"limiter": _slowapi_limiter()})


def _peer_auth(env: Env) -> Any:
    return _with_middleware(_mw_auth(env))


def _peer_pybreaker(env: Env) -> Any:
    return _with_middleware(guard=True)


def peer_stack(env: Env, counting: bool = False, line: bool = True) -> Any:
    """What a user stitches together from peers to do the same six jobs (the access log is
    asgi-correlation-id plus a JSON access-log middleware, as kitmw writes a line too;
    ``line=False``: the correlation id alone, as the previous rounds measured)."""
    access = [_mw_correlation_id(env), _mw_access_log()] if line else [_mw_correlation_id(env)]
    return _with_middleware(
        _mw_otel(env, counting=counting),
        *access,
        _mw_exporter(env),
        _mw_slowapi(env),
        _mw_auth(env),
        state={"limiter": _slowapi_limiter()},
        guard=True,
    )


def _peer_stack_counting(env: Env) -> Any:
    return peer_stack(env, counting=True)


def _peer_stack_no_line(env: Env) -> Any:
    return peer_stack(env, line=False)


def _peer_access_pair(env: Env) -> Any:
    return _with_middleware(_mw_correlation_id(env), _mw_access_log())


class JSONAccessLog:
    """The access-log middleware a user writes next to asgi-correlation-id: pure ASGI,
    one JSON line per request through ``logging`` (python-json-logger's formatter)."""

    def __init__(self, app: Any, logger: logging.Logger) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from asgi_correlation_id import correlation_id

        start = time.perf_counter()
        status = 500
        size = 0

        async def send_wrapper(message: Any) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            headers = dict(scope["headers"])
            client = scope.get("client")
            self.logger.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                    "bytes_out": size,
                    "client": client[0] if client else None,
                    "user_agent": headers.get(b"user-agent", b"").decode("latin-1"),
                    "request_id": correlation_id.get(),
                },
            )


def _json_logger_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter  # python-json-logger >= 3.1 (the bench extra)

    formatter: logging.Formatter = JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    return formatter


def _mw_access_log() -> Any:
    from starlette.middleware import Middleware

    logger = logging.getLogger("kitmw.bench.peer.access")
    handler = logging.StreamHandler(null_stream())
    handler.setFormatter(_json_logger_formatter())
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return Middleware(JSONAccessLog, logger=logger)


# -- dependency floors and JWT: plain calls, timed one by one ---------------------------------


def floors() -> list[Configuration]:
    """The least each dependency must do for one request (issue 16), as plain calls."""
    return [
        ("floor: SDK span, same attributes (SimpleSpanProcessor)", "floor", _floor_span(False), CALL),
        ("floor: SDK span, same attributes (counting processor)", "floor", _floor_span(True), CALL),
        (
            "floor: SDK span as a middleware drives it (counting processor)",
            "floor",
            _floor_span(True, driven=True),
            CALL,
        ),
        ("floor: counter inc + histogram observe", "floor", _floor_metrics, CALL),
        ("floor: one limits hit (same strategy, storage)", "floor", _floor_limits, CALL),
        ("floor: one JSON line through a StreamHandler", "floor", _floor_log, CALL),
        ("floor: one verified-claims cache hit", "floor", _floor_claims, CALL),
    ]


#: Span attributes known only once the response is there (set at the end, not at the start).
_LATE = (
    "http.route",
    "http.status_code",
    "http.response.status_code",
    "http.response_content_length",
    "http.response.body.size",
)


def _floor_span(counting: bool, *, driven: bool = False) -> Builder:
    """One SDK span with the name, kind and attributes kitmw's Tracing gives a request
    (read from a span it made), started and ended through the same provider.

    ``driven``: the SDK calls any server middleware makes for a span (OTel's own too): the
    span made current (``set_span_in_context``, ``attach``/``detach``), its context read
    (the ids), the attributes known only at the end set then, the name completed with
    the route; what the per-part breakdown of Tracing weighs against."""

    def build(env: Env) -> Any:
        async def make() -> Callable[[], Any]:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

            import kitmw

            exporter = InMemorySpanExporter()
            capture = TracerProvider()
            capture.add_span_processor(SimpleSpanProcessor(exporter))
            await drive(kitmw.stack(starlette_app(), tracing={"tracer_provider": capture}), request_scope(None), 1)
            span = exporter.get_finished_spans()[0]
            name, kind, attributes = span.name, span.kind, dict(span.attributes or {})
            provider = env.counting_provider if counting else env.provider
            tracer = provider.get_tracer("kitmw.bench.floor")
            if not driven:

                def call() -> None:
                    tracer.start_span(name, kind=kind, attributes=attributes).end()

                return call
            from opentelemetry import context, trace

            early = {k: v for k, v in attributes.items() if k not in _LATE}
            late = {k: v for k, v in attributes.items() if k in _LATE}
            method = name.split(" ", 1)[0]
            attach, detach, in_context = context.attach, context.detach, trace.set_span_in_context

            def drive_span() -> None:
                span = tracer.start_span(method, kind=kind, attributes=early, start_time=time.time_ns())
                token = attach(in_context(span))
                span.get_span_context()
                span.update_name(name)
                span.set_attributes(late)
                span.end()
                detach(token)

            return drive_span

        return make()

    return build


def _floor_metrics(env: Env) -> Callable[[], Any]:
    """kitmw's own request counter and duration histogram (same buckets), children cached."""
    from ..metrics import instruments

    inst = instruments(registry())
    key = ("GET", "/items/{item_id}", "200")
    requests = inst.server_requests.labels(*key)
    duration = inst.server_duration.labels(*key)

    def call() -> None:
        requests.inc()
        duration.observe(0.000125)

    return call


def _floor_limits(env: Env) -> Callable[[], Any]:
    """One ``limits`` hit: kitmw's default strategy (fixed window) on its memory storage."""
    from limits import parse
    from limits.strategies import FixedWindowRateLimiter

    from ..ratelimit._limits import HeapMemoryStorage

    limiter = FixedWindowRateLimiter(HeapMemoryStorage())
    item = parse("1000000/minute")
    return lambda: limiter.hit(item, "127.0.0.1")


def _floor_log(env: Env) -> Any:
    """The fields of kitmw's access line for the request, logged as one record through a
    ``StreamHandler`` with kitmw's JSON formatter (the same line, written the usual way)."""

    async def make() -> Callable[[], Any]:
        import kitmw

        from ..logging import JsonFormatter, configure

        lines: list[str] = []

        class Keep(io.StringIO):
            def write(self, s: str) -> int:
                lines.append(s)
                return len(s)

        capture = logging.getLogger("kitmw.bench.floor.capture")
        configure(format="json", logger=capture, stream=Keep(), level=logging.INFO)
        capture.propagate = False
        await drive(kitmw.stack(starlette_app(), access_log={"logger": capture}), request_scope(None), 1)
        fields = json.loads(lines[-1])
        message = fields.pop("message")
        for key in ("time", "level", "logger"):
            fields.pop(key, None)
        logger = logging.getLogger("kitmw.bench.floor.log")
        handler = logging.StreamHandler(null_stream())
        handler.setFormatter(JsonFormatter())
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
        return lambda: logger.info(message, extra=fields)

    return make()


def _floor_claims(env: Env) -> Callable[[], Any]:
    """One hit of a verified-claims cache: a lookup by the header value, an expiry check."""
    from types import MappingProxyType

    from .._cache import BoundedCache
    from ..auth import Principal

    value = "Bearer " + hs256_token()
    cache: BoundedCache[str, tuple[Principal, float]] = BoundedCache(1024, evict="oldest")
    cache.put(value, (Principal("bench-user", frozenset({"read"}), MappingProxyType({}), "jwt"), time.time() + 3600))
    get = cache.get

    def call() -> Principal | None:
        hit = get(value)
        if hit is not None and time.time() < hit[1]:
            return hit[0]
        return None

    return call


class _Headers:
    """The least of an exchange a JWT backend reads: one header."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def header(self, name: str) -> str | None:
        return self.value if name == "authorization" else None


def jwt_calls() -> list[Configuration]:
    """kitmw's JWT backend (verified-claims cache hit, and no cache) and PyJWT's ``decode``
    with the same key and algorithms, one fresh token per call where the cache is missed."""
    return [
        ("JWT: kitmw, cached (verified-claims cache hit)", "jwt", _kitmw_jwt(cached=True), CALL),
        ("JWT: kitmw, uncached (cache_size=0)", "jwt", _kitmw_jwt(cached=False), CALL),
        ("JWT: PyJWT decode (same key, algorithms)", "jwt", _pyjwt_decode, CALL),
    ]


def _kitmw_jwt(*, cached: bool) -> Builder:
    def build(env: Env) -> Callable[[], Any]:
        from ..auth import JWT

        backend = JWT(key=JWT_SECRET, algorithms=["HS256"], cache_size=1024 if cached else 0)
        ex = _Headers("Bearer " + hs256_token())
        authenticate = backend.authenticate
        return lambda: authenticate(ex)  # type: ignore[arg-type]

    return build


def _pyjwt_decode(env: Env) -> Callable[[], Any]:
    import jwt

    token = hs256_token()
    return lambda: jwt.decode(token, JWT_SECRET, algorithms=["HS256"])


#: Targets of issue 16 read from one run (``python -m benchmarks`` and ``kitmw bench`` print them).
TARGETS = [
    Target("stack() of 6 vs the peer stack", "kitmw stack() of 6", "peer stack (all six peers)", 0.2),
    Target(
        "stack() of 6 vs the peer stack (counting processor)",
        "kitmw stack() of 6 (counting processor)",
        "peer stack (all six peers, counting processor)",
        0.2,
    ),
    Target("Tracing vs OTel exclude_spans", "kitmw Tracing", "OpenTelemetryMiddleware (exclude send/receive)", 0.4),
    Target(
        "Tracing vs OTel exclude_spans (counting processor)",
        "kitmw Tracing (counting processor)",
        "OpenTelemetryMiddleware (exclude send/receive, counting processor)",
        0.4,
    ),
    Target(
        "AccessLog vs correlation id + JSON access log",
        "kitmw AccessLog",
        "asgi-correlation-id + JSON access log (python-json-logger)",
        0.5,
    ),
    Target("Metrics vs starlette_exporter", "kitmw Metrics", "starlette_exporter", 0.25),
    Target("RateLimit vs slowapi", "kitmw RateLimit (memory)", "slowapi ASGI middleware (memory)", 0.25),
    Target("Auth vs AuthenticationMiddleware + PyJWT", "kitmw Auth (HS256 JWT)", "Starlette AuthenticationMiddleware + PyJWT", 0.25),
    Target(
        "floor share: tracing",
        "kitmw Tracing",
        "floor: SDK span, same attributes (SimpleSpanProcessor)",
        0.5,
        "share",
    ),
    Target(
        "floor share: tracing (counting processor)",
        "kitmw Tracing (counting processor)",
        "floor: SDK span, same attributes (counting processor)",
        0.5,
        "share",
    ),
    Target(
        "floor share: tracing, over the SDK calls a middleware makes (counting)",
        "kitmw Tracing (counting processor)",
        "floor: SDK span as a middleware drives it (counting processor)",
        0.5,
        "share",
    ),
    Target("floor share: access log", "kitmw AccessLog", "floor: one JSON line through a StreamHandler", 0.5, "share"),
    Target("floor share: metrics", "kitmw Metrics", "floor: counter inc + histogram observe", 0.5, "share"),
    Target("floor share: rate limit", "kitmw RateLimit (memory)", "floor: one limits hit (same strategy, storage)", 0.5, "share"),
    Target("floor share: auth", "kitmw Auth (HS256 JWT)", "floor: one verified-claims cache hit", 0.5, "share"),
    Target(
        "JWT uncached vs PyJWT decode",
        "JWT: kitmw, uncached (cache_size=0)",
        "JWT: PyJWT decode (same key, algorithms)",
        1.1,
        "direct",
    ),
]


def request_scope(token: str | None) -> dict[str, Any]:
    headers = [
        (b"host", b"bench.local"),
        (b"user-agent", b"kitmw-bench/1.0"),
        (b"accept", b"*/*"),
    ]
    if token:
        headers.append((b"authorization", b"Bearer " + token.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/items/42",
        "raw_path": b"/items/42",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def drive(app: Any, base_scope: dict[str, Any], n: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per request over ``n`` requests of ``base_scope`` to ``app``;
    raises unless every answer is a 200."""
    request = {"type": "http.request", "body": b"", "more_body": False}
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    start = clock()
    for _ in range(n):
        scope = dict(base_scope)
        scope["state"] = {}
        await app(scope, receive, send)
    timing = per_request(start, n)
    bad = [s for s in statuses if s != 200]
    if bad:
        raise RuntimeError(f"unexpected status {bad[0]}")
    return timing


def _time_calls(call: Callable[[], Any]) -> Callable[[int], tuple[float, float]]:
    def drive_calls(n: int) -> tuple[float, float]:
        start = clock()
        for _ in range(n):
            call()
        return per_request(start, n)

    return drive_calls


async def _ready(make: Callable[[], Any], needs_token: Any, token: Callable[[], str]) -> Callable[[int], Any]:
    if needs_token == CALL:
        call = make()
        if inspect.isawaitable(call):
            call = await call
        drive_calls = _time_calls(call)
        drive_calls(20)  # warm up
        return drive_calls
    app = make()
    scope = request_scope(token() if needs_token else None)
    await drive(app, scope, 20)  # warm up, and check it answers 200
    return lambda n: drive(app, scope, n)


#: The suite; ``run(rounds=, requests_per_round=, only=, progress=)`` runs it.
SUITE = Suite(configurations, _ready, baseline=lambda detail: detail == CALL, targets=TARGETS)
run = SUITE.run
