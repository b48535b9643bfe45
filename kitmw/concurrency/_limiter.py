"""Who holds a slot: the limiter, its bounded FIFO of waiters, and the slot (listener)
that frees itself on success, drop or ignore (Netflix's ``SimpleLimiter`` and
``Limiter.Listener``, re-implemented for threads and asyncio alike).

One ``threading.Lock`` guards the count, the limit and the waiters; it is held for a
few lines, never across an await or a wait. A freed slot goes to the first waiter
(FIFO) directly, so a newcomer never overtakes the queue. Async waiters are asyncio
futures woken on their own loop (``call_soon_threadsafe`` from another thread); sync
waiters are locks a thread blocks on. A waiter that gives up (its wait ran out, or it
was cancelled: a deadline, a client gone) leaves the queue, or passes on the slot it
was given in the meantime.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable

from .._types import Clock
from ._algorithms import LimitAlgorithm

__all__ = ["Limiter", "Slot", "Writer", "no_writer"]

_WAITING, _GRANTED, _GONE = 0, 1, 2

Writer = Callable[[float], None]


def no_writer(_: float) -> None:
    """A :data:`Writer` that writes nowhere (no metrics)."""
    return None


class Slot:
    """One exchange's place under the limit, and the listener that gives it back.

    Exactly one of :meth:`success`, :meth:`dropped`, :meth:`ignore` frees it (the
    others are then no-ops): ``success`` and ``dropped`` give the limit algorithm a
    sample, ``ignore`` does not (the exchange says nothing about the limit).
    """

    __slots__ = ("inflight", "limiter", "start")

    def __init__(self, limiter: Limiter | None, start: float, inflight: int) -> None:
        self.limiter = limiter
        self.start = start
        #: Exchanges holding a slot when this one got it (itself included).
        self.inflight = inflight

    def success(self) -> None:
        limiter, self.limiter = self.limiter, None
        if limiter is not None:
            limiter._release(self, False)

    def dropped(self) -> None:
        limiter, self.limiter = self.limiter, None
        if limiter is not None:
            limiter._release(self, True)

    def ignore(self) -> None:
        limiter, self.limiter = self.limiter, None
        if limiter is not None:
            limiter._release(self, None)


class _Waiter:
    __slots__ = ("future", "gate", "loop", "slot", "state")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.state = _WAITING
        self.slot: Slot | None = None
        self.loop = loop
        if loop is None:
            self.gate: threading.Lock | None = threading.Lock()
            self.gate.acquire()
            self.future: asyncio.Future[None] | None = None
        else:
            self.gate = None
            self.future = loop.create_future()

    def wake(self) -> None:
        """Called without the limiter's lock, once ``state`` left ``_WAITING``."""
        if self.gate is not None:
            self.gate.release()
            return
        loop = self.loop
        assert loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            _resolve(self.future)
        else:
            loop.call_soon_threadsafe(_resolve, self.future)


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class Limiter:
    """At most :attr:`limit` slots held at once; the limit is the algorithm's.

    :param algorithm: how the limit moves (:mod:`kitmw.concurrency` algorithms).
    :param max_queue: at most this many waiters (beyond: refused at once).
    :param clock: monotonic seconds, for round trips and waits (injectable for tests).
    :param in_flight: ``amount -> None`` adding to the in-flight gauge.
    :param limit_gauge: ``value -> None`` setting the limit gauge.
    :param rejected: ``amount -> None`` counting refusals.
    :param waited: ``seconds -> None`` observing queue waits.
    """

    __slots__ = (
        "_adaptive",
        "_algorithm",
        "_clock",
        "_in_flight",
        "_limit_gauge",
        "_lock",
        "_rejected",
        "_waited",
        "_waiters",
        "inflight",
        "limit",
        "max_queue",
    )

    def __init__(
        self,
        algorithm: LimitAlgorithm,
        *,
        max_queue: int = 0,
        clock: Clock | None = None,
        in_flight: Writer = no_writer,
        limit_gauge: Writer = no_writer,
        rejected: Writer = no_writer,
        waited: Writer = no_writer,
    ) -> None:
        self._algorithm = algorithm
        self._adaptive = algorithm.adaptive
        self._clock: Clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()
        self.max_queue = max_queue
        #: Slots held now.
        self.inflight = 0
        #: The limit now.
        self.limit = algorithm.limit
        self._in_flight = in_flight
        self._limit_gauge = limit_gauge
        self._rejected = rejected
        self._waited = waited
        limit_gauge(self.limit)

    @property
    def algorithm(self) -> LimitAlgorithm:
        return self._algorithm

    @property
    def waiting(self) -> int:
        """Waiters in the queue now."""
        return len(self._waiters)

    # -- taking a slot ------------------------------------------------------------------

    def try_acquire(self) -> Slot | None:
        """A slot now, or None (counted as a refusal): never waits."""
        with self._lock:
            inflight = self.inflight
            if inflight < self.limit and not self._waiters:
                self.inflight = inflight = inflight + 1
                slot = Slot(self, self._clock(), inflight)
            else:
                slot = None
        if slot is None:
            self._rejected(1)
        else:
            self._in_flight(1)
        return slot

    def _enqueue(self, loop: asyncio.AbstractEventLoop | None, wait: float) -> Slot | _Waiter | None:
        with self._lock:
            inflight = self.inflight
            if inflight < self.limit and not self._waiters:
                self.inflight = inflight = inflight + 1
                return Slot(self, self._clock(), inflight)
            if wait <= 0 or len(self._waiters) >= self.max_queue:
                return None
            waiter = _Waiter(loop)
            self._waiters.append(waiter)
            return waiter

    def acquire(self, wait: float) -> Slot | None:
        """A slot, waiting up to ``wait`` seconds in the queue (blocking this thread);
        None if none came (counted as a refusal)."""
        got = self._enqueue(None, wait)
        if got is None:
            self._rejected(1)
            return None
        if isinstance(got, Slot):
            self._in_flight(1)
            return got
        started = self._clock()
        assert got.gate is not None
        got.gate.acquire(timeout=wait)
        return self._settle(got, started)

    async def aacquire(self, wait: float) -> Slot | None:
        """:meth:`acquire` for asyncio: the task waits, the thread does not.

        Cancelled while waiting (a deadline, a client gone), the waiter leaves the
        queue, or passes on the slot it was given meanwhile, and the cancellation goes on.
        """
        loop = asyncio.get_running_loop()
        got = self._enqueue(loop, wait)
        if got is None:
            self._rejected(1)
            return None
        if isinstance(got, Slot):
            self._in_flight(1)
            return got
        started = self._clock()
        future = got.future
        assert future is not None
        timer = loop.call_later(wait, _resolve, future)
        try:
            await future
        except BaseException:
            slot = self._leave(got)
            if slot is not None:
                self._in_flight(1)
                slot.ignore()
            raise
        finally:
            timer.cancel()
        return self._settle(got, started)

    def _leave(self, waiter: _Waiter) -> Slot | None:
        """The waiter gives up: out of the queue, or the slot it was given meanwhile."""
        with self._lock:
            if waiter.state == _GRANTED:
                waiter.state = _GONE
                return waiter.slot
            if waiter.state == _WAITING:
                waiter.state = _GONE
                self._waiters.remove(waiter)
        return None

    def _settle(self, waiter: _Waiter, started: float) -> Slot | None:
        slot = self._leave(waiter)
        self._waited(self._clock() - started)
        if slot is None:
            self._rejected(1)
            return None
        self._in_flight(1)
        return slot

    # -- giving it back -----------------------------------------------------------------

    def _release(self, slot: Slot, dropped: bool | None) -> None:
        """``dropped``: None to ignore the sample, else whether the exchange was dropped."""
        changed = False
        woken: list[_Waiter] | None = None
        with self._lock:
            if dropped is not None and self._adaptive:
                now = self._clock()
                limit = self._algorithm.update(now - slot.start, slot.inflight, dropped, now)
                if limit != self.limit:
                    self.limit = limit
                    changed = True
            inflight = self.inflight - 1
            waiters = self._waiters
            while waiters and inflight < self.limit:
                waiter = waiters.popleft()
                inflight += 1
                waiter.state = _GRANTED
                waiter.slot = Slot(self, self._clock(), inflight)
                if woken is None:
                    woken = [waiter]
                else:
                    woken.append(waiter)
            self.inflight = inflight
        self._in_flight(-1)
        if changed:
            self._limit_gauge(self.limit)
        if woken is not None:
            for waiter in woken:
                waiter.wake()

    def __repr__(self) -> str:
        return f"Limiter(limit={self.limit}, inflight={self.inflight}, waiting={len(self._waiters)})"
