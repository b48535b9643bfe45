"""The ``/metrics`` exposition: content negotiation, gzip, multiprocess mode, standalone apps.

One function, :func:`render`, serves every entry point: the policy's ``expose`` path,
the standalone ASGI app (:func:`metrics_app`), the WSGI app (:func:`metrics_wsgi_app`)
and the separate metrics port (:func:`start_server`).
"""

from __future__ import annotations

import glob
import gzip
import os
import socket
import struct
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from .._types import ASGIApp, Receive, Scope, Send, StartResponse, WSGIApp, WSGIEnviron
from ..errors import ConfigError

__all__ = [
    "MetricsServer",
    "WorkerFilesCollector",
    "gunicorn_child_exit",
    "mark_process_dead",
    "metrics_app",
    "metrics_wsgi_app",
    "multiprocess_dir",
    "render",
    "start_server",
]

# Below this size gzip costs more than it saves.
_GZIP_MIN = 1024


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` when prometheus-client's multiprocess mode is on."""
    # prometheus-client still honours the deprecated lower-case name.
    env = os.environ
    return env.get("PROMETHEUS_MULTIPROC_DIR") or env.get("prometheus_multiproc_dir") or None


class WorkerFilesCollector:
    """prometheus-client's multiprocess collector, without failing a scrape that meets a
    worker writing its files: a file a worker has just created is still empty (it is
    truncated to its size after it is opened), and an entry being appended can be read
    half-written. Empty files hold no value yet and are skipped; a read that fails on a
    file being written is read again (``MultiProcessCollector.merge`` does the work)."""

    ATTEMPTS = 3

    def __init__(self, path: str) -> None:
        if not os.path.isdir(path):
            raise ValueError(f"PROMETHEUS_MULTIPROC_DIR={path!r} is not a directory")
        self.path = path

    def collect(self) -> list[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        for attempt in range(1, self.ATTEMPTS + 1):
            files = []
            for name in glob.glob(os.path.join(self.path, "*.db")):
                try:
                    if os.path.getsize(name) >= 8:  # the header: how much of the file is used
                        files.append(name)
                except OSError:  # removed since the glob (a dead worker's live gauge)
                    continue
            try:
                return list(MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]
            except (struct.error, ValueError, RuntimeError):  # a file being written
                if attempt == self.ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover


def _collecting_registry(registry: CollectorRegistry) -> Any:
    """The registry to expose: the given one, or every worker's files in multiprocess mode."""
    path = multiprocess_dir()
    if path is None:
        return registry
    # Per client_python's docs: a fresh registry per scrape, never one metrics are on.
    fresh = CollectorRegistry()
    fresh.register(WorkerFilesCollector(path))  # type: ignore[arg-type]
    return fresh


def render(
    registry: CollectorRegistry | None = None,
    accept: str | None = None,
    accept_encoding: str | None = None,
    query: str = "",
) -> tuple[bytes, str, list[tuple[str, str]]]:
    """Render ``registry`` for a scrape: ``(body, content type, extra headers)``.

    ``accept`` picks the Prometheus text format or OpenMetrics (the only one that shows
    exemplars), ``accept_encoding`` allows gzip, ``name[]=...`` in ``query`` restricts
    the output to those metric families. With ``PROMETHEUS_MULTIPROC_DIR`` set, every
    worker's values are collected from that directory instead.
    """
    source = _collecting_registry(REGISTRY if registry is None else registry)
    try:
        encoder, content_type = choose_encoder(accept or "")
    except Exception:  # a malformed Accept ("version=a") trips prometheus-client: plain text
        encoder, content_type = choose_encoder("")
    if query and "name" in query:
        names = parse_qs(query).get("name[]")
        if names:
            source = source.restricted_registry(names)
    body = encoder(source)
    headers = [("Vary", "Accept, Accept-Encoding"), ("Cache-Control", "no-store")]
    if accept_encoding and len(body) >= _GZIP_MIN and gzip_accepted(accept_encoding):
        body = gzip.compress(body, compresslevel=6)
        headers.append(("Content-Encoding", "gzip"))
    return body, content_type, headers


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str:
    return ",".join(v.decode("latin-1") for k, v in headers if k.lower() == name)


def metrics_app(registry: CollectorRegistry | None = None) -> ASGIApp:
    """A standalone ASGI app serving the exposition (to mount, or to run on another port).

    It answers every path with the metrics (GET and HEAD; 405 otherwise), ignores
    lifespan, and renders in a worker thread so a big scrape does not stall the loop.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 405,
                    "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        raw = scope.get("headers", ())
        body, content_type, extra = await render_async(
            registry,
            _header(raw, b"accept"),
            _header(raw, b"accept-encoding"),
            scope.get("query_string", b"").decode("latin-1"),
        )
        headers = [
            (b"content-type", content_type.encode("latin-1")),
            (b"content-length", str(len(body)).encode()),
        ]
        headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})

    return app


async def render_async(
    registry: CollectorRegistry | None, accept: str | None, accept_encoding: str | None, query: str = ""
) -> tuple[bytes, str, list[tuple[str, str]]]:
    """:func:`render` in a worker thread (it may read the multiprocess files from disk)."""
    try:
        from anyio import to_thread
    except ImportError:  # pragma: no cover - anyio comes with starlette
        return render(registry, accept, accept_encoding, query)
    return await to_thread.run_sync(render, registry, accept, accept_encoding, query)


def metrics_wsgi_app(registry: CollectorRegistry | None = None) -> WSGIApp:
    """A standalone WSGI app serving the exposition (GET and HEAD; 405 otherwise)."""

    def app(environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
            return [b""]
        body, content_type, extra = render(
            registry,
            environ.get("HTTP_ACCEPT"),
            environ.get("HTTP_ACCEPT_ENCODING"),
            environ.get("QUERY_STRING", ""),
        )
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra]
        start_response("200 OK", headers)
        return [b"" if method == "HEAD" else body]

    return app


def mark_process_dead(pid: int, path: str | None = None) -> None:
    """Drop a dead worker's live gauges (in-progress, breaker state) in multiprocess mode.

    A no-op when multiprocess mode is off, so a gunicorn config can call it unconditionally.
    """
    if path is None and multiprocess_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def gunicorn_child_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook: ``from kitmw.metrics import gunicorn_child_exit as child_exit``."""
    mark_process_dead(worker.pid)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds the process at exit


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line on stderr per scrape is noise


class MetricsServer:
    """The exposition served on its own port by :func:`start_server`, in a daemon thread."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self.thread = thread
        self.host: str = server.server_address[0]  # type: ignore[assignment]
        self.port: int = server.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_server(
    port: int, *, host: str = "0.0.0.0", registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve the exposition on a separate port (any path, GET and HEAD), in a daemon thread.

    The production pattern: the public port carries no ``/metrics`` (give the
    ``Metrics`` policy ``expose=None``) and only the scraper can reach this one. Like
    prometheus-client's ``start_http_server`` it binds every interface by default, so
    a scraper on another host reaches it; keep the port off the public load balancer,
    or pass ``host="127.0.0.1"`` for a scraper on the same host. With
    ``PROMETHEUS_MULTIPROC_DIR`` set it shows every worker's values, so one server in
    gunicorn's master (its ``when_ready`` hook) or in a process of its own
    (``python -m kitmw.metrics``) serves a whole multi-process service.

    :param port: TCP port; ``0`` picks a free one (read it back as ``.port``).
    :param host: address to bind.
    :param registry: the registry to show (default prometheus-client's ``REGISTRY``).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port: expected a TCP port number (0 for a free one), got {port!r}")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"host: expected an address to bind such as '0.0.0.0', got {host!r}")
    if registry is not None and not isinstance(registry, CollectorRegistry):
        raise ConfigError(f"registry: expected a prometheus_client.CollectorRegistry, got {registry!r}")
    server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
    server = make_server(host, port, metrics_wsgi_app(registry), server_class, _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="kitmw-metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
