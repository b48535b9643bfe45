"""Breakers of calls: one per upstream origin (httpx transports) or per endpoint (``kitmw.endpoint``).

Both policies keep their breakers by key, made on first use in a bounded dict, and
refuse a call with ``503 circuit_open`` while its breaker is open (the drivers of
calls raise it as :class:`~kitmw.errors.BreakerOpen`; balancing catches it and tries
the next instance). The verdict is taken when the exchange is over: for the client,
when the response body is closed, so an error while reading it counts.

Inside a retry, the policy is the retry's gate (:data:`kitmw.retry.GATE`): asked
before the wait whether the next attempt would be refused, it answers from the
breaker's state and this attempt's own pending verdict (a 503 that is about to open
the breaker), so a call whose own attempts open the breaker ends with its own last
outcome instead of waiting to be refused.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from .._cache import BoundedCache
from ..concerns import check_options
from ..errors import BreakerOpen, ConfigError, Rejected, Rejection
from ..exchange import Exchange, Policy
from ..retry import GATE
from ._core import Breaker, redis_clients, use_redis_clients
from ._machine import CLOSED, HALF_OPEN, OPEN, Permit, check_int

__all__ = ["ClientBreakerPolicy", "EndpointBreakerPolicy"]

#: ``failure(result, error) -> True (a failure) | False (a success) | None (not counted)``.
Failure = Callable[[Any, "BaseException | None"], "bool | None"]

_MAX_REFUSALS = 256


class _KeyedBreakerPolicy(Policy):
    """Breakers by key, the refusal, the verdict and the retry's gate."""

    __slots__ = (
        "_breakers",
        "_clients",
        "_failure",
        "_held",
        "_lock",
        "_max",
        "_options",
        "_prefix",
        "_refusals",
        "_shared",
        "_single",
    )

    name: ClassVar[str] = "breaker"
    shared_options: ClassVar[tuple[str, ...]] = ("registry",)

    def _setup(
        self,
        *,
        prefix: Any,
        failure: Any,
        max_keys: Any,
        breaker: Any,
        registry: Any,
        options: dict[str, Any],
        extra: tuple[str, ...],
    ) -> None:
        if failure is not None and not callable(failure):
            raise ConfigError(
                f"failure: expected a callable (result, error) -> True, False or None, got {failure!r}"
            )
        self._failure: Failure | None = failure
        self._max = check_int(extra[-1] if extra else "max_keys", max_keys)
        self._held = f"kitmw.breaker.{id(self)}"
        self._lock = threading.Lock()
        # a client calling unbounded hosts stays bounded: the oldest origin's breaker goes first
        self._breakers: BoundedCache[str, Breaker] = BoundedCache(self._max, evict="oldest")
        self._refusals: BoundedCache[tuple[str, int], Rejection] = BoundedCache(_MAX_REFUSALS)
        self._clients: Any = None
        if breaker is not None:
            if not isinstance(breaker, Breaker):
                raise ConfigError(f"breaker: expected a kitmw.breaker.Breaker, got {breaker!r}")
            if options:
                raise ConfigError(
                    f"breaker: a ready breaker= takes no breaker options (got {', '.join(sorted(options))})"
                )
            self._single: Breaker | None = breaker
            self._prefix = breaker.name
            self._options: dict[str, Any] = {}
            self._shared = breaker.shared
            return
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError(f"name: expected a non-empty string (the prefix of the breaker names), got {prefix!r}")
        check_options("breaker", Breaker, options, extra=("breaker", "failure", "name", *extra), supplied=("name",))
        if registry is not None:
            options["registry"] = registry
        # Built now on a scratch registry, so that bad options fail here; its Redis
        # clients (if any) then serve every breaker of this policy.
        from prometheus_client import CollectorRegistry

        probe = Breaker(name=f"{prefix}:validate", **{**options, "registry": CollectorRegistry()})
        self._clients = redis_clients(probe)
        self._single = None
        self._prefix = prefix
        self._options = options
        self._shared = probe.shared

    # -- which breaker ----------------------------------------------------------------------

    def _key(self, ex: Exchange) -> str:
        raise NotImplementedError

    @property
    def breakers(self) -> dict[str, Breaker]:
        """The breakers made so far, by key (``{"*": breaker}`` for one ready breaker)."""
        if self._single is not None:
            return {"*": self._single}
        return dict(self._breakers)

    def breaker_for(self, key: str) -> Breaker:
        """The breaker of ``key`` (an origin, an endpoint name), made on first use."""
        single = self._single
        if single is not None:
            return single
        found = self._breakers.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._breakers.get(key)
            if found is None:
                found = Breaker(name=f"{self._prefix}:{key}", **self._options)
                use_redis_clients(found, self._clients)
                self._breakers.put(key, found)
        return found

    def _peek(self, key: str) -> Breaker | None:
        return self._single if self._single is not None else self._breakers.get(key)

    def close(self) -> None:
        """Close the sync Redis clients of the breakers this policy made (not a ready one)."""
        if self._single is None:
            for breaker in list(self._breakers.values()):
                breaker.close()

    async def aclose(self) -> None:
        """Close the Redis clients of the breakers this policy made (not a ready one)."""
        if self._single is None:
            for breaker in list(self._breakers.values()):
                await breaker.aclose()

    # -- per call ---------------------------------------------------------------------------

    def _refusal(self, exc: BreakerOpen) -> Rejection:
        seconds = max(1, math.ceil(exc.retry_after))
        key = (exc.name, seconds)
        answer = self._refusals.get(key)
        if answer is None:
            answer = self._refusals.put(
                key, Rejection(503, "circuit_open", headers=(("Retry-After", str(seconds)),), detail=str(exc))
            )
        return answer

    def _default_failed(self, ex: Exchange, error: BaseException | None) -> bool | None:
        raise NotImplementedError

    def _answer_failed(self, ex: Exchange) -> bool:
        """The default verdict of a call that ended without an error."""
        raise NotImplementedError

    def _failed(self, ex: Exchange) -> bool | None:
        """The verdict: True (a failure), False (a success), None (says nothing)."""
        error = ex.error
        if error is None:
            if ex.rejection is not None:
                return None  # refused by a policy further in: nothing was called
        elif not isinstance(error, Exception):
            return None  # cancelled or interrupted: says nothing about the other side
        failure = self._failure
        if failure is None:
            return self._default_failed(ex, error)
        return failure(getattr(ex, "result", None), error)

    def _breaker(self, ex: Exchange) -> Breaker:
        breaker = self._single
        if breaker is None:
            key = self._key(ex)
            breaker = self._breakers.get(key) or self.breaker_for(key)
        return breaker

    def enter(self, ex: Exchange) -> Rejection | None:
        breaker = self._single
        if breaker is None:
            key = self._key(ex)
            breaker = self._breakers.get(key) or self.breaker_for(key)
        try:
            permit = breaker.acquire()
        except BreakerOpen as exc:
            return self._refusal(exc)
        state = ex.state
        state[self._held] = (breaker, permit)
        state[GATE] = self
        return None

    def exit(self, ex: Exchange) -> None:
        held: tuple[Breaker, Permit] | None = ex.state.pop(self._held, None)
        if held is not None:
            breaker, permit = held
            error = ex.error
            if error is None and self._failure is None and ex.rejection is None:
                failed: bool | None = self._answer_failed(ex)  # the common case, no detour
            else:
                failed = self._failed(ex)
            breaker.release(permit, failed=failed, error=error)

    @property
    def enter_awaits(self) -> bool:
        """Redis-shared breakers await their storage on the async drivers."""
        return bool(self._shared)

    @property
    def exit_awaits(self) -> bool:
        return bool(self._shared)

    async def aenter(self, ex: Exchange) -> Rejection | None:
        breaker = self._breaker(ex)
        try:
            permit = await breaker.aacquire()
        except BreakerOpen as exc:
            return self._refusal(exc)
        state = ex.state
        state[self._held] = (breaker, permit)
        state[GATE] = self
        return None

    async def aexit(self, ex: Exchange) -> None:
        held: tuple[Breaker, Permit] | None = ex.state.pop(self._held, None)
        if held is not None:
            breaker, permit = held
            await breaker.arelease(permit, failed=self._failed(ex), error=ex.error)

    # -- the retry's gate -------------------------------------------------------------------

    def refuses_retry(self, ex: Exchange, delay: float, origins: tuple[str, ...] | None = None) -> str | None:
        """Why an attempt made after ``delay`` seconds would be refused, or None.

        ``origins``: the keys the next attempt may go to (balancing's instances); by
        default this attempt's own. This attempt's verdict may still be pending (a 5xx
        answer, judged when it is closed): it is counted in as it will be.
        """
        held: tuple[Breaker, Permit] | None = ex.state.get(self._held)
        mine = held[0] if held is not None else None
        failing = bool(held is not None and self._failed(ex))
        if origins is None:
            breaker = self._peek(self._key(ex))
            if breaker is not None and _stays_open(breaker, delay, failing and breaker is mine):
                return f"circuit breaker {breaker.name!r} is open"
            return None
        for key in origins:
            breaker = self._peek(key)
            if breaker is None or not _stays_open(breaker, delay, failing and breaker is mine):
                return None
        return "the circuit breaker of every instance is open"


def _stays_open(breaker: Breaker, delay: float, failing: bool) -> bool:
    """True if ``breaker`` will still refuse after ``delay`` seconds (``failing``: a
    failure about to be recorded on it, which may open it now)."""
    state = breaker.state
    if state == OPEN:
        return breaker.retry_after > delay
    machine = breaker.pybreaker
    opens = failing and (state == HALF_OPEN or (state == CLOSED and breaker.fail_counter + 1 >= machine.fail_max))
    return bool(opens and machine.reset_timeout > delay)


class ClientBreakerPolicy(_KeyedBreakerPolicy):
    """One breaker per upstream origin (per instance when balancing), for httpx transports.

    Counts connection errors, timeouts (httpx's, and an async call cut at its
    deadline) and 5xx answers; not 4xx, not kitmw's own refusals, not cancellations.
    The verdict is taken when the response body is closed. While open, the call is
    refused without touching the network.

    :param name: prefix of the breaker names (``"client:http://host:port"``).
    :param failure: ``(response, error) -> True | False | None`` replacing the default
        classifier (``None``: not counted).
    :param max_origins: at most this many breakers; the oldest is forgotten beyond.
    :param breaker: one ready :class:`~kitmw.breaker.Breaker` for every origin (yours:
        the transport does not close it).
    :param registry: prometheus-client registry for the breaker instruments.

    The other options are :class:`~kitmw.breaker.Breaker`'s (``fail_max``,
    ``reset_timeout``, ``success_threshold``, ``half_open_max``, ``exclude``,
    ``listeners``, ``storage``, ``clock``, …).
    """

    __slots__ = ()

    def __init__(
        self,
        *,
        name: str = "client",
        failure: Failure | None = None,
        max_origins: int = 1024,
        breaker: Breaker | None = None,
        registry: Any = None,
        **options: Any,
    ) -> None:
        self._setup(
            prefix=name,
            failure=failure,
            max_keys=max_origins,
            breaker=breaker,
            registry=registry,
            options=options,
            extra=("max_origins",),
        )

    @classmethod
    def options_from(cls, value: Any) -> dict[str, Any] | None:
        """The options a bare :class:`Breaker` stands for (``Transport(breaker=Breaker(...))``)."""
        return {"breaker": value} if isinstance(value, Breaker) else None

    def _key(self, ex: Exchange) -> str:
        return ex.scheme + "://" + ex.host

    def _answer_failed(self, ex: Exchange) -> bool:
        return ex.status >= 500

    def _default_failed(self, ex: Exchange, error: BaseException | None) -> bool | None:
        if error is None:
            return ex.status >= 500
        if isinstance(error, Rejected):
            return None  # a refusal by kitmw (another transport inside): not the upstream's
        if isinstance(error, TimeoutError):
            return True  # the call cut at its deadline (async): as httpx's own timeouts count
        errors = getattr(ex, "transport_errors", None)
        return True if errors is None or isinstance(error, errors) else None


class EndpointBreakerPolicy(_KeyedBreakerPolicy):
    """One breaker per endpoint name, for :func:`kitmw.endpoint` functions.

    An exception is a failure (a kitmw refusal from inside, or a cancellation, is not
    counted); a return is a success. While open, calls raise
    :class:`~kitmw.errors.BreakerOpen` without calling the function. With
    ``storage="redis://..."`` every process shares one breaker per endpoint.

    :param name: prefix of the breaker names (``"endpoint:charge_card"``).
    :param failure: ``(result, error) -> True | False | None`` replacing the default
        classifier (``None``: not counted).
    :param breaker: one ready :class:`~kitmw.breaker.Breaker` (yours, never closed here).
    :param registry: prometheus-client registry for the breaker instruments.

    The other options are :class:`~kitmw.breaker.Breaker`'s.
    """

    __slots__ = ()

    def __init__(
        self,
        *,
        name: str = "endpoint",
        failure: Failure | None = None,
        breaker: Breaker | None = None,
        registry: Any = None,
        **options: Any,
    ) -> None:
        self._setup(
            prefix=name,
            failure=failure,
            max_keys=1024,
            breaker=breaker,
            registry=registry,
            options=options,
            extra=(),
        )

    @classmethod
    def options_from(cls, value: Any) -> dict[str, Any] | None:
        return {"breaker": value} if isinstance(value, Breaker) else None

    def _key(self, ex: Exchange) -> str:
        return ex.route_label()

    def _answer_failed(self, ex: Exchange) -> bool:
        return False

    def _default_failed(self, ex: Exchange, error: BaseException | None) -> bool | None:
        if error is None:
            return False
        return None if isinstance(error, Rejected) else True
