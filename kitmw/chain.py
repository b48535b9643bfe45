"""The hook compiler: policies turned into the cheapest chain a driver can run.

A policy acts *before* the rest of the exchange (``enter``), *after* it is over
(``exit``), or *around* the call of the rest (``around``: Go kit's endpoint
middleware, written as a generator that yields :data:`CALL` where the rest runs).
Drivers never look at policy classes. Each asks :func:`compile_chain` once, for its
protocol and mode (sync or async), and runs the :class:`Chain` it gets::

    enter ─▶ enter ─▶ around ─▶ enter ─▶ call()
                        │  yield CALL (once, again to retry, Call(timeout=…))
    exit  ◀─ exit  ◀────┴──── exit        exits run when the exchange is over

``enter``/``exit`` stay the fast path: a chain without ``around`` is one loop. An
``around`` is written once for every driver: it yields operations (:class:`Call`,
:class:`Sleep`) that the sync or the async runner carries out, the way
:mod:`kitmw.breaker` writes its Redis I/O once.

An early answer (a :class:`~kitmw.errors.Rejection` from ``enter``) is raised as its
:meth:`~kitmw.errors.Rejection.error` (``BreakerOpen``, ``RateLimited``…), which an
``around`` may catch (balancing tries the next instance) and the driver turns into its
protocol's answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Generator, Hashable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ._cache import BoundedCache
from .errors import Rejected, Rejection

if TYPE_CHECKING:
    from .exchange import Exchange, Policy

__all__ = ["CALL", "SERVE", "Call", "Chain", "Hooks", "Pending", "Sleep", "afinish", "compile_chain", "finish"]

#: Returned by ``enter`` to answer the exchange itself *in place of the application*
#: (the ``/metrics`` exposition). Unlike a refusal it does not stop the policies further
#: in: their ``enter`` still runs, so auth and rate limits guard the answer like any path
#: (a refusal of theirs wins), the policies that judge the application (the breaker) are
#: skipped, and the driver sends the serving policy's ``respond`` where the application
#: would have been called.
SERVE = Rejection(200, "serve")


class Call:
    """Yielded by an ``around`` generator: run the rest of the chain, send back its result.

    The rest's exception is thrown into the generator instead. Yielding a ``Call`` again
    retries: the previous result is given up (closed) and the inner policies' exits run
    for it first. ``timeout``: async drivers cancel the rest after that many seconds and
    throw :class:`TimeoutError`, unless the exchange's response is complete by then
    (``ex.end_ns`` set: the application's work after its last body byte is not cut);
    sync drivers cannot pre-empt and make the call as is.
    """

    __slots__ = ("timeout",)

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout

    def __repr__(self) -> str:
        return "CALL" if self.timeout is None else f"Call(timeout={self.timeout!r})"


#: Run the rest of the chain (the common operation).
CALL = Call()


class Sleep:
    """Yielded by an ``around`` generator: wait (``time.sleep`` or ``anyio.sleep``)."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = max(0.0, float(seconds))

    def __repr__(self) -> str:
        return f"Sleep({self.seconds!r})"


Around = Callable[["Exchange"], Generator["Call | Sleep", Any, Any]]
Enter = Callable[["Exchange"], Any]
Exit = Callable[["Exchange"], Any]


class Hooks(NamedTuple):
    """What a policy contributes to one driver's chain (from :meth:`Policy.hooks`).

    ``enter_awaits``/``exit_awaits``: the hook is a coroutine function (only ever true
    for async drivers).
    """

    enter: Enter | None = None
    exit: Exit | None = None
    around: Around | None = None
    enter_awaits: bool = False
    exit_awaits: bool = False


#: An exit to run when the exchange is over: (exit, awaits).
Pending = tuple["Exit", bool]
#: One plain step: (enter, enter awaits, its pending exit, policy, judges the application).
Step = tuple["Enter | None", bool, "Pending | None", "Policy", bool]
Segment = tuple[tuple[Step, ...], "Around | None"]

_MAX_VARIANTS = 32
_log = logging.getLogger("kitmw")


class Chain:
    """Policies compiled for one driver: plain steps, cut where a policy holds the call.

    Drivers call :meth:`run_sync`/:meth:`run_async` with the call of the application
    (or transport, or function), or :meth:`enter` and the call themselves for an
    :attr:`inline` chain, then :func:`finish`/:func:`afinish` with the exits collected,
    once the exchange is over.
    """

    __slots__ = (
        "_protocol",
        "_segments",
        "_variants",
        "counts_request_bytes",
        "exits_await",
        "inline",
        "is_async",
        "keys",
        "policies",
    )

    def __init__(self, policies: Sequence[Policy], protocol: str, *, is_async: bool) -> None:
        self.policies = tuple(policies)
        self._protocol = protocol
        self.is_async = is_async
        keys = []
        for policy in self.policies:
            key = policy.join_key
            try:
                hash(key)
            except TypeError:
                raise TypeError(f"{type(policy).__name__}.join_key: expected a hashable value, got {key!r}") from None
            keys.append(key)
        #: The policies' join keys (nested layers skip what an outer one applied).
        self.keys: frozenset[Hashable] = frozenset(keys)
        self.counts_request_bytes = any(p.counts_request_bytes for p in self.policies)
        segments: list[Segment] = []
        steps: list[Step] = []
        for policy in self.policies:
            hooks = policy.hooks(protocol, is_async)
            if hooks.enter is not None or hooks.exit is not None:
                pending = None if hooks.exit is None else (hooks.exit, bool(hooks.exit_awaits and is_async))
                steps.append(
                    (
                        hooks.enter,
                        bool(hooks.enter_awaits and is_async),
                        pending,
                        policy,
                        bool(policy.judges_application),
                    )
                )
            if hooks.around is not None:
                segments.append((tuple(steps), hooks.around))
                steps = []
        segments.append((tuple(steps), None))
        self._segments = tuple(segments)
        self._variants: BoundedCache[frozenset[Hashable], Chain] = BoundedCache(_MAX_VARIANTS)
        every = [step for seg in segments for step in seg[0]]
        #: No around and no enter that awaits: a driver may call :meth:`enter` and then
        #: the application itself, with no coroutine between them (the common case).
        self.inline = len(segments) == 1 and not any(step[1] for step in every)
        #: Some exit awaits: the driver finishes with :meth:`finish_async`.
        self.exits_await = any(step[2] is not None and step[2][1] for step in every)

    def __bool__(self) -> bool:
        return bool(self.policies)

    def without(self, applied: frozenset[Hashable]) -> Chain:
        """This chain less the policies whose join key is in ``applied`` (an outer layer
        ran them on the same exchange)."""
        skip = applied & self.keys
        if not skip:
            return self
        found = self._variants.get(skip)
        if found is None:
            kept = [p for p in self.policies if p.join_key not in skip]
            found = self._variants.put(skip, Chain(kept, self._protocol, is_async=self.is_async))
        return found

    def enter(self, ex: Exchange, exits: list[Pending]) -> None:
        """Enter every policy of an :attr:`inline` chain (no around, no awaiting enter);
        the driver then makes the call itself. Raises as :meth:`run_sync` does."""
        for enter, _, pending, policy, judges in self._segments[0][0]:
            if judges and ex.serving is not None:
                continue
            if pending is not None:
                exits.append(pending)
            if enter is not None:
                answer = enter(ex)
                if answer is not None:
                    if answer is SERVE:
                        if ex.serving is None:
                            ex.serving = policy
                        continue
                    ex.rejection = answer
                    raise answer.error()

    # -- sync -----------------------------------------------------------------------------

    def run_sync(self, ex: Exchange, call: Callable[[], Any], exits: list[Pending]) -> Any:
        """Enter every policy and make ``call()`` inside the arounds; return its result.

        An early answer raises its :meth:`~kitmw.errors.Rejection.error`. The exits of
        every policy entered are appended to ``exits``; the driver runs them with
        :meth:`finish_sync` once the exchange is over (its last body byte).
        """
        return self._from_sync(0, ex, call, exits)

    def _from_sync(self, at: int, ex: Exchange, call: Callable[[], Any], exits: list[Pending]) -> Any:
        steps, around = self._segments[at]
        _enter(steps, ex, exits)
        if around is None:
            return call()
        return self._around_sync(around, at + 1, ex, call, exits)

    def _around_sync(
        self, around: Around, at: int, ex: Exchange, call: Callable[[], Any], exits: list[Pending]
    ) -> Any:
        gen = around(ex)
        pending: list[Pending] | None = None
        result: Any = None
        try:
            op = gen.send(None)
            while True:
                if type(op) is Sleep:
                    time.sleep(op.seconds)
                    op = gen.send(None)
                    continue
                if not isinstance(op, Call):
                    raise TypeError(f"an around generator yielded {op!r}: expected CALL, Call(...) or Sleep(...)")
                if pending is not None:  # called again: the previous result is given up
                    ex.discard(result)
                    finish(ex, pending)
                    pending = None
                ex.begin_attempt()
                inner: list[Pending] = []
                try:
                    result = self._from_sync(at, ex, call, inner)
                except BaseException as exc:
                    _attempt_failed(ex, exc)
                    finish(ex, inner, exc)
                    op = gen.throw(exc)
                    continue
                pending = inner
                op = gen.send(result)
        except StopIteration as stop:
            value = stop.value
            if isinstance(value, Rejection):
                if pending is not None:
                    ex.discard(result)
                    finish(ex, pending)
                ex.rejection = value
                raise value.error() from None
            if pending is not None:
                exits.extend(pending)  # the exchange's own result: those exits run at its end
            return value
        except BaseException:
            if pending is not None:
                finish(ex, pending, True)
            raise

    finish_sync = staticmethod(lambda ex, exits, primary=None: finish(ex, exits, primary))

    # -- async ----------------------------------------------------------------------------

    async def run_async(self, ex: Exchange, call: Callable[[], Awaitable[Any]], exits: list[Pending]) -> Any:
        """:meth:`run_sync` for async drivers (hooks that await are awaited)."""
        return await self._from_async(0, ex, call, exits)

    async def _from_async(
        self, at: int, ex: Exchange, call: Callable[[], Awaitable[Any]], exits: list[Pending]
    ) -> Any:
        steps, around = self._segments[at]
        for enter, enter_awaits, pending, policy, judges in steps:
            if judges and ex.serving is not None:
                continue
            if pending is not None:
                exits.append(pending)
            if enter is not None:
                answer = (await enter(ex)) if enter_awaits else enter(ex)
                if answer is not None:
                    if answer is SERVE:
                        if ex.serving is None:
                            ex.serving = policy
                        continue
                    ex.rejection = answer
                    raise answer.error()
        if around is None:
            return await call()
        return await self._around_async(around, at + 1, ex, call, exits)

    async def _around_async(
        self, around: Around, at: int, ex: Exchange, call: Callable[[], Awaitable[Any]], exits: list[Pending]
    ) -> Any:
        gen = around(ex)
        pending: list[Pending] | None = None
        result: Any = None
        try:
            op = gen.send(None)
            while True:
                if type(op) is Sleep:
                    await _sleep(op.seconds)
                    op = gen.send(None)
                    continue
                if not isinstance(op, Call):
                    raise TypeError(f"an around generator yielded {op!r}: expected CALL, Call(...) or Sleep(...)")
                if pending is not None:
                    await ex.adiscard(result)
                    await afinish(ex, pending)
                    pending = None
                ex.begin_attempt()
                inner: list[Pending] = []
                try:
                    if op.timeout is None:
                        result = await self._from_async(at, ex, call, inner)
                    else:
                        result = await _within(op.timeout, self._from_async(at, ex, call, inner), ex)
                except BaseException as exc:
                    _attempt_failed(ex, exc)
                    await _shielded(afinish(ex, inner, exc))
                    op = gen.throw(exc)
                    continue
                pending = inner
                op = gen.send(result)
        except StopIteration as stop:
            value = stop.value
            if isinstance(value, Rejection):
                if pending is not None:
                    await ex.adiscard(result)
                    await afinish(ex, pending)
                ex.rejection = value
                raise value.error() from None
            if pending is not None:
                exits.extend(pending)
            return value
        except BaseException:
            if pending is not None:
                await _shielded(afinish(ex, pending, True))
            raise

    @staticmethod
    async def finish_async(ex: Exchange, exits: list[Pending], primary: object = None) -> None:
        await afinish(ex, exits, primary)


def finish(ex: Exchange, exits: list[Pending], primary: object = None) -> None:
    """Run ``exits`` innermost first, every one of them; raise the first error unless
    an error of the exchange itself (``primary``) is on its way (then it is logged)."""
    first: BaseException | None = None
    for exit_, _ in reversed(exits):
        try:
            exit_(ex)
        except BaseException as exc:
            if first is None:
                first = exc
    if first is not None:
        if primary is None:
            raise first
        _log.error("a kitmw policy failed while finishing an exchange", exc_info=first)


async def afinish(ex: Exchange, exits: list[Pending], primary: object = None) -> None:
    """:func:`finish` for async drivers (exits that await are awaited)."""
    first: BaseException | None = None
    for exit_, awaits in reversed(exits):
        try:
            if awaits:
                await exit_(ex)
            else:
                exit_(ex)
        except BaseException as exc:
            if first is None:
                first = exc
    if first is not None:
        if primary is None:
            raise first
        _log.error("a kitmw policy failed while finishing an exchange", exc_info=first)


def _enter(steps: tuple[Step, ...], ex: Exchange, exits: list[Pending]) -> None:
    """The enters of ``steps``, none awaiting (their exits collected in ``exits``)."""
    for enter, _, pending, policy, judges in steps:
        if judges and ex.serving is not None:
            continue
        if pending is not None:
            exits.append(pending)
        if enter is not None:
            answer = enter(ex)
            if answer is not None:
                if answer is SERVE:
                    if ex.serving is None:
                        ex.serving = policy
                    continue
                ex.rejection = answer
                raise answer.error()


def _attempt_failed(ex: Exchange, exc: BaseException) -> None:
    """Record what the inner exits of a failed call judge."""
    if isinstance(exc, Rejected):
        if not ex.status:
            ex.status = exc.rejection.status
    elif ex.error is None:
        ex.error = exc


async def _sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


async def _within(seconds: float, awaitable: Awaitable[Any], ex: Exchange) -> Any:
    """``await awaitable``, cancelled after ``seconds`` unless the exchange's response is
    complete by then (``ex.end_ns`` set): what an application does after its last body
    byte (Starlette's background tasks) is not the answer a deadline bounds."""
    import anyio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # pragma: no cover - another event loop (trio): anyio's deadline
        loop = None
    try:
        if loop is None:  # pragma: no cover
            with anyio.fail_after(seconds):
                return await awaitable
        with anyio.CancelScope() as scope:
            timer = loop.call_later(seconds, _expire, ex, scope)
            try:
                return await awaitable
            finally:
                timer.cancel()
    except BaseException:
        if hasattr(awaitable, "close"):
            awaitable.close()  # never awaited if the deadline had already passed
        raise
    raise TimeoutError  # the scope was cancelled and the call cut short


def _expire(ex: Exchange, scope: Any) -> None:
    if not ex.end_ns:
        scope.cancel()


async def _shielded(awaitable: Awaitable[Any]) -> Any:
    """Await even inside a cancelled scope: a slot or permit must be released."""
    import anyio

    with anyio.CancelScope(shield=True):
        return await awaitable


def compile_chain(policies: Sequence[Policy], protocol: str, *, is_async: bool) -> Chain:
    """The :class:`Chain` of ``policies`` (outermost first) for one driver."""
    return Chain(policies, protocol, is_async=is_async)
