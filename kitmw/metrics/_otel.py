"""kitmw's metrics through the OpenTelemetry metrics API (``metrics={"backend": "otel"}``).

Each metric a concern declares in :mod:`kitmw.concerns` may name its OpenTelemetry twin
(:class:`kitmw.concerns.OTel`: name, kind, unit, attributes, bucket advice). This module
makes those instruments, once per meter provider (:class:`OTelInstruments`, cached like
the registries' instruments), on a meter named ``kitmw``:

* kitmw's own metrics (breaker, rate limit, timeouts, concurrency, retries, storage
  errors, ``kitmw.endpoint``) map their Prometheus label values one to one onto the
  declared attributes, so a concern's ``instruments(x).breaker_rejections.labels(name)``
  works on either backend; the attribute dict of each series is made once and the
  writers are ``functools.partial`` objects over the instrument's own method.
* The HTTP metrics carry the semantic conventions' attributes, which are not the
  Prometheus labels: the metrics policies record them (:mod:`._semconv`).

:class:`CombinedInstruments` writes both backends (``backend=["prometheus", "otel"]``).

The API has no bound instruments any more; what a write costs beyond the cached
attribute dict is the SDK's own (its aggregation keys on the attribute set).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..concerns import OTel
from ..concerns import instruments as declared_instruments
from ..errors import ConfigError
from ._instruments import (
    DEFAULT_BUCKETS,
    DEFAULT_SIZE_BUCKETS,
    HISTOGRAMS_WITH_BUCKETS,
    Instruments,
    Series,
    add_writer,
    agree,
    check_labels,
    counter_exemplar_writer,
    histogram_exemplar_writer,
    histogram_writer,
    labels_disagree,
    normalise_buckets,
)

__all__ = [
    "METER_NAME",
    "ActiveCounts",
    "CombinedInstruments",
    "OTelInstruments",
    "OTelSeries",
    "combined_instruments",
    "otel_instruments",
]

#: The name of the meter (the instrumentation scope) every kitmw instrument is made on.
METER_NAME = "kitmw"

_TWINS: dict[str, OTel] = {attr: inst.otel for attr, inst in declared_instruments().items() if inst.otel}
_LABELS: dict[str, tuple[str, ...]] = {attr: inst.labels for attr, inst in declared_instruments().items()}
_ADVICE = {"latency": DEFAULT_BUCKETS, "size": DEFAULT_SIZE_BUCKETS}
#: The instrument's method a series writes through, by kind.
_WRITE = {"counter": "add", "updowncounter": "add", "histogram": "record", "gauge": "set"}


class OTelSeries(Series):
    """One series of an OpenTelemetry instrument: the instrument and one attribute dict."""

    __slots__ = ("_write", "attributes")

    def __init__(self, write: Callable[..., None], attributes: dict[str, str]) -> None:
        self.attributes = attributes
        # A C-level partial: the cheapest callable that adds the attributes.
        self._write: Callable[[float], None] = functools.partial(write, attributes=attributes)

    def set(self, value: float) -> None:
        self._write(value)

    def adder(self) -> Callable[[float], None]:
        return self._write


class _NoSeries(Series):
    """A series of a metric with no OpenTelemetry twin (a request count is the duration
    histogram's count there): writes go nowhere."""

    __slots__ = ()

    def set(self, value: float) -> None:
        pass

    def adder(self) -> Callable[[float], None]:
        return _nothing


def _nothing(amount: float) -> None:
    pass


_NO_SERIES = _NoSeries()


class _NoFamily:
    __slots__ = ()

    def labels(self, *values: Any, **named: Any) -> Series:
        return _NO_SERIES


_NO_FAMILY = _NoFamily()


class _Family:
    """An OpenTelemetry instrument seen as a labelled Prometheus metric: ``labels(*values)``
    gives the series of those values (their attribute dict made once)."""

    __slots__ = ("_children", "_constant", "_label_names", "_names", "_write", "instrument")

    def __init__(self, instrument: Any, twin: OTel, label_names: tuple[str, ...], constant: dict[str, str]) -> None:
        self.instrument = instrument
        self._write = getattr(instrument, _WRITE[twin.kind])
        self._names = twin.attributes
        self._label_names = label_names
        self._constant = constant
        self._children: dict[tuple[str, ...], OTelSeries] = {}

    def labels(self, *values: Any, **named: Any) -> OTelSeries:
        if named:
            values = tuple(named[n] for n in self._label_names)
        key = tuple(str(v) for v in values)
        found = self._children.get(key)
        if found is None:
            if len(key) != len(self._names):
                raise ValueError(f"expected {len(self._names)} label values ({self._label_names}), got {values!r}")
            attributes = dict(zip(self._names, key, strict=True))
            attributes.update(self._constant)
            found = self._children.setdefault(key, OTelSeries(self._write, attributes))
        return found


class ActiveCounts:
    """Up-down counts by attribute set, read by the SDK at collection time (the callback of
    an asynchronous up-down counter): ``cell(key, attributes)`` once per series, then
    ``add(cell, +1/-1)`` per request, a locked integer addition."""

    __slots__ = ("_lock", "_series")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[Any, tuple[dict[str, Any], list[int]]] = {}

    def cell(self, key: Any, attributes: dict[str, Any]) -> list[int]:
        with self._lock:
            return self._series.setdefault(key, (attributes, [0]))[1]

    def add(self, cell: list[int], amount: int) -> None:
        with self._lock:
            cell[0] += amount

    def observe(self, options: Any) -> list[Any]:
        from opentelemetry.metrics import Observation

        with self._lock:
            return [Observation(cell[0], attributes) for attributes, cell in self._series.values()]


class OTelInstruments:
    """kitmw's instruments on one OpenTelemetry meter provider, made on first use.

    ``instruments(backend="otel").breaker_rejections.labels("payments").inc()`` records
    through ``kitmw.breaker.rejections``; an attribute with no OpenTelemetry twin takes
    writes and drops them. :meth:`instrument` gives the instrument itself (the metrics
    policies record the HTTP ones with their semantic-convention attributes).
    """

    #: The Prometheus side of these instruments: none (see :func:`kitmw.metrics.instruments`).
    prometheus: Instruments | None = None

    def __init__(self, meter_provider: Any) -> None:
        from .. import __version__

        self.meter_provider = meter_provider
        self.meter = meter_provider.get_meter(METER_NAME, __version__)
        self._lock = threading.RLock()
        self._buckets: dict[str, tuple[float, ...]] = {}
        self._labels: dict[str, dict[str, str]] = {}
        self._instruments: dict[str, Any] = {}
        self._families: dict[str, Any] = {}
        self._active: dict[str, ActiveCounts] = {}

    @property
    def otel(self) -> OTelInstruments:
        return self

    @property
    def constant_labels(self) -> dict[str, str]:
        """The attributes every kitmw data point of this meter provider carries."""
        return dict(self._labels.get("labels", {}))

    def use_buckets(self, attr: str, buckets: Sequence[float] | None, option: str = "buckets") -> None:
        """The bucket boundaries advice of ``attr``'s histogram; policies sharing a meter
        provider must agree on it, as on a registry."""
        if attr not in HISTOGRAMS_WITH_BUCKETS:
            raise ValueError(f"{attr} has no configurable buckets")
        wanted = normalise_buckets(buckets, option)
        with self._lock:
            agree(
                self._buckets,
                attr,
                wanted,
                lambda current: (
                    f"{option}: {_TWINS[attr].name} on this meter provider already has the bucket advice"
                    f" {current!r}; every policy sharing a meter provider must use the same buckets"
                    f" (got {wanted!r})"
                ),
            )

    def use_labels(self, labels: Mapping[str, str] | None, option: str = "labels", *, prometheus: bool = False) -> None:
        """Constant attributes on every kitmw data point of this meter provider (``None``:
        the ones it has); fixed when the first instrument is made, as on a registry."""
        if labels is None:
            return
        wanted = check_labels(labels, option, prometheus=prometheus)
        with self._lock:
            agree(self._labels, "labels", wanted, lambda current: labels_disagree(option, current, wanted, "meter provider"))

    def instrument(self, attr: str) -> Any:
        """The OpenTelemetry instrument of ``attr`` (made on first use)."""
        found = self._instruments.get(attr)
        if found is not None:
            return found
        twin = _TWINS.get(attr)
        if twin is None:
            raise AttributeError(f"{attr!r} has no OpenTelemetry instrument")
        with self._lock:
            found = self._instruments.get(attr)
            if found is None:
                self._labels.setdefault("labels", {})  # fixed from now on
                found = self._instruments[attr] = self._make(attr, twin)
            return found

    def active(self, attr: str) -> ActiveCounts:
        """The counts behind ``attr``'s up-down counter, made an asynchronous one: the
        requests in progress change twice per request, and two synchronous ``add`` calls
        cost the SDK more than the rest of the request's metrics, while the value only
        matters when a reader collects it. One per meter provider, shared by its policies."""
        found = self._active.get(attr)
        if found is not None:
            return found
        twin = _TWINS[attr]
        with self._lock:
            found = self._active.get(attr)
            if found is None:
                self._labels.setdefault("labels", {})  # fixed from now on
                found = ActiveCounts()
                description = twin.description or declared_instruments()[attr].documentation
                self._instruments[attr] = self.meter.create_observable_up_down_counter(
                    twin.name, callbacks=[found.observe], unit=twin.unit, description=description
                )
                self._active[attr] = found
            return found

    def _make(self, attr: str, twin: OTel) -> Any:
        meter = self.meter
        description = twin.description or declared_instruments()[attr].documentation
        if twin.kind == "histogram":
            advice = self._buckets.setdefault(attr, DEFAULT_BUCKETS) if attr in HISTOGRAMS_WITH_BUCKETS else None
            if advice is None and twin.advice is not None:
                advice = _ADVICE[twin.advice]
            return meter.create_histogram(
                twin.name, unit=twin.unit, description=description, explicit_bucket_boundaries_advisory=advice
            )
        make = {
            "counter": meter.create_counter,
            "updowncounter": meter.create_up_down_counter,
            "gauge": meter.create_gauge,
        }[twin.kind]
        return make(twin.name, unit=twin.unit, description=description)

    def __getattr__(self, attr: str) -> Any:
        if attr not in _LABELS:
            raise AttributeError(f"{type(self).__name__!s} has no attribute {attr!r}")
        found = self._families.get(attr)
        if found is not None:
            return found
        twin = _TWINS.get(attr)
        if twin is None or not twin.by_label:
            return _NO_FAMILY
        instrument = self.instrument(attr)
        with self._lock:
            return self._families.setdefault(
                attr, _Family(instrument, twin, _LABELS[attr], self._labels["labels"])
            )

    def created(self) -> list[str]:
        """Attributes whose instrument exists already."""
        return [attr for attr in _TWINS if attr in self._instruments]


_CACHE: weakref.WeakKeyDictionary[Any, OTelInstruments] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def otel_instruments(meter_provider: Any = None) -> OTelInstruments:
    """The :class:`OTelInstruments` of ``meter_provider`` (default the global one, which
    may be set later: the API's proxy instruments then record into it)."""
    if meter_provider is None:
        from opentelemetry.metrics import get_meter_provider

        meter_provider = get_meter_provider()
    elif not callable(getattr(meter_provider, "get_meter", None)):
        raise ConfigError(f"meter_provider: expected an OpenTelemetry MeterProvider, got {meter_provider!r}")
    found = _CACHE.get(meter_provider)
    if found is not None:
        return found
    with _CACHE_LOCK:
        found = _CACHE.get(meter_provider)
        if found is None:
            found = _CACHE[meter_provider] = OTelInstruments(meter_provider)
        return found


# -- both backends ---------------------------------------------------------------------------


class _BothSeries(Series):
    __slots__ = ("_otel", "_prometheus")

    def __init__(self, prometheus: Any, otel: Series) -> None:
        self._prometheus = prometheus
        self._otel = otel

    def set(self, value: float) -> None:
        self._prometheus.set(value)
        self._otel.set(value)

    def adder(self) -> Callable[[float], None]:
        first, second = add_writer(self._prometheus), self._otel.adder()

        def add(amount: float) -> None:
            first(amount)
            second(amount)

        return add

    def observer(self) -> Callable[[float], None]:
        first, second = histogram_writer(self._prometheus), self._otel.observer()

        def observe(amount: float) -> None:
            first(amount)
            second(amount)

        return observe

    def counter_exemplar(self) -> Callable[[dict[str, str]], None]:
        first, second = counter_exemplar_writer(self._prometheus), self._otel.adder()

        def write(labels: dict[str, str]) -> None:
            first(labels)
            second(1)

        return write

    def histogram_exemplar(self) -> Callable[[float, dict[str, str]], None]:
        first, second = histogram_exemplar_writer(self._prometheus), self._otel.observer()

        def write(amount: float, labels: dict[str, str]) -> None:
            first(amount, labels)
            second(amount)

        return write


class _BothFamily:
    __slots__ = ("_children", "_otel", "_prometheus")

    def __init__(self, prometheus: Any, otel: Any) -> None:
        self._prometheus = prometheus
        self._otel = otel
        self._children: dict[tuple[Any, ...], _BothSeries] = {}

    def labels(self, *values: Any, **named: Any) -> _BothSeries:
        key = (*values, *sorted(named.items()))
        found = self._children.get(key)
        if found is None:
            series = _BothSeries(self._prometheus.labels(*values, **named), self._otel.labels(*values, **named))
            found = self._children.setdefault(key, series)
        return found


class CombinedInstruments:
    """kitmw's instruments on a registry and a meter provider at once
    (``backend=["prometheus", "otel"]``): each write goes to both.

    An attribute with no OpenTelemetry twin, or one the metrics policies record with
    semantic-convention attributes, is the Prometheus metric alone.
    """

    def __init__(self, prometheus: Instruments, otel: OTelInstruments) -> None:
        self.prometheus = prometheus
        self.otel = otel
        self.registry = prometheus.registry
        self.meter_provider = otel.meter_provider
        self._families: dict[str, Any] = {}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CombinedInstruments):
            return NotImplemented
        return self.prometheus is other.prometheus and self.otel is other.otel

    def __hash__(self) -> int:
        return hash((CombinedInstruments, id(self.prometheus), id(self.otel)))

    @property
    def constant_labels(self) -> dict[str, str]:
        return self.prometheus.constant_labels

    def use_buckets(self, attr: str, buckets: Sequence[float] | None, option: str = "buckets") -> None:
        self.prometheus.use_buckets(attr, buckets, option)
        self.otel.use_buckets(attr, buckets, option)

    def use_labels(self, labels: Mapping[str, str] | None, option: str = "labels") -> None:
        self.prometheus.use_labels(labels, option)
        self.otel.use_labels(labels, option, prometheus=True)

    def __getattr__(self, attr: str) -> Any:
        if attr not in _LABELS:
            raise AttributeError(f"{type(self).__name__!s} has no attribute {attr!r}")
        found = self._families.get(attr)
        if found is None:
            prometheus = getattr(self.prometheus, attr)
            twin = _TWINS.get(attr)
            found = prometheus
            if twin is not None and twin.by_label:
                found = _BothFamily(prometheus, getattr(self.otel, attr))
            found = self._families.setdefault(attr, found)
        return found

    def created(self) -> list[str]:
        return self.prometheus.created()


_COMBINED: weakref.WeakKeyDictionary[Instruments, dict[int, CombinedInstruments]] = weakref.WeakKeyDictionary()


def combined_instruments(prometheus: Instruments, otel: OTelInstruments) -> CombinedInstruments:
    """The :class:`CombinedInstruments` of a registry's and a meter provider's instruments,
    the same object for the same pair (so series caches are shared)."""
    with _CACHE_LOCK:
        by_otel = _COMBINED.setdefault(prometheus, {})
        found = by_otel.get(id(otel))
        if found is None or found.otel is not otel:
            found = by_otel[id(otel)] = CombinedInstruments(prometheus, otel)
        return found
