"""Where kitmw meets ``limits`` beyond its documented calls, and kitmw's ``memory://`` storage.

What kitmw relies on, all of it checked by ``tests/test_ratelimit_storage.py`` (which
fails loudly on a ``limits`` release that changes it):

* **The storage interface** the strategies call: the abstract classes
  ``limits.storage.Storage``, ``MovingWindowSupport`` and ``SlidingWindowCounterSupport``
  (their method names and arguments: ``incr``, ``get``, ``get_expiry``, ``clear``,
  ``reset``, ``check``, ``acquire_entry``, ``get_moving_window``,
  ``acquire_sliding_window_entry``, ``get_sliding_window``, ``clear_sliding_window``)
  and ``TimestampedSlidingWindow.sliding_window_keys``. :class:`HeapMemoryStorage`
  implements them; a new abstract method makes it fail to instantiate, and the test
  replays the same hits on it and on ``limits``' ``MemoryStorage`` for every strategy.
* **The key layout** of ``RateLimitItem.key_for`` (``namespace/id/amount/multiples/unit``):
  :func:`key_affixes` builds it without ``key_for``'s per-call list and joins.
* **The fixed window's hit** is ``storage.incr(key, expiry, amount=cost) <= amount``:
  the limiter calls ``incr`` itself to get the count (``remaining``) in the same call.

No private attribute of ``limits`` is used: :class:`HeapMemoryStorage` is written on the
public base classes, not on ``MemoryStorage``'s internals.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from heapq import heappop, heappush
from math import floor
from typing import Any

from limits import RateLimitItem
from limits.storage import MovingWindowSupport, SlidingWindowCounterSupport, Storage
from limits.storage.base import TimestampedSlidingWindow

from .._types import Clock

__all__ = ["HeapMemoryStorage", "key_affixes"]

#: Expired entries dropped at most per call: a burst of expiries is spread over calls.
_SWEEP = 16


def key_affixes(item: RateLimitItem) -> tuple[str, str]:
    """``(prefix, suffix)`` with ``item.key_for(key) == prefix + key + suffix``."""
    return f"{item.namespace}/", f"/{item.amount}/{item.multiples}/{item.GRANULARITY.name}"


class _Window:
    """One moving window: entry times, oldest first, from ``start`` on (trimmed lazily)."""

    __slots__ = ("at", "events", "expiry", "start")

    def __init__(self, expiry: float, at: float) -> None:
        self.events: list[float] = []
        self.start = 0
        self.expiry = expiry
        self.at = at  # when this window's heap entry says to look at it again


class HeapMemoryStorage(Storage, MovingWindowSupport, SlidingWindowCounterSupport, TimestampedSlidingWindow):
    """``limits``' in-memory storage, expiring keys from a heap instead of sweeping them all.

    ``limits.storage.MemoryStorage`` restarts a timer thread about every 10 ms under
    traffic, and each run walks *every* key (and every moving-window entry) under the
    GIL: with 100,000 live keys each sweep holds the interpreter for tens of ms, so every
    request waits behind it. Here each key's expiry time goes on a heap when its window
    starts; the calls that write pop what has expired (at most ``16`` entries per heap
    and call, so no call pays for a burst). No thread, and the cost per call does not
    grow with the number of keys (``O(log n)``). Memory is bounded the same way: a key is
    dropped once its window has passed and a later call reaches its heap entry.

    Moving windows keep at most ``limit`` entry times per key (the oldest beyond that can
    never decide again), so a busy key does not grow without bound either.

    Same semantics as ``MemoryStorage`` for the three strategies; one lock for the whole
    storage, held only for in-memory bookkeeping. Not registered for any URI scheme
    (``memory://`` keeps meaning ``limits``' own storage elsewhere in the process);
    kitmw's rate limit uses it for ``storage="memory://"``.

    :param clock: seconds since the epoch (``time.time``; ``limits``' strategies compare
        with it), injectable for tests.
    """

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        *,
        clock: Clock = time.time,
        **options: Any,
    ) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._clock = clock
        self._lock = threading.Lock()
        self._setup()

    def _setup(self) -> None:
        self._counts: dict[str, int] = {}
        self._expires: dict[str, float] = {}
        self._windows: dict[str, _Window] = {}
        self._heap: list[tuple[float, str]] = []  # (expiry time, counter key)
        self._wheap: list[tuple[float, str]] = []  # (time to look again, window key)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        if "lock" in state:  # limits 4's Storage keeps an RLock there
            state["lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        if "lock" in state:
            self.lock = threading.RLock()

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def __len__(self) -> int:
        """Keys held (counters and moving windows), expired ones not yet dropped included."""
        return len(self._counts) + len(self._windows)

    def held_keys(self) -> list[str]:
        """The keys held (as :meth:`__len__` counts them)."""
        with self._lock:
            return [*self._counts, *self._windows]

    # -- expiry (under the lock) -----------------------------------------------------------

    def _expire(self, now: float) -> None:
        heap = self._heap
        if heap and heap[0][0] <= now:
            expires, counts = self._expires, self._counts
            for _ in range(_SWEEP):
                at, key = heappop(heap)
                if expires.get(key) == at:  # else the key started a new window since
                    del expires[key]
                    del counts[key]
                if not heap or heap[0][0] > now:
                    break
        wheap = self._wheap
        if wheap and wheap[0][0] <= now:
            windows = self._windows
            for _ in range(_SWEEP):
                at, key = heappop(wheap)
                window = windows.get(key)
                if window is not None and window.at == at:
                    events = window.events
                    if len(events) > window.start and events[-1] + window.expiry > now:
                        window.at = events[-1] + window.expiry  # still in use: look again then
                        heappush(wheap, (window.at, key))
                    else:
                        del windows[key]
                if not wheap or wheap[0][0] > now:
                    break

    # -- counters (fixed window, sliding window counter) -------------------------------------

    def _incr(self, key: str, expiry: float, amount: int, now: float, elastic: bool = False) -> int:
        at = self._expires.get(key)
        count = amount if at is None or at <= now else self._counts[key] + amount
        self._counts[key] = count
        if count == amount or elastic:  # a new window (limits' rule: its first hit sets it)
            at = now + expiry
            self._expires[key] = at
            heappush(self._heap, (at, key))
        return count

    def _get(self, key: str, now: float) -> int:
        at = self._expires.get(key)
        if at is None or at <= now:
            return 0
        return self._counts[key]

    # limits 4.x orders (elastic_expiry, amount), 5.x has amount only; every caller in limits
    # passes both by keyword, which this signature accepts on both.
    def incr(  # type: ignore[override,unused-ignore]
        self, key: str, expiry: float, amount: int = 1, elastic_expiry: bool = False
    ) -> int:
        """Add ``amount`` to ``key``'s counter, starting a window of ``expiry`` seconds if none."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            return self._incr(key, expiry, amount, now, elastic_expiry)

    def decr(self, key: str, amount: int = 1) -> int:
        now = self._clock()
        with self._lock:
            count = self._get(key, now)
            if count:
                count = self._counts[key] = max(count - amount, 0)
            return count

    def get(self, key: str) -> int:
        now = self._clock()
        with self._lock:
            return self._get(key, now)

    def get_expiry(self, key: str) -> float:
        now = self._clock()
        at = self._expires.get(key)
        return at if at is not None and at > now else now

    def clear(self, key: str) -> None:
        with self._lock:
            self._counts.pop(key, None)
            self._expires.pop(key, None)
            self._windows.pop(key, None)

    def reset(self) -> int | None:
        with self._lock:
            held = max(len(self._counts), len(self._windows))
            self._setup()
            return held

    def check(self) -> bool:
        return True

    # -- moving window -----------------------------------------------------------------------

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = self._clock()
        with self._lock:
            self._expire(now)
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(expiry, now + expiry)
                heappush(self._wheap, (window.at, key))
            events = window.events
            start = window.start
            # limits: refused if the (limit - amount)-th newest entry is still in the window
            i = len(events) - 1 - (limit - amount)
            if i >= start and events[i] >= now - expiry:
                return False
            events.extend([now] * amount)
            held = len(events) - start
            if held > limit:  # the oldest beyond the limit can never decide again
                start += held - limit
            if start > 32 and start * 2 > len(events):
                del events[:start]
                start = 0
            window.start = start
            return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                return now, 0
            events = window.events
            first = bisect_right(events, now - expiry, window.start)
            if first == len(events):
                return now, 0
            return events[first], len(events) - first

    # -- sliding window counter --------------------------------------------------------------

    def _sliding(self, previous: str, current: str, expiry: int, now: float) -> tuple[int, float, int, float]:
        previous_count = self._get(previous, now)
        current_count = self._get(current, now)
        previous_ttl = 0.0 if previous_count == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous_count, previous_ttl, current_count, current_ttl

    def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = self._clock()
        previous, current = self.sliding_window_keys(key, expiry, now)
        with self._lock:  # check and count in one critical section: no race to undo
            self._expire(now)
            previous_count, previous_ttl, current_count, _ = self._sliding(previous, current, expiry, now)
            if floor(previous_count * previous_ttl / expiry + current_count) + amount > limit:
                return False
            self._incr(current, 2 * expiry, amount, now)  # limits' rule: twice the window
            return True

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        now = self._clock()
        previous, current = self.sliding_window_keys(key, expiry, now)
        with self._lock:
            return self._sliding(previous, current, expiry, now)

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        previous, current = self.sliding_window_keys(key, expiry, self._clock())
        self.clear(previous)
        self.clear(current)
