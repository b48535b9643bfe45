"""``breaker()``: a route's own server-breaker options, read when its breaker is made."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from ..asgi import exchange_of
from ..breaker import ROUTE_OPTIONS, BreakerPolicy, check_route_options
from ..errors import ConfigError

__all__ = ["RouteBreakers", "breaker"]


class _BreakerOptions:
    """The callable behind :func:`breaker`: a declaration read when the route's breaker is
    made; per request it only checks that the app's breaker reads it."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    async def __call__(self, request: HTTPConnection) -> None:
        ex = exchange_of(request.scope)
        if ex is None:
            return  # no kitmw layer: no breaker to tune
        for key in ex.applied:
            if isinstance(key, BreakerPolicy) and not isinstance(key.routes, RouteBreakers):
                raise ConfigError(
                    "breaker: this route tunes its breaker, but the app's breaker does not read"
                    " routes' options: add kitmw with kitmw.fastapi.instrument(app, breaker=...)"
                    + (" and one breaker per route" if not key.per_route else "")
                )


def breaker(
    *,
    fail_max: int | None = None,
    reset_timeout: float | None = None,
    success_threshold: int | None = None,
    half_open_max: int | None = None,
    exclude: Sequence[type[BaseException] | Callable[[BaseException], bool]] | None = None,
) -> Any:
    """The route's own server-breaker options: ``dependencies=[breaker(fail_max=2)]``.

    kitmw's server breaker is per route template; a route (or a router, for each of its
    routes) declares how its own breaker behaves, next to its path. The breaker of
    :func:`instrument` reads it when the route's breaker is made; the other options
    (storage, registry, ...) stay the app's.
    """
    given = {
        "fail_max": fail_max,
        "reset_timeout": reset_timeout,
        "success_threshold": success_threshold,
        "half_open_max": half_open_max,
        "exclude": exclude,
    }
    options = check_route_options({k: v for k, v in given.items() if v is not None}, "breaker")
    if not options:
        raise ConfigError("breaker: give at least one option: " + ", ".join(ROUTE_OPTIONS))
    return Depends(_BreakerOptions(options))


class RouteBreakers(Mapping[str, Mapping[str, Any]]):
    """``{route template: breaker options}`` of an app: ``routes=`` given to the breaker,
    updated by what each route declares with :func:`breaker`, looked up from the routes
    when a route's breaker is made (routes added after :func:`instrument` included)."""

    def __init__(self, app: Any, table: Mapping[str, Mapping[str, Any]] | None) -> None:
        self._app = app
        self._table = {
            route: check_route_options(options, f"routes[{route!r}]")
            for route, options in (table or {}).items()
        }

    def _declared(self) -> dict[str, dict[str, Any]]:
        found = {route: dict(options) for route, options in self._table.items()}
        for paths, dependencies in _routes(self._app):
            for depends in dependencies:
                marker = getattr(depends, "dependency", None)
                if isinstance(marker, _BreakerOptions):
                    for path in paths:
                        found.setdefault(path, {}).update(marker.options)
        return found

    def __getitem__(self, route: str) -> Mapping[str, Any]:
        return self._declared()[route]

    def get(self, route: str, default: Any = None) -> Any:  # type: ignore[override]
        return self._declared().get(route, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._declared())

    def __len__(self) -> int:
        return len(self._declared())


def _routes(app: Any) -> Iterator[tuple[set[str], list[Any]]]:
    """(the templates a route is labelled with, its dependencies) of every route of ``app``,
    routers' dependencies and ``include_router()`` prefixes included."""
    routes = getattr(app, "routes", None) or []
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI 0.165: routers are included lazily
    except ImportError:  # pragma: no cover - older FastAPI copies routes into the app
        contexts: Iterable[Any] = routes
    else:
        contexts = iter_route_contexts(routes)
    for ctx in contexts:
        dependencies = getattr(ctx, "dependencies", None)
        if not dependencies:
            continue
        named = (getattr(ctx, "path", None), getattr(ctx, "path_format", None))
        paths = {p for p in named if isinstance(p, str)}
        if paths:
            yield paths, list(dependencies)
