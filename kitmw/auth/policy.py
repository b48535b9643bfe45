"""The auth policy: try backends in order, check scopes, answer 401/403 by the RFCs."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, ClassVar

from .._paths import PathMatcher
from ..chain import Hooks
from ..errors import ConfigError, Rejection
from ..exchange import Exchange, Policy
from ._base import AuthError, Backend, Principal

__all__ = ["AuthPolicy"]

#: Tells the application who the caller is (or that there is none), the protocol's way.
Publish = Callable[[Exchange], None]
#: Runs of slashes: werkzeug (Flask) serves ``//admin/x`` as ``/admin/x``, so rules must too.
_SLASHES = re.compile(r"//+")


class _Rule:
    __slots__ = ("forbidden", "prefix", "required", "under")

    def __init__(self, prefix: str, required: frozenset[str], forbidden: tuple[Rejection, ...]) -> None:
        self.prefix = prefix
        self.under = "/" if prefix == "/" else prefix + "/"
        self.required = required
        self.forbidden = forbidden


class AuthPolicy(Policy):
    """Authenticate every request with the first backend that recognises its credentials.

    :param backend: a backend (:class:`~kitmw.auth.JWT`, :class:`~kitmw.auth.Basic`,
        :class:`~kitmw.auth.APIKey`, or your own :class:`~kitmw.auth.Backend`) or a list
        of them, tried in order; credentials one rejects are offered to the next.
    :param scopes: ``{path prefix: required scopes}``; the longest matching prefix wins,
        a prefix matches whole segments (``/admin`` covers ``/admin/x``, not ``/admins``).
        An authenticated caller without every required scope gets a 403.
    :param exclude_paths: paths served without authentication (health checks).
    :param allow_options: let CORS preflights (``OPTIONS`` with
        ``Access-Control-Request-Method``) through unauthenticated, to any path. Off by
        default: a view that handles ``OPTIONS`` itself would run without a caller. Keep
        CORS working by putting the CORS middleware outside auth instead (docs/auth.md).
    :param optional: let requests without credentials through anonymously
        (``request.user.is_authenticated`` is false), except under a ``scopes`` prefix.
        Bad credentials are still a 401.
    :param registry: Prometheus registry counting JWKS fetch failures
        (``kitmw_storage_errors_total{component="jwks"}``).

    The principal, scopes and claims land on the exchange (access log, rate-limit keys)
    and, under ASGI, in ``scope["user"]``/``scope["auth"]`` so Starlette's
    ``request.user`` and ``request.auth.scopes`` work (under WSGI in ``environ``).
    A request let through without a caller (excluded path, admitted preflight,
    ``optional``) gets Starlette's unauthenticated user, or ``environ["kitmw.user"]``
    ``None``, so a handler reading the user never fails. A refused websocket handshake
    gets the same 401/403 (see :class:`kitmw.asgi.Middleware` for servers without the
    ``websocket.http.response`` extension).
    """

    __slots__ = (
        "_allow_options",
        "_async",
        "_backends",
        "_exclude",
        "_forbidden",
        "_invalid",
        "_io",
        "_missing",
        "_optional",
        "_rules",
        "_single",
        "registry",
    )

    name: ClassVar[str] = "auth"
    handles_websocket: ClassVar[bool] = True
    shared_options: ClassVar[tuple[str, ...]] = ("exclude_paths", "registry")

    def __init__(
        self,
        *,
        backend: Backend | Iterable[Backend],
        scopes: Mapping[str, Iterable[str]] | None = None,
        exclude_paths: Iterable[str] | str | None = (),
        allow_options: bool = False,
        optional: bool = False,
        registry: Any = None,
    ) -> None:
        backends = self._check_backends(backend)
        self._backends = backends
        self._async = tuple(bool(getattr(b, "does_io", False)) for b in backends)
        self._io = any(self._async)
        # One backend (the common case): enter() calls it without the loop.
        self._single = backends[0] if len(backends) == 1 else None
        matcher = PathMatcher(exclude_paths)
        self._exclude = matcher if matcher else None
        self._allow_options = bool(allow_options)
        self._optional = bool(optional)
        self.registry = registry
        for b in backends:
            bind = getattr(b, "bind_registry", None)
            if callable(bind):
                bind(registry)

        def challenges(
            error_at: int = -1, error: str = "invalid_token", scope: str | None = None
        ) -> tuple[tuple[str, str], ...]:
            found = []
            for i, b in enumerate(backends):
                value = b.challenge(error if i == error_at else None, scope if i == error_at else None)
                if value:
                    found.append(("WWW-Authenticate", value))
            return tuple(found)

        self._missing = Rejection(401, "unauthorized", headers=challenges())
        self._invalid = tuple(
            Rejection(401, "unauthorized", headers=challenges(i)) for i in range(len(backends))
        )

        def forbidden(at: int, listed: str) -> Rejection:
            b = backends[at]
            if not b.challenge("insufficient_scope", listed):  # Basic, API keys: no 403 challenge
                return Rejection(403, "forbidden")
            return Rejection(403, "forbidden", headers=challenges(at, "insufficient_scope", listed))

        self._forbidden = forbidden
        rules: list[_Rule] = []
        if scopes is not None:
            if not isinstance(scopes, Mapping):
                raise ConfigError(f"scopes: expected a mapping of path prefix to scopes, got {scopes!r}")
            for prefix, required in scopes.items():
                if not isinstance(prefix, str) or not prefix.startswith("/"):
                    raise ConfigError(f"scopes: each prefix must be a path starting with '/', got {prefix!r}")
                if isinstance(required, str):
                    required = required.split()
                needed = frozenset(required)
                if not all(isinstance(s, str) and s and " " not in s for s in needed):
                    raise ConfigError(
                        f"scopes: {prefix!r} needs scope names without spaces, got {required!r}"
                    )
                listed = " ".join(sorted(needed))
                denied = tuple(forbidden(i, listed) for i in range(len(backends)))
                rules.append(_Rule(prefix.rstrip("/") or "/", needed, denied))
        rules.sort(key=lambda r: len(r.prefix), reverse=True)
        self._rules = tuple(rules)

    @staticmethod
    def _check_backends(backend: Any) -> tuple[Backend, ...]:
        if backend is None:
            raise ConfigError(
                "backend: required: kitmw.auth.JWT(...), Basic(...), APIKey(...) or a list of them"
            )
        items = tuple(backend) if isinstance(backend, (list, tuple)) else (backend,)
        if not items:
            raise ConfigError("backend: the list of backends is empty")
        for item in items:
            if not callable(getattr(item, "authenticate", None)) or not callable(
                getattr(item, "challenge", None)
            ):
                raise ConfigError(
                    f"backend: expected kitmw.auth backends (JWT, Basic, APIKey or a Backend subclass), got {item!r}"
                )
        return items

    @property
    def backends(self) -> tuple[Backend, ...]:
        """The backends, in the order they are tried."""
        return self._backends

    def authorize(self, ex: Exchange, scopes: Iterable[str] = ()) -> Rejection | None:
        """The answer for a handler of ``ex`` that requires ``scopes``, once this policy ran.

        ``None`` when the caller holds every scope; the 401 of a request without
        credentials when there is no caller (an excluded path, ``optional``); else the 403
        a ``scopes`` rule gives, with the challenge of the backend that admitted the caller.
        What ``kitmw.fastapi.require()`` answers with when a kitmw layer authenticated.
        """
        user = ex.user
        if user is None:
            return self._missing
        needed = frozenset(scopes)
        if needed <= ex.scopes:
            return None
        name = getattr(user, "backend", None)
        at = next((i for i, b in enumerate(self._backends) if b.name == name), 0)
        return self._forbidden(at, " ".join(sorted(needed)))

    # -- decisions (no I/O) ------------------------------------------------------------------

    def _skip(self, ex: Exchange) -> bool:
        exclude = self._exclude
        if exclude is not None and exclude(ex.path):
            return True
        return (
            self._allow_options
            and ex.method == "OPTIONS"
            and ex.header("access-control-request-method") is not None
        )

    def _rule(self, path: str) -> _Rule | None:
        if "//" in path:
            path = _SLASHES.sub("/", path)
        for rule in self._rules:
            if path == rule.prefix or path.startswith(rule.under):
                return rule
        return None

    def _rules_for(self, ex: Exchange) -> tuple[_Rule, ...]:
        """Rules for the full path and, for an app mounted under a prefix
        (:attr:`~kitmw.exchange.Exchange.mount_prefix`: ASGI ``root_path``, WSGI
        ``SCRIPT_NAME``), for the path the app routes on: a prefix written either way
        protects the route."""
        path = ex.path
        rule = self._rule(path)
        mount = ex.mount_prefix
        if mount and path.startswith(mount) and path[len(mount) : len(mount) + 1] == "/":
            inner = self._rule(path[len(mount) :])
            if inner is not None and inner is not rule:
                return (inner,) if rule is None else (rule, inner)
        return () if rule is None else (rule,)

    def _admit(self, ex: Exchange, principal: Principal, at: int, publish: Publish | None) -> Rejection | None:
        # getattr: a custom backend may return any object with an ``identity`` (a
        # Starlette BaseUser).
        scopes = getattr(principal, "scopes", ())
        ex.set_user(principal.identity, scopes, getattr(principal, "claims", None), principal)
        if self._rules:
            for rule in self._rules_for(ex):
                if not rule.required <= ex.scopes:
                    return rule.forbidden[at]
        if publish is not None:
            publish(ex)
        return None

    def _refuse(self, ex: Exchange, error_at: int, publish: Publish | None) -> Rejection | None:
        if error_at >= 0:
            return self._invalid[error_at]
        if self._optional and not self._rules_for(ex):
            if publish is not None:
                publish(ex)  # nobody
            return None
        return self._missing

    # -- the policy protocol -------------------------------------------------------------

    @property
    def enter_awaits(self) -> bool:
        """Only a backend doing I/O (a JWKS fetch) makes the async drivers await ``aenter``;
        static keys, Basic and API keys are decided in ``enter`` (no coroutine per request)."""
        return self._io

    def hooks(self, protocol: str, is_async: bool) -> Hooks:
        """``enter`` (or ``aenter``) bound to ``protocol``'s way of telling the application
        who the caller is: Starlette's ``scope["user"]``/``scope["auth"]`` (``auth._asgi``),
        the WSGI environ keys (``auth._wsgi``); nothing elsewhere (the exchange only)."""
        publish: Publish | None = None
        if protocol == "asgi":
            from ._asgi import publisher

            publish = publisher()
        elif protocol == "wsgi":
            from ._wsgi import publish
        if is_async and self.enter_awaits:
            return Hooks(enter=partial(self._aenter_with, publish), enter_awaits=True)
        return Hooks(enter=partial(self._enter_with, publish))

    def enter(self, ex: Exchange) -> Rejection | None:
        """Decide for ``ex`` and record the caller on the exchange (nothing published)."""
        return self._enter_with(None, ex)

    async def aenter(self, ex: Exchange) -> Rejection | None:
        return await self._aenter_with(None, ex)

    def _enter_with(self, publish: Publish | None, ex: Exchange) -> Rejection | None:
        if self._skip(ex):
            if publish is not None:
                publish(ex)  # nobody
            return None
        single = self._single
        if single is not None:  # the loop below for one backend, unrolled
            try:
                principal = single.authenticate(ex)
            except AuthError:
                return self._invalid[0]
            if principal is not None:
                return self._admit(ex, principal, 0, publish)
            return self._refuse(ex, -1, publish)
        error_at = -1
        for i, backend in enumerate(self._backends):
            try:
                principal = backend.authenticate(ex)
            except AuthError:
                if error_at < 0:
                    error_at = i
                continue
            if principal is not None:
                return self._admit(ex, principal, i, publish)
        return self._refuse(ex, error_at, publish)

    async def _aenter_with(self, publish: Publish | None, ex: Exchange) -> Rejection | None:
        if not self._io:
            return self._enter_with(publish, ex)
        if self._skip(ex):
            if publish is not None:
                publish(ex)  # nobody
            return None
        error_at = -1
        for i, backend in enumerate(self._backends):
            try:
                if self._async[i]:
                    principal = await backend.aauthenticate(ex)
                else:
                    principal = backend.authenticate(ex)
            except AuthError:
                if error_at < 0:
                    error_at = i
                continue
            if principal is not None:
                return self._admit(ex, principal, i, publish)
        return self._refuse(ex, error_at, publish)
