"""App factories of the throughput benchmark: ASGI ones for uvicorn (``--factory``), WSGI ones
for gunicorn."""

from __future__ import annotations

from typing import Any

from kitmw.bench import asgi, wsgi
from kitmw.bench.asgi import starlette_app
from kitmw.bench.harness import SIX, Env, concern_options
from kitmw.bench.wsgi import flask_app

_env = Env()


def bare() -> Any:
    return starlette_app()


def kitmw_stack() -> Any:
    import kitmw

    return kitmw.stack(starlette_app(), **concern_options(_env, SIX))


def kitmw_stack_no_tracing() -> Any:
    import kitmw

    return kitmw.stack(starlette_app(), **concern_options(_env, SIX[1:]))


def peer_stack() -> Any:
    return asgi.peer_stack(_env)


async def raw(scope: Any, receive: Any, send: Any) -> None:
    """A raw ASGI app, the fastest thing uvicorn can serve: the ceiling of this setup."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def raw_factory() -> Any:
    return raw


# WSGI factories, served by gunicorn ('benchmarks.apps:flask_bare()').


def flask_bare() -> Any:
    return flask_app()


def flask_kitmw_stack() -> Any:
    import kitmw

    app = flask_app()
    app.wsgi_app = kitmw.stack(app.wsgi_app, **concern_options(_env, SIX))
    return app


def flask_peer_stack() -> Any:
    """The WSGI peer stack (FlaskInstrumentor, request-id hooks + JSON line, prometheus-flask-exporter,
    Flask-Limiter, flask-jwt-extended, pybreaker): kitmw.bench.wsgi.peer_stack."""
    return wsgi.peer_stack(_env)
