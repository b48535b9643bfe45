"""``require()``: the caller as a FastAPI ``Security`` dependency, its scheme in OpenAPI."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from fastapi import Depends, Security
from fastapi.openapi.models import SecurityBase as SecuritySchemeModel
from fastapi.security import SecurityScopes
from fastapi.security.base import SecurityBase
from starlette.requests import HTTPConnection

from ..asgi import exchange_of
from ..auth import AuthPolicy, Backend
from ..errors import ConfigError
from ..exchange import Exchange
from ._common import HTTPRejected, exchange

__all__ = ["PLACEHOLDER", "require", "schemes_of"]

#: The scheme a ``require()`` without ``backend=`` lists until ``instrument()`` puts the
#: layer's own schemes in its place.
PLACEHOLDER = "kitmw"
_NAMES = {"jwt": "JWT", "basic": "Basic", "apikey": "APIKey"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def schemes_of(backends: Iterable[Backend]) -> list[tuple[str, dict[str, Any]]]:
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
            ex = exchange(scope)
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
    schemes = schemes_of(policy.backends)
    dependency = _SecuredRequire(policy, schemes) if schemes else _Require(policy)
    return Security(dependency, scopes=list(scopes))
