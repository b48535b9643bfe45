"""The storage side of the limiter: sync and per-loop async ``limits`` storages, outage state.

One :class:`Backend` per configured storage, shared by every limiter a policy builds
(per-route limits), so one outage is logged once and counted in one place. Redis gets
short socket timeouts, one attempt per call and a blocking connection pool; recovery is
the backend's own (``recovery_interval``), not redis-py's retry loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from limits.strategies import STRATEGIES

from ..concerns import check_storage_uri
from ..errors import ConfigError
from ._limits import HeapMemoryStorage

__all__ = ["STRATEGY_NAMES", "Backend"]

logger = logging.getLogger("kitmw.ratelimit")

#: The strategies ``limits`` offers, by the names kitmw accepts.
STRATEGY_NAMES: tuple[str, ...] = ("fixed-window", "moving-window", "sliding-window-counter")

_REDIS_SCHEMES = ("redis", "rediss", "redis+unix", "valkey", "valkeys", "valkey+unix")
_REDIS_POOLED = ("redis", "rediss", "redis+unix")


def _redact(uri: str) -> str:
    """The storage URI without credentials, for log lines."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=f"***@{host}").geturl()


class Backend:
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
        try:
            check_storage_uri(storage, "ratelimit")
        except ConfigError as exc:  # the caller puts the concern in front
            raise ConfigError(str(exc).removeprefix("ratelimit: ")) from None
        if side not in ("server", "client", "endpoint"):
            raise ConfigError(f"side: expected 'server', 'client' or 'endpoint', got {side!r}")
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
            if self.memory:
                # limits' MemoryStorage sweeps every key every ~10 ms: see _limits.py.
                self.sync: Any = HeapMemoryStorage(sync_uri, **sync_options)
            else:
                self.sync = storage_from_string(sync_uri, **sync_options)
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
        """Record a storage error; log (once) and return True if it starts an outage."""
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
