"""Auth's ASGI side: Starlette's user objects, the convention ``request.user`` reads.

The one module of the auth package that imports Starlette. :func:`publisher` makes
what :meth:`AuthPolicy.hooks <kitmw.auth.AuthPolicy.hooks>` binds for ASGI drivers:

* an authenticated caller goes to ``scope["user"]`` (the principal, as a subclass of both
  :class:`~kitmw.auth.Principal` and Starlette's ``BaseUser``) and ``scope["auth"]``
  (``AuthCredentials`` with its scopes, sorted), so ``request.user``,
  ``request.auth.scopes`` and Starlette's ``requires()`` work, on websockets too;
* a request let through without a caller gets Starlette's "nobody", as Starlette's
  ``AuthenticationMiddleware`` sets it, unless a layer outside already put a user there.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from starlette.authentication import AuthCredentials, BaseUser, UnauthenticatedUser

from .._cache import BoundedCache
from ..exchange import Exchange
from ._base import Principal

__all__ = ["publisher", "starlette_user"]

_NOBODY = UnauthenticatedUser()  # stateless: one object serves every request
#: Principals remembered by one publisher with their Starlette twin, before it starts over.
_MAX_TWINS = 1024


def publisher() -> Callable[[Exchange], None]:
    """``publish(ex)``: put the exchange's caller (``ex.user``), or nobody, in the scope.

    The twin of a principal (and its sorted scopes) is made once and reused while the
    backend hands out the same object (the JWT cache, API keys), in a cache owned by
    this publisher; a principal is immutable, so the twin stays right.
    """
    twins: BoundedCache[int, tuple[Any, Any, tuple[str, ...]]] = BoundedCache(_MAX_TWINS)
    twin_of = twins.get

    def publish(ex: Exchange) -> None:
        scope = ex.native
        user = ex.user
        if user is None:
            # request.user.is_authenticated is false and request.auth.scopes empty, instead
            # of an AssertionError (a 500) in a handler that reads them.
            if "user" not in scope:
                scope["user"] = _NOBODY
                scope["auth"] = AuthCredentials()  # a fresh one: its scopes list is mutable
            return
        found = twin_of(id(user))
        if found is None or found[0] is not user:
            found = (user, starlette_user(user), tuple(sorted(ex.scopes)))
            if isinstance(user, Principal):  # immutable: the entry stays right
                twins.put(id(user), found)  # holding ``user`` keeps its id unique
        scope["user"] = found[1]
        scope["auth"] = AuthCredentials(found[2])  # a fresh one: its scopes list is mutable

    return publish


def starlette_user(user: Any) -> Any:
    """``user`` as a Starlette ``BaseUser``: a :class:`Principal` becomes an equal object of
    a subclass of its class and ``BaseUser``; anything else is returned as it is."""
    if isinstance(user, BaseUser) or not isinstance(user, Principal):
        return user
    cls, names = _twin_class(type(user))  # type: ignore[arg-type]  # a class is hashable
    twin: Any = object.__new__(cls)
    for name in names:
        try:
            object.__setattr__(twin, name, object.__getattribute__(user, name))
        except AttributeError:  # a slot left unset
            pass
    state = getattr(user, "__dict__", None)
    if state:
        twin.__dict__.update(state)
    return twin


@lru_cache(maxsize=64)
def _twin_class(cls: Any) -> tuple[type, tuple[str, ...]]:
    """(``cls`` and ``BaseUser`` in one class, under ``cls``'s name; the slots to copy)."""
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{name}"  # a private (mangled) slot
            names.append(name)
    namespace = {"__slots__": (), "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
    return type(cls.__name__, (cls, BaseUser), namespace), tuple(names)
