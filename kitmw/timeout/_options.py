"""The timeout policies' options as typed dicts, for editors and type checkers.

``kitmw.Timeout(app, ...)``, ``stack(timeout={...})``, a transport's ``timeout={...}``
and ``kitmw.endpoint(..., timeout={...})`` take these keys (a bare number is
``seconds``); what each one does is in the policy's docstring. tests/test_options.py
keeps them equal to the policies' keyword arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .._types import Clock

__all__ = ["ClientTimeoutOptions", "EndpointTimeoutOptions", "TimeoutOptions"]


class _DeadlineOptions(TypedDict, total=False):
    registry: CollectorRegistry | None
    clock: Clock | None


class ClientTimeoutOptions(_DeadlineOptions, total=False):
    """Options of :class:`~kitmw.timeout.ClientTimeoutPolicy` (a transport's ``timeout=``)."""

    seconds: float | None


class _Seconds(TypedDict):
    seconds: float  # required (a total base keeps __required_keys__ right at runtime)


class EndpointTimeoutOptions(_Seconds, _DeadlineOptions, total=False):
    """Options of :class:`~kitmw.timeout.EndpointTimeoutPolicy` (``kitmw.endpoint(timeout=...)``)."""


class TimeoutOptions(ClientTimeoutOptions, total=False):
    """Options of :class:`~kitmw.timeout.TimeoutPolicy` (``kitmw.Timeout``, ``stack(timeout=...)``)."""

    routes: Mapping[str, float | None] | None
    exclude_paths: Iterable[str] | str | None
    status: int
