"""Helpers for users' own tests: exchanges, scopes, environs, a fake clock, log capture.

Policies are plain objects, so they can be tested without a server::

    from kitmw.testing import FakeClock, make_exchange
    from kitmw.breaker import BreakerPolicy

    clock = FakeClock()
    policy = BreakerPolicy(fail_max=1, reset_timeout=10, clock=clock)
    ex = make_exchange("GET", "/orders")
    policy.enter(ex)
    ex.status = 500
    policy.exit(ex)
    assert policy.enter(make_exchange("GET", "/orders")).status == 503
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .exchange import Exchange

__all__ = ["FakeClock", "NeutralExchange", "asgi_scope", "capture_logs", "make_exchange", "wsgi_environ"]


class FakeClock:
    """A monotonic clock for ``clock=`` options that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class NeutralExchange(Exchange):
    """An exchange with no protocol behind it: headers and peer given directly."""

    __slots__ = ("_client", "_headers", "_query", "_route_template")

    def __init__(
        self,
        method: str = "GET",
        path: str = "/",
        *,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        client: str | None = "127.0.0.1",
        query: str = "",
        route: str | None = None,
    ) -> None:
        super().__init__(method, path)
        items = headers.items() if isinstance(headers, Mapping) else headers
        self._headers = [(k.lower(), v) for k, v in items]
        self._client = client
        self._query = query
        self._route_template = route

    def header(self, name: str) -> str | None:
        for key, value in self._headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self._headers if k == name]

    def header_names(self) -> list[str]:
        return [k for k, _ in self._headers]

    @property
    def client(self) -> str | None:
        return self._client

    @property
    def query(self) -> str:
        return self._query

    def _resolve_route(self) -> str | None:
        return self._route_template


def make_exchange(method: str = "GET", path: str = "/", **options: Any) -> NeutralExchange:
    """A :class:`NeutralExchange` (``headers=``, ``client=``, ``query=``, ``route=``)."""
    return NeutralExchange(method, path, **options)


def asgi_scope(
    method: str = "GET",
    path: str = "/",
    *,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    query: str = "",
    client: tuple[str, int] = ("127.0.0.1", 50000),
) -> dict[str, Any]:
    """An HTTP ASGI scope as a server would build it."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "query_string": query.encode("latin-1"),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in items],
        "client": client,
        "server": ("127.0.0.1", 8000),
    }


def wsgi_environ(
    method: str = "GET",
    path: str = "/",
    *,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    query: str = "",
    remote_addr: str = "127.0.0.1",
) -> dict[str, Any]:
    """A WSGI environ as a server would build it."""
    import io

    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": remote_addr,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        name = key.upper().replace("-", "_")
        if name not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = "HTTP_" + name
        environ[name] = value
    return environ


@contextlib.contextmanager
def capture_logs(
    logger: str = "kitmw.access", level: int = logging.INFO
) -> Iterator[list[logging.LogRecord]]:
    """Collect the records of ``logger`` (and its children) for the block."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    target = logging.getLogger(logger)
    handler = _Keep(level)
    previous = target.level
    target.addHandler(handler)
    if target.level == logging.NOTSET or target.level > level:
        target.setLevel(level)
    try:
        yield records
    finally:
        target.removeHandler(handler)
        target.setLevel(previous)
