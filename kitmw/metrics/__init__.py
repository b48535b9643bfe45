"""RED metrics for servers and httpx clients, in Prometheus (with the ``/metrics``
exposition) or through the OpenTelemetry metrics API, or both.

* :class:`MetricsPolicy` (what ``kitmw.Metrics`` runs), :class:`ClientMetricsPolicy`
  (what the httpx transports run) and :class:`EndpointMetricsPolicy` (``kitmw.endpoint``);
* :func:`instruments`: every kitmw metric of one registry (or meter provider), created
  once and shared by every policy (rate limit, breaker, httpx) that writes to it;
* :func:`start_server`: the exposition on a separate port (``python -m kitmw.metrics``
  runs one in a process of its own); :func:`metrics_app` / :func:`metrics_wsgi_app`:
  the exposition as an app to mount or serve yourself; :func:`render` for any other
  framework;
* multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) and :func:`gunicorn_child_exit`.

Metric and label names are a public contract: see ``docs/metrics.md``.
"""

from __future__ import annotations

from ._backends import instruments
from ._endpoint import EndpointMetricsPolicy
from ._exposition import (
    MetricsServer,
    WorkerFilesCollector,
    gunicorn_child_exit,
    mark_process_dead,
    metrics_app,
    metrics_wsgi_app,
    multiprocess_dir,
    render,
    start_server,
)
from ._instruments import BACKENDS, DEFAULT_BUCKETS, DEFAULT_SIZE_BUCKETS, Instruments
from ._options import ClientMetricsOptions, EndpointMetricsOptions, MetricsOptions
from ._otel import METER_NAME, CombinedInstruments, OTelInstruments
from ._policy import KNOWN_METHODS, OTHER_METHOD, OTHER_STATUS, ClientMetricsPolicy, MetricsPolicy

__all__ = [
    "BACKENDS",
    "DEFAULT_BUCKETS",
    "DEFAULT_SIZE_BUCKETS",
    "KNOWN_METHODS",
    "METER_NAME",
    "OTHER_METHOD",
    "OTHER_STATUS",
    "ClientMetricsOptions",
    "ClientMetricsPolicy",
    "CombinedInstruments",
    "EndpointMetricsOptions",
    "EndpointMetricsPolicy",
    "Instruments",
    "MetricsOptions",
    "MetricsPolicy",
    "MetricsServer",
    "OTelInstruments",
    "WorkerFilesCollector",
    "gunicorn_child_exit",
    "instruments",
    "mark_process_dead",
    "metrics_app",
    "metrics_wsgi_app",
    "multiprocess_dir",
    "render",
    "start_server",
]
