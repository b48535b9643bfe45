"""The protocol-neutral breaker: pybreaker's state machine driven as acquire / release.

pybreaker's ``CircuitBreaker.call`` holds its lock for the whole guarded call (threads
are serialised, pybreaker #55) and cannot await. Here the guarded call is not a function
but a *permit*: :meth:`Breaker.acquire` decides, :meth:`Breaker.release` records the
verdict. Both run pybreaker's own state objects and storage under pybreaker's lock,
held only for in-memory bookkeeping: never across an ``await``, never across the call.

With Redis (``storage="redis://..."``) the same decisions run against a cached view of
the shared state; the I/O around them is written once as generators yielding Redis
operations (the ``httpx`` auth-flow pattern) and driven by a sync or an async runner.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from typing import Any

import pybreaker

from .._types import Clock
from ..errors import BreakerOpen, ConfigError
from ._machine import (
    ADMITTED,
    CLOSED,
    HALF_OPEN,
    OPEN,
    Machine,
    Observer,
    Permit,
    View,
    breaker_instruments,
    check_int,
    check_seconds,
    check_storage,
    exclusion,
    guarded_call,
    log,
)
from ._shared import SharedState, parse_snapshot

_Op = tuple[Any, ...]
_Flow = Generator[_Op, Any, Any]

__all__ = ["Breaker", "redis_clients", "use_redis_clients"]

_STORAGE_ERRORS: tuple[type[BaseException], ...] = (OSError,)
try:
    import redis.exceptions as _redis_exceptions

    _STORAGE_ERRORS = (_redis_exceptions.RedisError, OSError)
except ImportError:  # pragma: no cover
    pass


class Breaker:
    """A named circuit breaker: pybreaker's state machine, async-safe, optionally shared.

    ``acquire()`` returns a :class:`Permit` or raises :class:`~kitmw.errors.BreakerOpen`
    (open, or half-open with every trial slot taken); ``release(permit, failed=...)``
    records the verdict (``failed=None``: cancelled or unknown, frees the slot, counts
    nothing). ``aacquire``/``arelease`` are the asyncio twins: identical without Redis,
    with Redis they use an async client and never block the loop.

    :param name: identifies the breaker (logs, metric labels, the Redis key).
    :param fail_max: consecutive failures that open the breaker.
    :param reset_timeout: seconds the breaker stays open before a trial is let through.
    :param success_threshold: successful trials that close a half-open breaker.
    :param half_open_max: trials allowed at once while half-open (across processes with Redis).
    :param exclude: exception types (or predicates) that are not failures (pybreaker's).
    :param listeners: ``pybreaker.CircuitBreakerListener`` objects.
    :param storage: ``None`` (process-local) or a Redis URL shared by every process.
    :param clock: seconds, injectable for tests; default ``time.monotonic`` locally and
        ``time.time`` with Redis (the open timestamp is compared across hosts).
    :param registry: prometheus-client registry for the breaker instruments.
    :param refresh_interval: at most this old (seconds) the cached shared state may be.
    :param storage_timeout: Redis socket timeout (seconds).
    :param storage_retry: while Redis is down, try it again at most this often (seconds).
    """

    __slots__ = (
        "_before",
        "_busy_retry",
        "_clock",
        "_down",
        "_half_open_max",
        "_lease_ms",
        "_loaded_at",
        "_lock",
        "_machine",
        "_notify_success",
        "_observer",
        "_reconcile",
        "_refresh_interval",
        "_refreshing",
        "_rejections",
        "_reset_timeout",
        "_retry_at",
        "_shared",
        "_storage_errors",
        "_storage_retry",
        "_tasks",
        "_trials",
        "_view",
        "name",
    )

    def __init__(
        self,
        *,
        name: str,
        fail_max: int = 5,
        reset_timeout: float = 30.0,
        success_threshold: int = 1,
        half_open_max: int = 1,
        exclude: Sequence[type[BaseException] | Callable[[BaseException], bool]] = (),
        listeners: Sequence[pybreaker.CircuitBreakerListener] = (),
        storage: str | None = None,
        clock: Clock | None = None,
        registry: Any = None,
        refresh_interval: float = 0.1,
        storage_timeout: float = 0.5,
        storage_retry: float = 1.0,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"name: expected a non-empty string, got {name!r}")
        fail_max = check_int("fail_max", fail_max)
        self._reset_timeout = check_seconds("reset_timeout", reset_timeout)
        success_threshold = check_int("success_threshold", success_threshold)
        self._half_open_max = check_int("half_open_max", half_open_max)
        for item in exclude:
            if not (isinstance(item, type) and issubclass(item, BaseException)) and not callable(item):
                raise ConfigError(f"exclude: expected exception types or predicates, got {item!r}")
        for listener in listeners:
            if not isinstance(listener, pybreaker.CircuitBreakerListener):
                raise ConfigError(
                    f"listeners: expected pybreaker.CircuitBreakerListener objects, got {listener!r}"
                )
        storage = check_storage(storage)
        if clock is not None and not callable(clock):
            raise ConfigError(f"clock: expected a callable returning seconds, got {clock!r}")
        self._refresh_interval = check_seconds("refresh_interval", refresh_interval, zero=True)
        storage_timeout = check_seconds("storage_timeout", storage_timeout)
        self._storage_retry = check_seconds("storage_retry", storage_retry, zero=True)

        self.name = name
        self._clock: Clock = clock or (time.time if storage else time.monotonic)
        inst = breaker_instruments(registry)
        self._rejections = inst.breaker_rejections.labels(name) if inst is not None else None
        self._storage_errors = inst.storage_errors.labels("breaker") if inst is not None else None
        self._observer = Observer(name, inst)
        self._view = View()
        self._machine = Machine(
            clock=self._clock,
            view=self._view,
            fail_max=fail_max,
            reset_timeout=self._reset_timeout,
            success_threshold=success_threshold,
            exclude=[exclusion(item) for item in exclude],
            listeners=[self._observer, *listeners],
            name=name,
        )
        self._lock = self._machine.lock
        self._before = tuple(listeners)
        self._notify_success = bool(listeners)
        self._trials = 0
        # Seconds to wait when every trial slot is taken: the trial should answer soon.
        self._busy_retry = min(1.0, self._reset_timeout)
        self._shared = (
            SharedState(storage, name, slots=self._half_open_max, timeout=storage_timeout)
            if storage
            else None
        )
        self._lease_ms = max(1000, int(self._reset_timeout * 1000))
        self._loaded_at: float | None = None
        self._refreshing = False
        self._down = False
        self._reconcile = False
        self._retry_at = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"Breaker(name={self.name!r}, state={self.state!r})"

    # -- read-only view ----------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"`` as this process sees it."""
        return self._view.state

    @property
    def retry_after(self) -> float:
        """Seconds until a trial call is allowed (0 unless open)."""
        if self._view.state != OPEN:
            return 0.0
        return max(0.0, self._view.opened_ts + self._reset_timeout - self._clock())

    @property
    def fail_counter(self) -> int:
        return self._view.counter

    @property
    def pybreaker(self) -> pybreaker.CircuitBreaker:
        """The underlying ``pybreaker.CircuitBreaker`` (listeners receive it as ``cb``)."""
        return self._machine

    @property
    def shared(self) -> bool:
        return self._shared is not None

    # -- sync side -------------------------------------------------------------------------

    def acquire(self) -> Permit:
        """Leave to call, or :class:`BreakerOpen`. Never blocks without Redis."""
        if self._shared is None:
            if self._view.current == CLOSED and not self._before:
                return ADMITTED
            permit = self._decide_local()
        else:
            refresh = self._stale()
            if not refresh and self._view.current == CLOSED and not self._before:
                return ADMITTED  # the cached shared view is fresh enough: no I/O
            permit = self._drive(self._acquire_flow(refresh))
        self._call_before()
        return permit

    def release(self, permit: Permit, *, failed: bool | None, error: BaseException | None = None) -> None:
        """Record the verdict of the call ``permit`` allowed (``None``: cancelled, not counted)."""
        if self._shared is None or self._nothing_to_record(permit, failed):
            self._release_local(permit, failed, error)
            return
        try:
            self._drive(self._release_flow(permit, failed, error))
        finally:
            lease = permit.lease
            if lease is not None and not self._down:
                permit.lease = None
                self._run(("unlease", lease))

    # -- async side ------------------------------------------------------------------------

    async def aacquire(self) -> Permit:
        """Async twin of :meth:`acquire`: no blocking I/O, no lock held across an await."""
        if self._shared is None:
            if self._view.current == CLOSED and not self._before:
                return ADMITTED
            permit = self._decide_local()
        else:
            refresh = self._stale()
            if not refresh and self._view.current == CLOSED and not self._before:
                return ADMITTED
            permit = await self._adrive(self._acquire_flow(refresh))
        self._call_before()
        return permit

    async def arelease(
        self, permit: Permit, *, failed: bool | None, error: BaseException | None = None
    ) -> None:
        """Async twin of :meth:`release`; cancellation-safe (the slot is freed first)."""
        if self._shared is None or self._nothing_to_record(permit, failed):
            self._release_local(permit, failed, error)
            return
        try:
            await self._adrive(self._release_flow(permit, failed, error))
        finally:
            lease = permit.lease
            if lease is not None and not self._down:
                permit.lease = None
                try:
                    await self._arun(("unlease", lease))
                except BaseException:
                    self._unlease_later(lease)  # cancelled: give it back in a task of its own
                    raise

    def close(self) -> None:
        """Close the sync Redis client (if any)."""
        if self._shared is not None:
            self._shared.close()

    async def aclose(self) -> None:
        """Close the Redis clients this loop and the sync side opened (if any)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._shared is not None:
            await self._shared.aclose()

    # -- decisions (in memory, under the lock) -----------------------------------------------

    def _reject(self, wait: float) -> BreakerOpen:
        if self._rejections is not None:
            self._rejections.inc()
        return BreakerOpen(f"circuit breaker {self.name!r} is open", retry_after=wait, name=self.name)

    def _call_before(self) -> None:
        """pybreaker tells ``before_call`` only for calls it lets through; so do we."""
        for listener in self._before:
            listener.before_call(self._machine, guarded_call)

    def _decide_local(self) -> Permit:
        with self._lock:
            state = self._view.current
            if state == CLOSED:
                return ADMITTED
            if state == OPEN:
                wait = self._view.opened_ts + self._reset_timeout - self._clock()
                if wait > 0:
                    raise self._reject(wait)
            if self._trials >= self._half_open_max:
                raise self._reject(self._busy_retry)
            self._trials += 1
            if state == OPEN:
                self._machine.half_open()
            return Permit(True)

    def _nothing_to_record(self, permit: Permit, failed: bool | None) -> bool:
        """A success while closed with no failure to reset and nobody to tell (the usual case)."""
        view = self._view
        return (
            failed is False
            and not permit.trial
            and view.fails == 0
            and view.current == CLOSED
            and not self._notify_success
        )

    def _release_local(self, permit: Permit, failed: bool | None, error: BaseException | None) -> None:
        if self._nothing_to_record(permit, failed):
            return
        with self._lock:
            if permit.trial:
                if permit.released:
                    return
                permit.released = True
                self._trials -= 1
            if failed is None or self._view.current != (HALF_OPEN if permit.trial else CLOSED):
                return  # cancelled, or the breaker moved on while the call ran
            self._machine.record(failed, error)

    def _adopt(self, values: Sequence[Any]) -> None:
        """Take the shared snapshot as this process's state (listeners see any transition)."""
        snap = parse_snapshot(values)
        view = self._view
        if snap.state != view.current:
            view.current = snap.state
            self._machine.state  # noqa: B018 - pybreaker notices the storage changed and notifies
        view.fails = snap.fails
        view.successes = snap.successes
        if snap.state != CLOSED:
            view.opened_ts = snap.opened_at
        self._loaded_at = time.monotonic()

    # -- flows (decisions around the Redis I/O, written once for both sides) ------------------

    def _stale(self) -> bool:
        now = time.monotonic()
        loaded = self._loaded_at
        if loaded is not None and not self._down and now - loaded < self._refresh_interval:
            return False  # the common case, without the lock
        with self._lock:
            if self._down:
                if now < self._retry_at:
                    return False
                self._retry_at = now + self._storage_retry
                return True
            loaded = self._loaded_at
            if loaded is None:
                return True  # first use: never decide on a view we have not loaded
            if self._refreshing or now - loaded < self._refresh_interval:
                return False
            self._refreshing = True
            return True

    def _acquire_flow(self, refresh: bool) -> _Flow:
        view = self._view
        if refresh:
            try:
                reply = yield ("refresh",)
            finally:
                self._refreshing = False
            if reply is not None:
                with self._lock:
                    push = self._reconcile and view.current == OPEN
                    self._reconcile = False
                    if not push:
                        self._adopt(reply)
                if push:  # opened while Redis was down: tell the fleet
                    reply = yield ("open", view.opened_ts)
                    if reply is not None:
                        with self._lock:
                            self._adopt(reply)
        with self._lock:
            state = view.current
            if state == CLOSED:
                return ADMITTED
            if state == OPEN:
                wait = view.opened_ts + self._reset_timeout - self._clock()
                if wait > 0:
                    raise self._reject(wait)
            if self._trials >= self._half_open_max:
                raise self._reject(self._busy_retry)
            self._trials += 1
            if self._down:
                if state == OPEN:
                    self._machine.half_open()
                return Permit(True)
        granted = False
        try:
            token = uuid.uuid4().hex
            reply = yield ("lease", token, self._lease_ms, self._clock(), self._reset_timeout)
            with self._lock:
                if reply is None:  # Redis failed just now: decide locally
                    if view.current == OPEN:
                        self._machine.half_open()
                    granted = True
                    return Permit(True)
                code = int(reply[0])
                self._adopt(reply[1:])
                if code > 0:
                    if view.current == OPEN:
                        self._machine.half_open()
                    granted = True
                    return Permit(True, token)
                if code < 0:
                    return ADMITTED  # closed meanwhile by another process
                wait = view.opened_ts + self._reset_timeout - self._clock() if view.current == OPEN else 0.0
                raise self._reject(wait if wait > 0 else self._busy_retry)
        finally:
            if not granted:
                with self._lock:
                    self._trials -= 1

    def _release_flow(self, permit: Permit, failed: bool | None, error: BaseException | None) -> _Flow:
        view = self._view
        trial = permit.trial
        expected = HALF_OPEN if trial else CLOSED
        with self._lock:
            if trial:
                if permit.released:
                    return
                permit.released = True
                self._trials -= 1
            if failed is None or view.current != expected:
                return
            counts = failed and (error is None or self._machine.is_system_error(error))
            pre: _Op | None = None
            if not self._down:
                if counts and not trial:
                    pre = ("fail",)
                elif not counts and trial:
                    pre = ("trial_success",)
        if pre is not None:
            reply = yield pre
            if reply is not None:
                with self._lock:
                    self._adopt(reply)
                    # pybreaker's state object is about to count this call itself.
                    if pre[0] == "fail":
                        view.fails = max(view.fails - 1, 0)
                    else:
                        view.successes = max(view.successes - 1, 0)
        with self._lock:
            if view.current != expected:
                return
            fails_before = view.fails
            self._machine.record(bool(failed), error)
            after = view.current
        if self._down:
            return
        post: _Op | None = None
        if after != expected:
            post = ("open", view.opened_ts) if after == OPEN else ("close",) if after == CLOSED else None
        elif after == CLOSED and fails_before > 0 and view.fails == 0:
            post = ("reset",)
        if post is not None:
            reply = yield post
            if reply is not None:
                with self._lock:
                    self._adopt(reply)

    # -- runners ---------------------------------------------------------------------------

    def _storage_failed(self, exc: BaseException) -> None:
        if self._storage_errors is not None:
            self._storage_errors.inc()
        with self._lock:
            self._retry_at = time.monotonic() + self._storage_retry
            if self._down:
                return
            self._down = True
        log.error(
            "circuit breaker %s: Redis unreachable (%s), using process-local state",
            self.name,
            exc,
            extra={"breaker": self.name},
        )

    def _storage_ok(self) -> None:
        with self._lock:
            if not self._down:
                return
            self._down = False
            self._reconcile = True
        log.info(
            "circuit breaker %s: Redis reachable again, sharing state",
            self.name,
            extra={"breaker": self.name},
        )

    def _run(self, op: _Op) -> Any:
        assert self._shared is not None
        try:
            reply = self._shared.run(op)
        except _STORAGE_ERRORS as exc:
            self._storage_failed(exc)
            return None
        if self._down:
            self._storage_ok()
        return reply

    async def _arun(self, op: _Op) -> Any:
        assert self._shared is not None
        try:
            reply = await self._shared.arun(op)
        except _STORAGE_ERRORS as exc:
            self._storage_failed(exc)
            return None
        if self._down:
            self._storage_ok()
        return reply

    def _drive(self, flow: _Flow) -> Any:
        try:
            op = next(flow)
            while True:
                op = flow.send(self._run(op))
        except StopIteration as stop:
            return stop.value

    async def _adrive(self, flow: _Flow) -> Any:
        try:
            op = next(flow)
            while True:
                try:
                    reply = await self._arun(op)
                except BaseException:
                    flow.close()  # its finally blocks free the trial slot
                    if op[0] == "lease":
                        self._unlease_later(op[1])  # the lease may have been taken
                    raise
                op = flow.send(reply)
        except StopIteration as stop:
            return stop.value

    def _unlease_later(self, token: str) -> None:
        """Give a lease back in a task of its own, so a cancelled request still frees it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - called from the async side only
            return
        task = loop.create_task(self._arun(("unlease", token)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def redis_clients(breaker: Breaker) -> Any:
    """The Redis clients of a shared ``breaker`` (None for a process-local one), for
    :func:`use_redis_clients`: the breakers one policy makes share one pool."""
    shared = breaker._shared
    return None if shared is None else shared.clients


def use_redis_clients(breaker: Breaker, clients: Any) -> None:
    """Make a shared ``breaker`` use ``clients`` (from :func:`redis_clients`)."""
    shared = breaker._shared
    if shared is not None and clients is not None:
        shared.clients = clients
