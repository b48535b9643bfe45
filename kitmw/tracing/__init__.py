"""OpenTelemetry tracing: one SERVER span per request, CLIENT spans with W3C propagation,
an INTERNAL span per endpoint call.

:class:`TracingPolicy` (server side) extracts the parent context from the request
headers, starts a SERVER span named by the method, makes it current while the request
runs, renames it ``METHOD route`` once the route template is known (never the raw
path) and ends it at the last response byte. Attributes are the ones
``opentelemetry-instrumentation-asgi`` (or ``-wsgi``) emits, in the semconv mode
their ``OTEL_SEMCONV_STABILITY_OPT_IN`` selects: on WSGI from contrib's own function,
on ASGI from a one-pass twin of it (a test pins the equality; contrib's costs about
ten times more). No per-message ``send``/``receive`` spans are ever created.

If a server span for this request already exists (FastAPI's native telemetry when kitmw
is added with ``app.add_middleware``, contrib's ``OpenTelemetryMiddleware`` outside
kitmw, or an outer kitmw layer), the policy *adopts* it instead of starting a second
one. When kitmw wraps a FastAPI app from outside, it marks the scope the way FastAPI
marks requests it excludes, so FastAPI's own layer steps aside: exactly one server
span per request either way.

With no ``traceparent`` the current context is the parent (contrib's rule), so a span
another layer made current is continued, not cut off: kitmw's span is then INTERNAL
when the current span is a SERVER span it could not adopt, so a request still has one
SERVER span. ``OTEL_PYTHON_EXCLUDED_URLS`` (and its ``_ASGI_`` / ``_WSGI_`` variants) and
``suppress_http_instrumentation()`` are honoured as contrib's instrumentations honour them.

:class:`ClientTracingPolicy` (httpx driver) starts a CLIENT span per outgoing request
as a child of the current span and injects ``traceparent`` into the request.
:class:`EndpointTracingPolicy` (``kitmw.endpoint``) starts an INTERNAL span per call.

Layout: the policies are protocol-neutral (``_server``, ``_client``, ``_endpoint``);
what a protocol adds lives in ``_asgi`` and ``_wsgi`` and is bound by
:meth:`TracingPolicy.hooks`; ``_semconv`` is the one module touching OpenTelemetry's
private attributes.
"""

from __future__ import annotations

from ._asgi import FASTAPI_KEY as FASTAPI_KEY  # the scope keys, importable as before
from ._asgi import SCOPE_SPAN_KEY as SCOPE_SPAN_KEY
from ._client import ClientTracingPolicy
from ._common import ExchangeGetter, ExchangeSetter
from ._endpoint import EndpointTracingPolicy
from ._options import ClientTracingOptions, EndpointTracingOptions, TracingOptions
from ._server import TracingPolicy

__all__ = [
    "ClientTracingOptions",
    "ClientTracingPolicy",
    "EndpointTracingOptions",
    "EndpointTracingPolicy",
    "ExchangeGetter",
    "ExchangeSetter",
    "TracingOptions",
    "TracingPolicy",
]
