"""A/B of two kitmw trees in one process, old and new code interleaved: what the
before/after figures of docs/performance.md come from, for the paths the ASGI A/B does
not drive.

usage: python -m benchmarks.ab {jwt,httpx} BEFORE_DIR AFTER_DIR [--rounds R] [--n N]

Each DIR holds a ``kitmw`` package (``git worktree add /tmp/before <commit>`` gives a
BEFORE tree); BEFORE is loaded as ``kitmw_before`` (kitmw imports itself relatively).
Every round runs each case once, in alternating order, with the garbage collector off;
the figures are medians of the benchmark thread's CPU µs.

* ``jwt``: ``JWT(cache_size=0).authenticate`` of both trees and PyJWT's ``jwt.decode``
  over the same N distinct HS256 tokens (an uncached verification each);
* ``httpx``: ``Transport``/``AsyncTransport`` with tracing alone and with all six client
  concerns, over ``httpx.MockTransport``, N requests per round; µs over the bare mock.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import io
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

SECRET = "kitmw-bench-secret-0123456789abcdef"
URL = "http://bench.local/items/42"
TIMEOUT = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}


def load(before: str, after: str) -> tuple[Any, Any]:
    """(kitmw of ``before`` as ``kitmw_before``, kitmw of ``after``)."""
    tmp = tempfile.mkdtemp(prefix="kitmw-ab-")
    shutil.copytree(
        os.path.join(before, "kitmw"),
        os.path.join(tmp, "kitmw_before"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    sys.path[:0] = [os.path.abspath(after), tmp]
    new = importlib.import_module("kitmw")
    old = importlib.import_module("kitmw_before")
    if not str(new.__file__).startswith(os.path.abspath(after)):
        raise SystemExit(f"kitmw came from {new.__file__}, not {after}")
    return old, new


def rounds(cases: dict[str, Callable[[], Any]], n_rounds: int, per: int) -> dict[str, float]:
    for case in cases.values():
        case()  # warm up
    samples: dict[str, list[float]] = {k: [] for k in cases}
    gc.disable()
    try:
        for r in range(n_rounds):
            order = list(cases) if r % 2 == 0 else list(reversed(cases))
            for key in order:
                start = time.thread_time_ns()
                cases[key]()
                samples[key].append((time.thread_time_ns() - start) / per / 1000)
            gc.collect()
    finally:
        gc.enable()
    return {k: statistics.median(v) for k, v in samples.items()}


def ab_jwt(old: Any, new: Any, n_rounds: int, n: int) -> None:
    import jwt

    exp = int(time.time()) + 86400
    tokens = [jwt.encode({"sub": f"u{i}", "scope": "read", "exp": exp}, SECRET, algorithm="HS256") for i in range(n)]

    class Ex:
        __slots__ = ("value",)

        def __init__(self, value: str) -> None:
            self.value = value

        def header(self, name: str) -> str:
            return self.value

    exchanges = [Ex("Bearer " + t) for t in tokens]

    def verify(pkg: Any) -> Callable[[], None]:
        authenticate = pkg.auth.JWT(key=SECRET, algorithms=["HS256"], cache_size=0).authenticate

        def run() -> None:
            for ex in exchanges:
                authenticate(ex)

        return run

    def decode() -> None:
        for token in tokens:
            jwt.decode(token, SECRET, algorithms=["HS256"])

    med = rounds({"before": verify(old), "after": verify(new), "PyJWT decode": decode}, n_rounds, n)
    print(f"uncached JWT verification, CPU µs per call, median of {n_rounds} rounds x {n} distinct tokens")
    for key, value in med.items():
        print(f"{key:14} {value:7.2f}  ({value / med['PyJWT decode']:.3f} x PyJWT decode)")
    print(f"after / before: {(med['after'] / med['before'] - 1) * 100:+.1f} %")


def ab_httpx(old: Any, new: Any, n_rounds: int, n: int) -> None:
    import httpx
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from prometheus_client import CollectorRegistry

    importlib.import_module("kitmw.httpx")
    importlib.import_module("kitmw_before.httpx")

    class Counting(SpanProcessor):
        def on_end(self, span: Any) -> None:
            return None

    provider = TracerProvider()
    provider.add_span_processor(Counting())
    logger = logging.getLogger("kitmw.ab")
    logger.handlers[:] = [logging.StreamHandler(io.StringIO())]
    logger.propagate = False
    logger.setLevel(logging.INFO)

    def handler(request: Any) -> Any:
        return httpx.Response(200, stream=httpx.ByteStream(b"ok"))

    def options(concerns: tuple[str, ...], tag: str) -> dict[str, Any]:
        reg = CollectorRegistry()
        every = {
            "access_log": {"logger": logger},
            "metrics": {"registry": reg},
            "tracing": {"tracer_provider": provider},
            "ratelimit": {"limit": "1000000/minute", "registry": reg},
            "breaker": {"name": f"ab-{tag}-{time.monotonic_ns()}", "registry": reg},
            "retry": True,
        }
        return {c: every[c] for c in concerns}

    loop = asyncio.new_event_loop()

    def driver(transport: Any, is_async: bool) -> Callable[[], None]:
        if is_async:

            async def many() -> None:
                for _ in range(n):
                    r = await transport.handle_async_request(httpx.Request("GET", URL, extensions={"timeout": TIMEOUT}))
                    await r.aread()
                    await r.aclose()

            return lambda: loop.run_until_complete(many())

        def run() -> None:
            for _ in range(n):
                r = transport.handle_request(httpx.Request("GET", URL, extensions={"timeout": TIMEOUT}))
                r.read()
                r.close()

        return run

    configs = {"tracing": ("tracing",), "all six": ("access_log", "metrics", "tracing", "ratelimit", "breaker", "retry")}
    cases: dict[str, Callable[[], None]] = {}
    for kind, is_async in (("sync", False), ("async", True)):
        cases[f"{kind} bare"] = driver(httpx.MockTransport(handler), is_async)
        for name, concerns in configs.items():
            for tag, pkg in (("before", old), ("after", new)):
                cls = pkg.httpx.AsyncTransport if is_async else pkg.httpx.Transport
                transport = cls(transport=httpx.MockTransport(handler), **options(concerns, tag))
                cases[f"{kind} {name} {tag}"] = driver(transport, is_async)
    med = rounds(cases, n_rounds, n)
    print(f"CPU µs per request over the bare MockTransport, median of {n_rounds} rounds x {n}")
    for kind in ("sync", "async"):
        bare = med[f"{kind} bare"]
        for name in configs:
            b = med[f"{kind} {name} before"] - bare
            a = med[f"{kind} {name} after"] - bare
            print(f"{kind + ' ' + name:16} before {b:7.2f}  after {a:7.2f}  {(a / b - 1) * 100:+6.1f} %")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["jwt", "httpx"])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--n", type=int, default=None, help="tokens (jwt, 2000) or requests (httpx, 400) per round")
    args = parser.parse_args(argv)
    old, new = load(args.before, args.after)
    if args.what == "jwt":
        ab_jwt(old, new, args.rounds, args.n or 2000)
    else:
        ab_httpx(old, new, args.rounds, args.n or 400)


if __name__ == "__main__":
    main()
