"""The server policy: one SERVER span per request, whatever the protocol.

The policy is neutral: what a protocol adds (the ASGI attribute scan, contrib's WSGI
collector, FastAPI's marker, the span kept in the scope) comes from
:class:`~kitmw.tracing._common.ServerHelpers` that :meth:`TracingPolicy.hooks` binds
into the ``enter`` it hands a driver, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from time import time_ns
from typing import Any, ClassVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .._cache import BoundedCache
from .._paths import PathMatcher
from ..chain import Hooks
from ..errors import Rejection
from ..exchange import Exchange, Policy
from . import _asgi, _wsgi
from ._common import (
    GETTER,
    KNOWN_METHODS,
    MAX_CACHED,
    STATE_KEY,
    ServerHelpers,
    Traced,
    capture_all_methods,
    end_time,
    excluded_urls,
    ids,
    is_http_instrumentation_enabled,
    neutral_request_attributes,
    neutral_server_helpers,
    run_hook,
    span_method,
    validate_bool,
    validate_common,
    validate_hook,
    validate_semconv,
)
from ._semconv import STABLE, Semconv, quiet_fields, status_attributes

__all__ = ["TracingPolicy"]


class _Adopted:
    """Marks an exchange whose server span belongs to another layer (not ended by kitmw).

    ``claimed``: a framework's span found through the protocol (FastAPI's), which its
    owner names, routes and ends; else the current span of an outer layer.
    """

    __slots__ = ("claimed",)

    def __init__(self, claimed: bool) -> None:
        self.claimed = claimed


_ERROR = Status(StatusCode.ERROR)
_NO_RESPONSE = Status(StatusCode.ERROR, "no response was sent")
_ADOPTED_CLAIMED = _Adopted(True)
_ADOPTED_CURRENT = _Adopted(False)


class TracingPolicy(Traced, Policy):
    """OpenTelemetry SERVER spans named ``METHOD route``, parent taken from ``traceparent``.

    :param tracer_provider: the provider spans go to; default the global one, looked
        up at the first request.
    :param exclude_paths: paths that get no span (anchored; ``"/static/*"`` for a tree).
    :param propagator: a ``TextMapPropagator``; default the global one (W3C trace
        context and baggage unless configured otherwise).
    :param record_exceptions: add an exception event for an error raised by the app
        (the span status is ERROR either way).
    :param server_request_hook: ``hook(span, native)`` after the span starts (``native``
        is the ASGI scope or WSGI environ); an error in it is recorded, never raised.
    :param server_response_hook: ``hook(span, exchange)`` before the span ends.
    :param semconv: force the attribute set (``"default"``, ``"http"``, ``"http/dup"``);
        default follows ``OTEL_SEMCONV_STABILITY_OPT_IN`` like contrib's middlewares.
    """

    __slots__ = (
        "_all_methods",
        "_attr_cache",
        "_enter",
        "_exclude",
        "_exit",
        "_prop",
        "_propagator",
        "_provider",
        "_sc",
        "_status_cache",
        "_tracer",
        "record_exceptions",
        "server_request_hook",
        "server_response_hook",
    )

    name: ClassVar[str] = "tracing"
    shared_options: ClassVar[tuple[str, ...]] = ("exclude_paths",)

    @property
    def join_key(self) -> Any:
        # A second server tracing layer on one request could only adopt the outer span.
        return TracingPolicy

    def __init__(
        self,
        *,
        tracer_provider: Any = None,
        exclude_paths: Iterable[str] | str | None = (),
        propagator: TextMapPropagator | None = None,
        record_exceptions: bool = True,
        server_request_hook: Callable[[Span, Any], Any] | None = None,
        server_response_hook: Callable[[Span, Exchange], Any] | None = None,
        semconv: str | None = None,
    ) -> None:
        validate_common(tracer_provider, propagator)
        validate_hook("server_request_hook", server_request_hook)
        validate_hook("server_response_hook", server_response_hook)
        validate_semconv(semconv)
        validate_bool("record_exceptions", record_exceptions)
        self._provider = tracer_provider
        self._tracer: Any = None
        self._exclude = PathMatcher(exclude_paths)
        self._propagator = propagator
        self.record_exceptions = record_exceptions
        self.server_request_hook = server_request_hook
        self.server_response_hook = server_response_hook
        self._sc = Semconv(semconv)
        self._all_methods = capture_all_methods()
        self._attr_cache: BoundedCache[Any, Any] = BoundedCache(MAX_CACHED)
        # status code -> (its span attributes, whether the span status is ERROR)
        self._status_cache: BoundedCache[int, tuple[dict[str, Any], bool]] = BoundedCache(MAX_CACHED)
        # (propagator, the header names it reads if it is known to find nothing without them)
        self._prop: tuple[Any, frozenset[bytes] | None] = (None, None)
        self._enter: Callable[[Exchange], Rejection | None] | None = None
        self._exit = self._bind_exit()

    # -- what drivers run ---------------------------------------------------------------

    def hooks(self, protocol: str, is_async: bool) -> Hooks:
        """``enter`` bound to ``protocol``'s helpers (the ASGI scan, contrib's WSGI
        collector, FastAPI's marker), ``exit`` as is. ``OTEL_PYTHON_EXCLUDED_URLS`` and
        its per-protocol variant are read now, when the driver is built, as contrib does."""
        if protocol == "asgi":
            helpers = _asgi.server_helpers(self._sc, self._all_methods, self._attr_cache)
        elif protocol == "wsgi":
            helpers = _wsgi.server_helpers(self._sc)
        else:
            helpers = neutral_server_helpers(self._sc)
        return Hooks(enter=self._bind(helpers), exit=self._exit)

    def enter(self, ex: Exchange) -> Rejection | None:
        """The neutral ``enter`` (no protocol helpers), for an exchange driven by hand."""
        enter = self._enter
        if enter is None:
            enter = self._enter = self._bind(neutral_server_helpers(self._sc))
        return enter(ex)

    def _bind(self, helpers: ServerHelpers) -> Callable[[Exchange], Rejection | None]:
        policy = self
        exclude = self._exclude or None
        excluded = None if helpers.instrumentation is None else excluded_urls(helpers.instrumentation)
        url_of = helpers.url
        attributes_of = helpers.attributes
        claim = helpers.claim
        owns = helpers.owns
        mark = helpers.mark
        all_methods = self._all_methods
        sc = self._sc
        adopt = self._adopt
        get_current = otel_context.get_current
        get_current_span = trace.get_current_span

        def url_excluded(ex: Exchange) -> bool:
            try:
                return bool(excluded.url_disabled(url_of(ex)))  # type: ignore[union-attr]
            except Exception:  # an odd scope: traced rather than failed
                return False

        def enter(ex: Exchange) -> Rejection | None:
            native = ex.native
            claimed = None if claim is None else claim(native)
            ctx = get_current()  # empty (falsy) at the start of a served request
            if (
                (exclude is not None and exclude(ex.path))
                or (excluded is not None and url_excluded(ex))
                or (ctx and not is_http_instrumentation_enabled())  # suppress_http_instrumentation()
            ):
                return None
            if ctx:
                current = get_current_span(ctx)
                recording = current.is_recording()
            else:  # the start of a served request: nothing is current
                current = None
                recording = False
            if (claimed is not None or recording) and adopt(ex, native, claimed, current, owns):
                return None  # someone owns a span for this request already
            tracer = policy._tracer or policy._get_tracer()
            propagator = policy._propagator or propagate.get_global_textmap()
            seen, fields = policy._prop
            if seen is not propagator:
                fields = quiet_fields(propagator)
                policy._prop = (propagator, fields)
            try:
                attributes, found = attributes_of(ex, native, fields)
            except Exception:  # hostile or odd input must never fail the request
                attributes, found = neutral_request_attributes(ex, sc), True
            # Nothing extracted: the current context is the parent, as in contrib's middlewares
            # (at the start of a served request it is empty: a new root trace).
            if fields is not None and not found:
                parent = ctx  # what the W3C propagators extract without their headers
            else:
                try:
                    parent = propagator.extract(ex, context=ctx, getter=GETTER)
                except Exception:  # garbage traceparent/tracestate/baggage: the request proceeds
                    parent = ctx
            kind = SpanKind.SERVER
            if recording and getattr(current, "kind", None) is SpanKind.SERVER and get_current_span(parent) is current:
                # A server span of another layer, not adoptable (not this request's path), and
                # no traceparent: this span is its child, INTERNAL as contrib makes it, so the
                # request keeps one SERVER span.
                kind = SpanKind.INTERNAL
            method = ex.method
            span_name = method if all_methods or method in KNOWN_METHODS else "HTTP"
            wall = time_ns()
            span = tracer.start_span(span_name, context=parent, kind=kind, attributes=attributes, start_time=wall)
            token = otel_context.attach(trace.set_span_in_context(span, parent))
            ex.span = span
            sctx = span.get_span_context()
            if sctx.is_valid:  # ids(), inlined
                ex.trace_id = "%032x" % sctx.trace_id  # noqa: UP031
                ex.span_id = "%016x" % sctx.span_id  # noqa: UP031
            ex.state[STATE_KEY] = (token, wall, span_name)
            if mark is not None:
                mark(native, span)
            hook = policy.server_request_hook
            if hook is not None and span.is_recording():
                run_hook(hook, span, native)
            return None

        return enter

    def _adopt(
        self, ex: Exchange, native: Any, claimed: Any, current: Any, owns: Callable[[Any, Any], bool] | None
    ) -> bool:
        """Take over a server span another layer already started for this request: the
        one the protocol names (``claimed``), else the current one if it is this request's."""
        if claimed is not None:
            if not claimed.is_recording():
                return False
            span = claimed
        else:
            if not current.is_recording() or getattr(current, "kind", None) is not SpanKind.SERVER:
                return False
            if not ((owns is not None and owns(native, current)) or _same_path(ex, current)):
                return False
            span = current
        is_claimed = claimed is not None
        try:
            self._annotate_adopted(ex, span, is_claimed)
        except Exception:  # pragma: no cover - never fail a request from tracing
            pass
        ex.span = span
        ids(ex, span)
        ex.state[STATE_KEY] = _ADOPTED_CLAIMED if is_claimed else _ADOPTED_CURRENT
        return True

    # -- exit -----------------------------------------------------------------------------

    def exit(self, ex: Exchange) -> None:
        self._exit(ex)

    def _bind_exit(self) -> Callable[[Exchange], None]:
        """``exit``: the closing attributes, status and end of the span (of an adopted
        span, only what kitmw alone saw)."""
        policy = self
        sc = self._sc
        old = sc.old
        new = sc.new
        status_cache = self._status_cache
        status_cached = status_cache.get
        record_error = self._record_error
        finish_adopted = self._finish_adopted
        detach = otel_context.detach

        def exit_(ex: Exchange) -> None:
            span = ex.span
            if span is None:
                return
            st = ex.state.get(STATE_KEY)
            if st is None:
                return
            if type(st) is _Adopted:
                try:
                    finish_adopted(ex, span, st.claimed)
                except Exception:  # pragma: no cover - never fail a request from tracing
                    pass
                return
            token, wall, span_name = st
            try:
                if span.is_recording():
                    attrs: dict[str, Any] = {}
                    route = ex.route
                    if route:
                        span.update_name(f"{span_name} {route}")
                        attrs["http.route"] = route
                    status = ex.status
                    error_status = False
                    if status:
                        cached = status_cached(status)
                        if cached is None:
                            cached = status_cache.put(status, status_attributes(status, sc))
                        status_attrs, error_status = cached
                        attrs.update(status_attrs)
                    sent = ex.bytes_out
                    if sent:
                        if old:
                            attrs["http.response_content_length"] = sent
                        if new:
                            attrs["http.response.body.size"] = sent
                    if attrs:
                        span.set_attributes(attrs)  # one lock, one pass
                    error = ex.error
                    if error is not None:
                        record_error(span, error)
                    elif error_status:
                        span.set_status(_ERROR)
                    elif not status:
                        span.set_status(_NO_RESPONSE)
                    hook = policy.server_response_hook
                    if hook is not None:
                        run_hook(hook, span, ex)
            except Exception:  # pragma: no cover - never fail a request from tracing
                pass
            finally:
                span.end(end_time=end_time(wall, ex))
                detach(token)

        return exit_

    def _record_error(self, span: Span, error: BaseException) -> None:
        if isinstance(error, Exception) and self.record_exceptions:
            span.record_exception(error)
        self._sc.error_type(span, error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))

    def _annotate_adopted(self, ex: Exchange, span: Span, claimed: bool) -> None:
        """Add what the owner of the span lacks, now: owners end their span at the last
        body chunk, before this policy's ``exit`` runs."""
        attrs = getattr(span, "attributes", None) or {}
        if claimed:
            # The framework (FastAPI) names the span and sets http.route itself when it
            # routes; it emits the stable HTTP conventions, so add the missing ones in that set.
            extra = neutral_request_attributes(ex, STABLE)
            span.set_attributes({k: v for k, v in extra.items() if k not in attrs})
        elif "http.route" not in attrs:
            route = ex.route  # predicted from the routes: the owner may end the span first
            if route:
                span.update_name(f"{span_method(ex.method)} {route}")
                span.set_attribute("http.route", route)

    def _finish_adopted(self, ex: Exchange, span: Span, claimed: bool) -> None:
        """The owner sets the status and ends the span; record what only kitmw saw."""
        if not span.is_recording():
            return  # already ended by its owner
        error = ex.error
        if claimed and error is not None and isinstance(error, Exception) and self.record_exceptions:
            span.record_exception(error)  # FastAPI logs it but adds no span event
        if self.server_response_hook is not None:
            run_hook(self.server_response_hook, span, ex)


def _same_path(ex: Exchange, span: Any) -> bool:
    """True if ``span`` records this request's path (contrib's span, made current outside)."""
    attrs = getattr(span, "attributes", None)
    if not attrs:
        return False
    target = attrs.get("url.path") or attrs.get("http.target")
    return isinstance(target, str) and target.partition("?")[0] == ex.path
