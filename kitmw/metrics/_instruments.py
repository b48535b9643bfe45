"""Every kitmw metric, created once per registry.

Starlette may build a middleware more than once, tests build many apps, and the rate
limit, breaker and httpx policies all write to the same registry: registering metrics in
``__init__`` would raise prometheus-client's "Duplicated timeseries". So metrics live in
one :class:`Instruments` object per registry, cached by the registry itself (a weak
mapping: a registry that goes away takes its instruments with it), and each metric is
registered on first use only, so a service using only the rate limit does not export
empty ``http_server_*`` families.

Constant labels (``metrics={"labels": {"service": "checkout"}}``) are a property of the
registry's metrics too: a family has one set of label names, so they are fixed before
its first metric is made, and every policy on the registry writes them.

:func:`instruments` also hands out the OpenTelemetry side (:mod:`._otel`: one set per
meter provider) or both backends at once; the concerns write through whichever they are
given, with the same ``labels(*values)`` calls and writers.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.samples import Exemplar

from ..concerns import instruments as declared_instruments
from ..errors import ConfigError

if TYPE_CHECKING:
    from ._otel import OTelInstruments

__all__ = [
    "BACKENDS",
    "DEFAULT_BUCKETS",
    "DEFAULT_SIZE_BUCKETS",
    "HISTOGRAMS_WITH_BUCKETS",
    "Instruments",
    "Series",
    "add_writer",
    "agree",
    "backend_names",
    "check_labels",
    "counter_exemplar_writer",
    "exemplar_ok",
    "histogram_exemplar_writer",
    "histogram_writer",
    "labels_disagree",
    "normalise_buckets",
    "prometheus_instruments",
]

#: The metrics backends, in the order they are written.
BACKENDS: tuple[str, ...] = ("prometheus", "otel")

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

HISTOGRAMS_WITH_BUCKETS = ("server_duration", "client_duration", "endpoint_duration")

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: Names a constant label cannot take: kitmw's own labels, the ones prometheus-client adds
#: (histogram buckets, multiprocess ``liveall`` gauges) and the ones Prometheus sets on
#: every scraped series (a label of the same name would be renamed ``exported_job``).
_RESERVED_LABELS = frozenset(
    {label for inst in declared_instruments().values() for label in inst.labels}
    | {"le", "quantile", "pid", "job", "instance"}
)
_RESERVED_ATTRIBUTES = frozenset(
    attribute
    for inst in declared_instruments().values()
    if inst.otel is not None
    for attribute in inst.otel.attributes
)


def backend_names(backend: Any, option: str = "backend") -> tuple[str, ...]:
    """``"prometheus"``, ``"otel"`` or a list of them, as a tuple in :data:`BACKENDS` order."""
    names = [backend] if isinstance(backend, str) else backend
    try:
        found = set(names)
    except TypeError:
        found = set()
    unknown = [n for n in found if n not in BACKENDS]
    if not found or unknown or isinstance(backend, (bytes, dict)):
        raise ConfigError(f"{option}: expected 'prometheus', 'otel' or a list of both, got {backend!r}")
    return tuple(b for b in BACKENDS if b in found)


def check_labels(labels: Any, option: str = "labels", *, prometheus: bool = True) -> dict[str, str]:
    """The constant labels of ``labels`` (a mapping of names to strings), checked.

    On Prometheus a name follows its label-name syntax; on OpenTelemetry alone any
    non-empty name is an attribute key. Neither may take a name kitmw or the scraper
    already uses.
    """
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise ConfigError(f"{option}: expected a mapping of label names to values, got {labels!r}")
    checked: dict[str, str] = {}
    for name, value in labels.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{option}: a label name must be a non-empty string, got {name!r}")
        if prometheus and (not _LABEL_NAME.fullmatch(name) or name.startswith("__")):
            raise ConfigError(
                f"{option}: {name!r} is not a Prometheus label name (letters, digits and '_',"
                " not starting with a digit or '__')"
            )
        if prometheus and name in _RESERVED_LABELS:
            raise ConfigError(
                f"{option}: {name!r} is a label kitmw, prometheus-client or the scraper already sets"
                f" (reserved: {', '.join(sorted(_RESERVED_LABELS))})"
            )
        if name in _RESERVED_ATTRIBUTES:
            raise ConfigError(
                f"{option}: {name!r} is an attribute kitmw records"
                f" (reserved: {', '.join(sorted(_RESERVED_ATTRIBUTES))})"
            )
        if not isinstance(value, str):
            raise ConfigError(f"{option}: the value of {name!r} must be a string, got {value!r}")
        checked[name] = value
    return checked


def agree(kept: dict[str, Any], key: str, wanted: Any, message: Callable[[Any], str]) -> None:
    """Keep ``wanted`` under ``key``, or raise ``ConfigError(message(kept value))`` if a
    different value is kept already: what policies sharing a registry must agree on."""
    current = kept.setdefault(key, wanted)
    if current != wanted:
        raise ConfigError(message(current))


def normalise_buckets(buckets: Iterable[float] | None, option: str = "buckets") -> tuple[float, ...]:
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
    ``breaker_rejections``. With constant labels each attribute is the metric behind a
    thin wrapper whose ``labels(*values)`` adds them.
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

    #: The OpenTelemetry side of these instruments: none (see :func:`instruments`).
    otel: OTelInstruments | None = None

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, ...]] = {}
        self._labels: dict[str, dict[str, str]] = {}  # "labels" -> the constant labels, once fixed

    @property
    def prometheus(self) -> Instruments:
        """The Prometheus side of these instruments: themselves."""
        return self

    @property
    def constant_labels(self) -> dict[str, str]:
        """The constant labels of every metric of this registry (empty: none)."""
        return dict(self._labels.get("labels", {}))

    def use_buckets(self, attr: str, buckets: Sequence[float] | None, option: str = "buckets") -> None:
        """Fix the latency buckets of ``attr`` (``server_duration``, ``client_duration`` or
        ``endpoint_duration``).

        Two policies on one registry share one histogram, so they must agree on its
        buckets: a different request raises :class:`~kitmw.errors.ConfigError`.
        """
        if attr not in HISTOGRAMS_WITH_BUCKETS:
            raise ValueError(f"{attr} has no configurable buckets")
        wanted = normalise_buckets(buckets, option)
        with self._lock:
            agree(
                self._buckets,
                attr,
                wanted,
                lambda current: (
                    f"{option}: {_SPECS[attr][1]} on this registry already uses buckets "
                    f"{current!r}; every policy sharing a registry must use the same buckets "
                    f"(got {wanted!r})"
                ),
            )

    def use_labels(self, labels: Mapping[str, str] | None, option: str = "labels") -> None:
        """Give every kitmw metric of this registry the constant ``labels``.

        ``None`` takes the registry's labels as they are (the ones another policy gave
        it, else none). Label names are fixed when the first metric is made, so policies
        sharing a registry must agree: other labels, or labels after a metric was made
        without them, raise :class:`~kitmw.errors.ConfigError`.
        """
        if labels is None:
            return
        wanted = check_labels(labels, option)
        with self._lock:
            agree(self._labels, "labels", wanted, lambda current: labels_disagree(option, current, wanted))

    def __getattr__(self, attr: str) -> Any:
        spec = _SPECS.get(attr)
        if spec is None:
            raise AttributeError(f"{type(self).__name__!s} has no attribute {attr!r}")
        with self._lock:
            existing = self.__dict__.get(attr)
            if existing is not None:
                return existing
            kind, name, doc, labels, extra = spec
            constant = self._labels.setdefault("labels", {})  # fixed from now on
            kwargs = dict(extra)
            if attr in HISTOGRAMS_WITH_BUCKETS:
                kwargs["buckets"] = self._buckets.setdefault(attr, DEFAULT_BUCKETS)
            try:
                metric = kind(name, doc, (*labels, *constant), registry=self.registry, **kwargs)
            except ValueError as exc:  # someone else registered that name on this registry
                raise ConfigError(f"registry: cannot register kitmw metric {name!r}: {exc}") from exc
            found = _Constant(metric, constant) if constant else metric
            self.__dict__[attr] = found
            return found

    def created(self) -> list[str]:
        """Attributes whose metric exists already (for tests and introspection)."""
        return [attr for attr in _SPECS if attr in self.__dict__]


def labels_disagree(option: str, current: dict[str, str], wanted: dict[str, str], where: str = "registry") -> str:
    """The message of policies sharing a ``where`` (registry, meter provider) with other labels."""
    if not current:
        return (
            f"{option}: kitmw metrics on this {where} were made without constant labels already"
            f" (by a policy built before this one); give {wanted!r} to the first metrics policy"
            f" on the {where} (the concerns of the same stack, transport or endpoint take them"
            f" from it), or give every policy sharing the {where} the same labels"
        )
    return (
        f"{option}: kitmw metrics on this {where} carry the labels {current!r}; every policy"
        f" sharing a {where} must use the same labels (got {wanted!r})"
    )


class _Constant:
    """A kitmw metric with constant labels: ``labels(*values)`` appends their values.

    Anything else is the metric's own (``collect``, ``_name``...).
    """

    __slots__ = ("_constant", "_values", "metric")

    def __init__(self, metric: Any, constant: dict[str, str]) -> None:
        self.metric = metric
        self._constant = constant
        self._values = tuple(constant.values())

    def labels(self, *values: Any, **named: Any) -> Any:
        if named:
            return self.metric.labels(**named, **self._constant)
        return self.metric.labels(*values, *self._values)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.metric, name)


_CACHE: weakref.WeakKeyDictionary[CollectorRegistry, Instruments] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()

def prometheus_instruments(registry: Any = None) -> Instruments:
    """The :class:`Instruments` of ``registry`` (default prometheus-client's ``REGISTRY``),
    the same object for the same registry."""
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


class Series:
    """One series of a kitmw metric that is not a prometheus-client child alone (an
    OpenTelemetry instrument with its attributes, or both backends): the writers below
    ask it for its own writer functions. The methods are prometheus-client's."""

    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        self.adder()(amount)

    def dec(self, amount: float = 1) -> None:
        self.adder()(-amount)

    def set(self, value: float) -> None:
        raise NotImplementedError

    def observe(self, amount: float) -> None:
        self.observer()(amount)

    def adder(self) -> Callable[[float], None]:
        raise NotImplementedError

    def observer(self) -> Callable[[float], None]:
        return self.adder()

    def counter_exemplar(self) -> Callable[[dict[str, str]], None]:
        add = self.adder()

        def write(labels: dict[str, str]) -> None:
            add(1)

        return write

    def histogram_exemplar(self) -> Callable[[float, dict[str, str]], None]:
        observe = self.observer()

        def write(amount: float, labels: dict[str, str]) -> None:
            observe(amount)

        return write


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
    if isinstance(metric, Series):
        return metric.adder()
    value = _value_of(metric)
    if value is None:
        return metric.inc
    inc: Callable[[float], None] = value.inc
    return inc


def counter_exemplar_writer(counter: Counter) -> Callable[[dict[str, str]], None]:
    """``labels -> None``: ``counter.inc(1, labels)`` for labels already validated."""
    if isinstance(counter, Series):
        return counter.counter_exemplar()
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
    if isinstance(histogram, Series):
        return histogram.observer()
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
    if isinstance(histogram, Series):
        return histogram.histogram_exemplar()
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
