"""Auth: Bearer JWT (static keys or JWKS), HTTP Basic and API keys, with scopes.

``kitmw.Auth`` / ``stack(auth=...)`` run :class:`AuthPolicy` with one or more
backends. PyJWT is an optional extra (``pip install 'kitmw[jwt]'``): this package
imports without it, only constructing :class:`JWT` needs it. See ``docs/auth.md``.
"""

from __future__ import annotations

from ._base import AuthError, AuthResult, Backend, KeysUnavailable, Principal
from ._options import AuthOptions
from .apikey import APIKey
from .basic import Basic
from .jwt import JWT, JWKSCache
from .policy import AuthPolicy

__all__ = [
    "JWT",
    "APIKey",
    "AuthError",
    "AuthOptions",
    "AuthPolicy",
    "AuthResult",
    "Backend",
    "Basic",
    "JWKSCache",
    "KeysUnavailable",
    "Principal",
]
