"""The concurrency policies: a limiter per scope (the service, a route, an upstream
origin, a function), a slot taken in ``enter`` and given back in ``exit``.

``exit`` runs when the exchange is over on every driver (the last body byte, the body
closed, an error, a client gone, a cancellation), so a slot is never held past its
exchange. ``exit`` also tells the limit algorithm what the exchange says about the
limit: a sample (success), a drop (a timeout, an overloaded answer), or nothing (the
client went away, an error before any real work, another policy answered).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from .._paths import PathMatcher
from .._types import Clock
from ..errors import ConfigError, Rejection
from ..exchange import Exchange, Policy
from ._algorithms import FixedLimit, LimitAlgorithm, algorithm
from ._limiter import Limiter, Slot, Writer, no_writer

__all__ = ["ALL", "OTHER", "ClientConcurrencyPolicy", "ConcurrencyPolicy", "EndpointConcurrencyPolicy"]

#: Scope label of a service-wide limit.
ALL = "<all>"
#: Scope label shared by the scopes beyond the bound (``max_routes``, ``max_origins``).
OTHER = "<other>"
#: nginx's status for a client that went away (``kitmw.asgi.CLIENT_CLOSED``).
_CLIENT_CLOSED = 499


def _is_timeout(exc: BaseException) -> bool:
    """``TimeoutError`` (asyncio, anyio, kitmw's ``DeadlineExceeded``) or httpx's and
    httpx2's ``TimeoutException``."""
    if isinstance(exc, TimeoutError):
        return True
    return any(cls.__name__ == "TimeoutException" for cls in type(exc).__mro__)


def _seconds(value: Any, option: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{option}: expected a number of seconds >= 0, got {value!r}")
    return float(value)


def _count(value: Any, option: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{option}: expected an integer >= {minimum}, got {value!r}")
    return value


class _Bulkhead(Policy):
    """What the three sides share: the algorithm, the waiting rules, the limiters by scope."""

    __slots__ = (
        "_algorithm",
        "_by_scope",
        "_clock",
        "_key",
        "_lock",
        "_max_scopes",
        "_named",
        "_other",
        "_rejection",
        "max_queue",
        "max_wait",
        "registry",
    )

    name: ClassVar[str] = "concurrency"
    shared_options: ClassVar[tuple[str, ...]] = ("registry",)
    side: ClassVar[str] = "server"

    def __init__(
        self,
        *,
        limit: int | None,
        adaptive: Any,
        max_wait: float,
        max_queue: int | None,
        retry_after: int,
        max_scopes: int,
        registry: Any,
        clock: Clock | None,
        required: bool = True,
    ) -> None:
        if clock is not None and not callable(clock):
            raise ConfigError(f"clock: expected a callable returning monotonic seconds, got {clock!r}")
        self._algorithm: LimitAlgorithm | None = (
            algorithm(adaptive, limit) if required or limit is not None or adaptive else None
        )
        self.max_wait = _seconds(max_wait, "max_wait")
        if max_queue is None:
            max_queue = 0 if self.max_wait == 0 else 1000
        self.max_queue = _count(max_queue, "max_queue", 0)
        retry_after = _count(retry_after, "retry_after", 1)
        self._rejection = Rejection(503, "concurrency_limited", headers=(("Retry-After", str(retry_after)),))
        self._max_scopes = _count(max_scopes, "max_" + ("routes" if self.side == "server" else "scopes"), 1)
        self.registry = registry
        self._clock = clock
        self._lock = threading.Lock()
        self._by_scope: dict[str, Limiter] = {}  # made on first use, up to the bound
        self._named: dict[str, Limiter] = {}  # made at construction (the service, routes)
        self._other: Limiter | None = None
        self._key = f"kitmw.concurrency.{id(self)}"

    # -- limiters -------------------------------------------------------------------------

    def _make(self, scope: str, template: LimitAlgorithm | None = None) -> Limiter:
        """A limiter for ``scope`` with a fresh algorithm and its metric children."""
        from ..metrics import instruments
        from ..metrics._instruments import add_writer, histogram_writer

        template = template or self._algorithm
        assert template is not None
        inst = instruments(self.registry)
        labels = (self.side, scope)
        waited: Writer = no_writer
        if self.max_wait > 0:
            waited = histogram_writer(inst.concurrency_queue_wait.labels(*labels))
        return Limiter(
            template.fresh(),
            max_queue=self.max_queue,
            clock=self._clock,
            in_flight=add_writer(inst.concurrency_in_flight.labels(*labels)),
            limit_gauge=inst.concurrency_limit.labels(*labels).set,
            rejected=add_writer(inst.concurrency_rejections.labels(*labels)),
            waited=waited,
        )

    def limiter_for(self, scope: str) -> Limiter:
        """The limiter of ``scope`` (made on first use; beyond the bound, the shared one)."""
        found = self._by_scope.get(scope)
        if found is not None:
            return found
        with self._lock:
            found = self._by_scope.get(scope)
            if found is not None:
                return found
            if len(self._by_scope) >= self._max_scopes:
                if self._other is None:
                    self._other = self._make(OTHER)
                return self._other
            found = self._by_scope[scope] = self._make(scope)
            return found

    @property
    def limiters(self) -> dict[str, Limiter]:
        """The limiters made so far, by scope label."""
        found = {**self._named, **self._by_scope}
        if self._other is not None:
            found[OTHER] = self._other
        return found

    def _select(self, ex: Exchange) -> Limiter | None:
        raise NotImplementedError

    # -- per exchange -----------------------------------------------------------------------

    @property
    def enter_awaits(self) -> bool:
        """Waiting for a slot is awaited on the async drivers; without a wait, ``enter``
        decides at once and no coroutine is made."""
        return self.max_wait > 0

    def _wait(self, ex: Exchange) -> float:
        """``max_wait``, never past the exchange's deadline: a sync driver cannot cut a
        wait, so it must not start one that outlasts the request. (Async drivers wait
        ``max_wait``: a deadline cancels the wait, and the answer is the timeout's.)"""
        wait = self.max_wait
        if wait and ex.deadline is not None:
            wait = min(wait, ex.remaining or 0.0)
        return wait

    def enter(self, ex: Exchange) -> Rejection | None:
        limiter = self._select(ex)
        if limiter is None:
            return None
        wait = self._wait(ex)
        slot = limiter.try_acquire() if wait == 0 else limiter.acquire(wait)
        if slot is None:
            return self._rejection
        ex.state[self._key] = slot
        return None

    async def aenter(self, ex: Exchange) -> Rejection | None:
        limiter = self._select(ex)
        if limiter is None:
            return None
        slot = await limiter.aacquire(self.max_wait)
        if slot is None:
            return self._rejection
        ex.state[self._key] = slot
        return None

    def exit(self, ex: Exchange) -> None:
        slot: Slot | None = ex.state.pop(self._key, None)
        if slot is None:
            return  # not limited, or refused
        verdict = self._verdict(ex)
        if verdict is None:
            slot.ignore()
        elif verdict:
            slot.dropped()
        else:
            slot.success()

    def _verdict(self, ex: Exchange) -> bool | None:
        """True: dropped (timed out, overloaded); False: a sample; None: nothing learnt."""
        if ex.rejection is not None:
            return None  # another policy answered: the application did no work
        error = ex.error
        if error is not None:
            if isinstance(error, Exception) and _is_timeout(error):
                return True
            return None  # an error (or a cancellation) says nothing about latency
        return False


class ConcurrencyPolicy(_Bulkhead):
    """At most ``limit`` requests in flight; the next gets 503 ``concurrency_limited``
    with ``Retry-After``, or waits up to ``max_wait`` seconds for a slot.

    A slot is held from the moment the request passes this policy to its last body
    byte (or its error, cancellation, or a client gone), and the limit is the whole
    service's by default. Exchanges another policy answers (the ``/metrics``
    exposition included) hold no slot. With ``adaptive``, the limit moves: it lowers
    when latency rises (the requests queue somewhere) or requests time out or get
    503s, and rises back while latency holds.

    :param limit: requests in flight at once (with ``adaptive``: the initial limit);
        None when only ``routes`` are limited.
    :param adaptive: None (a static limit), ``"gradient"`` (latency based, Netflix's
        Gradient2 over 1 s windows), ``"aimd"`` (loss based), or an algorithm object
        (:class:`~kitmw.concurrency.GradientLimit`, :class:`~kitmw.concurrency.AIMDLimit`,
        :class:`~kitmw.concurrency.WindowedLimit`) as the configuration of each limiter.
    :param per_route: one limit per route template instead of one for the service.
    :param routes: route template or path prefix -> its own limit (int), or None for
        no limit; other requests fall under ``limit``.
    :param max_wait: seconds a request may wait for a slot (0: refused at once).
    :param max_queue: at most this many requests wait at once (default 1000 when
        ``max_wait`` is set); beyond that they are refused at once.
    :param retry_after: seconds in ``Retry-After`` (default 1).
    :param exclude_paths: paths never limited (health checks).
    :param max_routes: at most this many per-route limits; further routes share ``<other>``.
    :param registry: prometheus-client registry of the concurrency metrics.
    :param clock: monotonic seconds (round trips, waits), injectable for tests.
    """

    __slots__ = ("_excluded", "_per_route", "_routes", "_service", "_table")

    shared_options: ClassVar[tuple[str, ...]] = ("exclude_paths", "registry")
    #: The /metrics exposition (answered in place of the application) takes no slot: a
    #: scrape must be served, and counted nowhere, while the service sheds load.
    judges_application: ClassVar[bool] = True

    def __init__(
        self,
        *,
        limit: int | None = None,
        adaptive: Any = None,
        per_route: bool = False,
        routes: Mapping[str, int | None] | None = None,
        max_wait: float = 0.0,
        max_queue: int | None = None,
        retry_after: int = 1,
        exclude_paths: Iterable[str] | str | None = (),
        max_routes: int = 1024,
        registry: Any = None,
        clock: Clock | None = None,
    ) -> None:
        if routes is not None and not isinstance(routes, Mapping):
            raise ConfigError(f"routes: expected a mapping of route -> limit or None, got {routes!r}")
        if not isinstance(per_route, bool):
            raise ConfigError(f"per_route: expected True or False, got {per_route!r}")
        if limit is None and adaptive in (None, False) and not routes:
            raise ConfigError("limit: the number of requests allowed in flight is required, such as 64")
        super().__init__(
            limit=limit,
            adaptive=adaptive,
            max_wait=max_wait,
            max_queue=max_queue,
            retry_after=retry_after,
            max_scopes=max_routes,
            registry=registry,
            clock=clock,
            required=not routes,
        )
        matcher = PathMatcher(exclude_paths)
        self._excluded = matcher if matcher else None
        # Routes not in `routes` are limited only by `limit` (or, without routes, always).
        others = self._algorithm is not None and (limit is not None or not routes)
        self._per_route = per_route and others
        self._table = _Routes(routes or {}, self)
        self._routes = bool(self._table)
        self._service = self._make(ALL) if others and not per_route else None
        if self._service is not None:
            self._named[ALL] = self._service

    def _select(self, ex: Exchange) -> Limiter | None:
        if self._excluded is not None and self._excluded(ex.path):
            return None
        if self._routes:
            found, limiter = self._table.lookup(ex)
            if found:
                return limiter
        service = self._service
        if service is not None:
            return service
        if self._per_route:
            return self.limiter_for(ex.route_label())
        return None

    def _verdict(self, ex: Exchange) -> bool | None:
        if ex.status == _CLIENT_CLOSED:
            return None  # the client went away: its round trip says nothing
        verdict = super()._verdict(ex)
        if verdict is False and ex.status in (503, 504):
            return True  # the application is overloaded (or its own deadline passed)
        if verdict is False and ex.status >= 500:
            return None
        return verdict


class ClientConcurrencyPolicy(_Bulkhead):
    """At most ``limit`` calls in flight per upstream origin (scheme, host, port); the
    next raises ``ConcurrencyLimited`` or waits up to ``max_wait`` seconds.

    A slot is held until the response is closed. With ``adaptive``, timeouts and 429,
    503 or 504 answers (the upstream is overloaded) lower the limit; a connection error
    says nothing about it.

    :param limit: calls in flight at once per origin (with ``adaptive``: the initial limit).
    :param adaptive: None, ``"gradient"``, ``"aimd"`` or an algorithm object (see
        :class:`ConcurrencyPolicy`).
    :param max_wait: seconds a call may wait for a slot (0: refused at once).
    :param max_queue: at most this many calls wait at once per origin.
    :param max_origins: at most this many per-origin limits; further origins share ``<other>``.
    :param registry: prometheus-client registry of the concurrency metrics.
    :param clock: monotonic seconds, injectable for tests.
    """

    __slots__ = ()

    side: ClassVar[str] = "client"

    def __init__(
        self,
        *,
        limit: int | None = None,
        adaptive: Any = None,
        max_wait: float = 0.0,
        max_queue: int | None = None,
        max_origins: int = 1024,
        registry: Any = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            limit=limit,
            adaptive=adaptive,
            max_wait=max_wait,
            max_queue=max_queue,
            retry_after=1,
            max_scopes=max_origins,
            registry=registry,
            clock=clock,
        )

    def _select(self, ex: Exchange) -> Limiter | None:
        return self.limiter_for(f"{ex.scheme}://{ex.host}")

    def _verdict(self, ex: Exchange) -> bool | None:
        verdict = super()._verdict(ex)
        if verdict is False and ex.status in (429, 503, 504):
            return True
        return verdict


class EndpointConcurrencyPolicy(_Bulkhead):
    """At most ``limit`` calls of a function in flight (a bulkhead); the next raises
    :class:`~kitmw.errors.ConcurrencyLimited` or waits up to ``max_wait`` seconds.

    Async callers wait on the event loop, sync callers block their thread. A call
    that raises ``TimeoutError`` (its deadline passed) is a drop for ``adaptive``;
    other exceptions say nothing about the limit.

    :param limit: calls in flight at once (with ``adaptive``: the initial limit).
    :param adaptive: None, ``"gradient"``, ``"aimd"`` or an algorithm object.
    :param max_wait: seconds a call may wait for a slot (0: refused at once).
    :param max_queue: at most this many calls wait at once.
    :param registry: prometheus-client registry of the concurrency metrics.
    :param clock: monotonic seconds, injectable for tests.
    """

    __slots__ = ()

    side: ClassVar[str] = "endpoint"

    def __init__(
        self,
        *,
        limit: int | None = None,
        adaptive: Any = None,
        max_wait: float = 0.0,
        max_queue: int | None = None,
        registry: Any = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            limit=limit,
            adaptive=adaptive,
            max_wait=max_wait,
            max_queue=max_queue,
            retry_after=1,
            max_scopes=1024,
            registry=registry,
            clock=clock,
        )

    def _select(self, ex: Exchange) -> Limiter | None:
        return self.limiter_for(ex.route or ex.path)


class _Routes:
    """Route template or path prefix -> a limiter of its own (or None: not limited):
    the exact template first, then the longest prefix; a plain path also covers
    what is below it."""

    __slots__ = ("_prefixes", "_templates")

    def __init__(self, routes: Mapping[str, int | None], policy: _Bulkhead) -> None:
        templates: dict[str, Limiter | None] = {}
        prefixes: list[tuple[str, Limiter | None]] = []
        for route, limit in routes.items():
            if not isinstance(route, str) or not route.startswith("/"):
                raise ConfigError(
                    f"routes: each key must be a route template or path starting with '/', got {route!r}"
                )
            limiter = None
            if limit is not None:
                if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                    raise ConfigError(f"routes[{route!r}]: expected a limit >= 1 or None, got {limit!r}")
                template = policy._algorithm
                if template is None or not template.adaptive:
                    template = FixedLimit(limit)
                limiter = policy._make(route, template.fresh(limit))
                policy._named[route] = limiter
            if route.endswith("*"):
                prefixes.append((route.rstrip("*").rstrip("/"), limiter))
                continue
            templates[route] = limiter
            if "{" not in route and "<" not in route and route.rstrip("/"):
                prefixes.append((route.rstrip("/"), limiter))
        prefixes.sort(key=lambda p: len(p[0]), reverse=True)
        self._templates = templates
        self._prefixes = tuple(prefixes)

    def __bool__(self) -> bool:
        return bool(self._templates or self._prefixes)

    def lookup(self, ex: Exchange) -> tuple[bool, Limiter | None]:
        templates = self._templates
        if templates:
            route = ex.route
            if route is not None and route in templates:
                return True, templates[route]
        path = ex.path
        for prefix, limiter in self._prefixes:
            if not prefix or path == prefix or path.startswith(prefix + "/"):
                return True, limiter
        return False, None

