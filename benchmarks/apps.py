"""App factories of the throughput benchmark: ASGI ones for uvicorn (``--factory``), WSGI ones
for gunicorn."""

from __future__ import annotations

from typing import Any

from kitmw._bench import _concern_options, _Env, _peer_stack, _starlette_app

_env = _Env()
SIX = ("tracing", "access_log", "metrics", "ratelimit", "auth", "breaker")


def bare() -> Any:
    return _starlette_app()


def kitmw_stack() -> Any:
    import kitmw

    return kitmw.stack(_starlette_app(), **_concern_options(_env, SIX))


def kitmw_stack_no_tracing() -> Any:
    import kitmw

    return kitmw.stack(_starlette_app(), **_concern_options(_env, SIX[1:]))


def peer_stack() -> Any:
    return _peer_stack(_env)


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
    from kitmw._bench_wsgi import flask_app

    return flask_app()


def flask_kitmw_stack() -> Any:
    import kitmw
    from kitmw._bench_wsgi import flask_app

    app = flask_app()
    app.wsgi_app = kitmw.stack(app.wsgi_app, **_concern_options(_env, SIX))
    return app
