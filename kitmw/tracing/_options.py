"""The tracing policies' options as typed dicts, for editors and type checkers.

``kitmw.Tracing(app, ...)``, ``stack(tracing={...})``, a transport's ``tracing={...}``
and ``kitmw.endpoint(..., tracing={...})`` take these keys; what each one does is in
the policy's docstring. tests/test_options.py keeps them equal to the policies'
keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, TracerProvider

    from ..exchange import Exchange

__all__ = ["ClientTracingOptions", "EndpointTracingOptions", "TracingOptions"]

#: The attribute sets ``semconv`` can force.
Semconv = Literal["default", "http", "http/dup"]


class EndpointTracingOptions(TypedDict, total=False):
    """Options of :class:`~kitmw.tracing.EndpointTracingPolicy` (``kitmw.endpoint(tracing=...)``)."""

    tracer_provider: TracerProvider | None
    record_exceptions: bool


class ClientTracingOptions(EndpointTracingOptions, total=False):
    """Options of :class:`~kitmw.tracing.ClientTracingPolicy` (a transport's ``tracing=``)."""

    propagator: TextMapPropagator | None
    request_hook: Callable[[Span, Exchange], Any] | None
    response_hook: Callable[[Span, Exchange], Any] | None
    semconv: Semconv | None


class TracingOptions(EndpointTracingOptions, total=False):
    """Options of :class:`~kitmw.tracing.TracingPolicy` (``kitmw.Tracing``, ``stack(tracing=...)``)."""

    exclude_paths: Iterable[str] | str | None
    propagator: TextMapPropagator | None
    server_request_hook: Callable[[Span, Any], Any] | None
    server_response_hook: Callable[[Span, Exchange], Any] | None
    semconv: Semconv | None
