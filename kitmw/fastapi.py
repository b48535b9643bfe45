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

import inspect
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import Depends, Security
from fastapi.openapi.models import SecurityBase as SecuritySchemeModel
from fastapi.security import SecurityScopes
from fastapi.security.base import SecurityBase
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from .asgi import AsgiExchange, Stack, exchange_of
from .auth import AuthPolicy, Backend
from .breaker import ROUTE_OPTIONS, BreakerPolicy, check_route_options
from .concerns import check_storage_uri, concern, construct
from .errors import ConfigError, Rejected, Rejection
from .exchange import Exchange, Policy
from .ratelimit import RateLimitPolicy
from .stack import build_policies

__all__ = ["HTTPRejected", "breaker", "instrument", "limit", "rejection_handler", "require"]

App = TypeVar("App", bound=Starlette)

#: Where a request without a kitmw layer keeps the exchange its dependencies share
#: (the principal ``require()`` found is the key ``limit(key="principal")`` reads).
_OWN_EXCHANGE = "kitmw.fastapi.exchange"
#: The scheme a ``require()`` without ``backend=`` lists until :func:`instrument` puts the
#: layer's own schemes in its place.
PLACEHOLDER = "kitmw"
_NAMES = {"jwt": "JWT", "basic": "Basic", "apikey": "APIKey"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


# -- refusals -------------------------------------------------------------------------------


class HTTPRejected(Rejected, HTTPException):
    """A dependency refused the request (401, 403, 429, 503): a kitmw :class:`Rejected`
    carrying the :class:`~kitmw.errors.Rejection`, and a Starlette ``HTTPException``.

    With :func:`rejection_handler` registered (:func:`instrument` does it) the answer is
    kitmw's, byte for byte the middleware's: ``{"error": "unauthorized"}`` and the
    policy's headers. Without it, FastAPI's ``HTTPException`` handler answers with the
    same status and headers and its own body (``{"detail": "unauthorized"}``).
    """

    def __init__(self, rejection: Rejection) -> None:
        merged: dict[str, str] = {}
        for name, value in rejection.headers:  # several challenges: one header, RFC 7235 list
            merged[name] = f"{merged[name]}, {value}" if name in merged else value
        HTTPException.__init__(self, rejection.status, detail=rejection.code, headers=merged or None)
        self._rejection = rejection
        self.status = rejection.status
        self.code = rejection.code
        retry_after = rejection.header("retry-after")
        self.retry_after = float(retry_after) if retry_after and retry_after.isdigit() else 0.0

    def __str__(self) -> str:
        return f"{self.status_code}: {self.detail}"


async def rejection_handler(request: Request, exc: Exception) -> Response:
    """Answer a :class:`HTTPRejected` as kitmw's middleware answers the same refusal:
    ``app.add_exception_handler(HTTPRejected, rejection_handler)``."""
    rejection = exc.rejection if isinstance(exc, Rejected) else Rejection(500)
    response = Response(rejection.body, status_code=rejection.status, media_type=rejection.content_type)
    for name, value in rejection.headers:
        response.headers.append(name, value)
    return response


# -- the app --------------------------------------------------------------------------------


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
            options["routes"] = _RouteBreakers(app, options.get("routes"))
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
    app.add_middleware(Stack, handle_errors=handle_errors, **built)
    if HTTPRejected not in app.exception_handlers:
        app.add_exception_handler(HTTPRejected, rejection_handler)
    auth = built.get("auth")
    if isinstance(auth, AuthPolicy) and callable(getattr(app, "openapi", None)):
        _resolve_placeholder(app, _schemes(auth.backends))
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


# -- auth -----------------------------------------------------------------------------------


def _schemes(backends: Iterable[Backend]) -> list[tuple[str, dict[str, Any]]]:
    """(name, OpenAPI Security Scheme Object) of each backend that says where it reads
    credentials; one entry per distinct name."""
    found: dict[str, dict[str, Any]] = {}
    for backend in backends:
        describe = getattr(backend, "openapi_scheme", None)
        definition = describe() if callable(describe) else None
        if not definition:
            continue
        base = _NAMES.get(getattr(backend, "name", ""), type(backend).__name__)
        name = base
        if definition.get("type") == "apiKey":
            header = str(definition.get("name", ""))
            if not (base == "APIKey" and header.lower() == "x-api-key"):
                name = f"{base}_{_UNSAFE.sub('_', header)}"
        found.setdefault(name, definition)
    return list(found.items())


def _model(definition: Mapping[str, Any]) -> SecuritySchemeModel:
    return SecuritySchemeModel.model_validate(dict(definition))


def _auth_of(ex: Exchange) -> AuthPolicy | None:
    """The auth policy of the kitmw layer that runs ``ex``, if it has one."""
    for key in ex.applied:
        if isinstance(key, AuthPolicy):
            return key
    return None


def _exchange(scope: Any) -> AsgiExchange:
    """The layer's exchange, or one the dependencies of this request share."""
    ex = exchange_of(scope)
    if ex is None:
        ex = scope.get(_OWN_EXCHANGE)
        if ex is None:
            ex = scope[_OWN_EXCHANGE] = AsgiExchange(scope, scope.get("app"))
    return ex


class _Scheme(SecurityBase):
    """One more scheme of a :func:`require` with several backends (OpenAPI alternatives)."""

    def __init__(self, name: str, definition: Mapping[str, Any]) -> None:
        self.scheme_name = name
        self.model = _model(definition)

    async def __call__(self) -> None:
        return None


class _Require:
    """The callable behind :func:`require`; a ``SecurityBase`` (the subclass below) when
    it lists a scheme in OpenAPI."""

    def __init__(self, policy: AuthPolicy | None) -> None:
        self._policy = policy
        self._enter: Callable[[Exchange], Any] | None = None
        self._awaits = False
        if policy is not None:
            hooks = policy.hooks("asgi", is_async=True)  # the ASGI side publishes request.user
            self._enter, self._awaits = hooks.enter, hooks.enter_awaits
        # What FastAPI injects: ``**schemes`` (the other schemes' no-op dependencies, see
        # below) is not a query parameter.
        params = inspect.signature(self.__call__, eval_str=True).parameters.values()
        self.__signature__ = inspect.Signature([p for p in params if p.kind is not p.VAR_KEYWORD])

    async def __call__(self, request: HTTPConnection, security_scopes: SecurityScopes, **schemes: Any) -> Any:
        scope = request.scope
        ex = exchange_of(scope)
        judge = _auth_of(ex) if ex is not None else None
        if ex is None:
            ex = _exchange(scope)
        own = self._policy
        if ex.user is None and own is not None:
            enter = self._enter
            assert enter is not None
            refused = await enter(ex) if self._awaits else enter(ex)
            if refused is not None:
                raise HTTPRejected(refused)
            judge = own
        if judge is None:
            if own is None:
                raise ConfigError(
                    "require: no backend to verify the caller: give it one"
                    " (require(..., backend=kitmw.auth.JWT(...))) or add auth= to the kitmw layer"
                )
            judge = own
        refused = judge.authorize(ex, security_scopes.scopes)
        if refused is not None:
            raise HTTPRejected(refused)
        return ex.user


class _SecuredRequire(_Require, SecurityBase):
    """A :func:`require` that lists its scheme(s) in OpenAPI: its backends', or the
    placeholder :func:`instrument` replaces with the layer's."""

    def __init__(self, policy: AuthPolicy | None, schemes: list[tuple[str, dict[str, Any]]]) -> None:
        super().__init__(policy)
        if not schemes:
            schemes = [(PLACEHOLDER, _PLACEHOLDER_SCHEME)]
        self.scheme_name, first = schemes[0]
        self.model = _model(first)
        if len(schemes) > 1:
            # The others as sub-dependencies: FastAPI lists each as an alternative requirement.
            params = list(self.__signature__.parameters.values())
            for i, (name, definition) in enumerate(schemes[1:]):
                params.append(
                    inspect.Parameter(
                        f"kitmw_scheme_{i}",
                        inspect.Parameter.KEYWORD_ONLY,
                        default=Depends(_Scheme(name, definition)),
                        annotation=None,
                    )
                )
            self.__signature__ = inspect.Signature(params)


_PLACEHOLDER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "The kitmw layer's auth: kitmw.fastapi.instrument(app, auth=...) lists its backends here.",
}


def require(*scopes: str, backend: Backend | Sequence[Backend] | None = None) -> Any:
    """A ``Security`` dependency: the verified caller (a :class:`kitmw.auth.Principal`).

    ``user: Annotated[Principal, require("admin")]`` in a path operation, or
    ``dependencies=[require("admin")]`` on it or on a router. The caller is the one
    kitmw's auth layer authenticated; without one (an app with no kitmw layer, an
    excluded path, ``optional`` auth), ``backend`` (a kitmw auth backend or a list)
    verifies the request itself. No caller: 401 with ``WWW-Authenticate``; a caller
    without every scope: 403. The scopes land in OpenAPI as the operation's security
    requirement; the scheme is ``backend``'s (HTTP bearer for JWT, HTTP basic, an API key
    in its header), or, without one, the layer's, written in by :func:`instrument`.
    """
    for name in scopes:
        if not isinstance(name, str) or not name or " " in name:
            raise ConfigError(f"require: scopes must be names without spaces, got {name!r}")
    if backend is None:
        return Security(_SecuredRequire(None, []), scopes=list(scopes))
    try:
        policy = AuthPolicy(backend=backend)
    except ConfigError as exc:
        raise ConfigError(f"require: {exc}") from None
    schemes = _schemes(policy.backends)
    dependency = _SecuredRequire(policy, schemes) if schemes else _Require(policy)
    return Security(dependency, scopes=list(scopes))


# -- rate limit -----------------------------------------------------------------------------


class _Limit:
    """The callable behind :func:`limit`: one :class:`~kitmw.ratelimit.RateLimitPolicy`
    per route it guards, each with its own budget (its own namespace)."""

    def __init__(self, options: dict[str, Any]) -> None:
        for name in ("routes", "exclude_paths"):
            if name in options:
                raise ConfigError(f"limit: {name!r} does not apply: the limit is the route's own")
        if "storage" in options:
            check_storage_uri(options["storage"], "limit")
        namespace = options.get("namespace", "kitmw")
        construct("limit", RateLimitPolicy, options)  # every option checked now
        self._options = options
        self._namespace = namespace if isinstance(namespace, str) else "kitmw"
        self._routes: dict[str, tuple[Callable[[Exchange], Any], bool]] = {}
        self._lock = threading.Lock()

    def _for(self, route: str) -> tuple[Callable[[Exchange], Any], bool]:
        with self._lock:
            found = self._routes.get(route)
            if found is None:
                namespace = f"{self._namespace}/{quote(route, safe='')}"  # one budget per route
                policy = RateLimitPolicy(**{**self._options, "namespace": namespace})
                hooks = policy.hooks("asgi", is_async=True)
                assert hooks.enter is not None
                found = self._routes[route] = (hooks.enter, hooks.enter_awaits)
            return found

    async def __call__(self, request: HTTPConnection, response: Response) -> None:
        scope = request.scope
        layered = exchange_of(scope)
        ex = layered if layered is not None else _exchange(scope)
        route = ex.route_label()
        found = self._routes.get(route)
        enter, awaits = found if found is not None else self._for(route)
        added = ex.added_headers
        before = len(added) if added else 0
        refused = await enter(ex) if awaits else enter(ex)
        if refused is not None:
            raise HTTPRejected(refused)
        if layered is None and ex.added_headers:
            # No layer adds them to the response: FastAPI does, from this response object.
            for name, value in ex.added_headers[before:]:
                response.headers.append(name.decode("latin-1"), value.decode("latin-1"))


def limit(
    rate: str,
    *,
    key: str | Callable[[Exchange], str | None] = "client",
    storage: str = "memory://",
    strategy: str = "fixed-window",
    headers: bool = True,
    **options: Any,
) -> Any:
    """A dependency limiting one route: ``dependencies=[limit("5/minute")]``.

    The rate limit of :class:`kitmw.ratelimit.RateLimitPolicy` with its options (``key``
    ``"client"``, ``"header:X-API-Key"``, ``"principal"``, ``"route"`` or a callable;
    ``storage`` a ``limits`` URI; ``strategy``; ``fail_open``, ``trusted_proxies``, ``cost``,
    ``methods``, ...): the same 429 with ``Retry-After``, ``RateLimit`` and
    ``RateLimit-Policy`` (also on allowed responses unless ``headers=False``). Each route
    it is declared on has its own budget, also on a shared storage. ``key="principal"``
    reads the caller kitmw's auth or an earlier :func:`require` found.
    """
    given = {"limit": rate, "key": key, "storage": storage, "strategy": strategy, "headers": headers}
    return Depends(_Limit({**given, **options}))


# -- breaker --------------------------------------------------------------------------------


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
            if isinstance(key, BreakerPolicy) and not isinstance(key.routes, _RouteBreakers):
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


class _RouteBreakers(Mapping[str, Mapping[str, Any]]):
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
