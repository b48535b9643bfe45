"""The ``endpoint`` suite of ``kitmw bench``: the cost of ``kitmw.endpoint`` per call.

The peer is the decorator stack a user would write for the same job (issue 16): an OTel
``start_as_current_span`` decorator, prometheus-client's ``time()`` and
``count_exceptions()``, a ``limits`` check and pybreaker's decorator, around a function
that returns at once. kitmw: ``kitmw.endpoint`` with tracing, metrics, rate limit and
breaker. Spans go through the SDK with a counting span processor on both sides. Sync
and async configurations share the interleaved rounds; each is compared with the bare
function of its kind. The dependency floors (one span, one ``limits`` hit, one counter
increment and histogram observation) are plain calls, for the per-part breakdown.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

from .harness import Configuration, Env, Suite, Target, clock, per_request, registry

__all__ = ["SUITE", "TARGETS", "configurations", "peer_parts", "run"]

Builder = Callable[[Env], Any]

_serial = itertools.count()
#: kitmw's options per concern, in the canonical order.
_KITMW: dict[str, Callable[[Env, Any], Any]] = {
    "tracing": lambda env, reg: {"tracer_provider": env.counting_provider},
    "metrics": lambda env, reg: {"registry": reg},
    "ratelimit": lambda env, reg: {"limit": "1000000000/second", "registry": reg},
    "breaker": lambda env, reg: {"fail_max": 5, "reset_timeout": 30, "registry": reg},
}


def _f(a: int, b: int) -> int:
    return a + b


async def _af(a: int, b: int) -> int:
    return a + b


def peer_parts(provider: Any, reg: Any) -> dict[str, Callable[[Callable[..., Any]], Any]]:
    """The decorators a user writes today, one per library, innermost first."""
    import pybreaker
    from limits import parse
    from limits.storage import MemoryStorage
    from limits.strategies import FixedWindowRateLimiter
    from prometheus_client import Counter, Histogram

    tracer = provider.get_tracer("peer")
    n = next(_serial)
    failures = Counter(f"peer_failures_{n}", "failures", ["endpoint"], registry=reg).labels("f")
    duration = Histogram(f"peer_duration_seconds_{n}", "duration", ["endpoint"], registry=reg).labels("f")
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


def _kitmw(concerns: tuple[str, ...], is_async: bool) -> Builder:
    def build(env: Env) -> Callable[[], Any]:
        import kitmw

        reg = registry()
        options = {c: _KITMW[c](env, reg) for c in concerns}
        fn = kitmw.endpoint("af" if is_async else "f", **options)(_af if is_async else _f)
        return lambda: fn(1, 2)

    return build


def _driver_only(env: Env) -> Callable[[], Any]:
    """The driver's own cost: the exchange, the enter and exit loops, one empty ``exit``."""
    import kitmw
    from kitmw.exchange import Exchange, Policy

    class Noop(Policy):
        name = "noop"

        def exit(self, ex: Exchange) -> None:
            return None

    fn = kitmw.endpoint("f", policies=[Noop()])(_f)
    return lambda: fn(1, 2)


def _access_log_off(env: Env) -> Callable[[], Any]:
    """The access log with its logger's level above the record's: the check only."""
    import logging

    import kitmw

    logger = logging.getLogger("kitmw.bench.endpoint.off")
    logger.setLevel(logging.WARNING)
    fn = kitmw.endpoint("f", access_log={"logger": logger})(_f)
    return lambda: fn(1, 2)


def _peer(concerns: tuple[str, ...]) -> Builder:
    def build(env: Env) -> Callable[[], Any]:
        parts = peer_parts(env.counting_provider, registry())
        fn: Callable[..., Any] = _f
        for name, decorate in parts.items():  # pybreaker innermost, the span outermost
            if name in concerns:
                fn = decorate(fn)
        return lambda: fn(1, 2)

    return build


def _floor_span(env: Env) -> Callable[[], Any]:
    tracer = env.counting_provider.get_tracer("floor")
    return lambda: tracer.start_span("f").end()


def _floor_limits(env: Env) -> Callable[[], Any]:
    from limits import parse
    from limits.strategies import FixedWindowRateLimiter

    from ..ratelimit._limits import HeapMemoryStorage

    limiter = FixedWindowRateLimiter(HeapMemoryStorage())
    rate = parse("1000000000/second")
    return lambda: limiter.hit(rate, "f")


def _floor_metrics(env: Env) -> Callable[[], Any]:
    from ..metrics import instruments

    inst = instruments(registry())
    calls = inst.endpoint_calls.labels("f", "ok")
    duration = inst.endpoint_duration.labels("f", "ok")

    def call() -> None:
        calls.inc()
        duration.observe(0.001)

    return call


FOUR = ("tracing", "metrics", "ratelimit", "breaker")


def configurations() -> list[Configuration]:
    """(name, group, builder, is_async); builders get the env and return a zero-argument call."""
    configs: list[Configuration] = [
        ("bare function", "bare", lambda env: lambda: _f(1, 2), False),
        ("kitmw endpoint, no concern", "reference", _kitmw((), False), False),
        ("kitmw endpoint, one no-op exit (the driver)", "reference", _driver_only, False),
        ("kitmw endpoint, access log (level off)", "reference", _access_log_off, False),
    ]
    for concern in FOUR:
        configs.append((f"kitmw endpoint ({concern})", "kitmw", _kitmw((concern,), False), False))
        configs.append((f"peer decorator ({concern})", "peer", _peer((concern,)), False))
    configs += [
        ("kitmw endpoint, all four", "kitmw", _kitmw(FOUR, False), False),
        ("peer: the four decorators", "peer", _peer(FOUR), False),
        ("floor: an SDK span started and ended", "floor", _floor_span, False),
        ("floor: one limits hit", "floor", _floor_limits, False),
        ("floor: counter inc + histogram observe", "floor", _floor_metrics, False),
        ("async bare function", "bare", lambda env: lambda: _af(1, 2), True),
        ("async kitmw endpoint, no concern", "reference", _kitmw((), True), True),
        ("async kitmw endpoint, all four", "kitmw", _kitmw(FOUR, True), True),
    ]
    return configs


async def _ready(make: Callable[[], Any], is_async: bool, token: Callable[[], str]) -> Callable[[int], Any]:
    call = make()
    if is_async:

        async def adrive(n: int) -> tuple[float, float]:
            start = clock()
            for _ in range(n):
                await call()
            return per_request(start, n)

        await adrive(20)
        return adrive

    def drive(n: int) -> tuple[float, float]:
        start = clock()
        for _ in range(n):
            call()
        return per_request(start, n)

    drive(20)
    return drive


#: Targets of issue 16 read from one run.
TARGETS = [
    Target("endpoint: four concerns vs the four decorators", "kitmw endpoint, all four", "peer: the four decorators", 0.5),
]

#: The suite; sync and async calls are compared with the bare function of their kind.
SUITE = Suite(configurations, _ready, baseline=lambda is_async: is_async, targets=TARGETS)
run = SUITE.run
