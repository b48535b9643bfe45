"""FastAPI's own forms: one call that keeps the app, and auth, limits and breaker tuning on routes.

* :func:`instrument` adds :class:`kitmw.Stack` (``stack()``'s fused layer) with
  ``app.add_middleware`` and returns the same ``app``, so ``dependency_overrides``,
  ``state``, routes added later and ``TestClient(app)`` keep working. It also does what
  only the app can: it answers the dependencies' refusals with kitmw's JSON body, writes
  the layer's auth schemes into OpenAPI, and tunes each route's breaker as the route asks.
* :func:`require` is a ``Security`` dependency returning the verified principal: the one
  kitmw's auth found, or one its own backend verifies (an app without a kitmw layer).
  It lists its security scheme in OpenAPI, so Swagger UI shows Authorize.
* :func:`limit` rate-limits one route with kitmw's rate limit (storage, headers, 429).
* :func:`breaker` tunes the server breaker of the route it is declared on.

Refusals are raised as :class:`HTTPRejected`, a Starlette ``HTTPException`` (FastAPI
answers its status and headers) that :func:`instrument` (or :func:`rejection_handler`
registered by hand) renders as kitmw's ``{"error": "..."}`` body. See ``docs/frameworks.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from starlette.applications import Starlette

from ..asgi import Stack
from ..auth import AuthPolicy
from ..concerns import concern
from ..errors import ConfigError
from ..exchange import Policy
from ..stack import build_policies
from ._breaker import RouteBreakers, breaker
from ._common import HTTPRejected, rejection_handler
from ._limit import limit
from ._require import PLACEHOLDER, require, schemes_of

__all__ = ["HTTPRejected", "breaker", "instrument", "limit", "rejection_handler", "require"]

App = TypeVar("App", bound=Starlette)


def instrument(
    app: App,
    *,
    exclude_paths: Iterable[str] | str | None = None,
    handle_errors: bool | None = None,
    **concerns: Any,
) -> App:
    """Add kitmw's fused layer to a FastAPI (or Starlette) ``app``; return the same ``app``.

    The options are :func:`kitmw.stack`'s. The layer is :class:`kitmw.Stack`, added with
    ``app.add_middleware`` (so it is the outermost of the middlewares added so far, inside
    FastAPI's error handling); its options are checked now, not at the first request.
    Besides, for FastAPI:

    * :class:`HTTPRejected` is answered with kitmw's JSON body (unless the app already
      has a handler for it);
    * ``/openapi.json`` lists the schemes of ``auth=``'s backends for every
      :func:`require` written without ``backend=``;
    * with ``breaker=`` (one breaker per route, the default), the routes' own
      :func:`breaker` options tune their breakers (and ``breaker={"routes": {...}}``).
    """
    if not isinstance(app, Starlette):
        raise ConfigError(f"app: expected a FastAPI or Starlette application, got {app!r}")
    concerns = dict(concerns)
    value = concerns.get("breaker")
    if value is not None and value is not False and not isinstance(value, Policy):
        options = concern("breaker").options(value)
        if options.get("per_route") is not False and options.get("breaker") is None:
            options["routes"] = RouteBreakers(app, options.get("routes"))
        concerns["breaker"] = options
    policies = build_policies(concerns, shared={"exclude_paths": exclude_paths})
    built: dict[str, Policy] = {}
    for name, given in concerns.items():
        if given is None or given is False:
            continue
        if isinstance(given, Policy):
            built[name] = given
        else:
            cls = concern(name).policy_class("server")
            built[name] = next(p for p in policies if type(p) is cls)
    app.add_middleware(Stack, handle_errors=handle_errors, **built)  # type: ignore[arg-type]
    if HTTPRejected not in app.exception_handlers:
        app.add_exception_handler(HTTPRejected, rejection_handler)
    auth = built.get("auth")
    schemes = schemes_of(auth.backends) if isinstance(auth, AuthPolicy) else []
    if schemes and callable(getattr(app, "openapi", None)):  # FastAPI
        _resolve_placeholder(app, schemes)
    return app


def _resolve_placeholder(app: Any, schemes: list[tuple[str, dict[str, Any]]]) -> None:
    """Make ``app.openapi()`` list ``schemes`` where :func:`require` left its placeholder."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema  # type: ignore[no-any-return]
        schema: dict[str, Any] = generate()
        components = schema.get("components") or {}
        listed = components.get("securitySchemes") or {}
        if PLACEHOLDER not in listed:
            return schema
        del listed[PLACEHOLDER]
        listed.update(schemes)
        for item in (schema.get("paths") or {}).values():
            for operation in item.values():
                if isinstance(operation, dict) and "security" in operation:
                    operation["security"] = _replace(operation["security"], schemes)
        return schema

    app.openapi = openapi


def _replace(requirements: list[dict[str, Any]], schemes: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """A security requirement list with the placeholder's entry replaced by one
    alternative per scheme (OpenAPI: any one of the listed requirements suffices)."""
    found: list[dict[str, Any]] = []
    for requirement in requirements:
        if PLACEHOLDER in requirement:
            scopes = requirement[PLACEHOLDER]
            found.extend({name: list(scopes)} for name, _ in schemes)
        else:
            found.append(requirement)
    return found
