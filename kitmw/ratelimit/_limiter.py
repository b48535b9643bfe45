"""The protocol-neutral limiter: ``limits`` strategies over a sync and an async storage.

:class:`Limiter` is what both the server policy and the httpx client helper use. It
owns no algorithm: every hit is one of ``limits``' atomic operations (an
``INCR``+``EXPIRE`` Lua script, a moving-window or sliding-window-counter script on
Redis; a locked counter in memory). What it adds is the production envelope around
them: several limits at once, IETF header values, short storage timeouts, and a
storage-failure policy that is a setting (fail open or closed), counted and logged
once per outage.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from limits import RateLimitItem, parse_many

from ..errors import ConfigError
from ._limits import key_affixes
from ._storage import Backend

__all__ = ["Decision", "Limiter", "in_memory", "on_backend"]


_UNITS = {"second": "s", "minute": "m", "hour": "h", "day": "d", "month": "mo", "year": "y"}
_MAX_KEY = 200


class Decision(NamedTuple):
    """The verdict of one hit (immutable; a NamedTuple because it is built per request).

    ``allowed``: the request may proceed. ``limit``/``remaining``/``reset_after``
    describe the limit that binds (the one that refused, or the one with the least
    room left); ``remaining`` is ``-1`` when unknown (degraded, or stats not asked
    for). ``retry_after``: seconds to wait before trying again (0 when allowed).
    ``degraded``: the storage could not be reached and ``fail_open`` decided.
    ``policy``: the ``RateLimit-Policy`` header value; ``name``: the policy item
    ``RateLimit`` refers to.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float
    degraded: bool
    policy: str
    name: str = "default"

    @property
    def ratelimit(self) -> str:
        """The ``RateLimit`` header value (draft-ietf-httpapi-ratelimit-headers-11)."""
        return f'"{self.name}";r={max(self.remaining, 0)};t={math.ceil(self.reset_after)}'

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` in whole seconds, never below 1."""
        return str(max(1, math.ceil(self.retry_after)))

    def headers(self) -> tuple[tuple[str, str], ...]:
        """Headers of an answer built from this decision (429: all three)."""
        if self.degraded:
            return () if self.allowed else (("Retry-After", self.retry_after_header),)
        pairs = (("RateLimit-Policy", self.policy), ("RateLimit", self.ratelimit))
        if self.allowed:
            return pairs
        return (("Retry-After", self.retry_after_header), *pairs)


class _Spec:
    """One limit: the ``limits`` item (with kitmw's namespace) and its header pieces."""

    __slots__ = ("amount", "expiry", "header", "item", "name", "prefix", "suffix")

    def __init__(self, item: RateLimitItem, name: str) -> None:
        self.item = item
        self.amount = int(item.amount)
        self.expiry = int(item.get_expiry())
        self.name = name
        # The RateLimit header value up to the remaining count (Decision.ratelimit's start).
        self.header = f'"{name}";r='.encode("latin-1")
        # item.key_for(key) == prefix + key + suffix, without its per-call list and joins.
        self.prefix, self.suffix = key_affixes(item)


def parse_limit(limit: Any, namespace: str, option: str = "limit") -> tuple[tuple[_Spec, ...], str]:
    """Parse a ``limits`` string (several separated by ``;``) into specs and the policy header."""
    if not isinstance(limit, str):
        raise ConfigError(f"{option}: expected a rate string such as '100/minute', got {limit!r}")
    try:
        items = parse_many(limit)
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc} (expected e.g. '100/minute' or '10/second;1000/hour')") from exc
    if not items:
        raise ConfigError(f"{option}: no rate limit in {limit!r}")
    for item in items:
        if item.amount < 1:
            raise ConfigError(f"{option}: each limit must allow at least 1 request, got {limit!r}")
    # Narrowest window first: a refusal there stops before the wider windows are consumed.
    items = sorted(items, key=lambda i: (i.get_expiry(), i.amount))
    specs: list[_Spec] = []
    seen: set[str] = set()
    for item in items:
        if len(items) == 1:
            name = "default"
        else:
            unit = _UNITS.get(item.GRANULARITY.name, item.GRANULARITY.name)
            name = f"{item.amount}/{item.multiples if item.multiples != 1 else ''}{unit}"
        while name in seen:
            name += "'"
        seen.add(name)
        specs.append(_Spec(type(item)(item.amount, item.multiples, namespace=namespace), name))
    policy = ",".join(f'"{s.name}";q={s.amount};w={s.expiry}' for s in specs)
    return tuple(specs), policy


def _escape(key: str) -> str:
    # limits joins identifiers with "/": escape it so no key can reach another's bucket,
    # and bound the length so a huge header value cannot become a huge storage key.
    if "/" in key or "%" in key:
        key = key.replace("%", "%25").replace("/", "%2F")
    if len(key) > _MAX_KEY:
        key = "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    return key


class Limiter:
    """Rate limits on a ``limits`` storage, usable from sync and async code.

    :param limit: a ``limits`` string; several separated by ``;`` must all allow.
    :param storage: a ``limits`` storage URI (``memory://``, ``redis://host:6379``, …);
        the async path uses the matching ``limits.aio`` storage (``async+redis://``).
    :param strategy: ``fixed-window``, ``moving-window`` or ``sliding-window-counter``.
    :param fail_open: when the storage fails, allow (True) or refuse (False); either
        way the decision is ``degraded``, counted, and the outage logged once.
    :param storage_timeout: seconds a storage call may take (socket timeouts for
        Redis; ``asyncio.wait_for`` on the async path).
    :param registry: Prometheus registry for the decision and storage-error counters.
    :param side: ``"server"``, ``"client"`` or ``"endpoint"`` (metric label and key namespace).
    :param storage_options: extra keyword arguments for the storage constructor.
    :param namespace: prefix of every storage key; identically configured limiters
        with the same namespace share budgets (replicas of one app on one Redis).
    :param recovery_interval: after a storage error, decide without the storage for
        this many seconds before trying it again (a stalled Redis is not waited on by
        every request); recovery needs nothing else.
    """

    __slots__ = (
        "_backend",
        "_closed",
        "_limit0",
        "_m_allowed",
        "_m_limited",
        "_open",
        "_single",
        "_specs",
        "_strategy",
        "policy",
    )

    def __init__(
        self,
        *,
        limit: str,
        storage: str = "memory://",
        strategy: str = "fixed-window",
        fail_open: bool = True,
        storage_timeout: float = 0.25,
        registry: Any = None,
        side: str = "server",
        storage_options: Mapping[str, Any] | None = None,
        namespace: str = "kitmw",
        recovery_interval: float = 1.0,
    ) -> None:
        backend = Backend(
            storage=storage,
            strategy=strategy,
            fail_open=fail_open,
            storage_timeout=storage_timeout,
            registry=registry,
            side=side,
            storage_options=storage_options,
            recovery_interval=recovery_interval,
        )
        self._setup(backend, limit, strategy, registry, namespace)

    def _setup(
        self,
        backend: Backend,
        limit: str,
        strategy: str,
        registry: Any,
        namespace: str,
        option: str = "limit",
    ) -> None:
        from ..metrics import instruments
        from ..metrics._instruments import add_writer

        if not isinstance(namespace, str) or not namespace:
            raise ConfigError(f"namespace: expected a non-empty string, got {namespace!r}")
        self._backend = backend
        self._strategy = strategy
        ns = f"{namespace}/{backend.side}/{strategy}"
        self._specs, self.policy = parse_limit(limit, ns, option)
        self._limit0 = self._specs[0].amount
        # One fixed-window limit (the common case): _run takes the straight path.
        self._single = self._specs[0] if len(self._specs) == 1 and strategy == "fixed-window" else None
        inst = instruments(registry)
        # Adders of the decision counters' children (kitmw.metrics' hot-path writers).
        self._m_allowed = add_writer(inst.ratelimit_decisions.labels(backend.side, "allowed"))
        self._m_limited = add_writer(inst.ratelimit_decisions.labels(backend.side, "limited"))
        first = self._specs[0]
        self._open = Decision(True, first.amount, -1, 0.0, 0.0, True, self.policy, first.name)
        self._closed = Decision(
            False, first.amount, -1, 0.0, max(backend.recovery_interval, 1.0), True, self.policy, first.name
        )

    # -- decisions ------------------------------------------------------------------------

    def _degraded(self) -> Decision:
        backend = self._backend
        if backend.fail_open:
            backend.m_open.inc()
            return self._open
        backend.m_closed.inc()
        return self._closed

    def _count(self, decision: Decision) -> Decision:
        (self._m_allowed if decision.allowed else self._m_limited)(1)
        return decision

    def hit(self, key: str, cost: int = 1, *, stats: bool = True) -> Decision:
        """Consume ``cost`` from every limit for ``key`` (sync storage).

        ``stats=False`` skips the extra storage read that fills ``remaining`` and
        ``reset_after`` on allowed decisions (refusals always carry them).
        """
        backend = self._backend
        if backend.down and time.monotonic() < backend.retry_at:
            backend.skipped()
            return self._degraded()
        try:
            decision = self._run(_escape(key), cost, stats)
        except Exception as exc:
            backend.failed(exc)
            return self._degraded()
        if backend.down:
            backend.recovered()
        return self._count(decision)

    async def ahit(self, key: str, cost: int = 1, *, stats: bool = True) -> Decision:
        """Like :meth:`hit` on the ``limits.aio`` storage; never blocks the event loop."""
        backend = self._backend
        if backend.memory:
            return self.hit(key, cost, stats=stats)  # in-process, no I/O
        if backend.down and time.monotonic() < backend.retry_at:
            backend.skipped()
            return self._degraded()
        try:
            strategy = backend.async_strategy(self._strategy)
            decision = await asyncio.wait_for(
                self._arun(strategy, _escape(key), cost, stats), backend.timeout
            )
        except Exception as exc:  # storage errors and asyncio.TimeoutError; never CancelledError
            backend.failed(exc)
            return self._degraded()
        if backend.down:
            backend.recovered()
        return self._count(decision)

    def hit_header(self, key: str, cost: int = 1) -> bytes | Decision:
        """:meth:`hit` with stats, answered as the ``RateLimit`` header value when allowed.

        The server policy's hot path: for one fixed-window limit on a reachable storage
        an allowed request gets its header value (``Decision.ratelimit``, encoded)
        without a :class:`Decision` being built; a refusal, a degraded decision or any
        other configuration returns the :class:`Decision` :meth:`hit` would.
        """
        spec = self._single
        backend = self._backend
        if spec is None or backend.down:
            decision = self.hit(key, cost, stats=True)
            if decision.allowed and not decision.degraded:
                return decision.ratelimit.encode("latin-1")
            return decision
        if "/" in key or "%" in key or len(key) > _MAX_KEY:
            key = _escape(key)
        try:
            storage = backend.strategy.storage
            storage_key = spec.prefix + key + spec.suffix
            count = storage.incr(storage_key, spec.expiry, amount=cost)
            reset = storage.get_expiry(storage_key)
        except Exception as exc:
            backend.failed(exc)
            return self._degraded()
        if backend.down:  # another thread saw an outage meanwhile; this call went through
            backend.recovered()
        if count > spec.amount:
            self._m_limited(1)
            return self._refused(spec, reset)
        self._m_allowed(1)
        # Decision.ratelimit of _allowed((amount - count, reset, spec)): remaining >= 0 here.
        after = reset - time.time() if reset else 0.0
        return spec.header + b"%d;t=%d" % (spec.amount - count, math.ceil(after) if after > 0.0 else 0)

    def _run(self, key: str, cost: int, stats: bool) -> Decision:
        strategy = self._backend.strategy
        spec = self._single
        if spec is not None:  # the loop below for one fixed-window limit, unrolled
            storage = strategy.storage
            storage_key = spec.prefix + key + spec.suffix
            count = storage.incr(storage_key, spec.expiry, amount=cost)
            if count > spec.amount:
                return self._refused(spec, storage.get_expiry(storage_key))
            reset = storage.get_expiry(storage_key) if stats else 0.0
            return self._allowed((spec.amount - count, reset, spec))
        fixed = self._strategy == "fixed-window"
        best: tuple[int, float, _Spec] | None = None
        for spec in self._specs:
            item = spec.item
            if fixed:
                # FixedWindowRateLimiter.hit is exactly this incr; its count gives
                # ``remaining`` without another round trip.
                storage_key = spec.prefix + key + spec.suffix
                count = strategy.storage.incr(storage_key, spec.expiry, amount=cost)
                ok = count <= spec.amount
                remaining = max(0, spec.amount - count)
                reset = strategy.storage.get_expiry(storage_key) if (stats or not ok) else 0.0
            else:
                ok = strategy.hit(item, key, cost=cost)
                if stats or not ok:
                    window = strategy.get_window_stats(item, key)
                    remaining, reset = int(window.remaining), float(window.reset_time)
                else:
                    remaining, reset = -1, 0.0
            if not ok:
                return self._refused(spec, reset)
            best = _tighter(best, remaining, reset, spec)
        return self._allowed(best)

    async def _arun(self, strategy: Any, key: str, cost: int, stats: bool) -> Decision:
        fixed = self._strategy == "fixed-window"
        best: tuple[int, float, _Spec] | None = None
        for spec in self._specs:
            item = spec.item
            if fixed:
                storage_key = spec.prefix + key + spec.suffix
                count = await strategy.storage.incr(storage_key, spec.expiry, amount=cost)
                ok = count <= spec.amount
                remaining = max(0, spec.amount - count)
                reset = await strategy.storage.get_expiry(storage_key) if (stats or not ok) else 0.0
            else:
                ok = await strategy.hit(item, key, cost=cost)
                if stats or not ok:
                    window = await strategy.get_window_stats(item, key)
                    remaining, reset = int(window.remaining), float(window.reset_time)
                else:
                    remaining, reset = -1, 0.0
            if not ok:
                return self._refused(spec, reset)
            best = _tighter(best, remaining, reset, spec)
        return self._allowed(best)

    def _refused(self, spec: _Spec, reset: float) -> Decision:
        wait = max(reset - time.time(), 0.0)
        return Decision(False, spec.amount, 0, wait, wait, False, self.policy, spec.name)

    def _allowed(self, best: tuple[int, float, _Spec] | None) -> Decision:
        assert best is not None
        remaining, reset, spec = best
        after = max(reset - time.time(), 0.0) if reset else 0.0
        return Decision(True, spec.amount, remaining, after, 0.0, False, self.policy, spec.name)


def on_backend(
    backend: Backend, *, limit: str, strategy: str, registry: Any, namespace: str, option: str
) -> Limiter:
    """A limiter on an existing backend (the policy's per-route limits share one)."""
    limiter = Limiter.__new__(Limiter)
    limiter._setup(backend, limit, strategy, registry, namespace, option)
    return limiter


def in_memory(limiter: Limiter) -> bool:
    """True if ``limiter`` keeps its counts in this process (a hit does no I/O)."""
    return bool(limiter._backend.memory)


def _tighter(
    best: tuple[int, float, _Spec] | None, remaining: int, reset: float, spec: _Spec
) -> tuple[int, float, _Spec]:
    """The limit with the least room left (ties: the one that resets later)."""
    if best is None or remaining < best[0] or (remaining == best[0] and reset > best[1]):
        return (remaining, reset, spec)
    return best
