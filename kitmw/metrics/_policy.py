"""The server and client metrics policies.

The hot path only looks things up: method and status labels come from tables built
in ``__init__``, the label children of each (method, route, status) are cached on the
policy, and an exemplar dict is built only when a trace id is known.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry

from .._cache import BoundedCache
from .._paths import PathMatcher
from ..errors import ConfigError, KitmwError, Rejection
from ..exchange import SERVE, UNMATCHED, Exchange, Policy
from ._exposition import render, render_async
from ._instruments import (
    add_writer,
    counter_exemplar_writer,
    exemplar_ok,
    histogram_exemplar_writer,
    histogram_writer,
    instruments,
)

__all__ = ["OTHER_STATUS", "ClientMetricsPolicy", "MetricsPolicy"]

#: Methods kept as labels; anything else is counted as ``_OTHER`` (semconv's choice).
KNOWN_METHODS: tuple[str, ...] = (
    "CONNECT",
    "DELETE",
    "GET",
    "HEAD",
    "OPTIONS",
    "PATCH",
    "POST",
    "PUT",
    "QUERY",
    "TRACE",
)
OTHER_METHOD = "_OTHER"
_METHOD_LABEL = {m: m for m in KNOWN_METHODS}
_EXPOSE_METHODS = frozenset(("GET", "HEAD"))

#: Status label of every status outside 100-599: an app (or an upstream) answering with
#: arbitrary codes cannot grow the series count.
OTHER_STATUS = "other"
# Status label tables, indexed by status code. 0 is an exchange that never got a
# response: the drivers record the server's 500 for it, any other source counts as 500 too.
_STATUS = ("500", *(str(code) if code >= 100 else OTHER_STATUS for code in range(1, 600)))
_STATUS_CLASS = ("5xx", *(f"{code // 100}xx" if code >= 100 else OTHER_STATUS for code in range(1, 600)))

_Add = Callable[[float], None]
#: One series' writers: in-progress add, request count, request count with exemplar,
#: duration, duration with exemplar, response size, request size (None: not observed).
_Series = tuple[
    _Add,
    _Add,
    Callable[[dict[str, str]], None],
    _Add,
    Callable[[float, dict[str, str]], None],
    _Add,
    _Add | None,
]

#: Bound on cached label children per policy: routes are templates, so this is never
#: reached by honest traffic; past it the cache starts over (the metrics are unaffected).
_MAX_CHILDREN = 4096

#: Exception classes kept as the client ``status`` label when no response came back.
CLIENT_ERROR_LABELS = frozenset(
    (
        "BreakerOpen",
        "CloseError",
        "ConcurrencyLimited",
        "ConnectError",
        "ConnectTimeout",
        "DeadlineExceeded",
        "LocalProtocolError",
        "PoolTimeout",
        "ProtocolError",
        "ProxyError",
        "RateLimited",
        "ReadError",
        "ReadTimeout",
        "RemoteProtocolError",
        "TimeoutException",
        "UnsupportedProtocol",
        "WriteError",
        "WriteTimeout",
    )
)


def _status_label(status: int, table: tuple[str, ...]) -> str:
    if 0 <= status < 600:
        return table[status]
    return OTHER_STATUS


class MetricsPolicy(Policy):
    """Prometheus RED metrics of a server, and the ``/metrics`` exposition.

    :param registry: prometheus-client registry (default its global ``REGISTRY``).
        Every kitmw metric on one registry is created once, whatever the number of
        apps and middleware instances.
    :param expose: path answered with the exposition (GET/HEAD; text format or
        OpenMetrics by ``Accept``, gzip by ``Accept-Encoding``); ``None`` to not serve it.
        That path is never counted. It is answered where the application would be
        called, once every other policy has let the request through (auth and rate
        limits guard it like any path unless they exclude it); the breaker never sees it.
    :param buckets: latency histogram bounds in seconds; policies sharing a registry
        must agree on them.
    :param exclude_paths: paths neither counted nor timed (``"/health"``, ``"/static/*"``).
    :param status_class: label ``"2xx"`` instead of ``"200"``.
    :param counts_request_bytes: observe ``http_server_request_size_bytes`` (the driver
        then counts the request body as it is read; it is never buffered).
    """

    name: ClassVar[str] = "metrics"
    shared_options: ClassVar[tuple[str, ...]] = ("exclude_paths", "registry")
    counts_request_bytes: bool  # type: ignore[misc]  # an option here, not a constant

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        expose: str | None = "/metrics",
        buckets: Sequence[float] | None = None,
        exclude_paths: Iterable[str] | str | None = (),
        status_class: bool = False,
        counts_request_bytes: bool = True,
    ) -> None:
        if expose is not None and (not isinstance(expose, str) or not expose.startswith("/")):
            raise ConfigError(f"expose: expected a path starting with '/' or None, got {expose!r}")
        inst = instruments(registry)
        self.registry = inst.registry
        self.instruments = inst
        inst.use_buckets("server_duration", buckets)
        self.expose = expose
        self.status_class = bool(status_class)
        self.counts_request_bytes = bool(counts_request_bytes)
        self._excluded = PathMatcher(exclude_paths) or None
        self._status = _STATUS_CLASS if status_class else _STATUS
        self._requests = inst.server_requests
        self._duration = inst.server_duration
        self._request_size = inst.server_request_size if counts_request_bytes else None
        self._response_size = inst.server_response_size
        gauge = inst.server_in_progress
        # Writers of the in-progress gauge per method label (see _instruments: the
        # value objects of the label children, fetched once).
        self._in_progress = {m: add_writer(gauge.labels(m)) for m in (*KNOWN_METHODS, OTHER_METHOD)}
        self._other_in_progress = self._in_progress[OTHER_METHOD]
        self._children: BoundedCache[tuple[str, str, int], _Series] = BoundedCache(_MAX_CHILDREN)
        self._series = self._children.get  # bound once: a plain dict's lookup per request

    @property
    def join_key(self) -> Hashable:
        # A second Metrics layer on the same registry would count every request twice.
        return (MetricsPolicy, self.registry)

    # -- exposition --------------------------------------------------------------------

    @staticmethod
    def _answer(body: bytes, content_type: str, headers: list[tuple[str, str]]) -> Rejection:
        return Rejection(200, "metrics", tuple(headers), body=body, content_type=content_type)

    def respond(self, ex: Exchange) -> Rejection:
        """The exposition, rendered only once every other policy let the scrape through."""
        return self._answer(
            *render(self.registry, ex.header("accept"), ex.header("accept-encoding"), ex.query)
        )

    async def arespond(self, ex: Exchange) -> Rejection:
        # Off the event loop: multiprocess mode reads every worker's files.
        rendered = await render_async(
            self.registry, ex.header("accept"), ex.header("accept-encoding"), ex.query
        )
        return self._answer(*rendered)

    # -- server side --------------------------------------------------------------------

    def enter(self, ex: Exchange) -> Rejection | None:
        if ex.path == self.expose and ex.method in _EXPOSE_METHODS:
            return SERVE  # answered by respond() where the app would be called
        if self._excluded is not None and self._excluded(ex.path):
            return None
        self._in_progress.get(ex.method, self._other_in_progress)(1)
        return None

    def exit(self, ex: Exchange) -> None:
        method = ex.method
        path = ex.path
        if path == self.expose and method in _EXPOSE_METHODS:
            return
        if self._excluded is not None and self._excluded(path):
            return
        try:
            route = ex.route_label()
        except Exception:  # a router that cannot be walked must not fail the request
            route = UNMATCHED
        # Keyed by the status code: its label is worked out on a miss only. Unknown
        # methods share one key, so a scan with random methods cannot churn the cache.
        raw = (_METHOD_LABEL.get(method, OTHER_METHOD), route, ex.status)
        children = self._series(raw)
        if children is None:
            children = self._make_children(raw)
        in_progress, count, count_exemplar, duration, duration_exemplar, response_size, request_size = (
            children
        )
        in_progress(-1)
        trace_id = ex.trace_id
        if trace_id is None or not exemplar_ok(trace_id):
            count(1)
            duration(ex.duration)
        else:
            exemplar = {"trace_id": trace_id}
            count_exemplar(exemplar)
            duration_exemplar(ex.duration, exemplar)
        response_size(ex.bytes_out)
        if request_size is not None:
            request_size(ex.bytes_in)

    def _make_children(self, raw: tuple[str, str, int]) -> _Series:
        method = raw[0]
        key = (method, raw[1], _status_label(raw[2], self._status))
        requests = self._requests.labels(*key)
        duration = self._duration.labels(*key)
        children: _Series = (
            self._in_progress[method],
            add_writer(requests),
            counter_exemplar_writer(requests),
            histogram_writer(duration),
            histogram_exemplar_writer(duration),
            histogram_writer(self._response_size.labels(*key)),
            None if self._request_size is None else histogram_writer(self._request_size.labels(*key)),
        )
        return self._children.put(raw, children)


class ClientMetricsPolicy(Policy):
    """Prometheus RED metrics of outgoing httpx calls (for ``kitmw.httpx`` transports).

    Labels ``method``, ``host`` (``host:port`` of the upstream) and ``status``: the
    response status, or for a call that got no response the exception's class name when
    it is a known transport error (``ConnectTimeout``, ``BreakerOpen``…), else ``"error"``.

    :param registry: prometheus-client registry (default its global ``REGISTRY``).
    :param buckets: latency histogram bounds in seconds.
    :param status_class: label ``"2xx"`` instead of ``"200"``.
    """

    name: ClassVar[str] = "metrics"
    shared_options: ClassVar[tuple[str, ...]] = ("registry",)

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        buckets: Sequence[float] | None = None,
        status_class: bool = False,
    ) -> None:
        inst = instruments(registry)
        self.registry = inst.registry
        self.instruments = inst
        inst.use_buckets("client_duration", buckets)
        self._status = _STATUS_CLASS if status_class else _STATUS
        self._requests = inst.client_requests
        self._duration = inst.client_duration
        self._children: BoundedCache[tuple[str, str, str], tuple[Any, Any]] = BoundedCache(_MAX_CHILDREN)
        self._series = self._children.get  # bound once: a plain dict's lookup per call

    def exit(self, ex: Exchange) -> None:
        status = ex.status
        label = _status_label(status, self._status) if status else _error_label(ex.error)
        key = (_METHOD_LABEL.get(ex.method, OTHER_METHOD), ex.host, label)
        children = self._series(key)
        if children is None:
            children = self._children.put(key, (self._requests.labels(*key), self._duration.labels(*key)))
        requests, duration = children
        trace_id = ex.trace_id
        if trace_id is None:
            requests.inc()
            duration.observe(ex.duration)
        else:
            _observe_with_exemplar(requests, duration, ex.duration, trace_id)


def _error_label(error: BaseException | None) -> str:
    if error is None:
        return "error"
    for cls in type(error).__mro__:
        name = cls.__name__
        if name in CLIENT_ERROR_LABELS:
            return name
        if cls is KitmwError or cls is Exception:
            break
    return "error"


def _observe_with_exemplar(requests: Any, duration: Any, seconds: float, trace_id: str) -> None:
    # Checked first: prometheus-client counts before it validates the exemplar, so
    # retrying without it after its ValueError would count the request twice.
    if not exemplar_ok(trace_id):  # too long for an exemplar: count without it
        requests.inc()
        duration.observe(seconds)
        return
    exemplar = {"trace_id": trace_id}
    requests.inc(1, exemplar)
    duration.observe(seconds, exemplar)
