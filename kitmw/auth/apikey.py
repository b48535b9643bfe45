"""API keys from a request header, looked up by SHA-256 digest."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigError
from ..exchange import Exchange
from ._base import AuthError, Backend, Principal, quote

__all__ = ["APIKey"]


class APIKey(Backend):
    """An API key in a header (``X-API-Key`` by default) mapped to a principal.

    Only SHA-256 digests of the keys are kept, and a presented key is looked up by its
    digest: the stored keys are never compared with attacker-chosen bytes, so response
    timing can reveal at most bits of a digest of the attacker's own guess, nothing
    about a valid key. Pass ``hashed=True`` to configure hex digests instead of keys,
    so the keys themselves never sit in configuration.

    :param keys: ``{key: principal}`` (or ``{sha256 hex: principal}`` with ``hashed``).
    :param header: the request header carrying the key.
    :param scopes: ``{principal: scopes}`` granted to each principal (default none).
    :param hashed: the mapping's keys are SHA-256 hex digests.
    :param realm: the realm of the ``WWW-Authenticate`` challenge.
    """

    __slots__ = ("_challenge", "_header", "_keys", "_scheme")

    name = "apikey"

    def __init__(
        self,
        *,
        keys: Mapping[str, str],
        header: str = "X-API-Key",
        scopes: Mapping[str, Iterable[str]] | None = None,
        hashed: bool = False,
        realm: str = "kitmw",
    ) -> None:
        if not isinstance(keys, Mapping) or not keys:
            raise ConfigError("keys: expected a non-empty mapping of API key to principal")
        granted: dict[str, frozenset[str]] = {}
        for principal, values in (scopes or {}).items():
            granted[principal] = frozenset(values.split() if isinstance(values, str) else values)
        table: dict[bytes, Principal] = {}
        for key, principal in keys.items():
            if not isinstance(key, str) or not key or not isinstance(principal, str) or not principal:
                raise ConfigError("keys: keys and principals must be non-empty strings")
            if hashed:
                try:
                    digest = bytes.fromhex(key)
                except ValueError:
                    digest = b""
                if len(digest) != 32:
                    raise ConfigError("keys: with hashed=True each key must be a SHA-256 hex digest")
            else:
                digest = hashlib.sha256(key.encode("utf-8")).digest()
            table[digest] = Principal(principal, granted.get(principal, ()), None, "apikey")
        self._keys = table
        if not isinstance(header, str) or not header:
            raise ConfigError(f"header: expected a header name, got {header!r}")
        self._header = header.lower()
        if not isinstance(realm, str):
            raise ConfigError(f"realm: expected a string, got {realm!r}")
        self._challenge = f"APIKey realm={quote(realm)}, header={quote(header)}"
        self._scheme = {"type": "apiKey", "in": "header", "name": header}

    def challenge(self, error: str | None = None, scope: str | None = None) -> str | None:
        # A 403 needs no challenge: asking for other credentials would not help.
        return None if error == "insufficient_scope" else self._challenge

    def openapi_scheme(self) -> dict[str, Any]:
        return dict(self._scheme)

    def authenticate(self, ex: Exchange) -> Principal | None:
        value = ex.header(self._header)
        if value is None:
            return None
        value = value.strip()
        try:
            raw = value.encode("latin-1")  # drivers decode header bytes as latin-1: undo it
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "replace")
        principal = self._keys.get(hashlib.sha256(raw).digest())
        if principal is None:
            raise AuthError("unknown API key")
        return principal
