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

from .harness import SIX, Configuration, Env, Suite, clock, concern_options, kitmw_options, per_request

__all__ = ["SUITE", "configurations", "environ", "flask_app", "run"]

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


def _kitmw_stack(concerns: tuple[str, ...]) -> Builder:
    def build(env: Env) -> Any:
        from ..stack import stack

        return _wrapped(lambda inner: stack(inner, **concern_options(env, concerns)))

    return build


def _peer_otel(env: Env) -> Any:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    return _wrapped(lambda inner: OpenTelemetryMiddleware(inner, tracer_provider=env.provider))


def configurations() -> list[Configuration]:
    """(name, group, builder, needs_token); builders get the env and return a WSGI app."""
    configs: list[Configuration] = [
        ("bare Flask app", "bare", lambda env: flask_app(), False),
        ("bare raw WSGI app", "reference", lambda env: _raw_app, False),
        ("no-op WSGI middleware", "reference", _noop_middleware, False),
    ]
    for concern in ("access_log", "metrics", "tracing", "ratelimit", "auth", "breaker"):
        configs.append((_TITLES[concern], "kitmw", _kitmw_one(concern), concern == "auth"))
    configs += [
        ("kitmw stack() of 6", "kitmw", _kitmw_stack(SIX), True),
        ("kitmw stack() of 6, tracing off", "kitmw", _kitmw_stack(SIX[1:]), True),
        ("OpenTelemetryMiddleware (WSGI)", "peer", _peer_otel, False),
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
