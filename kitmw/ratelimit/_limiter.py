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
import logging
import math
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from limits import RateLimitItem, parse_many
from limits.strategies import STRATEGIES

from ..errors import ConfigError

__all__ = ["STRATEGY_NAMES", "Decision", "Limiter"]

logger = logging.getLogger("kitmw.ratelimit")

#: The strategies ``limits`` offers, by the names kitmw accepts.
STRATEGY_NAMES: tuple[str, ...] = ("fixed-window", "moving-window", "sliding-window-counter")

_UNITS = {"second": "s", "minute": "m", "hour": "h", "day": "d", "month": "mo", "year": "y"}
_MAX_KEY = 200
_REDIS_SCHEMES = ("redis", "rediss", "redis+unix", "valkey", "valkeys", "valkey+unix")
_REDIS_POOLED = ("redis", "rediss", "redis+unix")


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


def _redact(uri: str) -> str:
    """The storage URI without credentials, for log lines."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=f"***@{host}").geturl()


class _Backend:
    """A storage (sync, and async per event loop) with its outage state and counters.

    Shared by every :class:`Limiter` a policy builds (per-route limits), so one
    storage outage is logged once, not once per route.
    """

    __slots__ = (
        "_aio",
        "_aio_pending",
        "_async_options",
        "_async_uri",
        "_lock",
        "_pool_options",
        "_pool_url",
        "down",
        "fail_open",
        "label",
        "m_closed",
        "m_errors",
        "m_open",
        "memory",
        "recovery_interval",
        "retry_at",
        "side",
        "strategy",
        "sync",
        "timeout",
    )

    def __init__(
        self,
        *,
        storage: str,
        strategy: str,
        fail_open: bool,
        storage_timeout: float,
        registry: Any,
        side: str,
        storage_options: Mapping[str, Any] | None,
        recovery_interval: float,
    ) -> None:
        from limits.errors import ConfigurationError
        from limits.storage import storage_from_string

        if strategy not in STRATEGY_NAMES:
            raise ConfigError(f"strategy: expected one of {', '.join(STRATEGY_NAMES)}, got {strategy!r}")
        if not isinstance(storage, str) or "://" not in storage:
            raise ConfigError(f"storage: expected a limits storage URI such as 'memory://', got {storage!r}")
        if side not in ("server", "client"):
            raise ConfigError(f"side: expected 'server' or 'client', got {side!r}")
        if (
            isinstance(storage_timeout, bool)
            or not isinstance(storage_timeout, (int, float))
            or storage_timeout <= 0
        ):
            raise ConfigError(
                f"storage_timeout: expected a positive number of seconds, got {storage_timeout!r}"
            )
        if (
            isinstance(recovery_interval, bool)
            or not isinstance(recovery_interval, (int, float))
            or recovery_interval < 0
        ):
            raise ConfigError(f"recovery_interval: expected seconds >= 0, got {recovery_interval!r}")
        if storage_options is not None and not isinstance(storage_options, Mapping):
            raise ConfigError(f"storage_options: expected a mapping, got {storage_options!r}")

        sync_uri = storage.removeprefix("async+")
        scheme = urlsplit(sync_uri).scheme
        options = dict(storage_options or {})
        self.memory = scheme == "memory"
        self._pool_url: str | None = None
        self._pool_options: dict[str, Any] = {}
        if scheme in _REDIS_SCHEMES or scheme in ("redis+sentinel", "redis+cluster"):
            # Short socket timeouts: a stalled Redis must not hold requests (or threads).
            options.setdefault("socket_timeout", storage_timeout)
            options.setdefault("socket_connect_timeout", storage_timeout)
        sync_options = dict(options)
        async_options = dict(options)
        if scheme.startswith("redis") and "implementation" not in options:
            async_options["implementation"] = "redispy"  # redis-py, not the optional coredis
        if scheme in _REDIS_POOLED and "connection_pool" not in options:
            # A blocking pool: under a burst, requests wait (up to the storage timeout) for
            # a connection instead of failing with "Too many connections" (redis-py's
            # default pool raises past 100). One attempt per call: redis-py >= 6 retries
            # with backoff by default, which would multiply the timeout; recovery is ours.
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            storage_level: dict[str, Any] = {
                k: options.pop(k) for k in ("key_prefix", "wrap_exceptions") if k in options
            }
            options.setdefault("max_connections", 100)
            options.setdefault("timeout", storage_timeout)
            self._pool_url = sync_uri.replace("redis+unix://", "unix://", 1)
            self._pool_options = options
            retry = {} if "retry" in options else {"retry": Retry(NoBackoff(), 0)}
            pool = redis.BlockingConnectionPool.from_url(self._pool_url, **options, **retry)
            sync_options = {"connection_pool": pool, **storage_level}
            async_options = {"implementation": "redispy", **storage_level}
        try:
            self.sync: Any = storage_from_string(sync_uri, **sync_options)
        except ConfigurationError as exc:
            raise ConfigError(f"storage: {exc}") from exc
        except Exception as exc:
            raise ConfigError(f"storage: cannot use {_redact(storage)!r}: {exc}") from exc
        try:
            self.strategy: Any = STRATEGIES[strategy](self.sync)
        except NotImplementedError as exc:
            raise ConfigError(f"strategy: {strategy!r} is not supported by storage {scheme!r}") from exc

        self._async_uri: str | None = None
        self._async_options = async_options
        self._aio: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._aio_pending: Any = None
        self.label = _redact(storage)
        if not self.memory:
            # The in-memory storage does no I/O: both paths share it (one budget).
            self._async_uri = "async+" + sync_uri
            self._aio_pending = self._make_async(strategy)  # validates the async side now
        self.timeout = float(storage_timeout)
        self.fail_open = bool(fail_open)
        self.recovery_interval = float(recovery_interval)
        self.side = side
        self.down = False
        self.retry_at = 0.0
        self._lock = threading.Lock()

        from ..metrics import instruments

        inst = instruments(registry)
        self.m_open = inst.ratelimit_decisions.labels(side, "fail_open")
        self.m_closed = inst.ratelimit_decisions.labels(side, "fail_closed")
        self.m_errors = inst.storage_errors.labels("ratelimit")

    def _make_async(self, strategy: str) -> Any:
        from limits.aio.strategies import STRATEGIES as AIO_STRATEGIES
        from limits.errors import ConfigurationError
        from limits.storage import storage_from_string

        assert self._async_uri is not None
        options = dict(self._async_options)
        try:
            if self._pool_url is not None:
                import redis.asyncio
                from redis.asyncio.retry import Retry
                from redis.backoff import NoBackoff

                pool_options = dict(self._pool_options)
                pool_options.setdefault("retry", Retry(NoBackoff(), 0))
                options["connection_pool"] = redis.asyncio.BlockingConnectionPool.from_url(
                    self._pool_url, **pool_options
                )
            storage = storage_from_string(self._async_uri, **options)
            strategy_cls: Any = AIO_STRATEGIES[strategy]
            return strategy_cls(storage)
        except (ConfigurationError, NotImplementedError) as exc:
            raise ConfigError(f"storage: no async storage for {self.label!r}: {exc}") from exc
        except Exception as exc:
            raise ConfigError(f"storage: cannot use {self.label!r} on the async path: {exc}") from exc

    def async_strategy(self, name: str) -> Any:
        """The ``limits.aio`` strategy bound to the running loop (redis.asyncio pools are per loop)."""
        loop = asyncio.get_running_loop()
        found = self._aio.get(loop)
        if found is None:
            found, self._aio_pending = self._aio_pending, None
            if found is None:
                found = self._make_async(name)
            self._aio[loop] = found
        return found

    def failed(self, exc: BaseException) -> bool:
        """Record a storage error; True if it starts an outage (the caller logs nothing)."""
        self.m_errors.inc()
        with self._lock:
            self.retry_at = time.monotonic() + self.recovery_interval
            if self.down:
                return False
            self.down = True
        logger.error(
            "rate-limit storage %s unreachable (%s: %s); failing %s until it recovers",
            self.label,
            type(exc).__name__,
            exc,
            "open" if self.fail_open else "closed",
        )
        return True

    def recovered(self) -> None:
        with self._lock:
            if not self.down:
                return
            self.down = False
        logger.warning("rate-limit storage %s recovered; limiting again", self.label)

    def skipped(self) -> None:
        """A decision taken without asking the storage during an outage."""
        self.m_errors.inc()


class _Spec:
    """One limit: the ``limits`` item (with kitmw's namespace) and its header pieces."""

    __slots__ = ("amount", "expiry", "item", "name", "prefix", "suffix")

    def __init__(self, item: RateLimitItem, name: str) -> None:
        self.item = item
        self.amount = int(item.amount)
        self.expiry = int(item.get_expiry())
        self.name = name
        # item.key_for(key) == prefix + key + suffix, without its per-call list and joins.
        self.prefix = f"{item.namespace}/"
        self.suffix = f"/{item.amount}/{item.multiples}/{item.GRANULARITY.name}"


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
    :param side: ``"server"`` or ``"client"`` (metric label and key namespace).
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
        backend = _Backend(
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

    @classmethod
    def _with_backend(
        cls, backend: _Backend, *, limit: str, strategy: str, registry: Any, namespace: str, option: str
    ) -> Limiter:
        """A limiter on an existing backend (the policy's per-route limits share one)."""
        self = cls.__new__(cls)
        self._setup(backend, limit, strategy, registry, namespace, option)
        return self

    def _setup(
        self,
        backend: _Backend,
        limit: str,
        strategy: str,
        registry: Any,
        namespace: str,
        option: str = "limit",
    ) -> None:
        from ..metrics import instruments

        if not isinstance(namespace, str) or not namespace:
            raise ConfigError(f"namespace: expected a non-empty string, got {namespace!r}")
        self._backend = backend
        self._strategy = strategy
        ns = f"{namespace}/{backend.side}/{strategy}"
        self._specs, self.policy = parse_limit(limit, ns, option)
        self._limit0 = self._specs[0].amount
        inst = instruments(registry)
        self._m_allowed = inst.ratelimit_decisions.labels(backend.side, "allowed")
        self._m_limited = inst.ratelimit_decisions.labels(backend.side, "limited")
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
        (self._m_allowed if decision.allowed else self._m_limited).inc()
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

    def _run(self, key: str, cost: int, stats: bool) -> Decision:
        strategy = self._backend.strategy
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


def _tighter(
    best: tuple[int, float, _Spec] | None, remaining: int, reset: float, spec: _Spec
) -> tuple[int, float, _Spec]:
    """The limit with the least room left (ties: the one that resets later)."""
    if best is None or remaining < best[0] or (remaining == best[0] and reset > best[1]):
        return (remaining, reset, spec)
    return best
