"""pybreaker's state machine, adapted: clock-stamped opens, a plain-attribute view, observers.

The one module of kitmw that touches pybreaker's private parts, each checked by
tests/test_seams.py: the breaker's lock (``CircuitBreaker._lock``, which
:attr:`Machine.lock` names) and the state objects' verdict handlers
(``_handle_error``/``_handle_success``, behind :meth:`Machine.record`): pybreaker's
public ``call()`` holds the lock across the whole guarded call and cannot await, so
kitmw drives the same state objects itself. The storage is pybreaker's documented
extension point (a ``CircuitBreakerStorage``), implemented by :class:`View` over plain
attributes that the hot path reads.

Also the small values every breaker module shares: :class:`Permit`,
:class:`ReportedFailure` and the option checks.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import pybreaker

from .._types import Clock
from ..errors import ConfigError

__all__ = [
    "ADMITTED",
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "STATES",
    "Machine",
    "Observer",
    "Permit",
    "ReportedFailure",
    "View",
    "breaker_instruments",
    "check_int",
    "check_seconds",
    "check_storage",
    "exclusion",
    "guarded_call",
]

CLOSED = pybreaker.STATE_CLOSED
OPEN = pybreaker.STATE_OPEN
HALF_OPEN = pybreaker.STATE_HALF_OPEN
STATES = (CLOSED, OPEN, HALF_OPEN)

log = logging.getLogger("kitmw.breaker")


class ReportedFailure(Exception):
    """Stands for a failure reported without an exception (a 5xx answer), for listeners."""

    def __init__(self, message: str = "failure reported", *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Permit:
    """Leave to make one guarded call; give it back with :meth:`Breaker.release`."""

    __slots__ = ("lease", "released", "trial")

    def __init__(self, trial: bool, lease: str | None = None) -> None:
        self.trial = trial
        self.lease = lease
        self.released = False

    def __repr__(self) -> str:
        return f"Permit(trial={self.trial})"


#: Closed-state permits hold nothing, so one object serves every call.
ADMITTED = Permit(False)


def guarded_call() -> None:
    """Stands for the guarded call in ``CircuitBreakerListener.before_call(cb, func)``."""


class View(pybreaker.CircuitBreakerStorage):
    """The breaker's state in pybreaker's storage interface, kept in plain attributes:
    :attr:`current` (the state's name), :attr:`fails` and :attr:`successes` (pybreaker's
    counters) and :attr:`opened_ts` (the open time on the breaker's own clock)."""

    def __init__(self) -> None:
        super().__init__("memory")
        self.current = CLOSED
        self.fails = 0
        self.successes = 0
        self.opened_ts = 0.0
        self.opened_datetime: datetime | None = None

    # pybreaker's storage interface
    @property
    def state(self) -> str:
        return self.current

    @state.setter
    def state(self, state: str) -> None:
        self.current = state

    def increment_counter(self) -> None:
        self.fails += 1

    def reset_counter(self) -> None:
        self.fails = 0

    def increment_success_counter(self) -> None:
        self.successes += 1

    def reset_success_counter(self) -> None:
        self.successes = 0

    @property
    def counter(self) -> int:
        return self.fails

    @property
    def success_counter(self) -> int:
        return self.successes

    @property
    def opened_at(self) -> datetime | None:
        return self.opened_datetime

    @opened_at.setter
    def opened_at(self, value: datetime | None) -> None:
        self.opened_datetime = value


class Machine(pybreaker.CircuitBreaker):
    """pybreaker's breaker with ``open()`` stamped by the injected clock.

    The storage is updated before the state object so listeners reading
    ``cb.current_state`` in ``state_change`` already see the new state.
    """

    def __init__(self, *, clock: Clock, view: View, **options: Any) -> None:
        self._clock = clock
        self._view = view
        super().__init__(state_storage=view, **options)
        #: pybreaker's own (reentrant) lock: kitmw's decisions hold it as pybreaker's do.
        self.lock = self._lock

    def open(self) -> bool:
        with self._lock:
            self._view.opened_ts = self._clock()
            self._view.opened_at = datetime.now(timezone.utc)
            self._view.state = OPEN
            self.state = OPEN  # type: ignore[assignment]
        return True

    def half_open(self) -> None:
        with self._lock:
            self._view.state = HALF_OPEN
            self.state = HALF_OPEN  # type: ignore[assignment]

    def close(self) -> None:
        with self._lock:
            self._view.reset_success_counter()
            self._view.state = CLOSED
            self.state = CLOSED  # type: ignore[assignment]

    def record(self, failed: bool, error: BaseException | None) -> None:
        """The verdict of a guarded call, counted by the current state object as its own
        ``call()`` would (the lock held by the caller)."""
        state = self.state
        if failed:
            try:
                state._handle_error(error if error is not None else ReportedFailure(), reraise=False)
            except pybreaker.CircuitBreakerError:
                pass  # pybreaker announces the trip by raising; the transition is done
        else:
            state._handle_success()


class Observer(pybreaker.CircuitBreakerListener):
    """Logs transitions on ``kitmw.breaker`` and feeds the state gauge and transition counter."""

    def __init__(self, name: str, inst: Any) -> None:
        self.name = name
        self.gauges = {s: inst.breaker_state.labels(name, s) for s in STATES} if inst is not None else None
        self.transitions = inst.breaker_transitions if inst is not None else None
        if self.gauges is not None:
            self.show(CLOSED)

    def show(self, state: str) -> None:
        if self.gauges is not None:
            for s, gauge in self.gauges.items():
                gauge.set(1 if s == state else 0)

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        old = old_state.name if old_state is not None else CLOSED
        new = new_state.name
        log.log(
            logging.WARNING if new == OPEN else logging.INFO,
            "circuit breaker %s: %s -> %s",
            self.name,
            old,
            new,
            extra={"breaker": self.name, "from_state": old, "to_state": new},
        )
        self.show(new)
        if self.transitions is not None:
            self.transitions.labels(self.name, old, new).inc()


def breaker_instruments(registry: Any) -> Any:
    """kitmw's instruments on ``registry`` (the breaker's gauges and counters)."""
    try:
        from ..metrics import instruments
    except ImportError:  # pragma: no cover - the metrics module ships with kitmw
        return None
    return instruments(registry)


def exclusion(item: Any) -> Any:
    """An ``exclude=`` item as pybreaker must get it: pybreaker tests ``type(exclusion)
    is type``, so an exception class with a metaclass (ABCMeta, ...) would be *called* as
    a predicate and always match; it becomes a predicate here."""
    if isinstance(item, type):

        def excluded(exc: BaseException, cls: type = item) -> bool:
            return isinstance(exc, cls)

        excluded.__qualname__ = f"excluded[{item.__qualname__}]"
        return excluded
    return item


def check_int(option: str, value: Any) -> int:
    """``value`` if it is an integer >= 1, else a ConfigError naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{option}: expected an integer >= 1, got {value!r}")
    return value


def check_seconds(option: str, value: Any, *, zero: bool = False) -> float:
    """``value`` as float seconds if it is > 0 (>= 0 with ``zero``), else a ConfigError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value < 0
        or (value == 0 and not zero)
    ):
        raise ConfigError(f"{option}: expected a number of seconds {'>=' if zero else '>'} 0, got {value!r}")
    return float(value)


def check_storage(storage: Any) -> str | None:
    """Validate ``storage``: ``None`` or a ``redis://``, ``rediss://`` or ``unix://`` URL."""
    if storage is None:
        return None
    if not isinstance(storage, str) or urlsplit(storage).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"storage: expected None or a redis://, rediss:// or unix:// URL, got {storage!r}")
    try:
        import redis  # noqa: F401
    except ImportError as exc:  # pragma: no cover - redis is an extra
        raise ConfigError(
            "storage: a Redis URL needs the redis package (pip install 'kitmw[redis]')"
        ) from exc
    return storage
