"""The WSGI suite of ``kitmw bench --suite wsgi``: overhead per request in-process.

Every configuration wraps the same Flask app (one route, ``/items/<int:item_id>``) the
way the Flask docs and kitmw's ``docs/flask.md`` say (``app.wsgi_app = Layer(app.wsgi_app)``)
and is driven directly through PEP 3333: build the environ, call the app, iterate the
body, ``close()`` it. No server, no sockets. Rounds are interleaved and each figure is the
median over rounds (:mod:`kitmw.bench.harness`); overhead and ratio are
against the bare Flask app of the same run.

django-prometheus is not measured here: it is Django middleware (it needs a configured
Django project, its own bare Django baseline, and registers its metrics globally), so it
would not share this suite's Flask baseline.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from typing import Any

from .harness import (
    JWT_SECRET,
    SIX,
    Configuration,
    Env,
    Suite,
    clock,
    concern_options,
    kitmw_options,
    per_request,
    registry,
)

__all__ = [
    "PAIRS",
    "SUITE",
    "comparisons",
    "configurations",
    "environ",
    "flask_app",
    "format_comparisons",
    "peer_flask",
    "peer_stack",
    "run",
]

_TITLES = {
    "access_log": "kitmw.wsgi.AccessLog",
    "metrics": "kitmw.wsgi.Metrics",
    "tracing": "kitmw.wsgi.Tracing",
    "ratelimit": "kitmw.wsgi.RateLimit (memory)",
    "auth": "kitmw.wsgi.Auth (HS256 JWT)",
    "breaker": "kitmw.wsgi.CircuitBreaker",
}

Builder = Callable[[Env], Any]


def flask_app() -> Any:
    """The bare Flask app every configuration wraps."""
    from flask import Flask

    app = Flask("kitmw_bench")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> tuple[str, int, dict[str, str]]:
        return "ok", 200, {"Content-Type": "text/plain"}

    return app


def _raw_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def _noop_middleware(env: Env) -> Any:
    app = flask_app()
    inner = app.wsgi_app

    def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return inner(environ, start_response)

    app.wsgi_app = wsgi_app
    return app


def _wrapped(wrap: Callable[[Any], Any]) -> Any:
    app = flask_app()
    app.wsgi_app = wrap(app.wsgi_app)
    return app


def _kitmw_one(concern: str) -> Builder:
    def build(env: Env) -> Any:
        from .. import wsgi

        cls = {
            "access_log": wsgi.AccessLog,
            "metrics": wsgi.Metrics,
            "tracing": wsgi.Tracing,
            "ratelimit": wsgi.RateLimit,
            "auth": wsgi.Auth,
            "breaker": wsgi.CircuitBreaker,
        }[concern]
        return _wrapped(lambda inner: cls(inner, **kitmw_options(env, concern)))

    return build


def _kitmw_driver(env: Env) -> Any:
    from .. import wsgi

    return _wrapped(lambda inner: wsgi.Middleware(inner))


def _kitmw_stack(concerns: tuple[str, ...]) -> Builder:
    def build(env: Env) -> Any:
        from ..stack import stack

        return _wrapped(lambda inner: stack(inner, **concern_options(env, concerns)))

    return build


def _peer_otel(env: Env) -> Any:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    return _wrapped(lambda inner: OpenTelemetryMiddleware(inner, tracer_provider=env.provider))


# -- the WSGI peers: what a Flask user assembles for the same six jobs ------------------------
#
# Each is set up the way its docs say, on the same one-route Flask app:
# * tracing: OpenTelemetry's FlaskInstrumentor (what OTel's Flask docs set up), or its
#   WSGI middleware (``app.wsgi_app = OpenTelemetryMiddleware(app.wsgi_app)``);
# * access log: a ``before_request`` hook that takes X-Request-ID or makes one (uuid4) and
#   an ``after_request`` hook that echoes it and writes one JSON line through ``logging``
#   with python-json-logger's formatter. Hooks, not an extension: the most used Flask
#   request-id extension, flask-log-request-id (0.10.1, 2019), fails on Flask >= 2.3
#   (it imports ``flask._app_ctx_stack``) and the others are older or unused;
# * metrics: prometheus-flask-exporter; rate limit: Flask-Limiter with memory storage;
# * auth: flask-jwt-extended's ``jwt_required``, or a PyJWT ``before_request`` hook;
# * breaker: pybreaker's decorator around the view.

PEERS = ("tracing", "access_log", "metrics", "ratelimit", "auth", "breaker")


def _json_access_logger() -> Any:
    import logging

    from pythonjsonlogger.json import JsonFormatter  # python-json-logger >= 3.1 (the bench extra)

    class Null(io.StringIO):
        def write(self, s: str) -> int:
            return len(s)

    logger = logging.getLogger("kitmw.bench.peer_access")
    if not logger.handlers:
        handler = logging.StreamHandler(Null())
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def peer_flask(
    env: Env,
    *,
    tracing: str | None = None,
    access_log: bool = False,
    metrics: bool = False,
    ratelimit: bool = False,
    auth: str | None = None,
    breaker: bool = False,
) -> Any:
    """The bench's Flask app with the chosen peers. ``tracing``: ``"flask"``
    (FlaskInstrumentor) or ``"wsgi"`` (OTel's WSGI middleware); ``auth``: ``"extended"``
    (flask-jwt-extended) or ``"pyjwt"`` (a ``before_request`` hook)."""
    from flask import Flask, g, request

    app = Flask("kitmw_bench")
    view: Callable[..., Any]

    def item(item_id: int) -> tuple[str, int, dict[str, str]]:
        return "ok", 200, {"Content-Type": "text/plain"}

    view = item
    if breaker:
        import pybreaker

        view = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)(view)
    if auth == "extended":
        from flask_jwt_extended import JWTManager, jwt_required

        app.config["JWT_SECRET_KEY"] = JWT_SECRET
        JWTManager(app)
        view = jwt_required()(view)
    elif auth == "pyjwt":
        import jwt

        @app.before_request
        def authenticate() -> Any:
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer "):
                return {"error": "unauthorized"}, 401
            try:
                g.claims = jwt.decode(header[7:], JWT_SECRET, algorithms=["HS256"])
            except jwt.PyJWTError:
                return {"error": "unauthorized"}, 401
            return None

    app.add_url_rule("/items/<int:item_id>", endpoint="item", view_func=view, methods=["GET"])
    if access_log:
        import time as _time
        import uuid

        logger = _json_access_logger()

        @app.before_request
        def request_id() -> None:
            g.request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
            g.kitmw_bench_start = _time.perf_counter()

        @app.after_request
        def access(response: Any) -> Any:
            rid = g.request_id
            response.headers["X-Request-ID"] = rid
            logger.info(
                "request",
                extra={
                    "request_id": rid,
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": round((_time.perf_counter() - g.kitmw_bench_start) * 1000, 3),
                    "client": request.remote_addr,
                },
            )
            return response

    if metrics:
        from prometheus_flask_exporter import PrometheusMetrics

        PrometheusMetrics(app, registry=registry())
    if ratelimit:
        from flask_limiter import Limiter
        from flask_limiter.util import get_remote_address

        Limiter(get_remote_address, app=app, default_limits=["1000000/minute"], storage_uri="memory://")
    if tracing == "flask":
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor().instrument_app(app, tracer_provider=env.provider)  # type: ignore[no-untyped-call]
    elif tracing == "wsgi":
        from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

        app.wsgi_app = OpenTelemetryMiddleware(app.wsgi_app, tracer_provider=env.provider)  # type: ignore[method-assign]
    return app


def _peer(**peers: Any) -> Builder:
    return lambda env: peer_flask(env, **peers)


def peer_stack(env: Env) -> Any:
    """The six peers together, as OTel's Flask docs and each extension's docs set them up."""
    return peer_flask(
        env, tracing="flask", access_log=True, metrics=True, ratelimit=True, auth="extended", breaker=True
    )


#: (kitmw configuration, its peer): the overhead ratios ``comparisons`` reports.
PAIRS = (
    ("kitmw stack() of 6", "peer stack (FlaskInstrumentor, flask-jwt-extended)"),
    ("kitmw stack() of 6", "peer stack (OTel WSGI middleware, PyJWT hook)"),
    ("kitmw.wsgi.Tracing", "OpenTelemetryMiddleware (WSGI)"),
    ("kitmw.wsgi.Tracing", "OTel FlaskInstrumentor"),
    ("kitmw.wsgi.AccessLog", "request-id hooks + JSON access line"),
    ("kitmw.wsgi.Metrics", "prometheus-flask-exporter"),
    ("kitmw.wsgi.RateLimit (memory)", "Flask-Limiter (memory)"),
    ("kitmw.wsgi.Auth (HS256 JWT)", "flask-jwt-extended"),
    ("kitmw.wsgi.Auth (HS256 JWT)", "PyJWT before_request hook"),
    ("kitmw.wsgi.CircuitBreaker", "pybreaker around the view"),
)


def comparisons(results: list[Any]) -> list[dict[str, Any]]:
    """kitmw's overhead over the bare app next to its peer's, per :data:`PAIRS`, both from
    the same interleaved run: by CPU time of the benchmark thread (``kitmw_us``,
    ``peer_us``, ``ratio``: steadier on a shared machine, it leaves out the time other
    processes held the core) and by wall time (``*_wall``)."""
    by_name = {r.name: r for r in results if not r.skipped and r.samples}
    bare = next((r for r in results if r.group == "bare" and r.samples), None)
    if bare is None:
        return []
    rows = []
    for mine, peer in PAIRS:
        a, b = by_name.get(mine), by_name.get(peer)
        if a is None or b is None:
            continue
        cpu_a = a.cpu_us_per_request - bare.cpu_us_per_request
        cpu_b = b.cpu_us_per_request - bare.cpu_us_per_request
        rows.append(
            {
                "kitmw": mine,
                "peer": peer,
                "kitmw_us": cpu_a,
                "peer_us": cpu_b,
                "ratio": cpu_a / cpu_b if cpu_b > 0 else float("nan"),
                "kitmw_wall_us": a.overhead_us,
                "peer_wall_us": b.overhead_us,
                "ratio_wall": a.overhead_us / b.overhead_us if b.overhead_us > 0 else float("nan"),
            }
        )
    return rows


def format_comparisons(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| kitmw | CPU overhead µs | peer | CPU overhead µs | ratio (CPU) | ratio (wall) |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['kitmw']} | {r['kitmw_us']:.1f} | {r['peer']} | {r['peer_us']:.1f} | {r['ratio']:.2f} "
        f"| {r['ratio_wall']:.2f} |"
        for r in rows
    ]
    return "\n".join(lines)


def configurations() -> list[Configuration]:
    """(name, group, builder, needs_token); builders get the env and return a WSGI app."""
    configs: list[Configuration] = [
        ("bare Flask app", "bare", lambda env: flask_app(), False),
        ("bare raw WSGI app", "reference", lambda env: _raw_app, False),
        ("no-op WSGI middleware", "reference", _noop_middleware, False),
    ]
    configs.append(("kitmw.wsgi.Middleware, no policy (the driver)", "kitmw", _kitmw_driver, False))
    for concern in ("access_log", "metrics", "tracing", "ratelimit", "auth", "breaker"):
        configs.append((_TITLES[concern], "kitmw", _kitmw_one(concern), concern == "auth"))
    configs += [
        ("kitmw stack() of 6", "kitmw", _kitmw_stack(SIX), True),
        ("kitmw stack() of 6, tracing off", "kitmw", _kitmw_stack(SIX[1:]), True),
        ("OpenTelemetryMiddleware (WSGI)", "peer", _peer_otel, False),
        ("OTel FlaskInstrumentor", "peer", _peer(tracing="flask"), False),
        ("request-id hooks + JSON access line", "peer", _peer(access_log=True), False),
        ("prometheus-flask-exporter", "peer", _peer(metrics=True), False),
        ("Flask-Limiter (memory)", "peer", _peer(ratelimit=True), False),
        ("flask-jwt-extended", "peer", _peer(auth="extended"), True),
        ("PyJWT before_request hook", "peer", _peer(auth="pyjwt"), True),
        ("pybreaker around the view", "peer", _peer(breaker=True), False),
        ("peer stack (FlaskInstrumentor, flask-jwt-extended)", "peer", peer_stack, True),
        (
            "peer stack (OTel WSGI middleware, PyJWT hook)",
            "peer",
            _peer(tracing="wsgi", access_log=True, metrics=True, ratelimit=True, auth="pyjwt", breaker=True),
            True,
        ),
    ]
    return configs


def environ(token: str | None) -> dict[str, Any]:
    """The environ a WSGI server builds for ``GET /items/42`` (a copy is made per request)."""
    env: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/items/42",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench.local",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "HTTP_HOST": "bench.local",
        "HTTP_USER_AGENT": "kitmw-bench/1.0",
        "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if token:
        env["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return env


def _check(app: Any, base: dict[str, Any]) -> None:
    """One request whose status and body must be the app's (``200``, ``ok``)."""
    seen: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], Any]:
        seen.append(status)
        return lambda data: None

    request = dict(base)
    request["wsgi.input"] = io.BytesIO(b"")
    body = app(request, start_response)
    try:
        content = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    if seen != ["200 OK"] or content != b"ok":
        raise RuntimeError(f"unexpected answer {seen} {content[:80]!r}")


def _driver(app: Any, base: dict[str, Any]) -> Callable[[int], tuple[float, float]]:
    def drive(n: int) -> tuple[float, float]:
        bad: list[str] = []

        def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], Any]:
            if status[:3] != "200":
                bad.append(status)
            return _discard

        new_input = io.BytesIO
        start = clock()
        for _ in range(n):
            request = dict(base)
            request["wsgi.input"] = new_input(b"")
            body = app(request, start_response)
            try:
                for _chunk in body:
                    pass
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
        timing = per_request(start, n)
        if bad:
            raise RuntimeError(f"unexpected status {bad[0]}")
        return timing

    return drive


def _discard(data: bytes) -> None:
    return None


def _ready(
    make: Callable[[], Any], needs_token: bool, token: Callable[[], str]
) -> Callable[[int], tuple[float, float]]:
    app = make()
    base = environ(token() if needs_token else None)
    _check(app, base)
    drive = _driver(app, base)
    drive(20)  # warm up
    return drive


#: The suite; ``run(rounds=, requests_per_round=, only=, progress=)`` runs it.
SUITE = Suite(configurations, _ready)
run = SUITE.run
