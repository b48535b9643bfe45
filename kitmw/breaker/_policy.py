"""The server-side breaker policy: 503 with ``Retry-After`` while the application is failing."""

from __future__ import annotations

import difflib
import hashlib
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import pybreaker

from .._cache import BoundedCache
from .._paths import PathMatcher
from .._types import Clock
from ..errors import BreakerOpen, ConfigError, Rejection
from ..exchange import UNMATCHED, Exchange, Policy
from ._core import Breaker, redis_clients, use_redis_clients
from ._machine import Permit, ReportedFailure, check_int, check_seconds, log

__all__ = [
    "OTHER_ROUTES",
    "ROUTE_OPTIONS",
    "BreakerPolicy",
    "check_route_options",
    "default_is_failure",
    "default_name",
]

#: Route part of the breaker shared by the routes beyond ``max_routes``.
OTHER_ROUTES = "<other>"

#: The status the drivers record for a request whose client went away (nginx's 499,
#: ``kitmw.asgi.CLIENT_CLOSED``): it says nothing about the application's health.
_CLIENT_CLOSED = 499


#: The options one route's breaker may set for itself (``routes=``); the others (storage,
#: registry, clock, listeners) are the policy's, shared by every route.
ROUTE_OPTIONS = ("fail_max", "reset_timeout", "success_threshold", "half_open_max", "exclude")


def check_route_options(options: Any, where: str = "routes") -> dict[str, Any]:
    """``options`` for one route's breaker, checked (a :class:`ConfigError` naming ``where``
    and the option otherwise): a mapping of some of :data:`ROUTE_OPTIONS`."""
    if not isinstance(options, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping of breaker options ({', '.join(ROUTE_OPTIONS)}), got {options!r}"
        )
    checked = dict(options)
    for name, value in checked.items():
        if name not in ROUTE_OPTIONS:
            close = difflib.get_close_matches(str(name), ROUTE_OPTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{where}: {name!r} cannot be set per route{hint} (per route: {', '.join(ROUTE_OPTIONS)})"
            )
        try:
            if name == "reset_timeout":
                check_seconds(name, value)
            elif name == "exclude":
                for item in value:
                    if not callable(item):  # exception classes are callable too
                        raise ConfigError(f"exclude: expected exception types or predicates, got {item!r}")
            else:
                check_int(name, value)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return checked


def default_is_failure(ex: Exchange) -> bool:
    """An exception or a 5xx answer is a failure; a 4xx (the caller's fault) never is."""
    return ex.error is not None or ex.status >= 500


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def default_name(
    *,
    fail_max: int,
    reset_timeout: float,
    success_threshold: int,
    half_open_max: int,
    exclude: Sequence[Any],
    exclude_paths: Sequence[str] | str | None,
    is_failure: Callable[[Exchange], bool] | None,
) -> str:
    """``"server"`` for the defaults, else ``"server-<hash of the options>"``.

    Derived from the options only (never from the process), so every replica of one
    app computes the same name and shares one state on Redis without configuration.
    With one breaker per route (the default) this is the prefix of their names:
    ``"server:/items/{item_id}"``.
    """
    if isinstance(exclude_paths, str):
        exclude_paths = [exclude_paths]
    options = (
        fail_max,
        float(reset_timeout),
        success_threshold,
        half_open_max,
        tuple(sorted(_qualname(e) for e in exclude)),
        tuple(sorted(exclude_paths or ())),
        _qualname(is_failure) if is_failure is not None else None,
    )
    if options == (5, 30.0, 1, 1, (), (), None):
        return "server"
    return "server-" + hashlib.blake2b(repr(options).encode(), digest_size=4).hexdigest()


class BreakerPolicy(Policy):
    """Answers 503 ``circuit_open`` with ``Retry-After`` while the application keeps failing.

    One breaker per route template by default (Go kit's breaker is per endpoint: one
    failing route must not take the whole service down); ``per_route=False`` guards the
    whole service with one breaker. Counts exceptions and 5xx answers (``is_failure``),
    never 4xx, never a request whose client went away (499); excluded paths are neither
    refused nor counted; a cancelled request frees its trial slot uncounted.

    :param fail_max: consecutive failures that open the breaker.
    :param reset_timeout: seconds before a trial request is let through.
    :param success_threshold: successful trials that close it again.
    :param half_open_max: trial requests at once while half-open.
    :param storage: ``None`` (process-local) or a Redis URL shared by every replica.
    :param name: the breaker's name (logs, metrics, Redis key), or with one breaker per
        route the prefix of their names (``"<name>:/items/{item_id}"``); default derived
        from the options, so identically configured replicas share state.
    :param per_route: one breaker per route template (default), or ``False`` for one
        breaker for the whole service. Requests no route matches (or whose route cannot
        be known) share one breaker, ``"<name>:<unmatched>"``.
    :param routes: ``{route template: options}``: the breaker of that route is tuned with
        its own ``fail_max``, ``reset_timeout``, ``success_threshold``, ``half_open_max``
        or ``exclude`` (the others are the policy's). Read when the route's breaker is
        made, at its first request, so a lazy mapping may look routes up then
        (``kitmw.fastapi.breaker()`` declares them on the routes themselves).
    :param max_routes: at most this many per-route breakers; requests to further routes
        share ``"<name>:<other>"`` (a warning is logged once).
    :param exclude_paths: paths never refused nor counted (health checks).
    :param is_failure: ``callable(exchange) -> bool``; default: an exception or status >= 500.
    :param exclude: exception types (or predicates) that are not failures.
    :param listeners: ``pybreaker.CircuitBreakerListener`` objects (given to every breaker).
    :param registry: prometheus-client registry for the breaker instruments.
    :param clock: seconds, injectable for tests.
    :param breaker: a ready :class:`~kitmw.breaker.Breaker` guarding the whole service
        instead of building one (implies ``per_route=False``).
    :param refresh_interval: Redis tuning, see :class:`~kitmw.breaker.Breaker`.
    :param storage_timeout: Redis tuning, see :class:`~kitmw.breaker.Breaker`.
    :param storage_retry: Redis tuning, see :class:`~kitmw.breaker.Breaker`.
    """

    __slots__ = (
        "_base",
        "_by_route",
        "_cache",
        "_excluded",
        "_is_failure",
        "_key",
        "_lock",
        "_make",
        "_max_routes",
        "_other",
        "_plain",
        "_routes",
        "_single",
        "routes",
    )

    name: ClassVar[str] = "breaker"
    shared_options: ClassVar[tuple[str, ...]] = ("exclude_paths", "registry")
    judges_application: ClassVar[bool] = True  # it never sees the /metrics exposition

    def __init__(
        self,
        *,
        fail_max: int = 5,
        reset_timeout: float = 30.0,
        success_threshold: int = 1,
        half_open_max: int = 1,
        storage: str | None = None,
        name: str | None = None,
        per_route: bool | None = None,
        max_routes: int = 1024,
        routes: Mapping[str, Mapping[str, Any]] | None = None,
        exclude_paths: Sequence[str] | str | None = (),
        is_failure: Callable[[Exchange], bool] | None = None,
        exclude: Sequence[type[BaseException] | Callable[[BaseException], bool]] = (),
        listeners: Sequence[pybreaker.CircuitBreakerListener] = (),
        registry: Any = None,
        clock: Clock | None = None,
        breaker: Breaker | None = None,
        refresh_interval: float = 0.1,
        storage_timeout: float = 0.5,
        storage_retry: float = 1.0,
    ) -> None:
        if is_failure is not None and not callable(is_failure):
            raise ConfigError(f"is_failure: expected a callable(exchange) -> bool, got {is_failure!r}")
        if per_route is not None and not isinstance(per_route, bool):
            raise ConfigError(f"per_route: expected True or False, got {per_route!r}")
        self._max_routes = check_int("max_routes", max_routes)
        matcher = PathMatcher(exclude_paths)
        self._excluded = matcher if matcher else None
        self._is_failure = is_failure or default_is_failure
        self._plain = is_failure is None  # the default verdict can be inlined in exit()
        self._key = f"kitmw.breaker.{id(self)}"
        self._cache: BoundedCache[int, Rejection] = BoundedCache(256)
        self._lock = threading.Lock()
        self._by_route: dict[str | None, Breaker] = {}
        self._routes = 0
        self._other: Breaker | None = None
        if routes is not None:
            if not isinstance(routes, Mapping):
                raise ConfigError(
                    f"routes: expected a mapping of route template to breaker options, got {routes!r}"
                )
            if per_route is False or breaker is not None:
                raise ConfigError(
                    "routes: tuning per route needs one breaker per route (per_route left on, no breaker=)"
                )
            for route, tuned in routes.items():
                check_route_options(tuned, f"routes[{route!r}]")
        #: The per-route options given (``routes=``), or None.
        self.routes = routes
        if breaker is not None:
            if not isinstance(breaker, Breaker):
                raise ConfigError(f"breaker: expected a kitmw.breaker.Breaker, got {breaker!r}")
            if per_route:
                raise ConfigError(
                    "per_route: a ready breaker= guards the whole service; leave per_route unset"
                )
            self._single: Breaker | None = breaker
            self._base = breaker.name
            return
        if name is None:
            name = default_name(
                fail_max=fail_max,
                reset_timeout=reset_timeout,
                success_threshold=success_threshold,
                half_open_max=half_open_max,
                exclude=exclude,
                exclude_paths=exclude_paths,
                is_failure=is_failure,
            )
        options: dict[str, Any] = {
            "fail_max": fail_max,
            "reset_timeout": reset_timeout,
            "success_threshold": success_threshold,
            "half_open_max": half_open_max,
            "exclude": exclude,
            "listeners": listeners,
            "storage": storage,
            "clock": clock,
            "registry": registry,
            "refresh_interval": refresh_interval,
            "storage_timeout": storage_timeout,
            "storage_retry": storage_retry,
        }
        if per_route is False:
            self._single = Breaker(name=name, **options)
            self._base = name
            return
        if not isinstance(name, str) or not name:
            raise ConfigError(f"name: expected a non-empty string, got {name!r}")
        self._single = None
        self._base = name
        # Built now: bad options fail here, and its Redis clients serve every route's breaker.
        unmatched = Breaker(name=f"{name}:{UNMATCHED}", **options)
        clients = redis_clients(unmatched)

        def make(route: str) -> Breaker:
            tuned = routes.get(route) if routes is not None else None
            made = Breaker(name=f"{name}:{route}", **({**options, **tuned} if tuned else options))
            use_redis_clients(made, clients)
            return made

        self._make = make
        self._by_route[None] = unmatched

    # -- which breaker ----------------------------------------------------------------------

    @property
    def per_route(self) -> bool:
        return self._single is None

    @property
    def breaker(self) -> Breaker:
        """The one breaker of a service-wide policy (``per_route=False`` or ``breaker=``)."""
        if self._single is None:
            raise AttributeError(
                "breaker: this policy has one breaker per route; use breaker_for(route) or breakers"
            )
        return self._single

    @property
    def breaker_name(self) -> str:
        """The breaker's name, or with one breaker per route the prefix of their names."""
        return self._base

    @property
    def breakers(self) -> dict[str, Breaker]:
        """The breakers built so far, by route template (``"<unmatched>"``, ``"<other>"``)."""
        if self._single is not None:
            return {"*": self._single}
        found = {UNMATCHED if route is None else route: b for route, b in list(self._by_route.items())}
        if self._other is not None:
            found[OTHER_ROUTES] = self._other
        return found

    def breaker_for(self, route: str | None) -> Breaker:
        """The breaker that guards requests to ``route`` (a template, or None: unmatched)."""
        single = self._single
        if single is not None:
            return single
        found = self._by_route.get(route)
        return found if found is not None else self._add(route)

    def _add(self, route: str | None) -> Breaker:
        if not route or route == UNMATCHED:
            return self._by_route[None]
        if self._routes >= self._max_routes:
            return self._other or self._overflow()
        with self._lock:
            found = self._by_route.get(route)
            if found is not None:
                return found
            if self._routes >= self._max_routes:
                return self._other or self._overflow()
            found = self._make(route)
            self._by_route[route] = found
            self._routes += 1
            return found

    def _overflow(self) -> Breaker:
        with self._lock:
            if self._other is None:
                self._other = self._make(OTHER_ROUTES)
                log.warning(
                    "circuit breaker %s: more than max_routes=%d routes; further routes share %s",
                    self._base,
                    self._max_routes,
                    self._other.name,
                    extra={"breaker": self._other.name},
                )
            return self._other

    def close(self) -> None:
        """Close the breakers' sync Redis client (if any)."""
        for breaker in self.breakers.values():
            breaker.close()

    async def aclose(self) -> None:
        """Close the breakers' Redis clients on this loop (if any)."""
        for breaker in self.breakers.values():
            await breaker.aclose()

    # -- per request ------------------------------------------------------------------------

    def _rejection(self, retry_after: float) -> Rejection:
        seconds = max(1, math.ceil(retry_after))
        answer = self._cache.get(seconds)
        if answer is None:
            answer = self._cache.put(seconds, Rejection(503, "circuit_open", headers=(("Retry-After", str(seconds)),)))
        return answer

    def _verdict(self, ex: Exchange) -> tuple[bool | None, BaseException | None]:
        if ex.status == _CLIENT_CLOSED:
            return None, None  # the client went away: says nothing about the app's health
        error = ex.error
        if error is not None and not isinstance(error, Exception):
            return None, None  # cancelled (or interrupted): says nothing about the app's health
        if not self._is_failure(ex):
            return False, None
        return True, error if error is not None else ReportedFailure(f"status {ex.status}", status=ex.status)

    def enter(self, ex: Exchange) -> Rejection | None:
        if self._excluded is not None and self._excluded(ex.path):
            return None
        breaker = self._single
        if breaker is None:
            route = ex.route
            breaker = self._by_route.get(route) or self._add(route)
        try:
            permit = breaker.acquire()
        except BreakerOpen as exc:
            return self._rejection(exc.retry_after)
        # The breaker too: the release must reach the breaker that gave the permit.
        ex.state[self._key] = (breaker, permit)
        return None

    def exit(self, ex: Exchange) -> None:
        held: tuple[Breaker, Permit] | None = ex.state.pop(self._key, None)
        if held is None:
            return  # excluded path, or refused
        breaker, permit = held
        if self._plain and ex.error is None and ex.status < _CLIENT_CLOSED:
            breaker.release(permit, failed=False)
            return
        failed, error = self._verdict(ex)
        breaker.release(permit, failed=failed, error=error)

    @property
    def enter_awaits(self) -> bool:
        """Redis-shared breakers await their storage on the async drivers; process-local
        ones decide in memory, so ``enter``/``exit`` are called directly."""
        return (self._single or self._by_route[None]).shared

    @property
    def exit_awaits(self) -> bool:
        return self.enter_awaits

    async def aenter(self, ex: Exchange) -> Rejection | None:
        if self._excluded is not None and self._excluded(ex.path):
            return None
        breaker = self._single
        if breaker is None:
            route = ex.route
            breaker = self._by_route.get(route) or self._add(route)
        try:
            permit = await breaker.aacquire()
        except BreakerOpen as exc:
            return self._rejection(exc.retry_after)
        ex.state[self._key] = (breaker, permit)
        return None

    async def aexit(self, ex: Exchange) -> None:
        held: tuple[Breaker, Permit] | None = ex.state.pop(self._key, None)
        if held is not None:
            breaker, permit = held
            failed, error = self._verdict(ex)
            await breaker.arelease(permit, failed=failed, error=error)
