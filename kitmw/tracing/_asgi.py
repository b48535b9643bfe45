"""Tracing's ASGI side: the request attributes read from the scope, FastAPI's marker.

* :func:`scan` is a one-pass twin of ``opentelemetry.instrumentation.asgi``'s
  ``collect_request_attributes`` (a test pins the equality in every semconv mode;
  contrib's costs about ten times more), which also tells whether a propagation header
  is present.
* ``scope["fastapi.telemetry"]``: FastAPI's native telemetry keeps its request span
  there, and steps aside for a request whose scope already holds the key (``None`` is
  how it marks the requests its ``exclude`` option skips). kitmw adopts the span, or
  sets the marker, so a FastAPI app gets exactly one server span (docs/tracing.md).
* ``scope["kitmw.span"]``: the span kitmw started for the request, so a kitmw tracing
  layer that does not share the exchange (another driver further in) adopts it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from .._cache import BoundedCache
from ..exchange import Exchange
from ._common import (
    KNOWN_METHODS,
    PLAIN_METHODS,
    ServerHelpers,
    decode_header,
    redact,
    synthetic_user_agent,
)
from ._semconv import Semconv

__all__ = ["FASTAPI_KEY", "SCOPE_SPAN_KEY", "request_attributes", "scan", "server_helpers"]

#: Key of the span kitmw started for a request, in the ASGI scope (and WSGI environ).
SCOPE_SPAN_KEY = "kitmw.span"
#: FastAPI's per-request telemetry key: ``None`` makes FastAPI's native layer step aside.
FASTAPI_KEY = "fastapi.telemetry"
_ABSENT = object()


def server_helpers(sc: Semconv, all_methods: bool, cache: BoundedCache[Any, Any]) -> ServerHelpers:
    """The server policy's ASGI helpers; ``cache`` (owned by the policy) keeps what
    depends on the socket, ``Host`` and ``User-Agent`` only."""
    return ServerHelpers("ASGI", url, scanner(sc, all_methods, cache), claim, owns, mark)


def claim(scope: Any) -> Any:
    """FastAPI's span for this request, if its native telemetry started one; marks the
    scope otherwise, so FastAPI's native layer further in starts none."""
    telemetry = scope.get(FASTAPI_KEY, _ABSENT)
    if telemetry is _ABSENT:
        scope[FASTAPI_KEY] = None
        return None
    return None if telemetry is None else getattr(telemetry, "span", None)


def owns(scope: Any, span: Any) -> bool:
    return scope.get(SCOPE_SPAN_KEY) is span


def mark(scope: Any, span: Any) -> None:
    scope[SCOPE_SPAN_KEY] = span


def url(ex: Exchange) -> str:
    """The URL contrib's ASGI middleware matches excluded URLs against (no query)."""
    from opentelemetry.instrumentation import asgi

    contrib: Any = asgi  # untyped
    found: str = contrib.get_host_port_url_tuple(ex.native)[2]
    return found


def request_attributes(
    scope: Any, sc: Semconv, all_methods: bool, cache: BoundedCache[Any, Any] | None = None
) -> dict[str, Any]:
    """``opentelemetry.instrumentation.asgi.collect_request_attributes(scope, mode)``, faster.

    Same keys and values in every semconv mode (a test pins the equality against
    contrib's function) at a fraction of the cost: see :func:`scanner`.
    """
    return scanner(sc, all_methods, cache)(None, scope, None)[0]


def scan(
    scope: Any,
    sc: Semconv,
    all_methods: bool,
    cache: BoundedCache[Any, Any] | None,
    fields: frozenset[bytes] | None,
) -> tuple[dict[str, Any], bool]:
    """The request attributes, and whether a header named in ``fields`` is present."""
    return scanner(sc, all_methods, cache)(None, scope, fields)


def scanner(
    sc: Semconv, all_methods: bool, cache: BoundedCache[Any, Any] | None
) -> Callable[[Any, Any, frozenset[bytes] | None], tuple[dict[str, Any], bool]]:
    """``scan(ex, scope, fields)``: the request attributes, and whether a header named in
    ``fields`` is present, in the semconv mode ``sc``.

    One pass over the headers serves the attributes and the propagator's question.
    contrib's ``redact_url`` runs only when the URL has credentials or a query; unlike
    contrib's, a non-UTF-8 query string does not raise. With a ``cache`` (a
    :class:`~kitmw._cache.BoundedCache` owned by the caller), everything that depends
    only on the listening socket (scheme, server address and port, HTTP version), the
    ``Host`` header(s) and the user agent (its synthetic type included) is computed once
    per distinct value: per request remain the path, query, method and peer.
    """
    old = sc.old
    new = sc.new
    cached = None if cache is None else cache.get

    def scan(ex: Any, scope: Any, fields: frozenset[bytes] | None) -> tuple[dict[str, Any], bool]:
        hosts: Any = None  # the raw Host value, or a list of them when repeated
        ua: bytes | None = None
        found = False
        for key, value in scope.get("headers") or ():
            key = key.lower()
            if key == b"host":
                if hosts is None:
                    hosts = value
                elif type(hosts) is list:
                    hosts.append(value)
                else:
                    hosts = [hosts, value]
            elif key == b"user-agent":
                if ua is None:
                    ua = value
            elif fields is not None and key in fields:
                found = True
        if cached is None:
            base_attrs, prefix = base(scope, sc, hosts, ua)
        else:
            server = scope.get("server")
            if server is not None and type(server) is not tuple:
                server = tuple(server)
            ckey = (
                scope.get("scheme", _ABSENT),
                server,
                scope.get("http_version"),
                tuple(hosts) if type(hosts) is list else hosts,
                ua,
            )
            entry = cached(ckey)
            if entry is None:
                entry = cache.put(ckey, base(scope, sc, hosts, ua))  # type: ignore[union-attr]
            base_attrs, prefix = entry
        result = dict(base_attrs)
        path = scope.get("path", "")
        query = scope.get("query_string")
        if query and isinstance(query, bytes):
            try:
                query = query.decode("utf8")
            except UnicodeDecodeError:
                query = query.decode("latin-1")
        if path:
            if old:
                result["http.target"] = path
            if new:
                result["url.path"] = path
                if query:
                    result["url.query"] = query
        if old:
            full = prefix + path
            if query:
                full += "?" + unquote(query)
            # contrib's redact_url only changes URLs with credentials or a query part.
            result["http.url"] = redact(full) if "@" in full or "?" in full else full
        method = scope.get("method", "")
        if method:
            normalized = PLAIN_METHODS.get(method)  # the common case: nothing to normalise
            if normalized is None:
                original = method.strip()
                upper = method.upper()
                normalized = upper if all_methods or upper in KNOWN_METHODS else "_OTHER"
                if new and original != normalized:
                    result["http.request.method_original"] = original
            if old:
                result["http.method"] = normalized
            if new:
                result["http.request.method"] = normalized
        client = scope.get("client")
        if client is not None:
            if client[0]:
                if old:
                    result["net.peer.ip"] = client[0]
                if new:
                    result["client.address"] = client[0]
            if client[1]:
                try:
                    client_port = int(client[1])
                except (TypeError, ValueError):
                    pass
                else:
                    if old:
                        result["net.peer.port"] = client_port
                    if new:
                        result["client.port"] = client_port
        return result, found

    return scan


def base(scope: Any, sc: Semconv, hosts: Any, ua_raw: bytes | None) -> tuple[dict[str, Any], str]:
    """The attributes that depend on the socket, ``Host`` and ``User-Agent`` only, and
    the URL up to the path (the old conventions' ``http.url``)."""
    server = scope.get("server") or ("0.0.0.0", 80)
    port = server[1]
    str_port = str(port)
    server_host = server[0] + (":" + str_port if str_port != "80" else "")
    old = sc.old
    new = sc.new
    result: dict[str, Any] = {}
    scheme = scope.get("scheme")
    if scheme:
        if old:
            result["http.scheme"] = scheme
        if new:
            result["url.scheme"] = scheme
    if server_host:
        if old:
            result["http.host"] = server_host
        if new:
            result["server.address"] = server_host
    if port:
        try:
            port_int = int(port)
        except (TypeError, ValueError):
            pass
        else:
            if old:
                result["net.host.port"] = port_int
            if new:
                result["server.port"] = port_int
    flavor = scope.get("http_version")
    if flavor:
        if old:
            result["http.flavor"] = flavor
        if new:
            result["network.protocol.version"] = flavor
    host_values: list[str] | None = None
    if hosts is not None:
        host_values = [decode_header(h) for h in (hosts if type(hosts) is list else (hosts,))]
    prefix = ""
    if old:
        prefix = scope.get("scheme", "http") + "://" + (host_values[0] if host_values else server_host)
        if host_values:
            result["http.server_name"] = ",".join(host_values)
    ua = None if ua_raw is None else decode_header(ua_raw)
    if ua:
        if old:
            result["http.user_agent"] = ua
        if new:
            result["user_agent.original"] = ua
        synthetic = synthetic_user_agent(ua)
        if synthetic:
            result["user_agent.synthetic.type"] = synthetic
    return result, prefix
