"""Auth's ASGI side: Starlette's user objects, the convention ``request.user`` reads.

The one module of the auth package that imports Starlette for the request path
(``_base.Principal`` subclasses ``BaseUser`` so the principal itself is one).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from starlette.authentication import AuthCredentials, UnauthenticatedUser

__all__ = ["set_anonymous"]

_NOBODY = UnauthenticatedUser()  # stateless: one object serves every request


def set_anonymous(scope: MutableMapping[str, Any]) -> None:
    """Starlette's "nobody" (``AuthenticationMiddleware`` sets the same) unless a layer
    outside already put a user there: ``request.user.is_authenticated`` is false and
    ``request.auth.scopes`` empty, instead of an ``AssertionError`` (a 500) in the handler."""
    if "user" not in scope:
        scope["user"] = _NOBODY
        scope["auth"] = AuthCredentials()  # a fresh one: its scopes list is mutable
