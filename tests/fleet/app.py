"""The service every fleet worker imports (``uvicorn app:app --app-dir tests/fleet``).

One Starlette service behind ``kitmw.stack()`` as a user deploys it on several
processes: rate limit and breaker on one Redis (``KITMW_FLEET_REDIS``), metrics in
prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``). It is built
three times, once per ``limits`` strategy, so one set of processes serves the test of
every strategy: ``/limited/<strategy>`` goes through that strategy's stack, every
other path through the fixed-window one. All three stacks are configured alike
otherwise, so their breakers get one default name and share one state.

Routes: ``/limited/{strategy}`` (limited per ``X-Fleet-Run``: each test run has its
own budget; requests without the header are not limited), ``/work`` (200, or 500 with
``?fail=1``), ``/pid``. Each answers with the worker's pid.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import kitmw
from kitmw.exchange import Exchange

__all__ = ["STRATEGIES", "app"]

REDIS = os.environ["KITMW_FLEET_REDIS"]
STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")
PID = str(os.getpid())


async def limited(request: Request) -> PlainTextResponse:
    return PlainTextResponse(PID)


async def work(request: Request) -> PlainTextResponse:
    if request.query_params.get("fail"):
        return PlainTextResponse(PID, status_code=500)
    return PlainTextResponse(PID)


service = Starlette(
    routes=[
        Route("/limited/{strategy}", limited),
        Route("/work", work),
        Route("/pid", limited),
    ]
)


def run_key(ex: Exchange) -> str | None:
    """One budget per test run; no header: not limited."""
    return ex.header("x-fleet-run")


def build(strategy: str) -> Any:
    return kitmw.stack(
        service,
        metrics=True,
        ratelimit={
            "limit": "100/minute",
            "strategy": strategy,
            "storage": REDIS,
            "key": run_key,
            "namespace": f"fleet-{strategy}",
            # Generous: under a burst on two shared cores a slow answer must not be
            # mistaken for an outage (a fail-open decision would be one allowed too many).
            "storage_timeout": 5.0,
        },
        breaker={"storage": REDIS, "fail_max": 3, "reset_timeout": 30},
    )


STACKS = {strategy: build(strategy) for strategy in STRATEGIES}
_DEFAULT = STACKS["fixed-window"]
_PREFIX = "/limited/"


async def app(scope: Any, receive: Any, send: Any) -> None:
    path = scope.get("path", "") if scope["type"] == "http" else ""
    target = STACKS.get(path[len(_PREFIX) :], _DEFAULT) if path.startswith(_PREFIX) else _DEFAULT
    await target(scope, receive, send)
