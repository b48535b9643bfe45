"""Auth's WSGI side: the environ keys an application reads (docs/auth.md).

:func:`publish` is what :meth:`AuthPolicy.hooks <kitmw.auth.AuthPolicy.hooks>` binds for
the WSGI driver: ``environ["kitmw.user"]`` (the principal), ``environ["kitmw.scopes"]``
(a ``frozenset``), ``environ["kitmw.claims"]`` (JWT only) and ``REMOTE_USER`` (the
identity, what Django's ``RemoteUserMiddleware`` reads).
"""

from __future__ import annotations

from ..exchange import Exchange

__all__ = ["publish"]

_NO_SCOPES: frozenset[str] = frozenset()


def publish(ex: Exchange) -> None:
    """Put the exchange's caller (``ex.user``) in the environ, or nobody: then
    ``environ["kitmw.user"]`` is ``None`` and ``environ["kitmw.scopes"]`` empty (unless a
    layer outside set them) and ``REMOTE_USER`` stays unset, as CGI and PEP 3333 mean for
    "not authenticated"."""
    environ = ex.native
    user = ex.user
    if user is None:
        if "kitmw.user" not in environ:
            environ["kitmw.user"] = None
            environ["kitmw.scopes"] = _NO_SCOPES
        return
    environ["kitmw.user"] = user
    environ["kitmw.scopes"] = ex.scopes
    claims = ex.claims
    if claims is not None:
        environ["kitmw.claims"] = claims
    environ["REMOTE_USER"] = ex.principal
