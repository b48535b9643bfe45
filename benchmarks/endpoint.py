"""``python -m benchmarks.endpoint``: the cost of ``kitmw.endpoint`` per call, and its peer.

The peer is the decorator stack a user would write for the same job (issue 16): an OTel
``start_as_current_span`` decorator, prometheus-client's ``time()`` and
``count_exceptions()``, a ``limits`` check and pybreaker's decorator, around a function
that returns at once. kitmw: ``kitmw.endpoint`` with tracing, metrics, rate limit and
breaker. Rounds are interleaved; the figure is the median overhead per call over the bare
function, in microseconds, with the garbage collector off during a round.

Concerns whose endpoint policy is not in the registry yet are stood in for by the server
policy of the concern, passed as ``policies=[...]`` (printed as "stand-in"): the same
neutral code on the same exchange, an estimate until the endpoint policy lands.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

import kitmw
from kitmw.concerns import concern
from kitmw.exchange import Policy


def _provider() -> Any:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    class Counting(SpanProcessor):  # every span through the same SDK, none exported
        def __init__(self) -> None:
            self.ended = 0

        def on_end(self, span: Any) -> None:
            self.ended += 1

    provider = TracerProvider()
    provider.add_span_processor(Counting())
    return provider


def peer_parts(provider: Any, registry: CollectorRegistry) -> dict[str, Callable[[Callable[..., Any]], Any]]:
    """The decorators a user writes today, one per library, innermost first."""
    import pybreaker
    from limits import parse
    from limits.storage import MemoryStorage
    from limits.strategies import FixedWindowRateLimiter

    tracer = provider.get_tracer("peer")
    n = next(_serial)
    failures = Counter(f"peer_failures_{n}", "failures", ["endpoint"], registry=registry).labels("f")
    duration = Histogram(f"peer_duration_seconds_{n}", "duration", ["endpoint"], registry=registry).labels("f")
    limiter = FixedWindowRateLimiter(MemoryStorage())
    rate = parse("1000000000/second")
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)

    def limited(inner: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(inner)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not limiter.hit(rate, "f"):
                raise RuntimeError("rate limited")
            return inner(*args, **kwargs)

        return wrapper

    def timed(inner: Callable[..., Any]) -> Any:
        return duration.time()(failures.count_exceptions()(inner))

    return {
        "breaker": breaker,
        "ratelimit": limited,
        "metrics": timed,
        "tracing": tracer.start_as_current_span("f"),
    }


def floors(provider: Any, registry: CollectorRegistry) -> dict[str, Callable[[], Any]]:
    """The least each dependency must do for one call (issue 16's dependency floor)."""
    from limits import parse
    from limits.storage import MemoryStorage
    from limits.strategies import FixedWindowRateLimiter

    tracer = provider.get_tracer("floor")
    n = next(_serial)
    calls = Counter(f"floor_calls_{n}", "calls", ["endpoint", "outcome"], registry=registry).labels("f", "ok")
    duration = Histogram(f"floor_seconds_{n}", "s", ["endpoint", "outcome"], registry=registry).labels("f", "ok")
    limiter = FixedWindowRateLimiter(MemoryStorage())
    rate = parse("1000000000/second")

    def metrics() -> None:
        calls.inc()
        duration.observe(0.001)

    return {
        "floor: an SDK span started and ended": lambda: tracer.start_span("f").end(),
        "floor: one limits hit": lambda: limiter.hit(rate, "f"),
        "floor: counter inc + histogram observe": metrics,
    }


def peer_stack(fn: Callable[..., Any], parts: dict[str, Callable[[Callable[..., Any]], Any]]) -> Any:
    for decorate in parts.values():  # pybreaker innermost, the span outermost
        fn = decorate(fn)
    return fn


def kitmw_parts(provider: Any, registry: CollectorRegistry) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """kitmw.endpoint's options for each concern, and the concerns stood in for by their
    server policies (the registry has no endpoint policy for them yet)."""
    from kitmw.concerns import build

    wanted: dict[str, Any] = {
        "breaker": {"fail_max": 5, "reset_timeout": 30},
        "ratelimit": {"limit": "1000000000/second"},
        "metrics": {"registry": registry},
        "tracing": {"tracer_provider": provider},
    }
    parts: dict[str, dict[str, Any]] = {}
    stand_ins: list[str] = []
    for name, value in wanted.items():
        if "endpoint" in concern(name).policies:
            parts[name] = {name: value}
            continue
        shared = {"registry": registry} if name != "tracing" else {}
        parts[name] = {"policies": [build("server", name, value, shared=shared)]}
        stand_ins.append(name)
    return parts, stand_ins


def _merged(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    policies: list[Any] = []
    for name in ("tracing", "metrics", "ratelimit", "breaker"):  # the canonical order
        part = parts[name]
        policies.extend(part.get("policies", ()))
        options.update({k: v for k, v in part.items() if k != "policies"})
    if policies:
        options["policies"] = policies
    return options


_serial = itertools.count()


def _round(call: Callable[[], Any], n: int) -> float:
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in range(n):
            call()
        return (time.perf_counter_ns() - start) / n / 1000
    finally:
        gc.enable()


def _around(call: Callable[[], Any], n: int) -> float:
    async def go() -> float:
        gc.disable()
        try:
            start = time.perf_counter_ns()
            for _ in range(n):
                await call()
            return (time.perf_counter_ns() - start) / n / 1000
        finally:
            gc.enable()

    return asyncio.run(go())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)

    provider = _provider()
    registry = CollectorRegistry()

    def f(a: int, b: int) -> int:
        return a + b

    async def af(a: int, b: int) -> int:
        return a + b

    def bound(g: Callable[..., Any]) -> Callable[[], Any]:
        return lambda: g(1, 2)

    class Noop(Policy):
        name = "noop"

        def exit(self, ex: Any) -> None:
            return None

    parts, stand_ins = kitmw_parts(provider, registry)
    peers = peer_parts(provider, registry)
    cases: dict[str, Callable[[], Any]] = {
        "bare function": bound(f),
        "kitmw: endpoint, no concern": bound(kitmw.endpoint("f")(f)),
        "kitmw: endpoint, one no-op exit (the driver)": bound(kitmw.endpoint("f", policies=[Noop()])(f)),
        "kitmw: access log (DEBUG, logger off)": bound(kitmw.endpoint("f", access_log=True)(f)),
    }
    for name, options in parts.items():
        cases[f"kitmw: {name}" + (" (stand-in)" if name in stand_ins else "")] = bound(kitmw.endpoint("f", **options)(f))
    for name, decorate in peers.items():
        cases[f"peer: {name}"] = bound(decorate(f))
    cases.update(floors(provider, registry))
    cases["kitmw: tracing+metrics+ratelimit+breaker"] = bound(kitmw.endpoint("f", **_merged(parts))(f))
    cases["peer: the four decorators"] = bound(peer_stack(f, peer_parts(provider, registry)))
    acases: dict[str, Callable[[], Any]] = {
        "async bare function": bound(af),
        "async kitmw: endpoint, no concern": bound(kitmw.endpoint("af")(af)),
        "async kitmw: metrics": bound(kitmw.endpoint("af", metrics={"registry": registry})(af)),
        "async kitmw: tracing+metrics+ratelimit+breaker": bound(kitmw.endpoint("af", **_merged(parts))(af)),
    }
    times: dict[str, list[float]] = {name: [] for name in [*cases, *acases]}
    for _ in range(args.rounds):
        for name, call in cases.items():
            times[name].append(_round(call, args.calls))
        for name, call in acases.items():
            times[name].append(_around(call, args.calls))
    medians = {name: statistics.median(values) for name, values in times.items()}
    bare, abare = medians["bare function"], medians["async bare function"]
    print(f"{'case':<56} {'µs/call':>8} {'overhead':>9}")
    for name, median in medians.items():
        base = abare if name.startswith("async") else bare
        print(f"{name:<56} {median:8.2f} {median - base:9.2f}")
    kitmw_cost = medians["kitmw: tracing+metrics+ratelimit+breaker"] - bare
    peer_cost = medians["peer: the four decorators"] - bare
    print(f"\nkitmw / peer, four concerns: {kitmw_cost / peer_cost:.2f} (issue 16 target: <= 0.5)")
    if stand_ins:
        print(f"stand-in (the server policy, as policies=[...]): {', '.join(stand_ins)}")


if __name__ == "__main__":
    main()
