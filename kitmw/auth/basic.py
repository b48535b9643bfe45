"""HTTP Basic backend (RFC 7617) with constant-time checks."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import inspect
from base64 import b64decode
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from ..errors import ConfigError
from ..exchange import Exchange
from ._base import AuthError, Backend, Principal, quote

__all__ = ["Basic"]

Verify = Callable[[str, str], "bool | Awaitable[bool]"]


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


class Basic(Backend):
    """``Authorization: Basic`` with a user table or a ``verify`` callable.

    :param users: ``{name: password}``. Only SHA-256 digests are kept, and every entry
        is compared with :func:`hmac.compare_digest` on every request, so the time taken
        says nothing about which names exist. Meant for a handful of service accounts;
        use ``verify`` for a real user store.
    :param verify: ``verify(name, password) -> bool`` (or an awaitable of one on the
        async drivers). It runs on the event loop under ASGI: make it async if it does I/O.
    :param scopes: ``{name: scopes}`` granted to each user (default none).
    :param realm: the realm of the ``WWW-Authenticate`` challenge.
    """

    __slots__ = ("_challenge", "_scopes", "_users", "_verify")

    name = "basic"

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        verify: Verify | None = None,
        scopes: Mapping[str, Iterable[str]] | None = None,
        realm: str = "kitmw",
    ) -> None:
        if (users is None) == (verify is None):
            raise ConfigError("users / verify: give exactly one: users={name: password} or verify=callable")
        self._users: tuple[tuple[bytes, bytes], ...] = ()
        if users is not None:
            if not isinstance(users, Mapping) or not users:
                raise ConfigError("users: expected a non-empty mapping of name to password")
            for name, password in users.items():
                if not isinstance(name, str) or not isinstance(password, str) or not name or ":" in name:
                    raise ConfigError(
                        f"users: names and passwords must be strings (no ':' in names), got {name!r}"
                    )
            self._users = tuple((_digest(n), _digest(p)) for n, p in users.items())
        if verify is not None and not callable(verify):
            raise ConfigError(f"verify: expected a callable (name, password) -> bool, got {verify!r}")
        self._verify = verify
        self._scopes: dict[str, frozenset[str]] = {}
        for name, granted in (scopes or {}).items():
            if isinstance(granted, str):
                granted = granted.split()
            self._scopes[name] = frozenset(granted)
        if not isinstance(realm, str):
            raise ConfigError(f"realm: expected a string, got {realm!r}")
        self._challenge = f'Basic realm={quote(realm)}, charset="UTF-8"'

    def challenge(self, error: str | None = None, scope: str | None = None) -> str | None:
        # A 403 needs no challenge: asking for other credentials would not help.
        return None if error == "insufficient_scope" else self._challenge

    def openapi_scheme(self) -> dict[str, Any]:
        return {"type": "http", "scheme": "basic"}

    def _credentials(self, ex: Exchange) -> tuple[str, str] | None:
        value = ex.header("authorization")
        if value is None or len(value) < 6 or value[:6].lower() != "basic ":
            return None
        try:
            decoded = b64decode(value[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            raise AuthError("malformed Basic credentials") from exc
        name, sep, password = decoded.partition(":")
        if not sep or not name:
            raise AuthError("malformed Basic credentials")
        return name, password

    def _check_table(self, name: str, password: str) -> bool:
        name_digest, password_digest = _digest(name), _digest(password)
        ok = False
        for user, secret in self._users:  # no early exit: same work for every name
            same_user = hmac.compare_digest(user, name_digest)
            same_secret = hmac.compare_digest(secret, password_digest)
            ok |= same_user & same_secret
        return ok

    def _principal(self, name: str) -> Principal:
        return Principal(name, self._scopes.get(name, ()), None, "basic")

    def authenticate(self, ex: Exchange) -> Principal | None:
        credentials = self._credentials(ex)
        if credentials is None:
            return None
        name, password = credentials
        if self._verify is None:
            ok = self._check_table(name, password)
        else:
            result: Any = self._verify(name, password)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError("Basic(verify=...): an async verify cannot run on a sync (WSGI) driver")
            ok = bool(result)
        if not ok:
            raise AuthError("bad user name or password")
        return self._principal(name)

    @property
    def does_io(self) -> bool:
        return self._verify is not None

    async def aauthenticate(self, ex: Exchange) -> Principal | None:
        if self._verify is None:
            return self.authenticate(ex)
        credentials = self._credentials(ex)
        if credentials is None:
            return None
        name, password = credentials
        result: Any = self._verify(name, password)
        if inspect.isawaitable(result):
            result = await result
        if not result:
            raise AuthError("bad user name or password")
        return self._principal(name)
