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
import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from ..errors import ConfigError

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_SIZE_BUCKETS",
    "Instruments",
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

_SERVER = ("method", "route", "status")
_CLIENT = ("method", "host", "status")

# attribute -> (kind, name, documentation, labels, extra keyword arguments)
_SPECS: dict[str, tuple[type[Any], str, str, tuple[str, ...], dict[str, Any]]] = {
    "server_requests": (Counter, "http_server_requests", "HTTP requests served.", _SERVER, {}),
    "server_duration": (
        Histogram,
        "http_server_request_duration_seconds",
        "Time from the request to the last response byte.",
        _SERVER,
        {},
    ),
    "server_in_progress": (
        Gauge,
        "http_server_requests_in_progress",
        "HTTP requests being served.",
        ("method",),
        {"multiprocess_mode": "livesum"},
    ),
    "server_request_size": (
        Histogram,
        "http_server_request_size_bytes",
        "Request body bytes received.",
        _SERVER,
        {"buckets": DEFAULT_SIZE_BUCKETS},
    ),
    "server_response_size": (
        Histogram,
        "http_server_response_size_bytes",
        "Response body bytes sent.",
        _SERVER,
        {"buckets": DEFAULT_SIZE_BUCKETS},
    ),
    "client_requests": (Counter, "http_client_requests", "HTTP requests sent.", _CLIENT, {}),
    "client_duration": (
        Histogram,
        "http_client_request_duration_seconds",
        "Time from sending the request to the end of the response.",
        _CLIENT,
        {},
    ),
    "client_retries": (
        Counter,
        "http_client_retries",
        "HTTP requests sent again by the retry policy.",
        ("method", "host"),
        {},
    ),
    "ratelimit_decisions": (
        Counter,
        "kitmw_ratelimit_decisions",
        "Rate-limit decisions (allowed, limited, fail_open, fail_closed).",
        ("side", "decision"),
        {},
    ),
    "storage_errors": (
        Counter,
        "kitmw_storage_errors",
        "Errors reaching a shared storage (ratelimit, breaker, jwks).",
        ("component",),
        {},
    ),
    "breaker_state": (
        Gauge,
        "kitmw_breaker_state",
        "1 for the current state of each circuit breaker, 0 for the others.",
        ("breaker", "state"),
        # Breakers are process-local by default: each live worker reports its own.
        {"multiprocess_mode": "liveall"},
    ),
    "breaker_transitions": (
        Counter,
        "kitmw_breaker_transitions",
        "Circuit breaker state changes.",
        ("breaker", "from_state", "to_state"),
        {},
    ),
    "breaker_rejections": (
        Counter,
        "kitmw_breaker_rejections",
        "Requests refused by an open circuit breaker.",
        ("breaker",),
        {},
    ),
}

_HISTOGRAMS_WITH_BUCKETS = ("server_duration", "client_duration")


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
    ``client_duration``, ``client_retries``, ``ratelimit_decisions``,
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
        """Fix the latency buckets of ``attr`` (``server_duration`` or ``client_duration``).

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
