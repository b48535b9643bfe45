"""What every auth backend shares: the user object, the error, the backend protocol."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from ..errors import KitmwError
from ..exchange import Exchange

__all__ = ["AuthError", "AuthResult", "Backend", "KeysUnavailable", "Principal", "quote"]


class AuthError(KitmwError):
    """Credentials were presented but are not valid: the request gets a 401.

    Backends raise it (never a foreign error) so the policy can tell "bad credentials"
    (401 with ``error="invalid_token"``) from "no credentials for me" (``None``).
    """


class KeysUnavailable(AuthError):
    """No key could be found for a token because the JWKS endpoint is unreachable."""


class Principal:
    """An authenticated caller: Starlette's ``request.user``, WSGI's ``environ["kitmw.user"]``.

    It has the interface of :class:`starlette.authentication.BaseUser` (``.identity``,
    ``.display_name``, ``.is_authenticated``), with ``.scopes`` and ``.claims`` (the
    verified JWT payload) on top, without importing Starlette: a Flask or Django app
    never loads it. Under ASGI, ``request.user`` is this principal as a subclass of both
    this class and ``BaseUser`` (made by auth's ASGI side), so ``isinstance`` checks
    against either hold there. Immutable: a backend may hand the same object to many
    requests (the JWT cache does).
    """

    __slots__ = ("__weakref__", "_identity", "backend", "claims", "scopes")

    def __init__(
        self,
        identity: str,
        scopes: Iterable[str] = (),
        claims: Mapping[str, Any] | None = None,
        backend: str = "",
    ) -> None:
        self._identity = identity
        self.scopes: frozenset[str] = frozenset(scopes)
        self.claims = claims
        self.backend = backend

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def display_name(self) -> str:
        return self._identity

    @property
    def is_authenticated(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"Principal({self._identity!r}, scopes={sorted(self.scopes)!r}, backend={self.backend!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Principal):
            return NotImplemented
        return (self._identity, self.scopes, self.backend) == (other._identity, other.scopes, other.backend)

    def __hash__(self) -> int:
        return hash((self._identity, self.scopes, self.backend))


#: What a backend returns for valid credentials (the same class as :class:`Principal`).
AuthResult = Principal


class Backend:
    """The protocol of auth backends (subclass it to write your own).

    ``authenticate(ex)`` returns a :class:`Principal`, ``None`` when the request carries
    no credentials for this backend (another backend may take them), or raises
    :class:`AuthError` for credentials that are not valid. It is free of network I/O
    unless ``does_io`` is true, in which case the async drivers call ``aauthenticate``.
    ``challenge(error, scope)`` is the ``WWW-Authenticate`` value of a 401/403.
    """

    __slots__ = ()

    #: Short name, recorded on the principal (``jwt``, ``basic``, ``apikey``).
    name: ClassVar[str] = "backend"

    @property
    def does_io(self) -> bool:
        """True if ``authenticate`` may do network I/O (the async side then awaits it)."""
        return False

    def authenticate(self, ex: Exchange) -> Principal | None:
        raise NotImplementedError

    async def aauthenticate(self, ex: Exchange) -> Principal | None:
        return self.authenticate(ex)

    def challenge(self, error: str | None = None, scope: str | None = None) -> str | None:
        """The ``WWW-Authenticate`` value for this backend (``None`` for none)."""
        return None

    def openapi_scheme(self) -> dict[str, Any] | None:
        """Where this backend reads credentials, as an OpenAPI Security Scheme Object
        (``{"type": "http", "scheme": "bearer"}``), or ``None`` to leave it out of OpenAPI.
        ``kitmw.fastapi`` lists it, so Swagger UI's Authorize asks for the right thing."""
        return None


def quote(value: str) -> str:
    """An RFC 7235 quoted-string (realms and scopes are configuration, never user input)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
