"""In-process overhead harness behind ``kitmw bench`` and ``python -m benchmarks``.

This module is the ``asgi`` suite and the machinery the others share; the ``wsgi`` suite
is :mod:`kitmw._bench_wsgi`, the ``httpx`` one :mod:`kitmw._bench_client`
(``kitmw bench --suite asgi|wsgi|httpx|all``).

Every ASGI configuration wraps the same Starlette app (one route, ``/items/{item_id}``)
and is driven directly through ASGI (no server, no sockets). Rounds are interleaved across
configurations so drift in machine speed hits every configuration alike; each figure is
the median over rounds of the mean µs per request within a round, with the interquartile
range over rounds as the spread. Both wall time and the benchmark thread's CPU time are
read: on a shared machine the CPU figure does not count the time other processes held
the core. Overhead is the configuration's (wall) figure minus the bare app's from the
same run.

Peer packages are optional (the ``bench`` extra): a configuration whose package is
missing is left out of the table, and one note names the missing packages and the extra
that installs them; a configuration that fails for another reason is listed as skipped
with that reason.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "SUITES",
    "Result",
    "clock",
    "configurations",
    "format_table",
    "interleave",
    "missing_note",
    "per_request",
    "run",
    "run_suite",
    "summarize",
]

JWT_SECRET = "kitmw-bench-secret-0123456789abcdef"


@dataclass
class Result:
    name: str
    group: str
    us_per_request: float = 0.0
    overhead_us: float = 0.0
    ratio: float = 0.0
    #: interquartile range of the per-round figures (µs): how much rounds disagree
    iqr_us: float = 0.0
    #: CPU time of the benchmark thread per request (median, µs) and its IQR: unlike
    #: wall time it does not count the time other processes held the core
    cpu_us_per_request: float = 0.0
    cpu_iqr_us: float = 0.0
    #: the configuration this one's overhead and ratio are measured against
    baseline: str = ""
    #: per round: wall µs per request, and CPU µs per request
    samples: list[float] = field(default_factory=list)
    cpu_samples: list[float] = field(default_factory=list)
    skipped: str | None = None
    #: the top-level module a skipped configuration could not import (a peer package)
    missing: str | None = None

    def skip(self, exc: Exception) -> None:
        """Record why this configuration cannot run (a missing peer package, or another failure)."""
        if isinstance(exc, ImportError) and exc.name:
            self.missing = exc.name.split(".")[0]
            self.skipped = f"{self.missing} is not installed"
        else:
            self.skipped = f"{type(exc).__name__}: {exc}"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["samples"] = [round(v, 2) for v in self.samples]
        data["cpu_samples"] = [round(v, 2) for v in self.cpu_samples]
        return data


def _hs256_token() -> str:
    import jwt

    return jwt.encode(
        {"sub": "bench-user", "scope": "read write", "exp": int(time.time()) + 86400},
        JWT_SECRET,
        algorithm="HS256",
    )


def _starlette_app() -> Any:
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


class _Env:
    """Shared dependencies built once: a tracer provider with a no-op exporter, a log handler."""

    def __init__(self) -> None:
        self._provider: Any = None
        self._log_ready = False

    @property
    def provider(self) -> Any:
        if self._provider is None:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

            class NoopExporter(SpanExporter):
                def export(self, spans: Any) -> SpanExportResult:
                    return SpanExportResult.SUCCESS

            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(NoopExporter()))
            self._provider = provider
        return self._provider

    def access_logger(self) -> logging.Logger:
        """The access logger with a real handler (JSON formatter) writing to a null stream."""
        logger = logging.getLogger("kitmw.bench.access")
        if not self._log_ready:
            import io

            from .logging import configure

            class Null(io.StringIO):
                def write(self, s: str) -> int:
                    return len(s)

            configure(format="json", logger=logger, stream=Null(), level=logging.INFO)
            logger.propagate = False
            self._log_ready = True
        return logger


def _registry() -> Any:
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


Builder = Callable[[_Env], Any]


def _kitmw_options(env: _Env, concern: str) -> dict[str, Any]:
    """Options of one kitmw concern as the targets in issue #6 fix them."""
    if concern == "tracing":
        return {"tracer_provider": env.provider}
    if concern == "access_log":
        return {"logger": env.access_logger()}
    if concern == "metrics":
        return {"registry": _registry()}
    if concern == "ratelimit":
        return {"limit": "1000000/minute"}
    if concern == "auth":
        from .auth import JWT

        return {"backend": JWT(key=JWT_SECRET, algorithms=["HS256"])}
    if concern == "breaker":
        return {"name": f"bench-{time.monotonic_ns()}"}
    raise ValueError(concern)


def _concern_options(env: _Env, concerns: Any) -> dict[str, Any]:
    """``stack()`` keyword arguments for ``concerns`` (an iterable of concern names)."""
    return {c: _kitmw_options(env, c) for c in concerns}


def configurations() -> list[tuple[str, str, Builder, bool]]:
    """(name, group, builder, needs_token); builders get the env and return an ASGI app."""
    import kitmw

    def kitmw_one(concern: str) -> Builder:
        def build(env: _Env) -> Any:
            return kitmw.stack(_starlette_app(), **_concern_options(env, [concern]))

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

        def build(env: _Env) -> Any:
            app = _starlette_app()
            for concern in reversed(concerns):
                app = classes[concern](app, **_kitmw_options(env, concern))
            return app

        return build

    def kitmw_stack(concerns: list[str]) -> Builder:
        def build(env: _Env) -> Any:
            return kitmw.stack(_starlette_app(), **_concern_options(env, concerns))

        return build

    three = ["tracing", "access_log", "metrics"]
    six = ["tracing", "access_log", "metrics", "ratelimit", "auth", "breaker"]
    configs: list[tuple[str, str, Builder, bool]] = [
        ("bare Starlette app", "bare", lambda env: _starlette_app(), False),
        ("bare raw ASGI app", "reference", lambda env: _raw_app, False),
        ("bare FastAPI app", "reference", lambda env: _fastapi_app(), False),
        ("no-op pure-ASGI middleware", "reference", _noop_middleware, False),
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
        ("kitmw 3 nested (tracing, log, metrics)", "kitmw", kitmw_nested(three), False),
        ("kitmw stack() of 3", "kitmw", kitmw_stack(three), False),
        ("kitmw 6 nested", "kitmw", kitmw_nested(six), True),
        ("kitmw stack() of 6", "kitmw", kitmw_stack(six), True),
        ("kitmw stack() of 6, tracing off", "kitmw", kitmw_stack(six[1:]), True),
        ("asgi-correlation-id", "peer", _peer_correlation_id, False),
        ("starlette_exporter", "peer", _peer_starlette_exporter, False),
        ("prometheus-fastapi-instrumentator", "peer", _peer_instrumentator, False),
        ("OpenTelemetryMiddleware (exclude send/receive)", "peer", _peer_otel(True), False),
        ("OpenTelemetryMiddleware (default)", "peer", _peer_otel(False), False),
        ("slowapi ASGI middleware (memory)", "peer", _peer_slowapi, False),
        ("Starlette AuthenticationMiddleware + PyJWT", "peer", _peer_auth, True),
        ("pybreaker-guarded endpoint", "peer", _peer_pybreaker, False),
        ("peer stack (all six peers)", "peer", _peer_stack, True),
    ]
    return configs


def _noop_middleware(env: _Env) -> Any:
    inner = _starlette_app()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def send_wrapper(message: Any) -> None:
            await send(message)

        await inner(scope, receive, send_wrapper)

    return app


def _with_middleware(*middleware: Any, state: dict[str, Any] | None = None, guard: bool = False) -> Any:
    """A Starlette app like `_starlette_app()`, peers added the way their docs say."""
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


def _mw_correlation_id(env: _Env) -> Any:
    from asgi_correlation_id import CorrelationIdMiddleware
    from starlette.middleware import Middleware

    return Middleware(CorrelationIdMiddleware)


def _mw_exporter(env: _Env) -> Any:
    from starlette.middleware import Middleware
    from starlette_exporter import PrometheusMiddleware

    return Middleware(PrometheusMiddleware, app_name=f"bench{time.monotonic_ns()}", group_paths=True)


def _mw_otel(env: _Env, exclude: bool = True) -> Any:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette.middleware import Middleware

    kwargs: dict[str, Any] = {"tracer_provider": env.provider}
    if exclude:
        kwargs["exclude_spans"] = ["receive", "send"]
    return Middleware(OpenTelemetryMiddleware, **kwargs)


def _slowapi_limiter() -> Any:
    from slowapi import Limiter
    from slowapi.util import get_remote_address

    return Limiter(key_func=get_remote_address, default_limits=["1000000/minute"])


def _mw_slowapi(env: _Env) -> Any:
    from slowapi.middleware import SlowAPIASGIMiddleware
    from starlette.middleware import Middleware

    return Middleware(SlowAPIASGIMiddleware)


def _mw_auth(env: _Env) -> Any:
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


def _peer_correlation_id(env: _Env) -> Any:
    return _with_middleware(_mw_correlation_id(env))


def _peer_starlette_exporter(env: _Env) -> Any:
    return _with_middleware(_mw_exporter(env))


def _peer_instrumentator(env: _Env) -> Any:
    from prometheus_fastapi_instrumentator import Instrumentator

    app = _starlette_app()
    Instrumentator(registry=_registry()).instrument(app)
    return app


def _peer_otel(exclude: bool) -> Builder:
    def build(env: _Env) -> Any:
        return _with_middleware(_mw_otel(env, exclude))

    return build


def _peer_slowapi(env: _Env) -> Any:
    return _with_middleware(_mw_slowapi(env), state={"limiter": _slowapi_limiter()})


def _peer_auth(env: _Env) -> Any:
    return _with_middleware(_mw_auth(env))


def _peer_pybreaker(env: _Env) -> Any:
    return _with_middleware(guard=True)


def _peer_stack(env: _Env) -> Any:
    """What a user stitches together from peers to do the same six jobs."""
    return _with_middleware(
        _mw_otel(env),
        _mw_correlation_id(env),
        _mw_exporter(env),
        _mw_slowapi(env),
        _mw_auth(env),
        state={"limiter": _slowapi_limiter()},
        guard=True,
    )


def _scope(token: str | None) -> dict[str, Any]:
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


def clock() -> tuple[int, int]:
    """(wall ns, CPU ns of this thread): the two clocks every driver reads."""
    return time.perf_counter_ns(), time.thread_time_ns()


def per_request(start: tuple[int, int], n: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per request since ``start`` (from :func:`clock`)."""
    wall, cpu = clock()
    return (wall - start[0]) / n / 1000.0, (cpu - start[1]) / n / 1000.0


async def _drive(app: Any, base_scope: dict[str, Any], n: int) -> tuple[float, float]:
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


def run(
    *,
    rounds: int = 15,
    requests_per_round: int = 300,
    only: Callable[[str], bool] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Result]:
    """Run every configuration, interleaved, and return results with overheads and ratios."""
    env = _Env()
    token = None
    apps: list[tuple[Result, Any, dict[str, Any]]] = []
    results: list[Result] = []
    for name, group, build, needs_token in configurations():
        if only is not None and group != "bare" and not only(name):
            continue
        result = Result(name=name, group=group)
        results.append(result)
        try:
            if needs_token and token is None:
                token = _hs256_token()
            app = build(env)
            scope = _scope(token if needs_token else None)
            asyncio.run(_drive(app, scope, 20))  # warm up, and check it answers 200
        except Exception as exc:  # a missing peer package or a broken configuration
            result.skip(exc)
            continue
        apps.append((result, app, scope))

    def driver(app: Any, scope: dict[str, Any]) -> Callable[[int], Any]:
        return lambda n: _drive(app, scope, n)

    prepared = [(result, driver(app, scope)) for result, app, scope in apps]
    asyncio.run(interleave(prepared, rounds, requests_per_round, progress))
    bare = next((r for r in results if r.group == "bare" and not r.skipped), None)
    summarize(results, bare)
    return results


def summarize(results: list[Result], bare: Result | None) -> None:
    """Median and interquartile range of each result's rounds; overhead and ratio to ``bare``."""
    for result in results:
        if result.skipped or not result.samples:
            continue
        result.us_per_request = statistics.median(result.samples)
        result.iqr_us = _iqr(result.samples)
        if result.cpu_samples:
            result.cpu_us_per_request = statistics.median(result.cpu_samples)
            result.cpu_iqr_us = _iqr(result.cpu_samples)
    if bare is not None and bare.samples:
        for result in results:
            if result.samples:
                result.baseline = bare.name
                result.overhead_us = result.us_per_request - bare.us_per_request
                result.ratio = result.us_per_request / bare.us_per_request


def _iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


async def interleave(
    prepared: list[tuple[Result, Callable[[int], Any]]],
    rounds: int,
    requests_per_round: int,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Drive every prepared configuration once per round, in turn, with the GC paused.

    ``drive(n)`` returns (wall µs, CPU µs) per request over ``n`` requests (see
    :func:`per_request`), or an awaitable of it (the sync and async configurations of one
    suite share the rounds and the event loop).
    """
    for r in range(rounds):
        if progress:
            progress(f"round {r + 1}/{rounds}")
        for result, drive in prepared:
            gc.collect()
            gc.disable()
            try:
                value = drive(requests_per_round)
                if asyncio.iscoroutine(value):
                    value = await value
                wall, cpu = value
                result.samples.append(wall)
                result.cpu_samples.append(cpu)
            finally:
                gc.enable()


def _run_wsgi(**kwargs: Any) -> list[Result]:
    from ._bench_wsgi import run as run_wsgi

    return run_wsgi(**kwargs)


def _run_httpx(**kwargs: Any) -> list[Result]:
    from ._bench_client import run as run_httpx

    return run_httpx(**kwargs)


#: suite name -> runner taking ``rounds``, ``requests_per_round``, ``only``, ``progress``
SUITES: dict[str, Callable[..., list[Result]]] = {"asgi": run, "wsgi": _run_wsgi, "httpx": _run_httpx}


def run_suite(suite: str, **kwargs: Any) -> list[Result]:
    """Run one suite (``asgi``, ``wsgi``, ``httpx``) with :func:`run`'s keyword arguments."""
    if suite not in SUITES:
        raise ValueError(f"suite: expected one of {', '.join(SUITES)}, got {suite!r}")
    return SUITES[suite](**kwargs)


def format_table(results: list[Result]) -> str:
    """Markdown tables, one per baseline (the httpx suite has a sync and an async one);
    skipped configurations close the last table."""
    baselines = list(dict.fromkeys(r.baseline for r in results if not r.skipped)) or [""]
    tables: list[list[str]] = []
    for baseline in baselines:
        lines = [
            f"| configuration | µs/request | IQR µs | CPU µs/request | CPU IQR µs | overhead µs "
            f"| ratio to {baseline or 'bare'} |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        lines.extend(
            f"| {r.name} | {r.us_per_request:.1f} | {r.iqr_us:.1f} | {r.cpu_us_per_request:.1f} "
            f"| {r.cpu_iqr_us:.1f} | {r.overhead_us:+.1f} | {r.ratio:.2f} |"
            for r in results
            if not r.skipped and r.baseline == baseline
        )
        tables.append(lines)
    tables[-1].extend(
        f"| {r.name} | skipped: {r.skipped} | | | | | |" for r in results if r.skipped and not r.missing
    )
    return "\n\n".join("\n".join(t) for t in tables)


def missing_note(modules: set[str]) -> str:
    """One line naming the peer packages that were not installed, and the extra that brings them."""
    if not modules:
        return ""
    names = ", ".join(sorted(modules))
    return (
        f"Not measured, not installed: {names}. "
        "The peers come with the bench extra: python -m pip install 'kitmw[bench]'"
    )
