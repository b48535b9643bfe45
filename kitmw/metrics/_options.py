"""The metrics policies' options as typed dicts, for editors and type checkers.

``kitmw.Metrics(app, ...)``, ``stack(metrics={...})``, a transport's ``metrics={...}``
and ``kitmw.endpoint(..., metrics={...})`` take these keys; what each one does is in
the policy's docstring. tests/test_options.py keeps them equal to the policies'
keyword arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["ClientMetricsOptions", "EndpointMetricsOptions", "MetricsOptions"]


class EndpointMetricsOptions(TypedDict, total=False):
    """Options of :class:`~kitmw.metrics.EndpointMetricsPolicy` (``kitmw.endpoint(metrics=...)``)."""

    registry: CollectorRegistry | None
    buckets: Sequence[float] | None


class ClientMetricsOptions(EndpointMetricsOptions, total=False):
    """Options of :class:`~kitmw.metrics.ClientMetricsPolicy` (a transport's ``metrics=``)."""

    status_class: bool


class MetricsOptions(ClientMetricsOptions, total=False):
    """Options of :class:`~kitmw.metrics.MetricsPolicy` (``kitmw.Metrics``, ``stack(metrics=...)``)."""

    expose: str | None
    exclude_paths: Iterable[str] | str | None
    counts_request_bytes: bool
