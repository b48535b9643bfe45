"""When to retry, how long to wait, and a retry budget: decision logic, free of I/O.

The retry policies (:mod:`kitmw.retry`) ask :class:`Retry` whether and how long to
wait; the drivers sleep (``time.sleep`` or ``anyio.sleep``) unless ``sleep`` is given.
"""

from __future__ import annotations

import random as _random
import threading
import time
from collections.abc import Callable, Iterable
from email.utils import parsedate_to_datetime
from typing import Any

from .._types import Clock
from ..errors import ConfigError

__all__ = ["IDEMPOTENT_METHODS", "RETRY_STATUSES", "Retry", "RetryBudget", "parse_retry_after"]

#: RFC 9110 idempotent methods: replaying them cannot do a thing twice.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Statuses that say "try again": overloaded, bad gateway, unavailable, gateway timeout.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date).

    ``None`` for a missing or malformed value (the caller then uses its backoff).
    A date in the past gives ``0.0``.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        if len(value) > 12:  # absurd; treat as "a very long time"
            return float("inf")
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class RetryBudget:
    """A retry budget: retries may be at most ``ratio`` of the requests of the last
    ``window`` seconds, plus ``min_per_second`` retries per second.

    During a sustained outage every request fails; without a budget each one would be
    sent ``attempts`` times and the retries would multiply the load on the failing
    upstream. With it, at most ``ratio`` (20 % by default) extra load is added, and the
    small floor keeps retries working for a client that sends few requests.
    Thread-safe; the lock is never held across I/O or an ``await``.
    """

    __slots__ = ("_buckets", "_clock", "_lock", "min_per_second", "ratio", "window")

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 1.0,
        window: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 0 <= ratio <= 1000:
            raise ConfigError(f"budget_ratio: expected a ratio >= 0, got {ratio!r}")
        if min_per_second < 0:
            raise ConfigError(f"budget_min_per_second: expected >= 0, got {min_per_second!r}")
        if not window > 0:
            raise ConfigError(f"budget_window: expected seconds > 0, got {window!r}")
        self.ratio = float(ratio)
        self.min_per_second = float(min_per_second)
        self.window = float(window)
        self._clock = clock
        self._lock = threading.Lock()
        # one [second, requests, retries] bucket per whole second of the window
        self._buckets: list[list[float]] = []

    def _current(self) -> list[float]:
        now = int(self._clock())
        buckets = self._buckets
        if not buckets or buckets[-1][0] != now:
            buckets.append([now, 0, 0])
            horizon = now - self.window
            while buckets[0][0] <= horizon:
                buckets.pop(0)
        return buckets[-1]

    def deposit(self) -> None:
        """Record one request (call once per logical request, not per attempt)."""
        with self._lock:
            self._current()[1] += 1

    def withdraw(self) -> bool:
        """Take one retry from the budget; ``False`` when it is spent."""
        with self._lock:
            bucket = self._current()
            requests = sum(b[1] for b in self._buckets)
            retries = sum(b[2] for b in self._buckets)
            if retries + 1 > self.ratio * requests + self.min_per_second * self.window:
                return False
            bucket[2] += 1
            return True


def _predicate(
    retry_on: Any,
) -> Callable[[BaseException], bool] | None:
    """``retry_on`` as a predicate: exception classes become an ``isinstance`` test."""
    if retry_on is None:
        return None
    if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
        retry_on = (retry_on,)
    if isinstance(retry_on, tuple):
        if not retry_on or not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
            raise ConfigError(f"retry_on: expected exception classes or a predicate, got {retry_on!r}")
        types = retry_on

        def isinstance_of(exc: BaseException) -> bool:
            return isinstance(exc, types)

        return isinstance_of
    if not callable(retry_on):
        raise ConfigError(f"retry_on: expected a predicate, an exception class or a tuple of them, got {retry_on!r}")
    return retry_on  # type: ignore[no-any-return]


class Retry:
    """When to retry a client request, and how long to wait before it.

    :param attempts: total attempts including the first (default 3).
    :param methods: methods that may be retried (default the idempotent ones).
    :param statuses: response statuses that are retried (default 429, 502, 503, 504).
    :param backoff_base: first backoff ceiling in seconds; doubles per retry.
    :param backoff_max: ceiling of any backoff.
    :param retry_after_max: longest ``Retry-After`` honoured; a longer one ends the
        retries and the response is returned (retrying sooner than asked would be
        hammering a server that asked for calm).
    :param deadline: overall seconds for all attempts and waits together (``None``: no
        overall limit); each attempt's httpx timeouts are cut to what remains.
    :param budget: a :class:`RetryBudget`, or ``None`` for none; by default one is built
        from ``budget_ratio``, ``budget_min_per_second`` and ``budget_window``.
    :param retry_on: which errors are retried: a predicate ``(exception) -> bool``, an
        exception class or a tuple of them (default: on the client, connection errors,
        timeouts and connections closed without a response; on ``kitmw.endpoint``, any
        exception). A refusal by kitmw's own policies (``BreakerOpen``…) never is.
    :param sleep: called with the seconds instead of waiting (tests record the waits);
        on an async driver, an awaitable it returns is not awaited: the driver waits.
    :param random: injectable for tests.
    :param clock: injectable for tests.
    """

    __slots__ = (
        "attempts",
        "backoff_base",
        "backoff_max",
        "budget",
        "clock",
        "deadline",
        "methods",
        "random",
        "retry_after_max",
        "retry_on",
        "sleep",
        "statuses",
    )

    def __init__(
        self,
        *,
        attempts: int = 3,
        methods: Iterable[str] = IDEMPOTENT_METHODS,
        statuses: Iterable[int] = RETRY_STATUSES,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
        retry_after_max: float = 30.0,
        deadline: float | None = None,
        budget: RetryBudget | bool | None = True,
        budget_ratio: float = 0.2,
        budget_min_per_second: float = 1.0,
        budget_window: float = 10.0,
        retry_on: Callable[[BaseException], bool]
        | type[BaseException]
        | tuple[type[BaseException], ...]
        | None = None,
        sleep: Callable[[float], Any] | None = None,
        random: Callable[[], float] = _random.random,
        clock: Clock = time.monotonic,
    ) -> None:
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ConfigError(f"attempts: expected an int >= 1, got {attempts!r}")
        if isinstance(methods, str):
            raise ConfigError(f"methods: expected a collection of method names, got {methods!r}")
        self.methods = frozenset(m.upper() for m in methods)
        try:
            self.statuses = frozenset(int(s) for s in statuses)
        except (TypeError, ValueError):
            raise ConfigError(f"statuses: expected HTTP status codes, got {statuses!r}") from None
        for name, value in (
            ("backoff_base", backoff_base),
            ("backoff_max", backoff_max),
            ("retry_after_max", retry_after_max),
        ):
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name}: expected seconds >= 0, got {value!r}")
        if deadline is not None and (not isinstance(deadline, (int, float)) or deadline <= 0):
            raise ConfigError(f"deadline: expected seconds > 0 or None, got {deadline!r}")
        retry_on = _predicate(retry_on)
        if sleep is not None and not callable(sleep):
            raise ConfigError(f"sleep: expected a callable, got {sleep!r}")
        if budget is True:
            budget = RetryBudget(
                ratio=budget_ratio, min_per_second=budget_min_per_second, window=budget_window, clock=clock
            )
        elif budget is False:
            budget = None
        elif budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigError(f"budget: expected a RetryBudget, True or None, got {budget!r}")
        self.attempts = attempts
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.retry_after_max = float(retry_after_max)
        self.deadline = None if deadline is None else float(deadline)
        self.budget = budget
        self.retry_on = retry_on
        self.sleep = sleep
        self.random = random
        self.clock = clock

    def backoff(self, retry: int) -> float:
        """Full-jitter exponential backoff before retry number ``retry`` (1-based)."""
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** min(retry - 1, 62)))
        return float(ceiling * self.random())

    def delay(self, retry: int, retry_after: str | None) -> float | None:
        """Seconds to wait before retry ``retry``; ``None`` if the server asked for longer
        than ``retry_after_max``. A malformed ``Retry-After`` falls back to the backoff."""
        asked = parse_retry_after(retry_after)
        if asked is None:
            return self.backoff(retry)
        if asked > self.retry_after_max:
            return None
        return asked
