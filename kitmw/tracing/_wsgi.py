"""Tracing's WSGI side: the request attributes from contrib's own WSGI collector.

``opentelemetry-instrumentation-wsgi`` (the ``kitmw[wsgi]`` extra) is imported when the
first WSGI driver is built; without it the attributes are the neutral set. The span
kitmw starts is kept in ``environ["kitmw.span"]``, as in the ASGI scope.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .._cache import BoundedCache
from ..exchange import Exchange
from ._asgi import mark, owns  # the environ keeps the span under the scope's key
from ._common import (
    KNOWN_METHODS,
    MAX_CACHED,
    PLAIN_METHODS,
    Captures,
    ServerHelpers,
    capture_all_methods,
    neutral_header_readers,
    neutral_request_attributes,
    neutral_url,
)
from ._semconv import Semconv

__all__ = ["collector", "server_helpers"]


def server_helpers(sc: Semconv, capture: Captures = (None, None)) -> ServerHelpers:
    """The server policy's WSGI helpers, contrib's collector bound to the semconv mode;
    captured headers read from the exchange (``Content-Type`` and ``Content-Length``
    included, which contrib's WSGI middleware cannot capture)."""
    collect = collector()
    if collect is not None:
        collect = cached_collector(collect, sc.mode, BoundedCache(MAX_CACHED)) or collect
    mode = sc.mode

    def attributes(ex: Exchange, environ: Any, fields: frozenset[bytes] | None) -> tuple[dict[str, Any], bool]:
        if collect is None:
            return neutral_request_attributes(ex, sc), True
        return collect(environ, mode), True

    return ServerHelpers("WSGI", url, attributes, None, owns, mark, *neutral_header_readers(capture))


def collector() -> Callable[..., dict[str, Any]] | None:
    """contrib's WSGI ``collect_request_attributes``, if the ``kitmw[wsgi]`` extra is installed."""
    try:
        from opentelemetry.instrumentation.wsgi import collect_request_attributes
    except ImportError:
        return None
    collect: Callable[..., dict[str, Any]] = collect_request_attributes
    return collect


#: The environ keys contrib's collector reads for what depends on the server, the Host,
#: the mount and the user agent, not on the request line or the peer.
_SITE_KEYS = (
    "SERVER_NAME",
    "wsgi.url_scheme",
    "HTTP_HOST",
    "SERVER_PORT",
    "SCRIPT_NAME",
    "HTTP_USER_AGENT",
    "SERVER_PROTOCOL",
)
#: A path ``urllib.parse.quote(path, safe="/;=,")`` leaves as it is.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_.\-~/;=,]*")


def _paths_from_target(collect: Callable[..., dict[str, Any]]) -> bool:
    """True if contrib's collector takes ``url.path`` from the request target."""
    try:
        from opentelemetry.instrumentation._semconv import _StabilityMode

        probe = {
            "REQUEST_METHOD": "GET",
            "RAW_URI": "/target?t=1",
            "PATH_INFO": "/path",
            "QUERY_STRING": "q=1",
            "SERVER_NAME": "probe",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
        }
        return collect(probe, _StabilityMode.HTTP).get("url.path") == "/target"
    except Exception:  # pragma: no cover - contrib reorganised: today's behaviour
        return False


def cached_collector(
    collect: Callable[..., dict[str, Any]], mode: Any, cache: BoundedCache[Any, Any]
) -> Callable[..., dict[str, Any]] | None:
    """``collect(environ, mode)`` (contrib's), with its per-site part computed once per
    server name, scheme, Host, port, mount, user agent and protocol (at most
    ``cache.maxsize`` of them), as kitmw's ASGI scan caches its own.

    Per request remain the method, the target (or the URL) and the peer, computed here as
    contrib's helpers do (a test pins the equality in every semconv mode, hits and misses).
    Most of contrib's cost is in the per-site part (the user agent's synthetic-type scan,
    host and port parsing) and in re-quoting the URL. ``None`` if contrib's helpers moved.
    """
    try:
        from opentelemetry.instrumentation._semconv import _report_new, _report_old
        from opentelemetry.util.http import redact_url
    except ImportError:  # pragma: no cover - contrib reorganised: its collector per request
        return None
    from urllib.parse import quote, urlparse
    from wsgiref.util import application_uri

    get = cache.get
    old = bool(_report_old(mode))
    new = bool(_report_new(mode))
    # contrib before 0.61b0 takes url.path and url.query from the request target
    # (RAW_URI/REQUEST_URI), later releases from PATH_INFO and QUERY_STRING: asked once.
    from_target = _paths_from_target(collect)
    all_methods = capture_all_methods()
    plain_path = _PLAIN_PATH.fullmatch

    def request_part(environ: Any, prefix: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        method = environ.get("REQUEST_METHOD", "")
        normalized = PLAIN_METHODS.get(method)  # the common case: nothing to normalise
        if normalized is None:
            upper = method.upper()
            normalized = (upper if all_methods or upper in KNOWN_METHODS else "_OTHER").strip()
            original = method.strip()
            if new and original and original != normalized:
                result["http.request.method_original"] = original
        if normalized:
            if old:
                result["http.method"] = normalized
            if new:
                result["http.request.method"] = normalized
        target = environ.get("RAW_URI")
        if target is None:
            target = environ.get("REQUEST_URI")
        if target:
            if old:
                result["http.target"] = target
            if new:
                if from_target:
                    parsed = urlparse(target)
                    path, query = parsed.path, parsed.query
                else:
                    path, query = environ.get("PATH_INFO"), environ.get("QUERY_STRING")
                if path:
                    result["url.path"] = path
                if query:
                    result["url.query"] = query
        elif old:  # wsgiref's request_uri(environ), the application URI cached
            path = environ.get("PATH_INFO", "")
            if not plain_path(path):
                path = quote(path, safe="/;=,", encoding="latin1")
            url = prefix + (path if environ.get("SCRIPT_NAME") else path[1:])
            query = environ.get("QUERY_STRING")
            if query:
                url += "?" + query
            # contrib's redact_url only changes URLs with credentials or a query part.
            result["http.url"] = redact_url(url) if "@" in url or "?" in url else url
        addr = environ.get("REMOTE_ADDR")
        if addr:
            if old:
                result["net.peer.ip"] = addr
            if new:
                result["client.address"] = addr
        port = environ.get("REMOTE_PORT")
        if port:
            try:
                number = int(port)
            except (TypeError, ValueError):
                pass
            else:
                if old:
                    result["net.peer.port"] = number
                if new:
                    result["client.port"] = number
        return result

    def collect_cached(environ: Any, mode_: Any) -> dict[str, Any]:
        if environ.get("REMOTE_HOST"):  # rare (servers seldom resolve peers): contrib's own
            return collect(environ, mode_)
        key = tuple([environ.get(k) for k in _SITE_KEYS])
        entry = get(key)
        if entry is None:
            full = collect(environ, mode_)
            prefix = application_uri(environ) if "wsgi.url_scheme" in environ else ""
            site = {k: v for k, v in full.items() if k not in _REQUEST_ATTRIBUTES}
            entry = cache.put(key, (site, prefix))
        site, prefix = entry
        result = dict(site)
        result.update(request_part(environ, prefix))
        return result

    return collect_cached


#: What contrib's collector sets from the request line and the peer (never cached).
_REQUEST_ATTRIBUTES = frozenset(
    {
        "http.method",
        "http.request.method",
        "http.request.method_original",
        "http.target",
        "url.path",
        "url.query",
        "http.url",
        "net.peer.ip",
        "client.address",
        "net.peer.port",
        "client.port",
    }
)


def url(ex: Exchange) -> str:
    """The URL contrib's WSGI middleware matches excluded URLs against (no query)."""
    environ = ex.native
    if "wsgi.url_scheme" not in environ:
        return neutral_url(ex)
    from wsgiref.util import request_uri

    return request_uri(environ, include_query=False)

