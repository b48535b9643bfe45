"""OpenTelemetry tracing: one SERVER span per request, CLIENT spans with W3C propagation.

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
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from time import time_ns
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, Setter, TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

try:  # a dependency of opentelemetry-instrumentation-asgi, itself a kitmw dependency
    from opentelemetry.util.http import detect_synthetic_user_agent, redact_url
except ImportError:  # pragma: no cover
    detect_synthetic_user_agent = None  # type: ignore[assignment]
    redact_url = None  # type: ignore[assignment]
try:  # opentelemetry-instrumentation, a dependency of opentelemetry-instrumentation-asgi
    from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled
except ImportError:  # pragma: no cover

    def is_http_instrumentation_enabled() -> bool:
        return True

from ._paths import PathMatcher
from .errors import ConfigError, Rejection
from .exchange import Exchange, Policy

__all__ = ["ClientTracingPolicy", "ExchangeGetter", "ExchangeSetter", "TracingPolicy"]

_INSTRUMENTATION = "kitmw"
_STATE_KEY = "kitmw.tracing"
#: Key of the span kitmw started for a request, in the ASGI scope / WSGI environ,
#: so a second kitmw tracing layer on the same request adopts it.
SCOPE_SPAN_KEY = "kitmw.span"
#: FastAPI's per-request telemetry key: ``None`` makes FastAPI's native layer step aside.
FASTAPI_KEY = "fastapi.telemetry"
_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
_SEMCONV_OPTIONS = ("default", "http", "http/dup")


class ExchangeGetter(Getter[Exchange]):
    """Reads propagation headers (``traceparent``, ``tracestate``, ``baggage``) from an exchange."""

    def get(self, carrier: Exchange, key: str) -> list[str] | None:
        values = carrier.header_all(key.lower())
        if not values:
            return None
        if len(values) > 1 and key.lower() == "baggage":
            return [",".join(values)]  # the baggage propagator reads the first value only
        return values

    def keys(self, carrier: Exchange) -> list[str]:
        return carrier.header_names()


class ExchangeSetter(Setter[Exchange]):
    """Writes propagation headers onto an outgoing (client side) exchange."""

    def set(self, carrier: Exchange, key: str, value: str) -> None:
        carrier.set_request_header(key, value)


_GETTER = ExchangeGetter()
_SETTER = ExchangeSetter()


# -- semantic conventions: contrib's helpers, with a small fallback ------------------------


class _Semconv:
    """The HTTP semconv helpers of ``opentelemetry-instrumentation`` bound to one mode.

    The mode comes from ``OTEL_SEMCONV_STABILITY_OPT_IN`` exactly as contrib's
    middlewares read it (old attribute names by default, ``http`` for the stable ones,
    ``http/dup`` for both), unless the ``semconv`` option forces one.
    """

    __slots__ = ("mode", "new", "old", "schema_url")

    def __init__(self, option: str | None) -> None:
        self.mode: Any = option
        self.old = option in (None, "default", "http/dup")
        self.new = option in ("http", "http/dup")
        self.schema_url: str | None = None
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
            self.mode = mode
            self.old = bool(sc._report_old(mode))
            self.new = bool(sc._report_new(mode))
            self.schema_url = sc._get_schema_url(mode)
        except (AttributeError, KeyError):  # pragma: no cover - private API moved
            pass

    def error_type(self, span: Span, exc: BaseException) -> None:
        if self.new:
            cls = type(exc)
            name = (
                cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
            )
            span.set_attribute("error.type", name)


def _neutral_request_attributes(ex: Exchange, sc: _Semconv) -> dict[str, Any]:
    """What any driver can offer: method, scheme, host, target, user agent, peer."""
    method = ex.method
    attrs: dict[str, Any] = {}
    known = method if method in _KNOWN_METHODS else "_OTHER"
    query = ex.query
    ua = ex.header("user-agent")
    host = ex.host
    client = ex.client
    if sc.old:
        attrs["http.method"] = known
        attrs["http.scheme"] = ex.scheme
        attrs["http.target"] = ex.path + ("?" + query if query else "")
        if host:
            attrs["http.host"] = host
        if ua:
            attrs["http.user_agent"] = ua
        if client:
            attrs["net.peer.ip"] = client
    if sc.new:
        attrs["http.request.method"] = known
        if known != method:
            attrs["http.request.method_original"] = method
        attrs["url.scheme"] = ex.scheme
        attrs["url.path"] = ex.path
        if query:
            attrs["url.query"] = query
        if host:
            attrs["server.address"] = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if ua:
            attrs["user_agent.original"] = ua
        if client:
            attrs["client.address"] = client
    return attrs


def _decode_header(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except ValueError:
        return value.decode("unicode_escape")


def _asgi_request_attributes(
    scope: Any, sc: _Semconv, all_methods: bool, cache: dict[Any, Any] | None = None
) -> dict[str, Any]:
    """``opentelemetry.instrumentation.asgi.collect_request_attributes(scope, mode)``, faster.

    Same keys and values in every semconv mode (a test pins the equality against
    contrib's function) at a fraction of the cost: see :func:`_asgi_scan`.
    """
    return _asgi_scan(scope, sc, all_methods, cache, None)[0]


def _asgi_scan(
    scope: Any,
    sc: _Semconv,
    all_methods: bool,
    cache: dict[Any, Any] | None,
    fields: frozenset[bytes] | None,
) -> tuple[dict[str, Any], bool]:
    """The request attributes, and whether a header named in ``fields`` is present.

    One pass over the headers serves the attributes and the propagator's question.
    contrib's ``redact_url`` runs only when the URL has credentials or a query; unlike
    contrib's, a non-UTF-8 query string does not raise. With a ``cache`` (a dict owned
    by the caller, kept small), everything that depends only on the listening socket
    (scheme, server address and port, HTTP version), the ``Host`` header(s) and the
    user agent (its synthetic type included) is computed once per distinct value:
    per request remain the path, query, method and peer.
    """
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
    if cache is None:
        base, prefix = _asgi_base(scope, sc, hosts, ua)
    else:
        server = scope.get("server")
        if server is not None and type(server) is not tuple:
            server = tuple(server)
        ckey = (
            scope.get("scheme", _NOT_LOADED),
            server,
            scope.get("http_version"),
            tuple(hosts) if type(hosts) is list else hosts,
            ua,
        )
        entry = cache.get(ckey)
        if entry is None:
            if len(cache) >= _MAX_CACHED:
                cache.clear()
            entry = cache[ckey] = _asgi_base(scope, sc, hosts, ua)
        base, prefix = entry
    result = dict(base)
    old = sc.old
    new = sc.new
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
        url = prefix + path
        if query:
            url += "?" + unquote(query)
        # contrib's redact_url only changes URLs with credentials or a query part.
        result["http.url"] = _redact(url) if "@" in url or "?" in url else url
    method = scope.get("method", "")
    if method:
        normalized = _PLAIN_METHODS.get(method)  # the common case: nothing to normalise
        if normalized is None:
            original = method.strip()
            upper = method.upper()
            normalized = upper if all_methods or upper in _KNOWN_METHODS else "_OTHER"
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


#: Entries of a policy's attribute cache before it starts over.
_MAX_CACHED = 256
#: Known methods already in canonical form, to themselves.
_PLAIN_METHODS = {m: m for m in _KNOWN_METHODS}


def _asgi_base(scope: Any, sc: _Semconv, hosts: Any, ua_raw: bytes | None) -> tuple[dict[str, Any], str]:
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
        host_values = [_decode_header(h) for h in (hosts if type(hosts) is list else (hosts,))]
    prefix = ""
    if old:
        prefix = scope.get("scheme", "http") + "://" + (host_values[0] if host_values else server_host)
        if host_values:
            result["http.server_name"] = ",".join(host_values)
    ua = None if ua_raw is None else _decode_header(ua_raw)
    if ua:
        if old:
            result["http.user_agent"] = ua
        if new:
            result["user_agent.original"] = ua
        synthetic = _synthetic_user_agent(ua)
        if synthetic:
            result["user_agent.synthetic.type"] = synthetic
    return result, prefix


def _quiet_fields(propagator: Any) -> frozenset[bytes] | None:
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


def _synthetic_user_agent(ua: str) -> str | None:
    if detect_synthetic_user_agent is None:  # pragma: no cover
        return None
    result: str | None = detect_synthetic_user_agent(ua)
    return result


def _wsgi_collect() -> Callable[..., dict[str, Any]] | None:
    """contrib's WSGI ``collect_request_attributes``, if the ``kitmw[wsgi]`` extra is installed."""
    try:
        from opentelemetry.instrumentation.wsgi import collect_request_attributes
    except ImportError:
        return None
    collect: Callable[..., dict[str, Any]] = collect_request_attributes
    return collect


def _status_attributes(status: int, sc: _Semconv) -> tuple[dict[str, Any], bool]:
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


def _excluded_urls(instrumentation: str) -> Any:
    """contrib's ``get_excluded_urls(instrumentation)`` (``OTEL_PYTHON_<I>_EXCLUDED_URLS``, else
    ``OTEL_PYTHON_EXCLUDED_URLS``: comma-separated regexes searched in the full URL), or
    ``None`` when neither is set, so the URL is never built for nothing."""
    generic = os.environ.get("OTEL_PYTHON_EXCLUDED_URLS", "")
    if not os.environ.get(f"OTEL_PYTHON_{instrumentation}_EXCLUDED_URLS", generic):
        return None
    from opentelemetry.util.http import get_excluded_urls

    return get_excluded_urls(instrumentation)


def _full_url(ex: Exchange, native: Any, on_asgi: bool) -> str:
    """The URL contrib's middlewares match excluded URLs against: scheme, host, path, no query."""
    if on_asgi:
        from opentelemetry.instrumentation import asgi

        contrib: Any = asgi  # untyped
        url: str = contrib.get_host_port_url_tuple(native)[2]
        return url
    if isinstance(native, dict) and "wsgi.url_scheme" in native:
        from wsgiref.util import request_uri

        return request_uri(native, include_query=False)
    return f"{ex.scheme}://{ex.host}{ex.path}"


def _span_method(method: str) -> str:
    return method if method in _KNOWN_METHODS else "HTTP"


def _capture_all_methods() -> bool:
    return bool(os.environ.get("OTEL_PYTHON_INSTRUMENTATION_HTTP_CAPTURE_ALL_METHODS"))


def _ids(ex: Exchange, span: Span) -> None:
    ctx = span.get_span_context()
    if ctx.is_valid:
        # printf-style formatting: about half the cost of format() per id.
        ex.trace_id = "%032x" % ctx.trace_id  # noqa: UP031
        ex.span_id = "%016x" % ctx.span_id  # noqa: UP031


def _validate_common(tracer_provider: Any, propagator: Any) -> None:
    if tracer_provider is not None and not callable(getattr(tracer_provider, "get_tracer", None)):
        raise ConfigError(
            f"tracer_provider: expected an OpenTelemetry TracerProvider, got {tracer_provider!r}"
        )
    if propagator is not None and not (
        callable(getattr(propagator, "extract", None)) and callable(getattr(propagator, "inject", None))
    ):
        raise ConfigError(f"propagator: expected a TextMapPropagator, got {propagator!r}")


def _validate_hook(name: str, hook: Any) -> None:
    if hook is not None and not callable(hook):
        raise ConfigError(f"{name}: expected a callable or None, got {hook!r}")


def _validate_semconv(semconv: Any) -> None:
    if semconv is not None and semconv not in _SEMCONV_OPTIONS:
        raise ConfigError(f"semconv: expected None, 'default', 'http' or 'http/dup', got {semconv!r}")


def _run_hook(hook: Callable[..., Any], span: Span, arg: Any) -> None:
    # A hook error is recorded on the span, never raised into the request.
    try:
        hook(span, arg)
    except Exception as exc:
        try:
            span.record_exception(exc)
        except Exception:  # pragma: no cover
            pass


def _end_time(wall_start: int, ex: Exchange) -> int | None:
    if ex.end_ns and ex.start_ns and ex.end_ns >= ex.start_ns:
        return wall_start + (ex.end_ns - ex.start_ns)
    return None


class _Adopted:
    """Marks an exchange whose server span belongs to another layer (not ended by kitmw)."""

    __slots__ = ("fastapi",)

    def __init__(self, fastapi: bool) -> None:
        self.fastapi = fastapi


_NOT_LOADED = object()
_ADOPTED_FASTAPI = _Adopted(True)
_ADOPTED_OTHER = _Adopted(False)


class _TracerMixin:
    __slots__ = ()
    _provider: Any
    _tracer: Any
    _sc: _Semconv

    def _get_tracer(self) -> Any:
        # Looked up at the first request, not at import or construction: the global
        # provider is usually configured after the middleware is built.
        provider = self._provider if self._provider is not None else trace.get_tracer_provider()
        from . import __version__

        tracer = provider.get_tracer(_INSTRUMENTATION, __version__, schema_url=self._sc.schema_url)
        self._tracer = tracer
        return tracer


class TracingPolicy(_TracerMixin, Policy):
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
        "_exclude",
        "_excluded_urls",
        "_prop",
        "_propagator",
        "_provider",
        "_sc",
        "_status_cache",
        "_tracer",
        "_wsgi",
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
        _validate_common(tracer_provider, propagator)
        _validate_hook("server_request_hook", server_request_hook)
        _validate_hook("server_response_hook", server_response_hook)
        _validate_semconv(semconv)
        if not isinstance(record_exceptions, bool):
            raise ConfigError(f"record_exceptions: expected a bool, got {record_exceptions!r}")
        self._provider = tracer_provider
        self._tracer: Any = None
        self._exclude = PathMatcher(exclude_paths)
        # OTEL_PYTHON_{ASGI,WSGI}_EXCLUDED_URLS / OTEL_PYTHON_EXCLUDED_URLS, read once, as contrib does
        self._excluded_urls: dict[str, Any] = {
            protocol: found
            for protocol, name in (("asgi", "ASGI"), ("wsgi", "WSGI"))
            if (found := _excluded_urls(name)) is not None
        }
        self._propagator = propagator
        self.record_exceptions = record_exceptions
        self.server_request_hook = server_request_hook
        self.server_response_hook = server_response_hook
        self._sc = _Semconv(semconv)
        self._all_methods = _capture_all_methods()
        # contrib's WSGI helper, imported at the first WSGI request (an optional extra).
        self._wsgi: Any = _NOT_LOADED
        self._attr_cache: dict[Any, Any] = {}
        # status code -> (its span attributes, whether the span status is ERROR)
        self._status_cache: dict[int, tuple[dict[str, Any], bool]] = {}
        # (propagator, the header names it reads if it is known to find nothing without them)
        self._prop: tuple[Any, frozenset[bytes] | None] = (None, None)

    # -- enter ----------------------------------------------------------------------------

    def enter(self, ex: Exchange) -> Rejection | None:
        native = ex.native
        on_asgi = ex.protocol == "asgi" and native is not None
        ctx = otel_context.get_current()  # empty (falsy) at the start of a served request
        if (
            (self._exclude and self._exclude(ex.path))
            or (self._excluded_urls and self._url_excluded(ex, native, on_asgi))
            or (ctx and not is_http_instrumentation_enabled())  # suppress_http_instrumentation()
        ):
            if on_asgi and FASTAPI_KEY not in native:
                native[FASTAPI_KEY] = None  # FastAPI's native layer skips it too
            return None
        current = trace.get_current_span(ctx)
        if (on_asgi and native.get(FASTAPI_KEY) is not None) or current.is_recording():
            adopted = self._adopt(ex, native, on_asgi)  # someone may own a span already
            if adopted is not None:
                if on_asgi and FASTAPI_KEY not in native:
                    # an outer layer's span (contrib's middleware, an outer kitmw): FastAPI's
                    # native layer further in must not add a second server span
                    native[FASTAPI_KEY] = None
                return None
        if on_asgi and FASTAPI_KEY not in native:
            # kitmw is outside FastAPI: the marker FastAPI sets for excluded requests
            # makes its native layer step aside, so this span is the only server span.
            native[FASTAPI_KEY] = None
        tracer = self._tracer or self._get_tracer()
        propagator = self._propagator or propagate.get_global_textmap()
        seen, fields = self._prop
        if seen is not propagator:
            fields = _quiet_fields(propagator)
            self._prop = (propagator, fields)
        attributes: dict[str, Any] | None = None
        found = True  # a propagation header is present (or the propagator must be asked)
        if on_asgi:
            try:
                attributes, found = _asgi_scan(native, self._sc, self._all_methods, self._attr_cache, fields)
            except Exception:  # hostile or odd input must never fail the request
                attributes = None
        # Nothing extracted: the current context is the parent, as in contrib's middlewares
        # (at the start of a served request it is empty: a new root trace).
        if fields is not None and not found:
            parent = ctx  # what the W3C propagators extract without their headers
        else:
            try:
                parent = propagator.extract(ex, context=ctx, getter=_GETTER)
            except Exception:  # garbage traceparent/tracestate/baggage: the request proceeds
                parent = ctx
        kind = SpanKind.SERVER
        if (
            ctx
            and getattr(current, "kind", None) is SpanKind.SERVER
            and current.is_recording()
            and trace.get_current_span(parent) is current
        ):
            # A server span of another layer, not adoptable (not this request's path), and
            # no traceparent: this span is its child, INTERNAL as contrib makes it, so the
            # request keeps one SERVER span.
            kind = SpanKind.INTERNAL
        method = ex.method
        span_name = method if self._all_methods or method in _KNOWN_METHODS else "HTTP"
        if attributes is None:
            attributes = self._request_attributes(ex, native)
        wall = time_ns()
        span = tracer.start_span(span_name, context=parent, kind=kind, attributes=attributes, start_time=wall)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        ex.span = span
        ctx = span.get_span_context()
        if ctx.is_valid:  # _ids(), inlined
            ex.trace_id = "%032x" % ctx.trace_id  # noqa: UP031
            ex.span_id = "%016x" % ctx.span_id  # noqa: UP031
        ex.state[_STATE_KEY] = (token, wall, span_name)
        if isinstance(native, dict) or on_asgi:
            native[SCOPE_SPAN_KEY] = span
        if self.server_request_hook is not None and span.is_recording():
            _run_hook(self.server_request_hook, span, native)
        return None

    def _url_excluded(self, ex: Exchange, native: Any, on_asgi: bool) -> bool:
        excluded = self._excluded_urls.get(ex.protocol)
        if excluded is None:
            return False
        try:
            return bool(excluded.url_disabled(_full_url(ex, native, on_asgi)))
        except Exception:  # an odd scope: traced rather than failed
            return False

    def _request_attributes(self, ex: Exchange, native: Any) -> dict[str, Any]:
        protocol = ex.protocol
        if native is not None:
            try:
                if protocol == "wsgi":
                    collect = self._wsgi
                    if collect is _NOT_LOADED:
                        collect = self._wsgi = _wsgi_collect()
                    if collect is not None:
                        attributes: dict[str, Any] = collect(native, self._sc.mode)
                        return attributes
            except Exception:  # hostile or odd input must never fail the request
                pass
        return _neutral_request_attributes(ex, self._sc)

    def _adopt(self, ex: Exchange, native: Any, on_asgi: bool) -> _Adopted | None:
        """Take over a server span another layer already started for this request."""
        fastapi = False
        span: Any = None
        if on_asgi:
            telemetry = native.get(FASTAPI_KEY)
            if telemetry is not None:
                span = getattr(telemetry, "span", None)
                fastapi = span is not None
        if span is None:
            current = trace.get_current_span()
            if not current.is_recording() or getattr(current, "kind", None) is not SpanKind.SERVER:
                return None
            if not self._same_request(ex, native, current):
                return None
            span = current
        elif not span.is_recording():
            return None
        adopted = _ADOPTED_FASTAPI if fastapi else _ADOPTED_OTHER
        try:
            self._annotate_adopted(ex, span, fastapi)
        except Exception:  # pragma: no cover - never fail a request from tracing
            pass
        ex.span = span
        _ids(ex, span)
        ex.state[_STATE_KEY] = adopted
        return adopted

    @staticmethod
    def _same_request(ex: Exchange, native: Any, span: Any) -> bool:
        if native is not None:
            try:
                if native.get(SCOPE_SPAN_KEY) is span:
                    return True  # an outer kitmw layer
            except AttributeError:  # pragma: no cover - not a mapping
                pass
        attrs = getattr(span, "attributes", None)
        if not attrs:
            return False
        target = attrs.get("url.path") or attrs.get("http.target")
        return isinstance(target, str) and target.partition("?")[0] == ex.path

    # -- exit -----------------------------------------------------------------------------

    def exit(self, ex: Exchange) -> None:
        span = ex.span
        if span is None:
            return
        st = ex.state.get(_STATE_KEY)
        if st is None:
            return
        if isinstance(st, _Adopted):
            try:
                self._finish_adopted(ex, span, st.fastapi)
            except Exception:  # pragma: no cover - never fail a request from tracing
                pass
            return
        token, wall, span_name = st
        try:
            if span.is_recording():
                self._finish(ex, span, span_name)
        except Exception:  # pragma: no cover - never fail a request from tracing
            pass
        finally:
            span.end(end_time=_end_time(wall, ex))
            otel_context.detach(token)

    def _finish(self, ex: Exchange, span: Span, span_name: str) -> None:
        sc = self._sc
        attrs: dict[str, Any] = {}
        route = ex.route
        if route:
            span.update_name(f"{span_name} {route}")
            attrs["http.route"] = route
        status = ex.status
        error_status = False
        if status:
            cached = self._status_cache.get(status)
            if cached is None:
                if len(self._status_cache) >= _MAX_CACHED:
                    self._status_cache.clear()
                cached = self._status_cache[status] = _status_attributes(status, sc)
            status_attrs, error_status = cached
            attrs.update(status_attrs)
        if ex.bytes_out:
            if sc.old:
                attrs["http.response_content_length"] = ex.bytes_out
            if sc.new:
                attrs["http.response.body.size"] = ex.bytes_out
        if attrs:
            span.set_attributes(attrs)  # one lock, one pass
        error = ex.error
        if error is not None:
            self._record_error(span, error)
        elif error_status:
            span.set_status(Status(StatusCode.ERROR))
        elif not status:
            span.set_status(Status(StatusCode.ERROR, "no response was sent"))
        if self.server_response_hook is not None:
            _run_hook(self.server_response_hook, span, ex)

    def _record_error(self, span: Span, error: BaseException) -> None:
        if isinstance(error, Exception) and self.record_exceptions:
            span.record_exception(error)
        self._sc.error_type(span, error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))

    def _annotate_adopted(self, ex: Exchange, span: Span, fastapi: bool) -> None:
        """Add what the owner of the span lacks, now: owners end their span at the last
        body chunk, before this policy's ``exit`` runs."""
        attrs = getattr(span, "attributes", None) or {}
        if fastapi:
            # FastAPI names the span and sets http.route itself when it routes; it
            # emits the stable HTTP conventions, so add the missing ones in that set.
            extra = _neutral_request_attributes(ex, _STABLE)
            span.set_attributes({k: v for k, v in extra.items() if k not in attrs})
        elif "http.route" not in attrs:
            route = ex.route  # predicted from the routes: the owner may end the span first
            if route:
                span.update_name(f"{_span_method(ex.method)} {route}")
                span.set_attribute("http.route", route)

    def _finish_adopted(self, ex: Exchange, span: Span, fastapi: bool) -> None:
        """The owner sets the status and ends the span; record what only kitmw saw."""
        if not span.is_recording():
            return  # already ended by its owner
        error = ex.error
        if fastapi and error is not None and isinstance(error, Exception) and self.record_exceptions:
            span.record_exception(error)  # FastAPI logs it but adds no span event
        if self.server_response_hook is not None:
            _run_hook(self.server_response_hook, span, ex)


_STABLE = _Semconv("http")


class ClientTracingPolicy(_TracerMixin, Policy):
    """CLIENT spans for outgoing requests, ``traceparent`` injected into each of them.

    The span is a child of the current span (the server span of the request being
    handled, if any) and ends when the driver finishes the exchange (the response body
    closed). ``url.full`` never carries credentials.

    :param tracer_provider: default the global one, looked up at the first request.
    :param propagator: default the global textmap propagator.
    :param record_exceptions: add an exception event for a transport error.
    :param request_hook: ``hook(span, exchange)`` after the span starts.
    :param response_hook: ``hook(span, exchange)`` before the span ends.
    :param semconv: as for :class:`TracingPolicy`.
    """

    __slots__ = (
        "_all_methods",
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
    ) -> None:
        _validate_common(tracer_provider, propagator)
        _validate_hook("request_hook", request_hook)
        _validate_hook("response_hook", response_hook)
        _validate_semconv(semconv)
        if not isinstance(record_exceptions, bool):
            raise ConfigError(f"record_exceptions: expected a bool, got {record_exceptions!r}")
        self._provider = tracer_provider
        self._tracer: Any = None
        self._propagator = propagator
        self.record_exceptions = record_exceptions
        self.request_hook = request_hook
        self.response_hook = response_hook
        self._sc = _Semconv(semconv)
        self._all_methods = _capture_all_methods()

    def enter(self, ex: Exchange) -> Rejection | None:
        if otel_context.get_current() and not is_http_instrumentation_enabled():
            return None  # suppress_http_instrumentation(): no span and no traceparent, as contrib's httpx
        tracer = self._tracer or self._get_tracer()
        method = ex.method
        span_name = method if self._all_methods or method in _KNOWN_METHODS else "HTTP"
        wall = time_ns()
        span = tracer.start_span(
            span_name, kind=SpanKind.CLIENT, attributes=self._attributes(ex), start_time=wall
        )
        propagator = self._propagator or propagate.get_global_textmap()
        try:
            propagator.inject(ex, context=trace.set_span_in_context(span), setter=_SETTER)
        except Exception:  # pragma: no cover - a broken custom propagator
            pass
        ex.span = span
        _ids(ex, span)
        ex.state[_STATE_KEY] = wall
        if self.request_hook is not None and span.is_recording():
            _run_hook(self.request_hook, span, ex)
        return None

    def _attributes(self, ex: Exchange) -> dict[str, Any]:
        sc = self._sc
        method = ex.method
        known = method if method in _KNOWN_METHODS else "_OTHER"
        query = ex.query
        url = _redact(ex.url + ("?" + query if query else ""))
        host, port = _host_port(ex.url)
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
        wall = ex.state.get(_STATE_KEY)
        if wall is None:
            return
        try:
            if span.is_recording():
                self._finish(ex, span)
        except Exception:  # pragma: no cover - never fail a call from tracing
            pass
        finally:
            span.end(end_time=_end_time(wall, ex))

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
        if self.response_hook is not None:
            _run_hook(self.response_hook, span, ex)


def _redact(url: str) -> str:
    """contrib's ``redact_url``: user info and sensitive query values become ``REDACTED``."""
    if redact_url is None:  # pragma: no cover
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=netloc).geturl()
    return str(redact_url(url))


def _host_port(url: str) -> tuple[str | None, int | None]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None, None
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.hostname, port
