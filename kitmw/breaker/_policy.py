"""The server-side breaker policy: 503 with ``Retry-After`` while the application is failing."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pybreaker

from .._paths import PathMatcher
from .._types import Clock
from ..errors import BreakerOpen, ConfigError, Rejection
from ..exchange import Exchange, Policy
from ._core import Breaker
from ._machine import Permit, ReportedFailure

__all__ = ["BreakerPolicy", "default_is_failure", "default_name"]


def default_is_failure(ex: Exchange) -> bool:
    """An exception or a 5xx answer is a failure; a 4xx (the caller's fault) never is."""
    return ex.error is not None or ex.status >= 500


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def default_name(
    *,
    fail_max: int,
    reset_timeout: float,
    success_threshold: int,
    half_open_max: int,
    exclude: Sequence[Any],
    exclude_paths: Sequence[str] | str | None,
    is_failure: Callable[[Exchange], bool] | None,
) -> str:
    """``"server"`` for the defaults, else ``"server-<hash of the options>"``.

    Derived from the options only (never from the process), so every replica of one
    app computes the same name and shares one state on Redis without configuration.
    """
    if isinstance(exclude_paths, str):
        exclude_paths = [exclude_paths]
    options = (
        fail_max,
        float(reset_timeout),
        success_threshold,
        half_open_max,
        tuple(sorted(_qualname(e) for e in exclude)),
        tuple(sorted(exclude_paths or ())),
        _qualname(is_failure) if is_failure is not None else None,
    )
    if options == (5, 30.0, 1, 1, (), (), None):
        return "server"
    return "server-" + hashlib.blake2b(repr(options).encode(), digest_size=4).hexdigest()


class BreakerPolicy(Policy):
    """Answers 503 ``circuit_open`` with ``Retry-After`` while the application keeps failing.

    Counts exceptions and 5xx answers (``is_failure``), never 4xx; excluded paths are
    neither refused nor counted; a cancelled request frees its trial slot uncounted.

    :param fail_max: consecutive failures that open the breaker.
    :param reset_timeout: seconds before a trial request is let through.
    :param success_threshold: successful trials that close it again.
    :param half_open_max: trial requests at once while half-open.
    :param storage: ``None`` (process-local) or a Redis URL shared by every replica.
    :param name: the breaker's name (logs, metrics, Redis key); default derived from the
        options, so identically configured replicas share one state.
    :param exclude_paths: paths never refused nor counted (health checks).
    :param is_failure: ``callable(exchange) -> bool``; default: an exception or status >= 500.
    :param exclude: exception types (or predicates) that are not failures.
    :param listeners: ``pybreaker.CircuitBreakerListener`` objects.
    :param registry: prometheus-client registry for the breaker instruments.
    :param clock: seconds, injectable for tests.
    :param breaker: a ready :class:`~kitmw.breaker.Breaker` to use instead of building one.
    :param refresh_interval: Redis tuning, see :class:`~kitmw.breaker.Breaker`.
    :param storage_timeout: Redis tuning, see :class:`~kitmw.breaker.Breaker`.
    :param storage_retry: Redis tuning, see :class:`~kitmw.breaker.Breaker`.
    """

    __slots__ = ("_cache", "_excluded", "_is_failure", "_key", "_plain", "breaker")

    name: ClassVar[str] = "breaker"
    shared_options: ClassVar[tuple[str, ...]] = ("exclude_paths", "registry")
    judges_application: ClassVar[bool] = True  # it never sees the /metrics exposition

    def __new__(cls, **options: Any) -> BreakerPolicy:
        if cls is BreakerPolicy:
            breaker = options.get("breaker")
            if options.get("storage") is not None or (isinstance(breaker, Breaker) and breaker.shared):
                cls = _SharedBreakerPolicy
        return super().__new__(cls)

    def __init__(
        self,
        *,
        fail_max: int = 5,
        reset_timeout: float = 30.0,
        success_threshold: int = 1,
        half_open_max: int = 1,
        storage: str | None = None,
        name: str | None = None,
        exclude_paths: Sequence[str] | str | None = (),
        is_failure: Callable[[Exchange], bool] | None = None,
        exclude: Sequence[type[BaseException] | Callable[[BaseException], bool]] = (),
        listeners: Sequence[pybreaker.CircuitBreakerListener] = (),
        registry: Any = None,
        clock: Clock | None = None,
        breaker: Breaker | None = None,
        refresh_interval: float = 0.1,
        storage_timeout: float = 0.5,
        storage_retry: float = 1.0,
    ) -> None:
        if is_failure is not None and not callable(is_failure):
            raise ConfigError(f"is_failure: expected a callable(exchange) -> bool, got {is_failure!r}")
        matcher = PathMatcher(exclude_paths)
        self._excluded = matcher if matcher else None
        self._is_failure = is_failure or default_is_failure
        self._plain = is_failure is None  # the default verdict can be inlined in exit()
        if breaker is not None:
            if not isinstance(breaker, Breaker):
                raise ConfigError(f"breaker: expected a kitmw.breaker.Breaker, got {breaker!r}")
            self.breaker = breaker
        else:
            if name is None:
                name = default_name(
                    fail_max=fail_max,
                    reset_timeout=reset_timeout,
                    success_threshold=success_threshold,
                    half_open_max=half_open_max,
                    exclude=exclude,
                    exclude_paths=exclude_paths,
                    is_failure=is_failure,
                )
            self.breaker = Breaker(
                name=name,
                fail_max=fail_max,
                reset_timeout=reset_timeout,
                success_threshold=success_threshold,
                half_open_max=half_open_max,
                exclude=exclude,
                listeners=listeners,
                storage=storage,
                clock=clock,
                registry=registry,
                refresh_interval=refresh_interval,
                storage_timeout=storage_timeout,
                storage_retry=storage_retry,
            )
        self._key = f"kitmw.breaker.{id(self)}"
        self._cache: dict[int, Rejection] = {}

    @property
    def breaker_name(self) -> str:
        return self.breaker.name

    def _rejection(self, retry_after: float) -> Rejection:
        seconds = max(1, math.ceil(retry_after))
        answer = self._cache.get(seconds)
        if answer is None:
            answer = Rejection(503, "circuit_open", headers=(("Retry-After", str(seconds)),))
            if len(self._cache) < 256:
                self._cache[seconds] = answer
        return answer

    def _verdict(self, ex: Exchange) -> tuple[bool | None, BaseException | None]:
        error = ex.error
        if error is not None and not isinstance(error, Exception):
            return None, None  # cancelled (or interrupted): says nothing about the app's health
        if not self._is_failure(ex):
            return False, None
        return True, error if error is not None else ReportedFailure(f"status {ex.status}", status=ex.status)

    def enter(self, ex: Exchange) -> Rejection | None:
        if self._excluded is not None and self._excluded(ex.path):
            return None
        try:
            permit = self.breaker.acquire()
        except BreakerOpen as exc:
            return self._rejection(exc.retry_after)
        ex.state[self._key] = permit
        return None

    def exit(self, ex: Exchange) -> None:
        permit: Permit | None = ex.state.pop(self._key, None)
        if permit is None:
            return  # excluded path, or refused
        if self._plain and ex.error is None and ex.status < 500:
            self.breaker.release(permit, failed=False)
            return
        failed, error = self._verdict(ex)
        self.breaker.release(permit, failed=failed, error=error)


class _SharedBreakerPolicy(BreakerPolicy):
    """The same policy with Redis I/O awaited on the async drivers.

    Without shared storage every decision is in memory, so :class:`BreakerPolicy` leaves
    ``aenter``/``aexit`` alone and the async drivers call ``enter``/``exit`` directly
    (no coroutine per request).
    """

    __slots__ = ()

    async def aenter(self, ex: Exchange) -> Rejection | None:
        if self._excluded is not None and self._excluded(ex.path):
            return None
        try:
            permit = await self.breaker.aacquire()
        except BreakerOpen as exc:
            return self._rejection(exc.retry_after)
        ex.state[self._key] = permit
        return None

    async def aexit(self, ex: Exchange) -> None:
        permit: Permit | None = ex.state.pop(self._key, None)
        if permit is not None:
            failed, error = self._verdict(ex)
            await self.breaker.arelease(permit, failed=failed, error=error)
