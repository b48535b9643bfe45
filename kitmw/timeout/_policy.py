"""The timeout policies: a deadline per request, per outgoing call, per function call.

Each policy arms a deadline (``ex.deadline``, never later than one already set: the
deadline of the request a client call is made in) and holds the call of the rest of
the chain with ``Call(timeout=...)``: async drivers cancel the rest at the deadline,
and the policy answers for it (504 ``timeout`` on a server, ``DeadlineExceeded`` on a
call). Sync drivers cannot pre-empt: the server side exposes and propagates the
deadline only, the call sides raise ``DeadlineExceeded`` when the call returns after it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any, ClassVar

from .._paths import PathMatcher
from .._types import Clock
from ..chain import CALL, Call, Hooks, Sleep
from ..errors import ConfigError, DeadlineExceeded, Rejection
from ..exchange import Exchange, Policy, current_deadline, reset_deadline, set_deadline

__all__ = ["ClientTimeoutPolicy", "EndpointTimeoutPolicy", "TimeoutPolicy"]

#: A ``TimeoutError`` this long before the deadline is the application's own, not ours
#: (the event loop may run a timer a clock tick early).
_SLACK = 0.001
#: Label of the scopes beyond ``_MAX_SCOPES`` (upstream origins, endpoint names).
_OTHER = "<other>"
_MAX_SCOPES = 1024

Around = Generator["Call | Sleep", Any, Any]


def _seconds(value: Any, option: str, *, none: bool = False) -> float | None:
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        allowed = " or None" if none else ""
        raise ConfigError(f"{option}: expected a positive number of seconds{allowed}, got {value!r}")
    return float(value)


def _is_timeout(exc: BaseException) -> bool:
    """A timeout by any library: ``TimeoutError`` (asyncio, anyio, sockets, kitmw's
    ``DeadlineExceeded``) or httpx's/httpx2's ``TimeoutException`` (read, connect, pool)."""
    if isinstance(exc, TimeoutError):
        return True
    return any(cls.__name__ == "TimeoutException" for cls in type(exc).__mro__)


class _Labels:
    """Metric label values for an unbounded kind of scope (origins, function names):
    the first ``_MAX_SCOPES`` as themselves, the others as ``<other>``."""

    __slots__ = ("_lock", "_seen")

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, scope: str) -> str:
        if scope in self._seen:
            return scope
        with self._lock:
            if len(self._seen) >= _MAX_SCOPES:
                return _OTHER
            self._seen.add(scope)
        return scope


class _Deadline(Policy):
    """What the three sides share: the budget, the clock, the counter, the answer."""

    __slots__ = ("_clock", "_counter", "_rejection", "_side", "registry", "seconds")

    name: ClassVar[str] = "timeout"
    shared_options: ClassVar[tuple[str, ...]] = ("registry",)
    side: ClassVar[str] = "server"

    def __init__(self, seconds: float | None, *, status: int, registry: Any, clock: Clock | None) -> None:
        if clock is not None and not callable(clock):
            raise ConfigError(f"clock: expected a callable returning monotonic seconds, got {clock!r}")
        self.seconds = seconds
        self.registry = registry
        self._clock: Clock = clock or time.monotonic
        self._rejection = Rejection(status, "timeout")
        self._counter: Any = None  # the timeouts counter, created on the first timeout

    def _scope(self, ex: Exchange) -> str:
        return ex.route_label()

    def _count(self, ex: Exchange) -> None:
        counter = self._counter
        if counter is None:
            from ..metrics import instruments

            counter = self._counter = instruments(self.registry).timeouts
        counter.labels(self.side, self._scope(ex)).inc()

    def _arm(self, ex: Exchange, seconds: float | None) -> float | None:
        """Set ``ex.deadline``: ``seconds`` from now, or earlier if a deadline is already
        set on the exchange or current in the context (the request a call is made in)."""
        deadline = ex.deadline
        if seconds is not None:
            mine = self._clock() + seconds
            if deadline is None or mine < deadline:
                deadline = mine
        outer = current_deadline()
        if outer is not None and (deadline is None or outer < deadline):
            deadline = outer
        ex.deadline = deadline
        ex.deadline_clock = self._clock
        return deadline

    def _expired(self, ex: Exchange) -> Rejection:
        """The deadline passed: counted, recorded on the exchange, answered."""
        self._count(ex)
        ex.error = DeadlineExceeded(rejection=self._rejection)
        return self._rejection

    def _guard(self, ex: Exchange, deadline: float, cut: bool, context: bool) -> Around:
        """Hold the call of the rest under ``deadline``. ``cut``: the driver cancels it at
        the deadline (async); else a result that comes back after it is given up."""
        clock = self._clock
        left = deadline - clock()
        if left <= 0:
            return self._expired(ex)  # already past (a propagated deadline): no call at all
        token = set_deadline(deadline, clock) if context else None
        try:
            result = yield Call(timeout=left)
        except BaseException as exc:
            if isinstance(exc, Exception) and _is_timeout(exc) and clock() >= deadline - _SLACK:
                return self._expired(ex)
            raise
        finally:
            if token is not None:
                reset_deadline(token)
        if not cut and clock() > deadline:
            return self._expired(ex)  # the driver could not cut it: too late all the same
        return result


class TimeoutPolicy(_Deadline):
    """A deadline for every request: 504 ``timeout`` when the application has not
    answered by then (Go kit's ``context`` deadline on a server).

    On ASGI the application is cancelled at the deadline; a response that had started
    is cut there (no end of body: the client sees it incomplete) and the exchange is
    recorded as a timeout (status 504, error ``DeadlineExceeded``). Work the application does after its last body byte
    (Starlette's background tasks) is never cut. The deadline is the context deadline
    of the code the request runs (:func:`kitmw.timeout.remaining`) and caps the
    timeouts of the ``kitmw.httpx`` transports it calls. WSGI cannot pre-empt a
    running application: there the deadline is exposed and propagated only, and a
    request that ends after it is counted.

    :param seconds: the budget of a request, from the moment this policy sees it.
    :param routes: route template (``"/reports/{id}"``) or path prefix (``"/export"``,
        ``"/export/*"``) -> its own budget in seconds, or None for no deadline.
    :param exclude_paths: paths without a deadline (long polls, event streams).
    :param status: the status of the answer (default 504).
    :param registry: prometheus-client registry of the ``kitmw_timeouts_total`` counter.
    :param clock: monotonic seconds (``time.monotonic``), injectable for tests.
    """

    __slots__ = ("_excluded", "_key", "_routes")

    shared_options: ClassVar[tuple[str, ...]] = ("exclude_paths", "registry")

    def __init__(
        self,
        *,
        seconds: float | None = None,
        routes: Mapping[str, float | None] | None = None,
        exclude_paths: Iterable[str] | str | None = (),
        status: int = 504,
        registry: Any = None,
        clock: Clock | None = None,
    ) -> None:
        if routes is not None and not isinstance(routes, Mapping):
            raise ConfigError(f"routes: expected a mapping of route -> seconds or None, got {routes!r}")
        if seconds is None and not routes:
            raise ConfigError("seconds: a number of seconds such as 2.0 is required (or give routes)")
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ConfigError(f"status: expected an HTTP error status (400-599), got {status!r}")
        super().__init__(_seconds(seconds, "seconds", none=True), status=status, registry=registry, clock=clock)
        matcher = PathMatcher(exclude_paths)
        self._excluded = matcher if matcher else None
        self._routes = _RouteTable(routes or {})
        self._key = f"kitmw.timeout.{id(self)}"

    def budget(self, ex: Exchange) -> float | None:
        """The seconds a request gets: its route's, else ``seconds``; None: no deadline."""
        if self._excluded is not None and self._excluded(ex.path):
            return None
        routes = self._routes
        if routes:
            found, value = routes.lookup(ex)
            if found:
                seconds: float | None = value
                return seconds
        return self.seconds

    def hooks(self, protocol: str, is_async: bool) -> Hooks:
        if is_async:
            return Hooks(around=self._around)
        return Hooks(enter=self._enter, exit=self._exit)

    def _around(self, ex: Exchange) -> Around:
        seconds = self.budget(ex)
        if seconds is None:
            return (yield CALL)  # excluded, or a route without a deadline: left alone
        deadline = self._arm(ex, seconds)
        assert deadline is not None
        return (yield from self._guard(ex, deadline, True, True))

    def _expired(self, ex: Exchange) -> Rejection:
        if ex.response_started:
            ex.status = self._rejection.status  # the body is cut: recorded as a timeout
        return super()._expired(ex)

    # -- sync drivers: the deadline is exposed and propagated, never enforced --------------

    def _enter(self, ex: Exchange) -> None:
        seconds = self.budget(ex)
        if seconds is None:
            return
        deadline = self._arm(ex, seconds)
        ex.state[self._key] = set_deadline(deadline, self._clock)  # reset in _exit: the body may stream

    def _exit(self, ex: Exchange) -> None:
        if ex.deadline is None:
            return
        token = ex.state.pop(self._key, None)
        if token is None:
            return
        try:
            reset_deadline(token)
        except ValueError:  # pragma: no cover - finished in another context than it began
            pass
        if self._clock() > ex.deadline:
            self._count(ex)  # too late, though nothing could cut it


class ClientTimeoutPolicy(_Deadline):
    """A total deadline for an outgoing call, its attempts and waits included.

    The call's deadline is ``seconds`` from its start, or the deadline of the request
    it is made in if that comes first (``seconds=None``: that one only). The transport
    caps httpx's own timeouts to what remains; async calls are cancelled at the
    deadline; a call that ends after it (a sync call cannot be cut) raises
    :class:`~kitmw.errors.DeadlineExceeded` (a ``TimeoutError``).

    :param seconds: the budget of one call (None: only the propagated deadline).
    :param registry: prometheus-client registry of the ``kitmw_timeouts_total`` counter.
    :param clock: monotonic seconds, injectable for tests.
    """

    __slots__ = ("_labels",)

    side: ClassVar[str] = "client"

    def __init__(self, *, seconds: float | None = None, registry: Any = None, clock: Clock | None = None) -> None:
        super().__init__(_seconds(seconds, "seconds", none=True), status=504, registry=registry, clock=clock)
        self._labels = _Labels()

    def _scope(self, ex: Exchange) -> str:
        return self._labels(f"{ex.scheme}://{ex.host}")

    def hooks(self, protocol: str, is_async: bool) -> Hooks:
        return Hooks(around=self._cutting if is_async else self._waiting)

    def _cutting(self, ex: Exchange) -> Around:
        return self._call(ex, True)

    def _waiting(self, ex: Exchange) -> Around:
        return self._call(ex, False)

    def _call(self, ex: Exchange, cut: bool) -> Around:
        deadline = self._arm(ex, self.seconds)
        if deadline is None:
            return (yield CALL)
        return (yield from self._guard(ex, deadline, cut, False))


class EndpointTimeoutPolicy(ClientTimeoutPolicy):
    """A deadline for a function call (``kitmw.endpoint(timeout=2.0)``).

    An async function is cancelled at the deadline and the caller gets
    :class:`~kitmw.errors.DeadlineExceeded` (a ``TimeoutError``). A sync function
    cannot be pre-empted: it runs to its end, and if that is after the deadline its
    result is given up and the caller gets ``DeadlineExceeded`` all the same, so a
    caller handles both kinds alike. Inside, the deadline is the context deadline
    (:func:`kitmw.timeout.remaining`, the ``kitmw.httpx`` transports' caps).

    :param seconds: the budget of one call.
    :param registry: prometheus-client registry of the ``kitmw_timeouts_total`` counter.
    :param clock: monotonic seconds, injectable for tests.
    """

    __slots__ = ()

    side: ClassVar[str] = "endpoint"

    def __init__(self, *, seconds: float, registry: Any = None, clock: Clock | None = None) -> None:
        super().__init__(seconds=_seconds(seconds, "seconds"), registry=registry, clock=clock)

    def _scope(self, ex: Exchange) -> str:
        return self._labels(ex.route or ex.path)

    def _call(self, ex: Exchange, cut: bool) -> Around:
        deadline = self._arm(ex, self.seconds)
        assert deadline is not None  # seconds is required here
        return (yield from self._guard(ex, deadline, cut, True))


class _RouteTable:
    """Route template or path prefix -> value: the exact template first, then the
    longest prefix. A plain path (no ``{``/``<``) also covers what is below it."""

    __slots__ = ("_prefixes", "_templates")

    def __init__(self, routes: Mapping[str, Any], check: Callable[[Any, str], Any] | None = None) -> None:
        check = check or (lambda value, option: _seconds(value, option, none=True))
        templates: dict[str, Any] = {}
        prefixes: list[tuple[str, Any]] = []
        for route, raw in routes.items():
            if not isinstance(route, str) or not route.startswith("/"):
                raise ConfigError(
                    f"routes: each key must be a route template or path starting with '/', got {route!r}"
                )
            value = check(raw, f"routes[{route!r}]")
            if route.endswith("*"):
                prefixes.append((route.rstrip("*").rstrip("/"), value))
                continue
            templates[route] = value
            if "{" not in route and "<" not in route and route.rstrip("/"):
                prefixes.append((route.rstrip("/"), value))
        prefixes.sort(key=lambda p: len(p[0]), reverse=True)
        self._templates = templates
        self._prefixes = tuple(prefixes)

    def __bool__(self) -> bool:
        return bool(self._templates or self._prefixes)

    def lookup(self, ex: Exchange) -> tuple[bool, Any]:
        """(found, value) for the exchange's route or path."""
        templates = self._templates
        if templates:
            route = ex.route
            if route is not None and route in templates:
                return True, templates[route]
        path = ex.path
        for prefix, value in self._prefixes:
            if not prefix or path == prefix or path.startswith(prefix + "/"):
                return True, value
        return False, None
