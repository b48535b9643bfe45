"""The endpoint policy: an INTERNAL span per call of a function wrapped by ``kitmw.endpoint``."""

from __future__ import annotations

from time import time_ns
from typing import Any, ClassVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ..errors import Rejection
from ..exchange import Exchange, Policy
from ._common import (
    STATE_KEY,
    Traced,
    end_time,
    ids,
    is_instrumentation_enabled,
    validate_bool,
    validate_common,
)
from ._semconv import Semconv, error_type

__all__ = ["REJECTION_ATTRIBUTE", "EndpointTracingPolicy"]

#: The span attribute naming a refusal by a policy inside tracing (``circuit_open``,
#: ``rate_limited``...): the function was not called, or not to its end.
REJECTION_ATTRIBUTE = "kitmw.rejection"


class EndpointTracingPolicy(Traced, Policy):
    """An INTERNAL span per call, named after the endpoint, child of the current span.

    The span is current while the function runs, so the spans of what it calls (an
    httpx client with kitmw's tracing, another endpoint) are its children, and the access
    log gets its trace id. An exception raised by the function sets the status to ERROR
    with an ``exception`` event and ``error.type``; a refusal by a policy further in (an
    open breaker, a rate limit, a full concurrency limit) sets the status to ERROR and
    ``kitmw.rejection`` to its code. ``suppress_instrumentation()`` is honoured.

    :param tracer_provider: default the global one, looked up at the first call.
    :param record_exceptions: add an ``exception`` event for an error the function raised.
    """

    __slots__ = ("_provider", "_sc", "_tracer", "record_exceptions")

    name: ClassVar[str] = "tracing"
    shared_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, tracer_provider: Any = None, record_exceptions: bool = True) -> None:
        validate_common(tracer_provider)
        validate_bool("record_exceptions", record_exceptions)
        self._provider = tracer_provider
        self._tracer: Any = None
        self._sc = Semconv(None)
        self.record_exceptions = record_exceptions

    def enter(self, ex: Exchange) -> Rejection | None:
        if otel_context.get_current() and not is_instrumentation_enabled():
            return None
        tracer = self._tracer or self._get_tracer()
        wall = time_ns()
        span = tracer.start_span(ex.route or ex.path or ex.method, kind=SpanKind.INTERNAL, start_time=wall)
        token = otel_context.attach(trace.set_span_in_context(span))
        ex.span = span
        ids(ex, span)
        ex.state[STATE_KEY] = (token, wall)
        return None

    def exit(self, ex: Exchange) -> None:
        span = ex.span
        st = ex.state.get(STATE_KEY) if span is not None else None
        if st is None:
            return
        token, wall = st
        try:
            if span.is_recording():
                self._finish(ex, span)
        except Exception:  # pragma: no cover - never fail a call from tracing
            pass
        finally:
            span.end(end_time=end_time(wall, ex))
            otel_context.detach(token)

    def _finish(self, ex: Exchange, span: Span) -> None:
        error = ex.error
        rejection = ex.rejection
        if rejection is not None and (error is None or getattr(error, "rejection", None) is rejection):
            span.set_attribute(REJECTION_ATTRIBUTE, rejection.code)
            if error is not None:
                span.set_attribute("error.type", error_type(error))
            span.set_status(Status(StatusCode.ERROR, f"rejected: {rejection.code}"))
        elif error is not None:
            if isinstance(error, Exception) and self.record_exceptions:
                span.record_exception(error)
            span.set_attribute("error.type", error_type(error))
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
