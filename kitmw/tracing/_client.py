"""The client policy: a CLIENT span per outgoing request, ``traceparent`` injected."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from time import time_ns
from typing import Any, ClassVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .._cache import BoundedCache
from ..errors import Rejection
from ..exchange import Exchange, Policy
from ._common import (
    KNOWN_METHODS,
    SETTER,
    STATE_KEY,
    Traced,
    capture_all_methods,
    end_time,
    host_port,
    ids,
    is_http_instrumentation_enabled,
    redact,
    run_hook,
    validate_bool,
    validate_common,
    validate_hook,
    validate_semconv,
)
from ._headers import captures, neutral_request_pairs
from ._semconv import Semconv

__all__ = ["ClientTracingPolicy"]


class ClientTracingPolicy(Traced, Policy):
    """CLIENT spans for outgoing requests, ``traceparent`` injected into each of them.

    The span is a child of the current span (the server span of the request being
    handled, if any) and ends when the driver finishes the exchange (the response body
    closed). ``url.full`` never carries credentials.

    :param tracer_provider: default the global one, looked up at the first request.
    :param propagator: default the global textmap propagator.
    :param record_exceptions: add an exception event for a transport error.
    :param request_hook: ``hook(span, exchange)`` after the span starts.
    :param response_hook: ``hook(span, exchange)`` before the span ends.
    :param semconv: as for :class:`~kitmw.tracing.TracingPolicy`.
    :param capture_request_headers: as for :class:`~kitmw.tracing.TracingPolicy`; default
        ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST``. Read before
        ``traceparent`` is injected, as contrib's httpx instrumentation reads them.
    :param capture_response_headers: default
        ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE``.
    :param sanitize_headers: default ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS``;
        credentials are always redacted.
    """

    __slots__ = (
        "_all_methods",
        "_capture_request",
        "_capture_response",
        "_origins",
        "_origins_get",
        "_propagator",
        "_provider",
        "_sc",
        "_tracer",
        "record_exceptions",
        "request_hook",
        "response_hook",
    )

    name: ClassVar[str] = "tracing"
    shared_options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        tracer_provider: Any = None,
        propagator: TextMapPropagator | None = None,
        record_exceptions: bool = True,
        request_hook: Callable[[Span, Exchange], Any] | None = None,
        response_hook: Callable[[Span, Exchange], Any] | None = None,
        semconv: str | None = None,
        capture_request_headers: Iterable[str] | str | None = None,
        capture_response_headers: Iterable[str] | str | None = None,
        sanitize_headers: Iterable[str] | str | None = None,
    ) -> None:
        validate_common(tracer_provider, propagator)
        validate_hook("request_hook", request_hook)
        validate_hook("response_hook", response_hook)
        validate_semconv(semconv)
        validate_bool("record_exceptions", record_exceptions)
        self._provider = tracer_provider
        self._tracer: Any = None
        self._propagator = propagator
        self.record_exceptions = record_exceptions
        self.request_hook = request_hook
        self.response_hook = response_hook
        self._sc = Semconv(semconv)
        self._all_methods = capture_all_methods()
        self._capture_request, self._capture_response = captures(
            "client", capture_request_headers, capture_response_headers, sanitize_headers
        )
        self._origins: BoundedCache[str, tuple[str | None, int | None]] = BoundedCache(256)
        self._origins_get = self._origins.get

    def enter(self, ex: Exchange) -> Rejection | None:
        if otel_context.get_current() and not is_http_instrumentation_enabled():
            return None  # suppress_http_instrumentation(): no span and no traceparent, as contrib's httpx
        tracer = self._tracer or self._get_tracer()
        method = ex.method
        span_name = method if self._all_methods or method in KNOWN_METHODS else "HTTP"
        attributes = self._attributes(ex)
        capture = self._capture_request
        if capture is not None:
            attributes.update(capture.collect(neutral_request_pairs(ex)))
        wall = time_ns()
        span = tracer.start_span(span_name, kind=SpanKind.CLIENT, attributes=attributes, start_time=wall)
        propagator = self._propagator or propagate.get_global_textmap()
        try:
            propagator.inject(ex, context=trace.set_span_in_context(span), setter=SETTER)
        except Exception:  # pragma: no cover - a broken custom propagator
            pass
        ex.span = span
        ids(ex, span)
        ex.state[STATE_KEY] = wall
        if self.request_hook is not None and span.is_recording():
            run_hook(self.request_hook, span, ex)
        return None

    def _attributes(self, ex: Exchange) -> dict[str, Any]:
        sc = self._sc
        method = ex.method
        known = method if method in KNOWN_METHODS else "_OTHER"
        url = ex.url  # scheme://host[:port]/path: no user info, no query
        query = ex.query
        if query:
            url = redact(url + "?" + query)
        elif "@" in url:  # not from kitmw's httpx exchange; redact as contrib does
            url = redact(url)
        # host and port depend on the origin only: worked out once per origin
        end = url.find("/", url.find("://") + 3)
        origin = url if end < 0 else url[:end]
        found = self._origins_get(origin)
        if found is None:
            found = self._origins.put(origin, host_port(origin))
        host, port = found
        attrs: dict[str, Any] = {}
        if sc.old:
            attrs["http.method"] = known
            attrs["http.url"] = url
            if host:
                attrs["net.peer.name"] = host
            if port:
                attrs["net.peer.port"] = port
        if sc.new:
            attrs["http.request.method"] = known
            if known != method:
                attrs["http.request.method_original"] = method
            attrs["url.full"] = url
            if host:
                attrs["server.address"] = host
            if port:
                attrs["server.port"] = port
        return attrs

    def exit(self, ex: Exchange) -> None:
        span = ex.span
        if span is None:
            return
        wall = ex.state.get(STATE_KEY)
        if wall is None:
            return
        try:
            if span.is_recording():
                self._finish(ex, span)
        except Exception:  # pragma: no cover - never fail a call from tracing
            pass
        finally:
            span.end(end_time=end_time(wall, ex))

    def _finish(self, ex: Exchange, span: Span) -> None:
        sc = self._sc
        status = ex.status
        error = ex.error
        if status:
            if sc.old:
                span.set_attribute("http.status_code", status)
            if sc.new:
                span.set_attribute("http.response.status_code", status)
                if status >= 400 and error is None:
                    span.set_attribute("error.type", str(status))
            if status >= 400:
                span.set_status(Status(StatusCode.ERROR))
        if error is not None:
            if isinstance(error, Exception) and self.record_exceptions:
                span.record_exception(error)
            sc.error_type(span, error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        capture = self._capture_response
        if capture is not None:
            span.set_attributes(capture.collect(ex.response_headers()))
        if self.response_hook is not None:
            run_hook(self.response_hook, span, ex)
