"""ASGI app factories served by uvicorn in the throughput benchmark (``--factory``)."""

from __future__ import annotations

from typing import Any

from kitmw._bench import _Env, _kitmw_options, _peer_stack, _starlette_app

_env = _Env()
SIX = ("tracing", "access_log", "metrics", "ratelimit", "auth", "breaker")


def bare() -> Any:
    return _starlette_app()


def kitmw_stack() -> Any:
    import kitmw

    return kitmw.stack(_starlette_app(), **{c: _kitmw_options(_env, c) for c in SIX})


def kitmw_stack_no_tracing() -> Any:
    import kitmw

    return kitmw.stack(_starlette_app(), **{c: _kitmw_options(_env, c) for c in SIX[1:]})


def peer_stack() -> Any:
    return _peer_stack(_env)
