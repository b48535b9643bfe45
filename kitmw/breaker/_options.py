"""The breaker policies' options as typed dicts, for editors and type checkers.

``kitmw.CircuitBreaker(app, ...)``, ``stack(breaker={...})``, a transport's
``breaker={...}`` and ``kitmw.endpoint(..., breaker={...})`` take these keys; what each
one does is in the policy's docstring (the call policies pass the
:class:`~kitmw.breaker.Breaker` options on). tests/test_options.py keeps them equal to
the policies' keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    import pybreaker
    from prometheus_client import CollectorRegistry

    from .._types import Clock
    from ..exchange import Exchange
    from ._core import Breaker

__all__ = ["BreakerOptions", "ClientBreakerOptions", "EndpointBreakerOptions"]


class _StateOptions(TypedDict, total=False):
    """What every side takes: :class:`~kitmw.breaker.Breaker`'s options (its name aside),
    or a ready ``breaker``."""

    fail_max: int
    reset_timeout: float
    success_threshold: int
    half_open_max: int
    exclude: Sequence[type[BaseException] | Callable[[BaseException], bool]]
    listeners: Sequence[pybreaker.CircuitBreakerListener]
    storage: str | None
    clock: Clock | None
    registry: CollectorRegistry | None
    refresh_interval: float
    storage_timeout: float
    storage_retry: float
    breaker: Breaker | None


class BreakerOptions(_StateOptions, total=False):
    """Options of :class:`~kitmw.breaker.BreakerPolicy` (``kitmw.CircuitBreaker``, ``stack(breaker=...)``)."""

    name: str | None
    per_route: bool | None
    routes: Mapping[str, Mapping[str, Any]] | None
    max_routes: int
    exclude_paths: Sequence[str] | str | None
    is_failure: Callable[[Exchange], bool] | None


class _CallOptions(_StateOptions, total=False):
    name: str
    #: (result, error) -> True (a failure), False (a success) or None (not counted)
    failure: Callable[[Any, BaseException | None], bool | None] | None


class ClientBreakerOptions(_CallOptions, total=False):
    """Options of :class:`~kitmw.breaker.ClientBreakerPolicy` (a transport's ``breaker=``)."""

    max_origins: int


class EndpointBreakerOptions(_CallOptions, total=False):
    """Options of :class:`~kitmw.breaker.EndpointBreakerPolicy` (``kitmw.endpoint(breaker=...)``)."""
