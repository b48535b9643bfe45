"""What the tracing policies share: propagation through the exchange, the neutral
request attributes, option checks, and the protocol helpers' shape (:class:`ServerHelpers`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import Span

from ..errors import ConfigError
from ..exchange import Exchange
from ._headers import HeaderCapture, neutral_request_pairs
from ._semconv import OPTIONS, Semconv

try:  # a dependency of opentelemetry-instrumentation-asgi, itself a kitmw dependency
    from opentelemetry.util.http import detect_synthetic_user_agent, redact_url
except ImportError:  # pragma: no cover
    detect_synthetic_user_agent = None  # type: ignore[assignment]
    redact_url = None  # type: ignore[assignment]
try:  # opentelemetry-instrumentation, a dependency of opentelemetry-instrumentation-asgi
    from opentelemetry.instrumentation.utils import (
        is_http_instrumentation_enabled,
        is_instrumentation_enabled,
    )
except ImportError:  # pragma: no cover

    def is_http_instrumentation_enabled() -> bool:
        return True

    def is_instrumentation_enabled() -> bool:
        return True


__all__ = [
    "GETTER",
    "KNOWN_METHODS",
    "SETTER",
    "STATE_KEY",
    "Captures",
    "ExchangeGetter",
    "ExchangeSetter",
    "ServerHelpers",
    "Traced",
    "is_http_instrumentation_enabled",
    "is_instrumentation_enabled",
    "neutral_header_readers",
    "neutral_request_attributes",
    "neutral_server_helpers",
]

INSTRUMENTATION = "kitmw"
#: Where a policy keeps what its ``exit`` needs, in ``ex.state``.
STATE_KEY = "kitmw.tracing"
#: Entries of a policy's attribute caches before they start over.
MAX_CACHED = 256
KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"})
#: Known methods already in canonical form, to themselves.
PLAIN_METHODS = {m: m for m in KNOWN_METHODS}


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


GETTER = ExchangeGetter()
SETTER = ExchangeSetter()


class ServerHelpers(NamedTuple):
    """What a protocol adds to the server policy, bound by :meth:`TracingPolicy.hooks`.

    Each function takes the protocol's own object (``ex.native``); ``None`` means the
    protocol has nothing to say there.

    :param instrumentation: the ``OTEL_PYTHON_<NAME>_EXCLUDED_URLS`` variable it honours.
    :param url: the URL excluded URLs are matched against.
    :param attributes: ``(ex, native, propagation header names or None)`` -> the request
        attributes, and whether one of those headers is present (``True`` when unknown);
        if it raises (hostile input), the neutral attributes are used.
    :param claim: the span a framework already started for this request (and owns:
        names, routes and ends it), else None; it also tells the framework's own layer
        further in to step aside.
    :param owns: whether a span was started for this request by another kitmw layer.
    :param mark: record the span started for this request, for ``owns``.
    :param request_headers: ``(ex, native)`` -> the captured request header attributes,
        or None when no request header is captured (see :mod:`._headers`).
    :param response_headers: ``ex`` -> the captured response header attributes, or None.
    """

    instrumentation: str | None
    url: Callable[[Exchange], str]
    attributes: Callable[[Exchange, Any, frozenset[bytes] | None], tuple[dict[str, Any], bool]]
    claim: Callable[[Any], Any] | None = None
    owns: Callable[[Any, Any], bool] | None = None
    mark: Callable[[Any, Any], None] | None = None
    request_headers: Callable[[Exchange, Any], dict[str, list[str]]] | None = None
    response_headers: Callable[[Exchange], dict[str, list[str]]] | None = None


def neutral_server_helpers(sc: Semconv, capture: Captures = (None, None)) -> ServerHelpers:
    """For a protocol with no helpers of its own: what any exchange can tell."""

    def attributes(ex: Exchange, native: Any, fields: frozenset[bytes] | None) -> tuple[dict[str, Any], bool]:
        return neutral_request_attributes(ex, sc), True

    return ServerHelpers(None, neutral_url, attributes, None, None, None, *neutral_header_readers(capture))


#: A policy's (request, response) header captures; None for a direction not captured.
Captures = tuple["HeaderCapture | None", "HeaderCapture | None"]


def neutral_header_readers(
    capture: Captures,
) -> tuple[
    Callable[[Exchange, Any], dict[str, list[str]]] | None,
    Callable[[Exchange], dict[str, list[str]]] | None,
]:
    """The captured header attributes read from any exchange's public surface."""
    request, response = capture
    read_request = read_response = None
    if request is not None:
        collect_request = request.collect

        def read_request(ex: Exchange, native: Any) -> dict[str, list[str]]:
            return collect_request(neutral_request_pairs(ex))

    if response is not None:
        collect_response = response.collect

        def read_response(ex: Exchange) -> dict[str, list[str]]:
            return collect_response(ex.response_headers())

    return read_request, read_response


def neutral_url(ex: Exchange) -> str:
    return f"{ex.scheme}://{ex.host}{ex.path}"


def neutral_request_attributes(ex: Exchange, sc: Semconv) -> dict[str, Any]:
    """What any driver can offer: method, scheme, host, target, user agent, peer."""
    method = ex.method
    attrs: dict[str, Any] = {}
    known = method if method in KNOWN_METHODS else "_OTHER"
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


def decode_header(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except ValueError:
        return value.decode("unicode_escape")


def synthetic_user_agent(ua: str) -> str | None:
    if detect_synthetic_user_agent is None:  # pragma: no cover
        return None
    result: str | None = detect_synthetic_user_agent(ua)
    return result


def redact(url: str) -> str:
    """contrib's ``redact_url``: user info and sensitive query values become ``REDACTED``."""
    if redact_url is None:  # pragma: no cover
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")[2]
        return parts._replace(netloc=netloc).geturl()
    return str(redact_url(url))


def host_port(url: str) -> tuple[str | None, int | None]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None, None
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.hostname, port


def excluded_urls(instrumentation: str) -> Any:
    """contrib's ``get_excluded_urls(instrumentation)`` (``OTEL_PYTHON_<I>_EXCLUDED_URLS``, else
    ``OTEL_PYTHON_EXCLUDED_URLS``: comma-separated regexes searched in the full URL), or
    ``None`` when neither is set, so the URL is never built for nothing."""
    generic = os.environ.get("OTEL_PYTHON_EXCLUDED_URLS", "")
    if not os.environ.get(f"OTEL_PYTHON_{instrumentation}_EXCLUDED_URLS", generic):
        return None
    from opentelemetry.util.http import get_excluded_urls

    return get_excluded_urls(instrumentation)


def span_method(method: str) -> str:
    return method if method in KNOWN_METHODS else "HTTP"


def capture_all_methods() -> bool:
    return bool(os.environ.get("OTEL_PYTHON_INSTRUMENTATION_HTTP_CAPTURE_ALL_METHODS"))


def ids(ex: Exchange, span: Span) -> None:
    ctx = span.get_span_context()
    if ctx.is_valid:
        # printf-style formatting: about half the cost of format() per id.
        ex.trace_id = "%032x" % ctx.trace_id  # noqa: UP031
        ex.span_id = "%016x" % ctx.span_id  # noqa: UP031


def validate_common(tracer_provider: Any, propagator: Any = None) -> None:
    if tracer_provider is not None and not callable(getattr(tracer_provider, "get_tracer", None)):
        raise ConfigError(f"tracer_provider: expected an OpenTelemetry TracerProvider, got {tracer_provider!r}")
    if propagator is not None and not (
        callable(getattr(propagator, "extract", None)) and callable(getattr(propagator, "inject", None))
    ):
        raise ConfigError(f"propagator: expected a TextMapPropagator, got {propagator!r}")


def validate_hook(name: str, hook: Any) -> None:
    if hook is not None and not callable(hook):
        raise ConfigError(f"{name}: expected a callable or None, got {hook!r}")


def validate_semconv(semconv: Any) -> None:
    if semconv is not None and semconv not in OPTIONS:
        raise ConfigError(f"semconv: expected None, 'default', 'http' or 'http/dup', got {semconv!r}")


def validate_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected a bool, got {value!r}")


def run_hook(hook: Callable[..., Any], span: Span, arg: Any) -> None:
    # A hook error is recorded on the span, never raised into the request.
    try:
        hook(span, arg)
    except Exception as exc:
        try:
            span.record_exception(exc)
        except Exception:  # pragma: no cover
            pass


def end_time(wall_start: int, ex: Exchange) -> int | None:
    """The span's end in wall-clock ns: its start plus the exchange's monotonic duration."""
    if ex.end_ns and ex.start_ns and ex.end_ns >= ex.start_ns:
        return wall_start + (ex.end_ns - ex.start_ns)
    return None


class Traced:
    """The tracer of a policy, found at the first exchange (not at import or construction:
    the global provider is usually configured after the middleware is built)."""

    __slots__ = ()
    _provider: Any
    _tracer: Any
    _sc: Semconv

    def _get_tracer(self) -> Any:
        provider = self._provider if self._provider is not None else trace.get_tracer_provider()
        from .. import __version__

        tracer = provider.get_tracer(INSTRUMENTATION, __version__, schema_url=self._sc.schema_url)
        self._tracer = tracer
        return tracer
