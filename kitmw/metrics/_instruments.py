"""Every kitmw metric, created once per registry.

Starlette may build a middleware more than once, tests build many apps, and the rate
limit, breaker and httpx policies all write to the same registry: registering metrics in
``__init__`` would raise prometheus-client's "Duplicated timeseries". So metrics live in
one :class:`Instruments` object per registry, cached by the registry itself (a weak
mapping: a registry that goes away takes its instruments with it), and each metric is
registered on first use only, so a service using only the rate limit does not export
empty ``http_server_*`` families.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.samples import Exemplar

from ..concerns import instruments as declared_instruments
from ..errors import ConfigError

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_SIZE_BUCKETS",
    "Instruments",
    "add_writer",
    "counter_exemplar_writer",
    "exemplar_ok",
    "histogram_exemplar_writer",
    "histogram_writer",
    "instruments",
]

#: Latency buckets in seconds: the OpenTelemetry HTTP semantic-convention defaults.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

#: Body size buckets in bytes (powers of 4 from 64 B to 16 MiB).
DEFAULT_SIZE_BUCKETS: tuple[float, ...] = tuple(float(4**i) for i in range(3, 13))

_KINDS: dict[str, type[Any]] = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
_BUCKETS = {"size": DEFAULT_SIZE_BUCKETS}


def _spec_table() -> dict[str, tuple[type[Any], str, str, tuple[str, ...], dict[str, Any]]]:
    """attribute -> (kind, name, documentation, labels, extra keyword arguments), from
    the instruments each concern declares in :mod:`kitmw.concerns`."""
    table = {}
    for attr, inst in declared_instruments().items():
        extra = {k: (_BUCKETS[v] if k == "buckets" else v) for k, v in inst.options}
        table[attr] = (_KINDS[inst.kind], inst.name, inst.documentation, inst.labels, extra)
    return table


_SPECS = _spec_table()

_HISTOGRAMS_WITH_BUCKETS = ("server_duration", "client_duration", "endpoint_duration")


def _normalise_buckets(buckets: Iterable[float] | None, option: str = "buckets") -> tuple[float, ...]:
    if buckets is None:
        return DEFAULT_BUCKETS
    if isinstance(buckets, (str, bytes)):
        raise ConfigError(f"{option}: expected a sequence of numbers, got {buckets!r}")
    try:
        values = tuple(float(b) for b in buckets)
    except (TypeError, ValueError):
        raise ConfigError(f"{option}: expected a sequence of numbers, got {buckets!r}") from None
    finite = tuple(b for b in values if b != float("inf"))
    if not finite:
        raise ConfigError(f"{option}: at least one finite bucket bound is needed")
    if any(b >= c for b, c in itertools.pairwise(finite)):
        raise ConfigError(f"{option}: bucket bounds must be strictly increasing, got {values!r}")
    return finite


class Instruments:
    """The kitmw metrics of one registry; each attribute is created on first access.

    Attributes (prometheus-client metric objects; see ``docs/metrics.md``):
    ``server_requests``, ``server_duration``, ``server_in_progress``,
    ``server_request_size``, ``server_response_size``, ``client_requests``,
    ``client_duration``, ``client_retries``, ``endpoint_calls``, ``endpoint_duration``,
    ``ratelimit_decisions``,
    ``storage_errors``, ``breaker_state``, ``breaker_transitions``,
    ``breaker_rejections``.
    """

    # Annotations for type checkers; values are created by __getattr__ on first use.
    server_requests: Counter
    server_duration: Histogram
    server_in_progress: Gauge
    server_request_size: Histogram
    server_response_size: Histogram
    client_requests: Counter
    client_duration: Histogram
    client_retries: Counter
    endpoint_calls: Counter
    endpoint_duration: Histogram
    ratelimit_decisions: Counter
    storage_errors: Counter
    breaker_state: Gauge
    breaker_transitions: Counter
    breaker_rejections: Counter

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, ...]] = {}

    def use_buckets(self, attr: str, buckets: Sequence[float] | None, option: str = "buckets") -> None:
        """Fix the latency buckets of ``attr`` (``server_duration``, ``client_duration`` or
        ``endpoint_duration``).

        Two policies on one registry share one histogram, so they must agree on its
        buckets: a different request raises :class:`~kitmw.errors.ConfigError`.
        """
        if attr not in _HISTOGRAMS_WITH_BUCKETS:
            raise ValueError(f"{attr} has no configurable buckets")
        wanted = _normalise_buckets(buckets, option)
        with self._lock:
            current = self._buckets.get(attr)
            if current is None:
                self._buckets[attr] = wanted
            elif current != wanted:
                raise ConfigError(
                    f"{option}: {_SPECS[attr][1]} on this registry already uses buckets "
                    f"{current!r}; every policy sharing a registry must use the same buckets "
                    f"(got {wanted!r})"
                )

    def __getattr__(self, attr: str) -> Any:
        spec = _SPECS.get(attr)
        if spec is None:
            raise AttributeError(f"{type(self).__name__!s} has no attribute {attr!r}")
        with self._lock:
            existing = self.__dict__.get(attr)
            if existing is not None:
                return existing
            kind, name, doc, labels, extra = spec
            kwargs = dict(extra)
            if attr in _HISTOGRAMS_WITH_BUCKETS:
                kwargs["buckets"] = self._buckets.setdefault(attr, DEFAULT_BUCKETS)
            try:
                metric = kind(name, doc, labels, registry=self.registry, **kwargs)
            except ValueError as exc:  # someone else registered that name on this registry
                raise ConfigError(f"registry: cannot register kitmw metric {name!r}: {exc}") from exc
            self.__dict__[attr] = metric
            return metric

    def created(self) -> list[str]:
        """Attributes whose metric exists already (for tests and introspection)."""
        return [attr for attr in _SPECS if attr in self.__dict__]


_CACHE: weakref.WeakKeyDictionary[CollectorRegistry, Instruments] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def instruments(registry: CollectorRegistry | None = None) -> Instruments:
    """The :class:`Instruments` of ``registry`` (default prometheus-client's ``REGISTRY``).

    Always the same object for the same registry, so any number of policies, apps and
    middleware instances can share one registry without "Duplicated timeseries".
    """
    if registry is None:
        registry = REGISTRY
    if not isinstance(registry, CollectorRegistry):
        raise ConfigError(f"registry: expected a prometheus_client.CollectorRegistry, got {registry!r}")
    found = _CACHE.get(registry)
    if found is not None:
        return found
    with _CACHE_LOCK:
        found = _CACHE.get(registry)
        if found is None:
            found = _CACHE[registry] = Instruments(registry)
        return found


# -- hot-path writers ------------------------------------------------------------------------
#
# prometheus-client's public ``inc``/``observe`` check, per call, that the metric is a
# labelled child and (observe) walk the bucket bounds in Python; with the label children
# cached per series those checks are settled once. The writers below call the child's
# value objects (``_value``, ``_sum``, ``_buckets``: the same ``ValueClass`` objects the
# public methods write, mutex or multiprocess mmap) directly, which halves the cost of a
# request's nine writes. Private attributes: each writer checks the shape it relies on
# and falls back to the public method when anything differs (another prometheus-client
# version), so the worst case is the public path's speed, never a wrong value.

#: ``_validate_exemplar``'s limit on the runes of an exemplar's label names and values.
_EXEMPLAR_RUNES = 128
_TRACE_ID_RUNES = _EXEMPLAR_RUNES - len("trace_id")


#: ``Exemplar(labels, value, timestamp)`` without the namedtuple's Python-level __new__
#: (which does exactly this): half the cost of building one.
_tuple_new = tuple.__new__


def exemplar_ok(trace_id: str) -> bool:
    """Would prometheus-client accept ``{"trace_id": trace_id}`` as an exemplar?"""
    return len(trace_id) <= _TRACE_ID_RUNES


def _value_of(metric: Any, *, exemplars: bool = False) -> Any:
    try:
        value = metric._value
        if not callable(value.inc) or (exemplars and not callable(value.set_exemplar)):
            return None
        if getattr(metric, "_is_most_recent", False) or not metric._is_observable():
            return None
    except Exception:  # another prometheus-client layout: the public methods it is
        return None
    return value


def add_writer(metric: Counter | Gauge) -> Callable[[float], None]:
    """``amount -> None`` adding to a counter or gauge child (a gauge takes negatives)."""
    value = _value_of(metric)
    if value is None:
        return metric.inc
    inc: Callable[[float], None] = value.inc
    return inc


def counter_exemplar_writer(counter: Counter) -> Callable[[dict[str, str]], None]:
    """``labels -> None``: ``counter.inc(1, labels)`` for labels already validated."""
    value = _value_of(counter, exemplars=True)
    if value is None:

        def public(labels: dict[str, str]) -> None:
            counter.inc(1, labels)

        return public
    inc, set_exemplar = value.inc, value.set_exemplar

    def write(labels: dict[str, str]) -> None:
        inc(1)
        set_exemplar(_tuple_new(Exemplar, (labels, 1, time.time())))

    return write


def _bucket_values(histogram: Histogram, exemplars: bool) -> tuple[Any, list[float], list[Any]] | None:
    try:
        total = histogram._sum
        bounds = histogram._upper_bounds
        buckets = histogram._buckets
        if (
            not callable(total.inc)
            or not isinstance(bounds, list)
            or not isinstance(buckets, list)
            or not bounds
            or len(bounds) != len(buckets)
            or bounds[-1] != math.inf
            or any(not isinstance(b, float) for b in bounds)
            or any(a >= b for a, b in itertools.pairwise(bounds))
            or not all(callable(b.inc) for b in buckets)
            or (exemplars and not all(callable(b.set_exemplar) for b in buckets))
            or not histogram._is_observable()  # type: ignore[no-untyped-call]
        ):
            return None
    except Exception:  # another prometheus-client layout: the public methods it is
        return None
    return total, bounds, buckets


def histogram_writer(histogram: Histogram) -> Callable[[float], None]:
    """``amount -> None``: ``histogram.observe(amount)`` for amounts that are not NaN.

    The first bound at or above the amount is ``bisect_left`` of the sorted bounds:
    the bucket ``observe`` increments (``amount <= bound``) for every number but NaN,
    and kitmw observes durations and byte counts only.
    """
    found = _bucket_values(histogram, False)
    if found is None:
        return histogram.observe
    total, bounds, buckets = found
    add_sum = total.inc
    incs = tuple(b.inc for b in buckets)

    def observe(amount: float) -> None:
        add_sum(amount)
        incs[bisect_left(bounds, amount)](1)

    return observe


def histogram_exemplar_writer(histogram: Histogram) -> Callable[[float, dict[str, str]], None]:
    """``(amount, labels) -> None``: ``histogram.observe(amount, labels)``, labels validated."""
    found = _bucket_values(histogram, True)
    if found is None:
        return histogram.observe
    total, bounds, buckets = found
    add_sum = total.inc
    incs = tuple(b.inc for b in buckets)
    setters = tuple(b.set_exemplar for b in buckets)

    def observe(amount: float, labels: dict[str, str]) -> None:
        add_sum(amount)
        i = bisect_left(bounds, amount)
        incs[i](1)
        setters[i](_tuple_new(Exemplar, (labels, amount, time.time())))

    return observe
