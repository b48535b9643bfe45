"""The endpoint-side metrics policy: calls and durations of ``kitmw.endpoint`` functions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

from prometheus_client import CollectorRegistry

from .._cache import BoundedCache
from ..exchange import Exchange, Policy
from ._instruments import (
    add_writer,
    counter_exemplar_writer,
    exemplar_ok,
    histogram_exemplar_writer,
    histogram_writer,
    instruments,
)

__all__ = ["EndpointMetricsPolicy"]

_Add = Callable[[float], None]
#: One series' writers: count, count with exemplar, duration, duration with exemplar.
_Series = tuple[_Add, Callable[[dict[str, str]], None], _Add, Callable[[float, dict[str, str]], None]]

#: Bound on cached label children: one per (endpoint, outcome), never reached by honest
#: code; past it the cache starts over (the metrics are unaffected).
_MAX_CHILDREN = 4096


class EndpointMetricsPolicy(Policy):
    """``kitmw_endpoint_calls_total`` and ``kitmw_endpoint_duration_seconds`` of each call.

    Labels ``endpoint`` (the name given to :func:`kitmw.endpoint`) and ``outcome``:
    ``ok`` (the function returned), ``error`` (it raised) or ``rejected`` (a policy
    refused the call: an open breaker, a rate limit, a timeout, a full concurrency
    limit). With a trace id on the call (tracing on), the observations carry it as
    an exemplar.

    :param registry: prometheus-client registry (default its global ``REGISTRY``).
    :param buckets: duration histogram bounds in seconds; policies sharing a registry
        must agree on them.
    """

    name: ClassVar[str] = "metrics"
    shared_options: ClassVar[tuple[str, ...]] = ("registry",)

    def __init__(self, *, registry: CollectorRegistry | None = None, buckets: Sequence[float] | None = None) -> None:
        inst = instruments(registry)
        self.registry = inst.registry
        self.instruments = inst
        inst.use_buckets("endpoint_duration", buckets)
        self._calls = inst.endpoint_calls
        self._duration = inst.endpoint_duration
        self._children: BoundedCache[tuple[str, str], _Series] = BoundedCache(_MAX_CHILDREN)
        self._series = self._children.get  # bound once: a plain dict's lookup per call

    def exit(self, ex: Exchange) -> None:
        if ex.rejection is not None:
            outcome = "rejected"
        elif ex.error is None:
            outcome = "ok"
        else:
            outcome = "error"
        key = (ex.route_label(), outcome)
        series = self._series(key)
        if series is None:
            series = self._make_children(key)
        count, count_exemplar, duration, duration_exemplar = series
        seconds = (ex.end_ns - ex.start_ns) / 1e9 if ex.end_ns else 0.0
        trace_id = ex.trace_id
        if trace_id is None or not exemplar_ok(trace_id):
            count(1)
            duration(seconds)
        else:
            exemplar = {"trace_id": trace_id}
            count_exemplar(exemplar)
            duration_exemplar(seconds, exemplar)

    def _make_children(self, key: tuple[str, str]) -> _Series:
        calls = self._calls.labels(*key)
        duration = self._duration.labels(*key)
        series: _Series = (
            add_writer(calls),
            counter_exemplar_writer(calls),
            histogram_writer(duration),
            histogram_exemplar_writer(duration),
        )
        return self._children.put(key, series)
