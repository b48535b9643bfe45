"""The auth policy's options as a typed dict, for editors and type checkers.

``kitmw.Auth(app, ...)`` and ``stack(auth={...})`` take these keys (a bare backend, or a
list of them, is ``backend``); what each one does is in :class:`~kitmw.auth.AuthPolicy`'s
docstring. tests/test_options.py keeps them equal to its keyword arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ._base import Backend

__all__ = ["AuthOptions"]


class _Backend(TypedDict):
    # Required keys live in a total base, not in Required[...]: a string annotation hides
    # Required from the runtime, and __required_keys__ stays right this way.
    backend: Backend | Iterable[Backend]


class AuthOptions(_Backend, total=False):
    """Options of :class:`~kitmw.auth.AuthPolicy` (``kitmw.Auth``, ``stack(auth=...)``)."""

    scopes: Mapping[str, Iterable[str]] | None
    exclude_paths: Iterable[str] | str | None
    allow_options: bool
    optional: bool
    registry: CollectorRegistry | None
