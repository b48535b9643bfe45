"""OpenTelemetry's private seams, in one module: contrib's semantic-convention helpers
and the parts of a composite propagator.

* ``opentelemetry.instrumentation._semconv`` is how contrib's middlewares read
  ``OTEL_SEMCONV_STABILITY_OPT_IN`` (old attribute names, the stable ones, or both) and
  which schema URL goes with the mode. It is private but has kept its shape for years;
  kitmw uses it so its spans follow the mode contrib's would. If it moves, kitmw falls
  back to the option it was given (the old names by default) and :attr:`Semconv.contrib`
  is false: ``tests/test_tracing.py`` checks it is true, so an incompatible release fails
  loudly there instead of silently changing attributes.
* ``CompositePropagator._propagators`` tells whether the global propagator is the
  default W3C pair, which finds nothing in a request without its headers
  (:func:`quiet_fields`); if the attribute moves, the propagator is always asked.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace import Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["OPTIONS", "STABLE", "Semconv", "quiet_fields", "status_attributes"]

#: Values of the ``semconv`` option (``None``: follow the environment, as contrib).
OPTIONS = ("default", "http", "http/dup")


class Semconv:
    """The HTTP semconv helpers of ``opentelemetry-instrumentation`` bound to one mode.

    The mode comes from ``OTEL_SEMCONV_STABILITY_OPT_IN`` exactly as contrib's
    middlewares read it (old attribute names by default, ``http`` for the stable ones,
    ``http/dup`` for both), unless the ``semconv`` option forces one.
    """

    __slots__ = ("contrib", "mode", "new", "old", "schema_url")

    def __init__(self, option: str | None) -> None:
        self.mode: Any = option
        self.old = option in (None, "default", "http/dup")
        self.new = option in ("http", "http/dup")
        self.schema_url: str | None = None
        #: True when contrib's own helpers decided the mode (the fallback was not needed).
        self.contrib = False
        try:
            from opentelemetry.instrumentation import _semconv
        except ImportError:  # pragma: no cover - a dependency of instrumentation-asgi
            return
        sc: Any = _semconv  # private but stable helpers, untyped
        try:
            if option is None:
                sc._OpenTelemetrySemanticConventionStability._initialize()
                mode = sc._OpenTelemetrySemanticConventionStability._get_opentelemetry_stability_opt_in_mode(
                    sc._OpenTelemetryStabilitySignalType.HTTP
                )
            else:
                mode = {
                    "default": sc._StabilityMode.DEFAULT,
                    "http": sc._StabilityMode.HTTP,
                    "http/dup": sc._StabilityMode.HTTP_DUP,
                }[option]
            old, new, schema_url = bool(sc._report_old(mode)), bool(sc._report_new(mode)), sc._get_schema_url(mode)
        except (AttributeError, KeyError):  # pragma: no cover - private API moved
            return
        self.mode, self.old, self.new, self.schema_url = mode, old, new, schema_url
        self.contrib = True

    def error_type(self, span: Span, exc: BaseException) -> None:
        if self.new:
            span.set_attribute("error.type", error_type(exc))


def error_type(exc: BaseException) -> str:
    """The stable conventions' ``error.type`` of an exception: its qualified class name."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


#: The stable HTTP conventions (what FastAPI's native telemetry emits).
STABLE = Semconv("http")


def status_attributes(status: int, sc: Semconv) -> tuple[dict[str, Any], bool]:
    """contrib's ``set_status_code`` / ``add_response_attributes`` for a server span, as a dict.

    Returns the attributes and whether the span status is ERROR (5xx, or below 100).
    """
    error = status < 100 or status >= 500
    attrs: dict[str, Any] = {}
    if sc.old:
        attrs["http.status_code"] = status
    if sc.new:
        attrs["http.response.status_code"] = status
        if error:
            attrs["error.type"] = str(status)
    return attrs, error


def quiet_fields(propagator: Any) -> frozenset[bytes] | None:
    """The headers ``propagator`` reads, if without them it surely extracts an empty Context.

    True of OpenTelemetry's W3C trace context propagator alone or first in a composite
    with the W3C baggage one (the default): then a request carrying none of
    ``traceparent``, ``tracestate``, ``baggage`` skips the extraction. ``None`` for any
    other propagator, which is always asked.
    """
    if type(propagator) is TraceContextTextMapPropagator:
        parts = [propagator]
    elif type(propagator) is CompositePropagator:
        parts = list(getattr(propagator, "_propagators", None) or ())
    else:
        return None
    if not parts or type(parts[0]) is not TraceContextTextMapPropagator:
        return None
    names: set[bytes] = set()
    for part in parts:
        if type(part) not in (TraceContextTextMapPropagator, W3CBaggagePropagator):
            return None
        names.update(name.lower().encode("latin-1") for name in part.fields)
    return frozenset(names)
