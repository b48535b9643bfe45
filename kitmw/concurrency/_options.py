"""The concurrency policies' options as typed dicts, for editors and type checkers.

``kitmw.ConcurrencyLimit(app, ...)``, ``stack(concurrency={...})``, a transport's
``concurrency={...}`` and ``kitmw.endpoint(..., concurrency={...})`` take these keys (a
bare int is ``limit``); what each one does is in the policy's docstring.
tests/test_options.py keeps them equal to the policies' keyword arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Literal, TypedDict

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .._types import Clock
    from ._algorithms import LimitAlgorithm

__all__ = ["ClientConcurrencyOptions", "ConcurrencyOptions", "EndpointConcurrencyOptions"]


class _SlotOptions(TypedDict, total=False):
    limit: int | None
    #: None or False (a static ``limit``), ``"gradient"`` or True, ``"aimd"``, or an algorithm object
    adaptive: Literal["aimd", "gradient"] | bool | LimitAlgorithm | None
    max_wait: float
    max_queue: int | None
    registry: CollectorRegistry | None
    clock: Clock | None


class ConcurrencyOptions(_SlotOptions, total=False):
    """Options of :class:`~kitmw.concurrency.ConcurrencyPolicy` (``kitmw.ConcurrencyLimit``,
    ``stack(concurrency=...)``)."""

    per_route: bool
    routes: Mapping[str, int | None] | None
    retry_after: int
    exclude_paths: Iterable[str] | str | None
    max_routes: int


class ClientConcurrencyOptions(_SlotOptions, total=False):
    """Options of :class:`~kitmw.concurrency.ClientConcurrencyPolicy` (a transport's ``concurrency=``)."""

    max_origins: int


class EndpointConcurrencyOptions(_SlotOptions, total=False):
    """Options of :class:`~kitmw.concurrency.EndpointConcurrencyPolicy` (``kitmw.endpoint(concurrency=...)``)."""
