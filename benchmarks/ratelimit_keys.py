"""The in-memory rate-limit storage under many live keys (issue 12, item 10).

``python -m benchmarks.ratelimit_keys [--keys 100000] [--batch 20000] [--batches 3]
[--storage kitmw|limits] [--strategy fixed-window]``

A Starlette app behind ``kitmw.RateLimit`` keyed by client address, the clients named
by a trusted proxy's ``X-Forwarded-For`` (distinct clients behind a load balancer),
served by uvicorn in a process of its own and called over HTTP (one keep-alive
connection, one request at a time) from this one. First ``--keys`` clients are made
live (one hit each, in the server), then ``--batches`` batches of ``--batch`` requests
from random known clients; one request in ten comes from one fixed client, whose
latency is recorded. Printed: the time of each batch and that client's p50/p95/p99.

``--storage limits`` puts ``limits``' own ``MemoryStorage`` under the same policy (what
kitmw used before it had its own), ``kitmw`` the storage kitmw uses for ``memory://``.
Run it with ``--keys 100`` for the few-keys baseline. Figures from one run are in
docs/ratelimit.md ("Cost"); they are not a test.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any


def build(storage: str, strategy: str) -> Any:
    from prometheus_client import CollectorRegistry
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    import kitmw

    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = kitmw.RateLimit(
        Starlette(routes=[Route("/items/{item_id}", item)]),
        limit="1000000/minute",  # nobody is refused: what is measured is the storage
        strategy=strategy,
        trusted_proxies=["127.0.0.1"],
        registry=CollectorRegistry(),
    )
    if storage == "limits":
        from limits.storage import MemoryStorage
        from limits.strategies import STRATEGIES

        backend = app.policies[0].backend
        backend.sync = MemoryStorage()
        backend.strategy = STRATEGIES[strategy](backend.sync)
    return app


def client_ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def serve(args: argparse.Namespace) -> None:
    """The server process: the rate-limited app plus ``/_fill?n=`` making ``n`` keys live."""
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

    app = build(args.storage, args.strategy)
    limiter = app.policies[0]._default

    async def fill(request: Request) -> PlainTextResponse:
        n = int(request.query_params["n"])
        for i in range(n):
            limiter.hit(client_ip(i))
        return PlainTextResponse(str(n))

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/_fill":
            await (await fill(Request(scope, receive)))(scope, receive, send)
            return
        await app(scope, receive, send)

    uvicorn.run(
        outer, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, proxy_headers=False
    )


def run(args: argparse.Namespace) -> None:
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "benchmarks.ratelimit_keys", "--serve", "--port", str(port)]
    server = subprocess.Popen([*command, "--storage", args.storage, "--strategy", args.strategy])
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=60) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    http.get("/items/1")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            http.get("/_fill", params={"n": args.keys})
            print(f"storage={args.storage} strategy={args.strategy} live keys={args.keys}")
            rng = random.Random(12)
            one = {"X-Forwarded-For": "192.0.2.1"}
            latencies: list[float] = []
            for n in range(args.batches):
                begin = time.perf_counter()
                for j in range(args.batch):
                    if j % 10 == 0:
                        t0 = time.perf_counter()
                        r = http.get("/items/1", headers=one)
                        latencies.append(time.perf_counter() - t0)
                    else:
                        other = {"X-Forwarded-For": client_ip(rng.randrange(args.keys))}
                        r = http.get("/items/1", headers=other)
                    assert r.status_code == 200, r.status_code
                print(f"  batch {n + 1}: {args.batch} requests in {time.perf_counter() - begin:.2f} s")
    finally:
        server.terminate()
        server.wait(10)
    q = statistics.quantiles(latencies, n=100)
    print(
        f"  one client ({len(latencies)} requests): p50 {q[49] * 1e3:.2f} ms, "
        f"p95 {q[94] * 1e3:.2f} ms, p99 {q[98] * 1e3:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--storage", choices=("kitmw", "limits"), default="kitmw")
    strategies = ("fixed-window", "moving-window", "sliding-window-counter")
    parser.add_argument("--strategy", choices=strategies, default="fixed-window")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    (serve if args.serve else run)(args)


if __name__ == "__main__":
    main()
