"""Access log and request id: Go kit's ``log`` for any Python web stack.

* :class:`AccessLogPolicy` (``kitmw.AccessLog``, ``stack(access_log=...)``): takes a
  well-formed ``X-Request-ID`` or makes one, echoes it on every response, binds the
  request context, and emits one record per request on ``kitmw.access`` while that
  context is still bound.
* :class:`ContextFilter`: adds ``request_id``, ``trace_id``, ``span_id`` and
  ``principal`` to every record, the application's own included.
* :func:`configure`: JSON, logfmt or text output with that filter, in one call.
* :class:`ClientLogPolicy`: one record per outgoing httpx call.
* :class:`EndpointLogPolicy`: one record per call of a ``kitmw.endpoint`` function.
* :func:`current_request_id`, :func:`current_trace_id`, :func:`bind_context`,
  :func:`structlog_processor` for the application and other libraries.
"""

from __future__ import annotations

from ._common import DEFAULT_REDACT, redact_query
from ._context import (
    CONTEXT_FIELDS,
    ContextFilter,
    bind_context,
    current_principal,
    current_request_id,
    current_span_id,
    current_trace_id,
    structlog_processor,
)
from ._endpoint import ENDPOINT_FIELDS, EndpointLogPolicy
from ._options import AccessLogOptions, ClientLogOptions, ClientRequestIdOptions, EndpointLogOptions
from .access import ACCESS_FIELDS, AccessLogPolicy, default_request_id, is_valid_request_id
from .client import CLIENT_FIELDS, ClientLogPolicy, ClientRequestIdPolicy
from .formatters import FORMATS, JsonFormatter, LogfmtFormatter, TextFormatter, configure

__all__ = [
    "ACCESS_FIELDS",
    "CLIENT_FIELDS",
    "CONTEXT_FIELDS",
    "DEFAULT_REDACT",
    "ENDPOINT_FIELDS",
    "FORMATS",
    "AccessLogOptions",
    "AccessLogPolicy",
    "ClientLogOptions",
    "ClientLogPolicy",
    "ClientRequestIdOptions",
    "ClientRequestIdPolicy",
    "ContextFilter",
    "EndpointLogOptions",
    "EndpointLogPolicy",
    "JsonFormatter",
    "LogfmtFormatter",
    "TextFormatter",
    "bind_context",
    "configure",
    "current_principal",
    "current_request_id",
    "current_span_id",
    "current_trace_id",
    "default_request_id",
    "is_valid_request_id",
    "redact_query",
    "structlog_processor",
]
