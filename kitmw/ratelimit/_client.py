"""Rate limits of calls: per upstream origin (httpx transports) or per endpoint (``kitmw.endpoint``).

Go kit's two limiters: the *delaying* one waits for a slot (bounded by ``max_wait`` and
by the deadline of the exchange), the *erroring* one refuses at once. A refusal is
``429 rate_limited`` with ``Retry-After``, which the drivers of calls raise as
:class:`~kitmw.errors.RateLimited`. The waiting is written once as a generator of
steps (hit the limiter, sleep) with a sync and an async runner, the breaker's pattern:
the async runner awaits a Redis storage and ``anyio.sleep``, never blocking the loop.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Generator
from typing import Any, ClassVar

from .._cache import BoundedCache
from ..concerns import check_options
from ..errors import ConfigError, Rejection
from ..exchange import Exchange, Policy
from ._limiter import Decision, Limiter, in_memory

__all__ = ["ClientRateLimitPolicy", "EndpointRateLimitPolicy"]

KeyFunc = Callable[[Exchange], Any]
_Steps = Generator[tuple[str, Any], Any, "Rejection | None"]
_HIT = "hit"
_SLEEP = "sleep"
_MAX_REFUSALS = 256


class _LimitPolicy(Policy):
    """What both sides share: the key, the hit, the wait or the refusal."""

    __slots__ = ("_delay", "_key", "_max_wait", "_refusals", "_sleep", "limiter")

    name: ClassVar[str] = "ratelimit"
    shared_options: ClassVar[tuple[str, ...]] = ("registry",)
    #: how a refusal describes the limit
    _what: ClassVar[str] = "rate limit"

    def _setup(
        self,
        *,
        limiter: Any,
        key: Any,
        delay: bool,
        max_wait: Any,
        sleep: Any,
        registry: Any,
        options: dict[str, Any],
        side: str,
        extra: tuple[str, ...],
    ) -> None:
        if key is not None and not callable(key):
            raise ConfigError(f"key: expected a callable on the exchange returning a key, got {key!r}")
        if isinstance(max_wait, bool) or not isinstance(max_wait, (int, float)) or max_wait < 0:
            raise ConfigError(f"max_wait: expected seconds >= 0, got {max_wait!r}")
        if sleep is not None and not callable(sleep):
            raise ConfigError(f"sleep: expected a callable, got {sleep!r}")
        if limiter is None:
            if "limit" not in options:
                raise ConfigError("limit: a rate string such as '10/second' is required")
            check_options("ratelimit", Limiter, options, extra=("key", "limiter", "max_wait", "sleep", *extra))
            options.setdefault("side", side)
            if registry is not None:
                options.setdefault("registry", registry)
            limiter = Limiter(**options)
        elif not isinstance(limiter, Limiter):
            raise ConfigError(f"limiter: expected a kitmw.ratelimit.Limiter, got {limiter!r}")
        elif options:
            raise ConfigError(
                f"limiter: a ready limiter= takes no limiter options (got {', '.join(sorted(options))})"
            )
        self.limiter = limiter
        self._key: KeyFunc | None = key
        self._delay = delay
        self._max_wait = float(max_wait)
        self._sleep: Callable[[float], Any] | None = sleep
        self._refusals: BoundedCache[int, Rejection] = BoundedCache(_MAX_REFUSALS)

    @classmethod
    def options_from(cls, value: Any) -> dict[str, Any] | None:
        """The options a bare :class:`Limiter` stands for (``Transport(ratelimit=Limiter(...))``)."""
        return {"limiter": value} if isinstance(value, Limiter) else None

    def _default_key(self, ex: Exchange) -> str:
        raise NotImplementedError

    def _key_of(self, ex: Exchange) -> str | None:
        key = self._key
        if key is None:
            return self._default_key(ex)
        found = key(ex)
        return None if found is None else str(found)

    def _refusal(self, wait: float) -> Rejection:
        seconds = max(1, math.ceil(wait))
        answer = self._refusals.get(seconds)
        if answer is None:
            answer = self._refusals.put(
                seconds,
                Rejection(
                    429,
                    "rate_limited",
                    headers=(("Retry-After", str(seconds)),),
                    detail=f"{self._what} reached (retry after {seconds}s)",
                ),
            )
        return answer

    def _steps(self, ex: Exchange, key: str, decision: Decision) -> _Steps:
        """After a refused hit: wait and hit again while waiting is allowed, else refuse."""
        waited = 0.0
        while True:
            wait = max(float(decision.retry_after or 0.0), 0.01)
            remaining = ex.remaining
            if (
                not self._delay
                or waited + wait > self._max_wait
                or (remaining is not None and wait >= remaining)
            ):
                return self._refusal(wait)
            yield (_SLEEP, wait)
            waited += wait
            decision = yield (_HIT, key)
            if decision.allowed:
                return None

    # -- the sync runner --------------------------------------------------------------------

    def enter(self, ex: Exchange) -> Rejection | None:
        key = self._key_of(ex)
        if key is None:
            return None
        limiter = self.limiter
        decision = limiter.hit(key, 1, stats=False)
        if decision.allowed:
            return None
        steps = self._steps(ex, key, decision)
        sleep = self._sleep or time.sleep
        try:
            op = next(steps)
            while True:
                if op[0] == _HIT:
                    op = steps.send(limiter.hit(op[1], 1, stats=False))
                else:
                    sleep(op[1])
                    op = steps.send(None)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    # -- the async runner -------------------------------------------------------------------

    @property
    def enter_awaits(self) -> bool:
        """Async drivers await ``aenter`` for a storage doing I/O, or to wait (delaying);
        an erroring limit on the in-memory storage is a plain call."""
        return self._delay or not in_memory(self.limiter)

    async def aenter(self, ex: Exchange) -> Rejection | None:
        key = self._key_of(ex)
        if key is None:
            return None
        limiter = self.limiter
        decision = await limiter.ahit(key, 1, stats=False)
        if decision.allowed:
            return None
        steps = self._steps(ex, key, decision)
        try:
            op = next(steps)
            while True:
                if op[0] == _HIT:
                    op = steps.send(await limiter.ahit(op[1], 1, stats=False))
                else:
                    await self._asleep(op[1])
                    op = steps.send(None)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _asleep(self, seconds: float) -> None:
        if self._sleep is None:
            import anyio

            await anyio.sleep(seconds)
            return
        value = self._sleep(seconds)
        if inspect.isawaitable(value):
            await value


class ClientRateLimitPolicy(_LimitPolicy):
    """A rate limit on outgoing httpx calls, per upstream origin by default.

    ``mode="delay"`` (default, Go kit's delaying limiter) waits for the slot up to
    ``max_wait`` seconds and never beyond the exchange's deadline, then refuses;
    ``mode="error"`` refuses at once. A refused call is raised as the library's
    ``RateLimited`` (also ``kitmw.RateLimited`` and a ``TransportError``), without
    touching the network. A retry does not take a second slot.

    :param mode: ``"delay"`` or ``"error"``.
    :param max_wait: longest total wait in seconds (default 10).
    :param key: callable on the exchange giving the key (default the origin,
        ``scheme://host:port``); ``None`` from it exempts the call.
    :param sleep: called instead of waiting (tests); an awaitable it returns is awaited.
    :param limiter: a ready :class:`~kitmw.ratelimit.Limiter` instead of ``limit`` and
        the storage options.
    :param registry: prometheus-client registry for the decision counters.

    The other options are :class:`~kitmw.ratelimit.Limiter`'s: ``limit`` (required
    without ``limiter``: a ``limits`` string, ``"50/second"``, several with ``;``),
    ``storage``, ``strategy``, ``fail_open``, ``namespace``, ….
    """

    __slots__ = ()
    _what = "client rate limit"

    def __init__(
        self,
        *,
        mode: str = "delay",
        max_wait: float = 10.0,
        key: KeyFunc | None = None,
        sleep: Callable[[float], Any] | None = None,
        limiter: Limiter | None = None,
        registry: Any = None,
        **options: Any,
    ) -> None:
        if mode not in ("delay", "error"):
            raise ConfigError(f"mode: expected 'delay' or 'error', got {mode!r}")
        self._setup(
            limiter=limiter,
            key=key,
            delay=mode == "delay",
            max_wait=max_wait,
            sleep=sleep,
            registry=registry,
            options=options,
            side="client",
            extra=("mode",),
        )

    def _default_key(self, ex: Exchange) -> str:
        return ex.scheme + "://" + ex.host


class EndpointRateLimitPolicy(_LimitPolicy):
    """A rate limit on the calls of a :func:`kitmw.endpoint` function, per endpoint name.

    Erroring by default: a call over the limit raises :class:`~kitmw.errors.RateLimited`
    without calling the function. With ``wait=True`` (Go kit's delaying limiter) the
    call waits for its slot, up to ``max_wait`` seconds and never beyond the deadline
    of the code that calls (a request being served), then raises.

    :param wait: wait for the slot instead of refusing at once.
    :param max_wait: longest total wait in seconds (default 10).
    :param key: callable on the exchange giving the key (default the endpoint name;
        ``ex.arguments`` has the call's arguments); ``None`` from it exempts the call.
    :param sleep: called instead of waiting (tests); an awaitable it returns is awaited.
    :param limiter: a ready :class:`~kitmw.ratelimit.Limiter`.
    :param registry: prometheus-client registry for the decision counters.

    The other options are :class:`~kitmw.ratelimit.Limiter`'s: ``limit`` (required
    without ``limiter``: a ``limits`` string), ``storage`` (``"redis://..."`` shares the
    budget across processes), ``strategy``, ``fail_open``, ``namespace``, ….
    """

    __slots__ = ()

    def __init__(
        self,
        *,
        wait: bool = False,
        max_wait: float = 10.0,
        key: KeyFunc | None = None,
        sleep: Callable[[float], Any] | None = None,
        limiter: Limiter | None = None,
        registry: Any = None,
        **options: Any,
    ) -> None:
        if not isinstance(wait, bool):
            raise ConfigError(f"wait: expected True or False, got {wait!r}")
        self._setup(
            limiter=limiter,
            key=key,
            delay=wait,
            max_wait=max_wait,
            sleep=sleep,
            registry=registry,
            options=options,
            side="endpoint",
            extra=("wait",),
        )

    def _default_key(self, ex: Exchange) -> str:
        return ex.route_label()
