"""Route templates from the frameworks' own routers, feature-detected, never the raw path.

* Starlette / FastAPI: ``scope["route"]`` after dispatch; under a ``Mount`` (whose prefix
  may itself hold parameters) the mount chain is re-matched from the root router.
  Before dispatch (a rate limit per route) the same walk predicts the route.
* Django: ``django.urls.resolve`` on the path (the resolver is pure computation).
* Flask (WSGI): the app's ``url_map`` bound to the environ.

Results of walks are cached per (router, method, path) in a bounded cache, so a scan of
random URLs cannot grow memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from typing import Any

__all__ = ["RouteCache", "django_route", "flask_route", "starlette_route", "url_map_route"]

_MAX_CACHE = 2048


class RouteCache:
    """A small bounded LRU keyed by (router id, method, path)."""

    __slots__ = ("_data", "_max")

    def __init__(self, max_entries: int = _MAX_CACHE) -> None:
        self._data: OrderedDict[tuple[int, str, str], str | None] = OrderedDict()
        self._max = max_entries

    def get(self, key: tuple[int, str, str], compute: Callable[[], str | None]) -> str | None:
        data = self._data
        try:
            value = data[key]
        except KeyError:
            value = compute()
            data[key] = value
            if len(data) > self._max:
                data.popitem(last=False)
            return value
        data.move_to_end(key)
        return value


_cache = RouteCache()


def _routes_of(app: Any) -> list[Any] | None:
    """The route list of a Starlette app, router, or Mount-like object, else None."""
    seen = 0
    while app is not None and seen < 32:
        routes = getattr(app, "routes", None)
        if isinstance(routes, list):
            return routes
        router = getattr(app, "router", None)
        if router is not None and getattr(router, "routes", None) is not None:
            return list(router.routes)
        app = getattr(app, "app", None)  # through middleware layers
        seen += 1
    return None


def _walk(routes: list[Any], scope: dict[str, Any]) -> str | None:
    try:
        from starlette.routing import Match
    except ImportError:  # pragma: no cover - starlette is a dependency
        return None
    partial: str | None = None
    for route in routes:
        try:
            match, child = route.matches(scope)
        except Exception:
            continue
        if match is Match.NONE:
            continue
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            contexts = getattr(route, "effective_route_contexts", None)
            if callable(contexts):
                # FastAPI wraps include_router() routers in an _IncludedRouter (no path);
                # its effective route contexts carry the full, prefixed templates.
                found = _walk_contexts(contexts(), scope, Match)
                if found is not None:
                    if found[1]:
                        return found[0]
                    if partial is None:
                        partial = found[0]
            continue
        inner_routes = getattr(route, "routes", None)
        if inner_routes is not None and "root_path" in child:  # a Mount
            sub = dict(scope)
            sub.update(child)
            inner = _walk(list(inner_routes), sub)
            if inner is None:
                continue
            template = path.rstrip("/") + inner
        else:
            template = path
        if match is Match.FULL:
            return template
        if partial is None:
            partial = template  # method mismatch: still the route the path names
    return partial


def _walk_contexts(contexts: Any, scope: dict[str, Any], match_enum: Any) -> tuple[str, bool] | None:
    """(template, full match) of the first FastAPI effective route context matching ``scope``."""
    partial: str | None = None
    for ctx in contexts:
        try:
            match, _ = ctx.matches(scope)
        except Exception:
            continue
        template = getattr(ctx, "path_format", None) or getattr(ctx, "path", None)
        if match is match_enum.NONE or not isinstance(template, str):
            continue
        if match is match_enum.FULL:
            return template, True
        if partial is None:
            partial = template
    return None if partial is None else (partial, False)


def _fastapi_effective_path(scope: dict[str, Any], route: Any) -> str | None:
    """The prefixed template FastAPI selected for a route reached through include_router()."""
    fastapi_scope = scope.get("fastapi")
    if not isinstance(fastapi_scope, dict):
        return None
    ctx = fastapi_scope.get("effective_route_context")
    if ctx is None or getattr(ctx, "original_route", None) is not route:
        return None
    path = getattr(getattr(ctx, "starlette_route", None), "path_format", None) or getattr(
        ctx, "path_format", None
    )
    return path if isinstance(path, str) and path else None


def starlette_route(scope: dict[str, Any], root: Any) -> str | None:
    """Template of the Starlette/FastAPI route that handles (or will handle) ``scope``."""
    route = scope.get("route")
    if route is not None and getattr(route, "routes", None) is None:
        path = getattr(route, "path", None)
        if isinstance(path, str):
            app_root = scope.get("app_root_path")
            if app_root is None or scope.get("root_path", "") == app_root:
                # not under a Mount: the route's own template is complete, unless FastAPI
                # reached it through include_router() and prefixed it
                return _fastapi_effective_path(scope, route) or path
    routes = _routes_of(scope.get("app") if root is None else root)
    if routes is None:
        return None
    method = scope.get("method", "")
    key = (id(routes), method, scope.get("path", ""))

    def compute() -> str | None:
        probe = {
            "type": scope.get("type", "http"),
            "path": scope.get("path", ""),
            "root_path": scope.get("app_root_path", "") if "app_root_path" in scope else "",
            "method": method,
            "headers": [],
        }
        return _walk(routes, probe)

    return _cache.get(key, compute)


def django_route(path: str) -> str | None:
    """Template of the Django URL pattern that resolves ``path`` (``/items/<int:pk>``)."""
    from django.conf import settings
    from django.urls import Resolver404, get_urlconf, resolve

    def compute() -> str | None:
        try:
            match = resolve(path)
        except Resolver404:
            return None
        except Exception:
            return None
        route = getattr(match, "route", None)
        if route is None:
            return None
        return "/" + str(route).lstrip("^").rstrip("$")

    urlconf = get_urlconf() or getattr(settings, "ROOT_URLCONF", "")
    return _cache.get((hash(str(urlconf)), "django", path), compute)


def flask_route(flask_app: Any, environ: dict[str, Any]) -> str | None:
    """The Flask url rule (``/items/<int:item_id>``) that matches ``environ``."""
    try:
        adapter = flask_app.url_map.bind_to_environ(environ)
        rule, _ = adapter.match(return_rule=True)
    except Exception:
        return None
    return str(rule.rule)


def url_map_route(app: Any, scope: MutableMapping[str, Any]) -> str | None:
    """The werkzeug url rule (Quart) that matches an ASGI ``scope``."""
    try:
        adapter = app.url_map.bind("localhost", script_name=scope.get("root_path") or None)
        rule, _ = adapter.match(scope.get("path", "/"), method=scope.get("method", "GET"), return_rule=True)
    except Exception:
        return None
    return str(rule.rule)
