"""Tracing's WSGI side: the request attributes from contrib's own WSGI collector.

``opentelemetry-instrumentation-wsgi`` (the ``kitmw[wsgi]`` extra) is imported when the
first WSGI driver is built; without it the attributes are the neutral set. The span
kitmw starts is kept in ``environ["kitmw.span"]``, as in the ASGI scope.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..exchange import Exchange
from ._asgi import mark, owns  # the environ keeps the span under the scope's key
from ._common import Captures, ServerHelpers, neutral_header_readers, neutral_request_attributes, neutral_url
from ._semconv import Semconv

__all__ = ["collector", "server_helpers"]


def server_helpers(sc: Semconv, capture: Captures = (None, None)) -> ServerHelpers:
    """The server policy's WSGI helpers, contrib's collector bound to the semconv mode;
    captured headers read from the exchange (``Content-Type`` and ``Content-Length``
    included, which contrib's WSGI middleware cannot capture)."""
    collect = collector()
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


def url(ex: Exchange) -> str:
    """The URL contrib's WSGI middleware matches excluded URLs against (no query)."""
    environ = ex.native
    if "wsgi.url_scheme" not in environ:
        return neutral_url(ex)
    from wsgiref.util import request_uri

    return request_uri(environ, include_query=False)

