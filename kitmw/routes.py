"""Route templates from the frameworks' own routers, feature-detected, never the raw path.

* Starlette / FastAPI: ``scope["route"]`` after dispatch; otherwise (under a ``Mount``,
  whose prefix may itself hold parameters, or before dispatch, for a rate limit per
  route) the route tree is walked from the outermost router the request went through
  (``scope["router"]``), else from the app kitmw wraps, with the ``root_path`` the
  server gave. So kitmw added to a mounted sub-app labels ``/api/items/{item_id}``, as
  kitmw around the whole app does. A ``Mount`` of an app that has no routes (StaticFiles,
  a raw ASGI or a mounted WSGI app) is labelled with its mount path, as
  starlette_exporter does; a sub-router that matches nothing leaves the request
  unmatched. FastAPI's ``include_router()`` branches are walked through their effective
  route contexts (prefixed routes, websocket routes and mounts).
* Django: ``django.urls.resolve`` on the path (the resolver is pure computation), or the
  match Django made (``kitmw.django``), both spelled by :func:`django_template`.
* Flask (WSGI): the app's ``url_map`` bound to the environ.

Results of walks are cached per (router, type, method, root_path, path), and Django's per
(urlconf, path), in bounded LRU caches (:class:`kitmw._cache.LRUCache`), so a scan of
random URLs cannot grow memory.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, MutableMapping
from typing import Any

from ._cache import LRUCache

__all__ = ["django_route", "django_template", "flask_route", "starlette_route", "url_map_route"]

_MAX_CACHE = 2048
_MISSING: Any = object()

#: Django: (urlconf, path) -> template (or None: no pattern resolves it).
_django: LRUCache[tuple[int, str], str | None] = LRUCache(_MAX_CACHE)
#: Starlette walks: (id(owner), ...) -> (weak reference to the owner, template). The
#: reference tells a hit from an entry left by a freed router whose id was reused.
_walks: LRUCache[tuple[Any, ...], tuple[Any, str | None]] = LRUCache(_MAX_CACHE)


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


def _candidates(routes: list[Any]) -> Iterator[Any]:
    """The routes as the router matches them: FastAPI's ``include_router()`` branches
    give way to the routes they hold (:func:`_included`)."""
    for route in routes:
        included = _included(route)
        if included is None:
            yield route
        else:
            yield from included


def _mounted_routes(mount: Any) -> list[Any] | None:
    """The routes of the app under a ``Mount`` (through its middleware), or None."""
    routes = getattr(mount, "routes", None)
    if isinstance(routes, list) and routes:
        return routes
    return _routes_of(_mounted_app(mount)) or None


def _walk(routes: list[Any], scope: dict[str, Any]) -> str | None:
    try:
        from starlette.routing import Match
    except ImportError:  # pragma: no cover - starlette is a dependency
        return None
    partial: str | None = None
    for route in _candidates(routes):
        try:
            match, child = route.matches(scope)
        except Exception:
            continue
        if match is Match.NONE:
            continue
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            continue
        if "root_path" in child:  # a Mount (its path has no trailing slash)
            inner_routes = _mounted_routes(route)
            if inner_routes is None:
                # An app without routes (StaticFiles, raw ASGI, WSGI): the mount path
                # names it, as in starlette_exporter.
                template = path or "/"
            else:
                sub = dict(scope)
                sub.update(child)
                inner = _walk(inner_routes, sub)
                if inner is None:
                    continue  # nothing under the mount matched: a 404 scan stays unmatched
                template = path + inner
        elif path:
            template = path
        else:
            continue
        if match is Match.FULL:
            return template
        if partial is None:
            partial = template  # method mismatch: still the route the path names
    return partial


def starlette_route(scope: dict[str, Any], root: Any) -> str | None:
    """Template of the Starlette/FastAPI route that handles (or will handle) ``scope``.

    ``root`` is the app kitmw wraps (or the app that added kitmw as a middleware); the
    walk starts from ``scope["router"]`` instead when a router outside it already saw
    the request, so the mount prefixes are templated too.
    """
    route = scope.get("route")
    app_root = scope.get("app_root_path")
    if route is not None and getattr(route, "routes", None) is None:
        path = getattr(route, "path", None)
        if isinstance(path, str) and path and (app_root is None or scope.get("root_path", "") == app_root):
            # not under a Mount: the route's own template is complete, unless FastAPI
            # reached it through include_router() and prefixed it
            return _fastapi_effective_path(scope, route) or path
    owner = scope.get("router")
    if owner is None:
        owner = scope.get("app") if root is None else root
    routes = _routes_of(owner)
    if routes is None:
        return None
    kind = scope.get("type", "http")
    method = scope.get("method", "")
    path = scope.get("path", "")
    # The root the walk starts from: the server's (a proxy prefix), which a Mount keeps
    # as app_root_path while it moves root_path on.
    root_path = app_root if app_root is not None else scope.get("root_path", "")
    key = (id(owner), kind, method, root_path, path)
    entry = _walks.get(key)
    if entry is not None and entry[0]() is owner:  # else a miss, or a freed router's id reused
        return entry[1]  # type: ignore[no-any-return]
    probe = {"type": kind, "path": path, "root_path": root_path, "method": method, "headers": []}
    template = _walk(routes, probe)
    try:
        _walks.put(key, (weakref.ref(owner), template))
    except TypeError:  # not weak-referenceable: not cached rather than risk a stale hit
        pass
    return template


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
        return django_template(route)

    urlconf = get_urlconf() or getattr(settings, "ROOT_URLCONF", "")
    key = (hash(str(urlconf)), path)
    template = _django.get(key, _MISSING)
    if template is _MISSING:
        template = _django.put(key, compute())
    return template  # type: ignore[no-any-return]


def django_template(route: object) -> str:
    """The label of a Django ``ResolverMatch.route`` (``items/<int:pk>`` -> ``/items/<int:pk>``,
    a regex pattern without its anchors): one spelling for the wrapping form, which
    resolves the path, and ``kitmw.django``, which reads the match Django made."""
    return "/" + str(route).lstrip("^").rstrip("$")


def flask_route(flask_app: Any, environ: dict[str, Any]) -> str | None:
    """The Flask url rule (``/items/<int:item_id>``) that matches ``environ``, also when
    its method is not one the rule allows (a 405, labelled with the rule as on ASGI)."""
    try:
        adapter = flask_app.url_map.bind_to_environ(environ)
        rule, _ = adapter.match(return_rule=True)
    except Exception as exc:
        allowed = getattr(exc, "valid_methods", None)  # werkzeug's MethodNotAllowed
        if not allowed:
            return None
        try:
            rule, _ = adapter.match(method=next(iter(allowed)), return_rule=True)
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


# -- what kitmw reads of FastAPI's and Starlette's internals --------------------------------
#
# The one place kitmw reads framework internals, each checked by tests/test_seams.py
# (which names this module when a release changes them), each with a fallback:
#
# * FastAPI's include_router() keeps what it includes as *route contexts*: an included
#   router (``_IncludedRouter``, no ``path``) lists them with ``effective_route_contexts()``,
#   each with the prefixed ``starlette_route`` (websocket routes, ``Route``, ``Mount``) or
#   itself matchable with the prefixed ``path_format`` (an ``APIRoute``'s); per request
#   ``scope["fastapi"]["effective_route_context"]`` is the one selected, whose
#   ``original_route`` is ``scope["route"]``. Without them an included route is labelled
#   by its unprefixed template.
# * Starlette's ``Mount._base_app``: the app or router a mount was given, before its
#   middleware. Without it the walk goes down the middleware's ``.app`` attributes.


def _included(route: Any) -> list[Any] | None:
    """The matchable routes of a FastAPI ``include_router()`` branch, or None when
    ``route`` is not one."""
    contexts = getattr(route, "effective_route_contexts", None)
    if not callable(contexts) or isinstance(getattr(route, "path", None), str):
        return None
    try:
        found = list(contexts())
    except Exception:
        return []
    out = []
    for ctx in found:
        starlette = getattr(ctx, "starlette_route", None)
        out.append(ctx if starlette is None else starlette)
    return out


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


def _mounted_app(mount: Any) -> Any:
    """The app a Starlette ``Mount`` was given, before its middleware (else its ``app``)."""
    return getattr(mount, "_base_app", None) or getattr(mount, "app", None)
