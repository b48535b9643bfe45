"""The HTTP metrics with the OpenTelemetry semantic conventions' attributes.

``http.server.request.duration``, ``http.server.active_requests``,
``http.server.request.body.size``/``response.body.size`` and
``http.client.request.duration``, with the attributes the conventions require or
recommend and kitmw knows without parsing anything: ``http.request.method`` (``_OTHER``
for an unknown method), ``url.scheme``, ``http.route`` (only for a matched route),
``http.response.status_code``, ``error.type`` (the status code as a string for a server
5xx or a client 4xx/5xx, the exception's fully-qualified class name for an exchange that
raised), ``server.address``/``server.port`` (client). ``network.protocol.version`` is left
out: the exchange does not expose it.

The attribute dict of each series is made once and cached on the recorder, keyed like
the Prometheus series (by method label, route or host, and status), so a request costs
the SDK's calls only. A status outside 100-599 gets no status attribute and the error
type ``_OTHER``, so arbitrary codes cannot grow the series count; exceptions are keyed by
class, and only the client's known transport errors keep their name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._cache import BoundedCache
from ..exchange import UNMATCHED, Exchange
from ._otel import OTelInstruments

__all__ = ["ClientRecorder", "ServerRecorder", "error_type"]

_Record = Callable[[float, dict[str, Any]], None]

#: Bound on cached attribute dicts per recorder (as on the Prometheus side).
_MAX_SERIES = 4096


def error_type(error: BaseException) -> str:
    """The fully-qualified class name of ``error`` (builtins without a module)."""
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _status(attributes: dict[str, Any], status: int, error_from: int) -> None:
    if 100 <= status < 600:
        attributes["http.response.status_code"] = status
        if status >= error_from:
            attributes["error.type"] = str(status)
    else:
        attributes["error.type"] = "_OTHER"


class ServerRecorder:
    """The ``http.server.*`` instruments of one server metrics policy."""

    __slots__ = ("_active", "_add", "_cells", "_constant", "_duration", "_request_size", "_response_size", "_series")

    def __init__(self, otel: OTelInstruments, *, request_size: bool) -> None:
        self._constant = otel.constant_labels
        active = otel.active("server_in_progress")
        self._active = active
        self._add = active.add
        self._duration: _Record = otel.instrument("server_duration").record
        self._response_size: _Record = otel.instrument("server_response_size").record
        self._request_size: _Record | None = otel.instrument("server_request_size").record if request_size else None
        self._cells: dict[tuple[str, str], list[int]] = {}
        self._series: BoundedCache[tuple[Any, ...], dict[str, Any]] = BoundedCache(_MAX_SERIES)

    def _cell(self, method: str, scheme: str) -> list[int]:
        # Bounded: the method is a label of a fixed table, the scheme the driver's.
        key = (method, scheme)
        found = self._cells.get(key)
        if found is None:
            attributes = {"http.request.method": method, "url.scheme": scheme, **self._constant}
            found = self._cells[key] = self._active.cell(key, attributes)
        return found

    def enter(self, ex: Exchange, method: str) -> None:
        self._add(self._cell(method, ex.scheme), 1)

    def exit(self, ex: Exchange, method: str, route: str) -> None:
        scheme = ex.scheme
        self._add(self._cell(method, scheme), -1)
        error = ex.error
        key = (method, route, ex.status, scheme, None if error is None else type(error))
        attributes = self._series.get(key)
        if attributes is None:
            attributes = self._series.put(key, self._attributes(key, error))
        self._duration(ex.duration, attributes)
        self._response_size(ex.bytes_out, attributes)
        if self._request_size is not None:
            self._request_size(ex.bytes_in, attributes)

    def _attributes(self, key: tuple[Any, ...], error: BaseException | None) -> dict[str, Any]:
        method, route, status, scheme, _ = key
        attributes: dict[str, Any] = {"http.request.method": method, "url.scheme": scheme}
        if route != UNMATCHED:
            attributes["http.route"] = route
        # An exchange with no response is the server's 500 (as on the Prometheus side).
        _status(attributes, status or 500, 500)
        if error is not None:
            attributes["error.type"] = error_type(error)
        attributes.update(self._constant)
        return attributes


class ClientRecorder:
    """``http.client.request.duration`` of one client metrics policy."""

    __slots__ = ("_constant", "_duration", "_known", "_series")

    def __init__(self, otel: OTelInstruments, known_errors: frozenset[str]) -> None:
        self._constant = otel.constant_labels
        self._duration: _Record = otel.instrument("client_duration").record
        self._known = known_errors
        self._series: BoundedCache[tuple[Any, ...], dict[str, Any]] = BoundedCache(_MAX_SERIES)

    def exit(self, ex: Exchange, method: str) -> None:
        status = ex.status
        error = ex.error
        key = (method, ex.host, status, None if status or error is None else type(error))
        attributes = self._series.get(key)
        if attributes is None:
            attributes = self._series.put(key, self._attributes(key, error))
        self._duration(ex.duration, attributes)

    def _attributes(self, key: tuple[Any, ...], error: BaseException | None) -> dict[str, Any]:
        method, host, status, _ = key
        # ``host:port`` (``[v6]:port``) from the client drivers; a bare host is kept whole.
        address, colon, port = host.rpartition(":")
        known = bool(colon) and port.isdigit() and (address.startswith("[") or ":" not in address)
        attributes: dict[str, Any] = {"http.request.method": method}
        attributes["server.address"] = address.strip("[]") if known else host
        if known:
            attributes["server.port"] = int(port)
        if status:
            _status(attributes, status, 400)
        else:
            attributes["error.type"] = self._error_type(error)
        attributes.update(self._constant)
        return attributes

    def _error_type(self, error: BaseException | None) -> str:
        """The class of a known transport error (``httpx.ConnectTimeout``), else ``_OTHER``:
        the exception classes an upstream can provoke are not a bounded set."""
        if error is not None:
            for cls in type(error).__mro__:
                if cls.__name__ in self._known:
                    module = cls.__module__
                    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
        return "_OTHER"
