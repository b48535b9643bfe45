"""The retry policies' options as typed dicts, for editors and type checkers.

A transport's ``retry={...}`` and ``kitmw.endpoint(..., retry={...})`` take these keys
(a bare int is ``attempts``): a ready :class:`~kitmw.retry.Retry` as ``retry``, or
:class:`~kitmw.retry.Retry`'s own options. tests/test_options.py keeps them equal to
the policies' keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .._types import Clock
    from ._retry import Retry, RetryBudget

__all__ = ["ClientRetryOptions", "EndpointRetryOptions"]


class _RetryOptions(TypedDict, total=False):
    retry: Retry | None
    registry: CollectorRegistry | None
    # Retry's options
    attempts: int
    methods: Iterable[str]
    statuses: Iterable[int]
    backoff_base: float
    backoff_max: float
    retry_after_max: float
    deadline: float | None
    budget: RetryBudget | bool | None
    budget_ratio: float
    budget_min_per_second: float
    budget_window: float
    retry_on: Callable[[BaseException], bool] | type[BaseException] | tuple[type[BaseException], ...] | None
    sleep: Callable[[float], Any] | None
    random: Callable[[], float]
    clock: Clock


class ClientRetryOptions(_RetryOptions, total=False):
    """Options of :class:`~kitmw.retry.ClientRetryPolicy` (a transport's ``retry=``)."""


class EndpointRetryOptions(_RetryOptions, total=False):
    """Options of :class:`~kitmw.retry.EndpointRetryPolicy` (``kitmw.endpoint(retry=...)``)."""
