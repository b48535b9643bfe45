"""Prometheus RED metrics for servers and httpx clients, and the ``/metrics`` exposition.

* :class:`MetricsPolicy` (what ``kitmw.Metrics`` runs), :class:`ClientMetricsPolicy`
  (what the httpx transports run) and :class:`EndpointMetricsPolicy` (``kitmw.endpoint``);
* :func:`instruments`: every kitmw metric of one registry, created once and shared by
  every policy (rate limit, breaker, httpx) that writes to that registry;
* :func:`start_server`: the exposition on a separate port (``python -m kitmw.metrics``
  runs one in a process of its own); :func:`metrics_app` / :func:`metrics_wsgi_app`:
  the exposition as an app to mount or serve yourself; :func:`render` for any other
  framework;
* multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) and :func:`gunicorn_child_exit`.

Metric and label names are a public contract: see ``docs/metrics.md``.
"""

from __future__ import annotations

from ._endpoint import EndpointMetricsPolicy
from ._exposition import (
    MetricsServer,
    gunicorn_child_exit,
    mark_process_dead,
    metrics_app,
    metrics_wsgi_app,
    multiprocess_dir,
    render,
    start_server,
)
from ._instruments import DEFAULT_BUCKETS, DEFAULT_SIZE_BUCKETS, Instruments, instruments
from ._options import ClientMetricsOptions, EndpointMetricsOptions, MetricsOptions
from ._policy import KNOWN_METHODS, OTHER_METHOD, OTHER_STATUS, ClientMetricsPolicy, MetricsPolicy

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_SIZE_BUCKETS",
    "KNOWN_METHODS",
    "OTHER_METHOD",
    "OTHER_STATUS",
    "ClientMetricsOptions",
    "ClientMetricsPolicy",
    "EndpointMetricsOptions",
    "EndpointMetricsPolicy",
    "Instruments",
    "MetricsOptions",
    "MetricsPolicy",
    "MetricsServer",
    "gunicorn_child_exit",
    "instruments",
    "mark_process_dead",
    "metrics_app",
    "metrics_wsgi_app",
    "multiprocess_dir",
    "render",
    "start_server",
]
