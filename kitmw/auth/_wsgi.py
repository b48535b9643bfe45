"""Auth's WSGI side: the environ keys an application reads (docs/auth.md)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

__all__ = ["set_anonymous"]

_NO_SCOPES: frozenset[str] = frozenset()


def set_anonymous(environ: MutableMapping[str, Any]) -> None:
    """``environ["kitmw.user"]`` is ``None`` and ``environ["kitmw.scopes"]`` empty when a
    request passed without a caller (unless a layer outside set them); ``REMOTE_USER``
    stays unset, as CGI and PEP 3333 mean for "not authenticated"."""
    if "kitmw.user" not in environ:
        environ["kitmw.user"] = None
        environ["kitmw.scopes"] = _NO_SCOPES
