"""The in-process cost of ``kitmw.Timeout`` and ``kitmw.ConcurrencyLimit`` (ASGI).

A Starlette app is called directly (no server, no socket), bare and through
``kitmw.stack()`` with one of the two concerns; configurations run in interleaved rounds
and the median CPU time per request is taken (``time.thread_time``, garbage collection
off during a round). A policy with a no-op ``enter``/``exit`` and one with a no-op
``around`` show what the driver and the around form cost by themselves.

    python -m benchmarks.timeout_concurrency [--rounds 25] [--requests 500]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable, Generator
from typing import Any

__all__ = ["main", "measure"]

_SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/items/1",
    "raw_path": b"/items/1",
    "root_path": "",
    "query_string": b"",
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
    "headers": [(b"host", b"bench")],
}


def _configurations() -> dict[str, Callable[[], Any]]:
    from prometheus_client import CollectorRegistry
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    import kitmw
    from kitmw.asgi import Middleware
    from kitmw.chain import CALL, Call, Sleep
    from kitmw.exchange import Exchange, Policy

    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    def app() -> Any:
        return Starlette(routes=[Route("/items/{item_id}", item)])

    class EnterExit(Policy):
        name = "enter_exit"

        def enter(self, ex: Exchange) -> None:
            return None

        def exit(self, ex: Exchange) -> None:
            return None

    class Around(Policy):
        name = "around"

        def around(self, ex: Exchange) -> Generator[Call | Sleep, Any, Any]:
            return (yield CALL)

    def registry() -> Any:
        return CollectorRegistry()

    return {
        "bare Starlette app": app,
        "no-op enter/exit policy": lambda: Middleware(app(), EnterExit()),
        "no-op around policy": lambda: Middleware(app(), Around()),
        "kitmw Timeout (seconds=5)": lambda: kitmw.stack(app(), timeout={"seconds": 5, "registry": registry()}),
        "kitmw ConcurrencyLimit (limit=1000)": lambda: kitmw.stack(
            app(), concurrency={"limit": 1000, "registry": registry()}
        ),
        'kitmw ConcurrencyLimit (adaptive="gradient")': lambda: kitmw.stack(
            app(), concurrency={"limit": 1000, "adaptive": "gradient", "registry": registry()}
        ),
        "kitmw ConcurrencyLimit (max_wait=1)": lambda: kitmw.stack(
            app(), concurrency={"limit": 1000, "max_wait": 1, "registry": registry()}
        ),
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    return None


async def _drive(app: Any, n: int) -> None:
    for _ in range(n):
        await app(dict(_SCOPE), _receive, _send)


def measure(rounds: int = 25, requests: int = 500) -> dict[str, tuple[float, float]]:
    """name -> (median CPU µs per request, interquartile range)."""
    apps = {name: build() for name, build in _configurations().items()}
    loop = asyncio.new_event_loop()
    try:
        for app in apps.values():
            loop.run_until_complete(_drive(app, 50))
        samples: dict[str, list[float]] = {name: [] for name in apps}
        gc.disable()
        try:
            for r in range(rounds):
                names = list(apps) if r % 2 == 0 else list(reversed(apps))
                for name in names:
                    started = time.thread_time_ns()
                    loop.run_until_complete(_drive(apps[name], requests))
                    samples[name].append((time.thread_time_ns() - started) / requests / 1000)
                gc.collect()
        finally:
            gc.enable()
    finally:
        loop.close()
    found = {}
    for name, values in samples.items():
        q = statistics.quantiles(values, n=4)
        found[name] = (statistics.median(values), q[2] - q[0])
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.timeout_concurrency")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args(argv)
    found = measure(args.rounds, args.requests)
    bare = found["bare Starlette app"][0]
    print(f"{'configuration':<46} {'CPU µs/request':>15} {'over bare':>10} {'IQR':>6}")
    for name, (median, iqr) in found.items():
        print(f"{name:<46} {median:>15.2f} {median - bare:>10.2f} {iqr:>6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
