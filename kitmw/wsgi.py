"""The WSGI driver: a wrapped ``start_response`` and one closing iterable per request.

:class:`Middleware` runs a list of policies around a WSGI app (Django's
``get_wsgi_application()``, a Flask app or its ``app.wsgi_app``, any PEP 3333 callable).
The per-concern classes (:class:`AccessLog`, :class:`Metrics`, :class:`Tracing`,
:class:`RateLimit`, :class:`CircuitBreaker`, :class:`Auth`) are that driver with one
policy and take the same options as their ASGI twins in :mod:`kitmw.asgi`.

The exchange finishes (duration, bytes, access record, metrics, span end, breaker
verdict) in the ``close()`` of the returned iterable, which PEP 3333 servers call once
the response is done, or as soon as the body is exhausted (the inner ``close()`` is
forwarded then), so test clients that never close a response still see it finished.
Bodies are never buffered. Each request runs in its own copy
of the caller's :mod:`contextvars` context: the request id and trace id that policies
set in ``enter`` stay bound while the app runs *and* while the server iterates the
body, are reset in ``close()``, and never leak into the server thread, whichever thread
or greenlet iterates.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from http import HTTPStatus
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

from ._cache import LRUCache
from ._types import StartResponse, WSGIApp, WSGIEnviron
from .chain import Chain, Pending, compile_chain, finish
from .concerns import build, build_all, concern_class
from .errors import NoResponse, Rejected, Rejection
from .exchange import Exchange, Policy
from .routes import django_route, flask_route

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .concerns import ServerConcerns

__all__ = [
    "AccessLog",
    "Auth",
    "CircuitBreaker",
    "ConcernMiddleware",
    "ConcurrencyLimit",
    "Metrics",
    "Middleware",
    "RateLimit",
    "Stack",
    "Timeout",
    "Tracing",
    "WsgiExchange",
    "layer_of",
]

_INTERNAL_ERROR = Rejection(500, "internal_error")
_STATUS_LINES = {int(s): f"{int(s)} {s.phrase}" for s in HTTPStatus}
_MAX_WALK = 16
#: Request lines (method, host, mount, path) whose Flask route is remembered.
_MAX_ROUTES = 1024
_NO_ROUTE_YET: Any = object()
_log = logging.getLogger("kitmw")


def _status_line(status: int) -> str:
    return _STATUS_LINES.get(status) or f"{status} Unknown"


@lru_cache(maxsize=256)
def _environ_key(name: str) -> str:
    """``x-request-id`` → ``HTTP_X_REQUEST_ID`` (``CONTENT_TYPE``/``CONTENT_LENGTH`` bare)."""
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key


def _decode_path(raw: str) -> str:
    # PEP 3333 carries the raw bytes as latin-1; Django and werkzeug decode them as UTF-8.
    if raw.isascii():
        return raw
    return raw.encode("latin-1").decode("utf-8", "replace")


def _is_flask(obj: Any) -> bool:
    return (
        getattr(obj, "url_map", None) is not None
        and callable(getattr(obj, "wsgi_app", None))
        and isinstance(getattr(obj, "view_functions", None), dict)
    )


def _find_router(app: Any) -> tuple[Any, bool]:
    """(Flask app, is Django) behind ``app``, through bound methods and wrapping layers.

    Finds ``flask_app`` itself, ``flask_app.wsgi_app`` (a bound method) and layers such
    as ``ProxyFix(app.wsgi_app)`` or WhiteNoise that keep the inner app as ``.app`` or
    ``.application``.
    """
    obj = app
    for _ in range(_MAX_WALK):
        if obj is None:
            break
        if _is_flask(obj):
            return obj, False
        owner = getattr(obj, "__self__", None)
        if owner is not None and _is_flask(owner):
            return owner, False
        if type(obj).__module__.startswith("django."):
            return None, True
        obj = getattr(obj, "app", None) or getattr(obj, "application", None)
    return None, False


class WsgiExchange(Exchange):
    """An exchange over a WSGI ``environ``: headers are read from the environ on demand."""

    __slots__ = ("_django", "_flask", "_routes", "_start_headers", "environ")
    protocol = "wsgi"

    def __init__(
        self,
        environ: WSGIEnviron,
        flask_app: Any = None,
        django: bool = False,
        routes: LRUCache[tuple[str, str, str, str], str | None] | None = None,
    ) -> None:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        super().__init__(environ.get("REQUEST_METHOD", "GET"), _decode_path(path or "/"))
        self.environ = environ
        self._flask = flask_app
        self._django = django
        self._routes = routes
        self._start_headers: list[tuple[str, str]] | None = None

    def header(self, name: str) -> str | None:
        return self.environ.get(_environ_key(name))  # type: ignore[no-any-return]

    def header_all(self, name: str) -> list[str]:
        # WSGI servers join repeated headers into one value (RFC 9110 list syntax).
        value = self.environ.get(_environ_key(name))
        return [] if value is None else [value]

    def header_names(self) -> list[str]:
        names = [k[5:].lower().replace("_", "-") for k in self.environ if k.startswith("HTTP_")]
        for key, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length")):
            if self.environ.get(key):
                names.append(name)
        return names

    @property
    def client(self) -> str | None:
        return self.environ.get("REMOTE_ADDR") or None

    @property
    def query(self) -> str:
        return self.environ.get("QUERY_STRING", "")  # type: ignore[no-any-return]

    @property
    def scheme(self) -> str:
        return self.environ.get("wsgi.url_scheme", "http")  # type: ignore[no-any-return]

    @property
    def host(self) -> str:
        host = self.environ.get("HTTP_HOST")
        if host:
            return host  # type: ignore[no-any-return]
        name = self.environ.get("SERVER_NAME", "")
        port = self.environ.get("SERVER_PORT", "")
        default = "443" if self.scheme == "https" else "80"
        return f"{name}:{port}" if port and port != default else name  # type: ignore[no-any-return]

    @property
    def native(self) -> WSGIEnviron:
        return self.environ

    @property
    def mount_prefix(self) -> str:
        return _decode_path(self.environ.get("SCRIPT_NAME", "") or "")

    def _resolve_route(self) -> str | None:
        flask_app = self._flask
        if flask_app is not None:
            # After dispatch Flask's request (kept in the environ by werkzeug) knows its rule.
            request = self.environ.get("werkzeug.request")
            if request is not None:
                rule = getattr(request, "url_rule", None)
                if rule is not None:
                    return str(rule.rule)
                failed = getattr(request, "routing_exception", None)
                if failed is not None and not getattr(failed, "valid_methods", None):
                    return None  # no rule (a 405 names one: matched again below)
            routes = self._routes
            if routes is None:
                return flask_route(flask_app, self.environ)
            # Before dispatch (a breaker per route): werkzeug's matcher costs a few µs and
            # leaves a reference cycle per match (its recursive closure), so a request
            # line seen before is not matched again.
            environ = self.environ
            key = (
                environ.get("REQUEST_METHOD", "GET"),
                environ.get("HTTP_HOST") or environ.get("SERVER_NAME", ""),
                environ.get("SCRIPT_NAME", ""),
                environ.get("PATH_INFO", ""),
            )
            # One read, no membership test first: another thread's get() takes the entry
            # out and puts it back, and a check then a get could read None ("no route").
            found = routes.get(key, _NO_ROUTE_YET)
            if found is not _NO_ROUTE_YET:
                return found  # type: ignore[no-any-return]
            return routes.put(key, flask_route(flask_app, environ))
        if self._django:
            return django_route(_decode_path(self.environ.get("PATH_INFO", "") or "/"))
        return None

    def response_header(self, name: str) -> str | None:
        for key, value in self._start_headers or ():
            if key.lower() == name:
                return value
        return None

    def response_headers(self) -> list[tuple[str, str]]:
        return [(key.lower(), value) for key, value in self._start_headers or ()]


def _unstarted(data: bytes) -> None:
    raise RuntimeError("write() called before start_response()")


class _CountingInput:
    """``wsgi.input`` that counts the request body bytes the app actually reads."""

    __slots__ = ("_ex", "_stream")

    def __init__(self, stream: Any, ex: Exchange) -> None:
        self._stream = stream
        self._ex = ex

    def read(self, *args: Any) -> bytes:
        data: bytes = self._stream.read(*args)
        self._ex.bytes_in += len(data)
        return data

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._stream.readline(*args)
        self._ex.bytes_in += len(data)
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(*args)
        self._ex.bytes_in += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self._ex.bytes_in += len(line)
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Body:
    """The iterable handed to the server: per-request state, never buffering.

    Counts bytes per chunk (and per ``write()``), marks the end time at the last chunk,
    and finishes the exchange exactly once: in ``close()``, or as soon as the body is
    exhausted or fails, forwarding the inner ``close()`` then. Every call into the app
    runs in the request's context copy.
    """

    __slots__ = (
        "_closed",
        "_ctx",
        "_finished",
        "_iterable",
        "_iterator",
        "_start_response",
        "_started",
        "_write",
        "ex",
        "exits",
    )

    def __init__(self, ex: WsgiExchange, ctx: contextvars.Context, start_response: StartResponse) -> None:
        self.ex = ex
        self._ctx = ctx
        self._start_response = start_response
        self._write: Callable[[bytes], Any] = _unstarted
        self._iterable: Iterable[bytes] | None = None
        self._iterator: Iterator[bytes] | None = None
        #: The exits of every policy entered, inner kitmw layers' included (run at the end).
        self.exits: list[Pending] = []
        self._started = False
        self._closed = False
        self._finished = False

    # -- what the app sees -------------------------------------------------------------

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], Any]:
        ex = self.ex
        try:
            ex.status = int(status[:3])
        except ValueError:
            ex.status = 0
        ex.response_started = True
        if ex._route is False and ex._flask is not None:
            # Flask's request (and its matched rule) is live now; by close() it is gone and
            # the route would cost a second url_map match.
            ex.route  # noqa: B018
        added = ex._added_headers
        if added:
            headers = list(headers)
            headers.extend((k.decode("latin-1"), v.decode("latin-1")) for k, v in added)
        ex._start_headers = headers
        self._started = True
        if exc_info is None:
            self._write = self._start_response(status, headers)
        else:
            self._write = self._start_response(status, headers, exc_info)
        return self.write

    def write(self, data: bytes) -> Any:
        """The legacy ``write()`` callable of PEP 3333: counted, then forwarded."""
        self.ex.bytes_out += len(data)
        return self._write(data)

    # -- what the server sees ----------------------------------------------------------

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> bytes:
        iterator = self._iterator
        if iterator is None:
            raise StopIteration
        try:
            chunk: bytes = self._ctx.run(next, iterator)
        except StopIteration:
            ex = self.ex
            if not ex.end_ns:
                ex.end_ns = perf_counter_ns()
            self._iterator = None
            # Exhausted: the request is complete, so close now. Test clients (werkzeug's,
            # Flask's) read a body without closing it; servers then find close() done.
            self.close()
            raise
        except BaseException as exc:
            self._fail(exc)
            self._iterator = None
            if not self._closed:  # the body is over: finish now, the app's error wins
                self._closed = True
                self._ctx.run(self._close, exc)
            raise
        self.ex.bytes_out += len(chunk)
        return chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ctx.run(self._close)

    # -- internals ---------------------------------------------------------------------

    def _close(self, primary: BaseException | None = None) -> None:
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            if self.ex.error is None:
                self.ex.error = exc
            if primary is None:
                self._finish(primary=exc)
                raise
            _log.error("closing the response body failed", exc_info=exc)
        self._finish(primary=primary)

    def _fail(self, exc: BaseException) -> None:
        ex = self.ex
        ex.error = exc
        if not ex.bytes_out:
            ex.status = 500  # nothing written yet: the server answers 500 itself

    def _answer(self, answer: Rejection, exc_info: Any = None) -> _Body:
        ex = self.ex
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.header_pairs()]
        if ex._added_headers:
            headers.extend((k.decode("latin-1"), v.decode("latin-1")) for k, v in ex._added_headers)
        ex.status = answer.status
        ex._start_headers = headers
        ex.response_started = True
        self._started = True
        if exc_info is None:
            self._start_response(_status_line(answer.status), headers)
        else:
            self._start_response(_status_line(answer.status), headers, exc_info)
        body = (answer.body,)
        self._iterable = body
        self._iterator = iter(body)
        return self

    def _finish(self, primary: BaseException | None = None) -> None:
        """Run the exits once, in reverse order, every one of them.

        The first error an exit raises is raised after the others ran, unless an error
        of the app (``primary``) is on its way to the server: that one must reach it
        unchanged, so the policy's error is logged instead.
        """
        if self._finished:
            return
        self._finished = True
        ex = self.ex
        if not ex.end_ns:
            ex.end_ns = perf_counter_ns()
        if not self._started and not ex.status:
            # The app returned without calling start_response: the server answers 500.
            ex.status = 500
            if ex.error is None:
                ex.error = NoResponse()
        try:
            finish(ex, self.exits, primary)
        finally:
            # The environ holds this body and the counting input, both hold the exchange,
            # and the exchange holds the environ: unlinked now, the request is freed by
            # reference counting instead of waiting for the cyclic garbage collector.
            ex.error = None  # its traceback holds the frames that hold the exchange
            environ = ex.environ
            if environ.get(_BODY_KEY) is self:
                del environ[_BODY_KEY]
            stream = environ.get("wsgi.input")
            if type(stream) is _CountingInput:
                environ["wsgi.input"] = stream._stream


class _FileBody:
    """Finishes an exchange whose body the server sends itself (``wsgi.file_wrapper``)."""

    __slots__ = ("_body", "_close")

    def __init__(self, body: _Body, close: Callable[[], Any] | None) -> None:
        self._body = body
        self._close = close

    def __call__(self) -> None:
        body = self._body
        if body._closed:
            return
        body._closed = True
        ex = body.ex
        if not ex.bytes_out and ex.status != 304 and ex.method != "HEAD":
            length = ex.response_header("content-length")
            if length is not None and length.isdigit():
                ex.bytes_out = int(length)
        body._iterable = None
        close = self._close

        def run() -> None:
            try:
                if close is not None:
                    close()
            except BaseException as exc:
                if ex.error is None:
                    ex.error = exc
                body._finish(primary=exc)
                raise
            body._finish()

        body._ctx.run(run)


class Middleware:
    """Run ``policies`` (outermost first) around a WSGI ``app``.

    :param app: the WSGI application: a Django ``WSGIHandler``, a Flask app or its
        ``app.wsgi_app``, any PEP 3333 callable. Route templates are read from Flask's
        url rules and Django's resolver when the app is (or wraps) one of them.
    :param policies: policy objects, outermost first.
    :param handle_errors: when the app raises before calling ``start_response``, answer
        a JSON 500 carrying the added headers (``X-Request-ID``) and hand the exception
        to the server through ``start_response``'s ``exc_info``. Off by default: the
        exception is re-raised unchanged and the server renders its own 500 and logs
        the traceback, as WSGI servers and test clients expect.
    """

    def __init__(self, app: WSGIApp, /, *policies: Policy, handle_errors: bool | None = None) -> None:
        if not callable(app):
            raise TypeError(f"app: expected a WSGI application, got {app!r}")
        for policy in policies:
            if not isinstance(policy, Policy):
                raise TypeError(f"policies: expected kitmw policies, got {policy!r}")
        self.app = app
        self.policies: tuple[Policy, ...] = tuple(policies)
        self.handle_errors = bool(handle_errors)
        self._flask, self._django = _find_router(app)
        self._routes: LRUCache[tuple[str, str, str, str], str | None] | None = (
            None if self._flask is None else LRUCache(_MAX_ROUTES)
        )
        self._chain: Chain = compile_chain(self.policies, "wsgi", is_async=False)
        self._inner: bool | None = None  # another kitmw layer inside (found on first use)

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        ctx = contextvars.copy_context()
        return ctx.run(self._call, ctx, environ, start_response)

    def _call(
        self, ctx: contextvars.Context, environ: WSGIEnviron, start_response: StartResponse
    ) -> Iterable[bytes]:
        outer = environ.get(_BODY_KEY)
        if outer is not None:
            return self._join(outer, environ, start_response)
        ex = WsgiExchange(environ, self._flask, self._django, self._routes)
        ex.start_ns = perf_counter_ns()
        chain = self._chain
        ex.applied = chain.keys
        body = _Body(ex, ctx, start_response)
        environ[_BODY_KEY] = body
        if chain.counts_request_bytes and "wsgi.input" in environ:
            environ["wsgi.input"] = _CountingInput(environ["wsgi.input"], ex)

        try:
            if chain.inline:  # no around: enter, then call the app here (no closure, no frame between)
                chain.enter(ex, body.exits)
                if ex.serving is None:
                    result = self.app(environ, body.start_response)
                else:
                    result = self._serve(ex, environ, body.start_response)
            else:

                def call() -> Iterable[bytes]:
                    if ex.serving is None:
                        return self.app(environ, body.start_response)
                    return self._serve(ex, environ, body.start_response)

                result = chain.run_sync(ex, call, body.exits)
        except Rejected as refusal:
            if refusal.rejection is ex.rejection:
                return body._answer(refusal.rejection)
            return self._failed(body, refusal)
        except BaseException as exc:
            return self._failed(body, exc)
        body._iterable = result
        wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(wrapper, type) and isinstance(result, wrapper):
            passed = _pass_file(body, result)
            if passed is not None:
                return passed
        body._iterator = iter(result)
        return body

    def _failed(self, body: _Body, exc: BaseException) -> Iterable[bytes]:
        body._fail(exc)
        if self.handle_errors and not body._started:
            try:
                return body._answer(_INTERNAL_ERROR, sys.exc_info())
            except Exception:
                pass  # the server refused the answer: fall back to re-raising
        body._closed = True
        body._close(primary=exc)  # closes what the app returned, if it got that far
        try:
            raise exc
        finally:
            del exc, body  # this frame joins the traceback: it must not hold the exception

    def _serve(self, ex: WsgiExchange, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        """The answer of the policy serving in place of the application (``/metrics``).

        If a kitmw layer runs inside the application, the exchange is handed to it, so
        that its policies guard the answer too.
        """
        inner = self._inner
        if inner is None:
            inner = self._inner = _inner_layer(self)
        if inner:
            result = self.app(environ, start_response)
            if ex.response_started:
                return result  # an inner layer served it (or the application answered)
            close = getattr(result, "close", None)
            if close is not None:
                close()
        serving = ex.serving
        assert serving is not None
        return _answer(serving.respond(ex), start_response)

    def _join(self, outer: _Body, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        """Run this layer's policies on an outer kitmw layer's exchange.

        The outer layer already wraps ``start_response`` and the body and finishes the
        exchange; this layer's exits run then, before the outer layer's. Every policy
        runs, except one whose :attr:`~kitmw.exchange.Policy.join_key` an outer layer
        already applied (the same policy object, or a second ``Metrics`` on the same
        registry): running it again could only duplicate its output.
        """
        ex = outer.ex
        chain = self._chain.without(ex.applied)
        ex.applied |= chain.keys
        if (
            chain.counts_request_bytes
            and "wsgi.input" in environ
            and not isinstance(environ["wsgi.input"], _CountingInput)
        ):
            environ["wsgi.input"] = _CountingInput(environ["wsgi.input"], ex)

        def call() -> Iterable[bytes]:
            if ex.serving is None:
                return self.app(environ, start_response)
            return self._serve(ex, environ, start_response)

        try:
            result: Iterable[bytes] = chain.run_sync(ex, call, outer.exits)
        except Rejected as refusal:
            if refusal.rejection is not ex.rejection:
                raise
            return _answer(refusal.rejection, start_response)
        return result


def _answer(answer: Rejection, start_response: StartResponse) -> list[bytes]:
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.header_pairs()]
    start_response(_status_line(answer.status), headers)
    return [answer.body]


def _inner_layer(layer: Middleware) -> bool:
    """True if another kitmw WSGI layer runs inside ``layer``: wrapped directly, or through
    a Flask app's ``wsgi_app`` and layers that keep the inner app as ``.app``/``.application``."""
    seen = {id(layer)}
    obj: Any = layer.app
    for _ in range(_MAX_WALK * 2):
        if obj is None or id(obj) in seen:
            return False
        seen.add(id(obj))
        if isinstance(obj, Middleware):
            return True
        nxt = None
        for attr in ("wsgi_app", "app", "application", "__self__"):
            candidate = getattr(obj, attr, None)
            if candidate is not None and id(candidate) not in seen:
                nxt = candidate
                break
        obj = nxt
    return False


_BODY_KEY = "kitmw.body"


def layer_of(environ: WSGIEnviron) -> tuple[WsgiExchange, list[Pending]] | None:
    """The exchange a kitmw layer opened for the request of ``environ``, while it runs, and
    the exits it runs when the body is over: what a framework's own middleware
    (``kitmw.django``) joins instead of opening a second exchange."""
    body = environ.get(_BODY_KEY)
    return (body.ex, body.exits) if isinstance(body, _Body) else None


def _pass_file(body: _Body, result: Any) -> Iterable[bytes] | None:
    """Hand the server's own file wrapper back so it can use ``sendfile``."""
    try:
        result.close = _FileBody(body, getattr(result, "close", None))
    except (AttributeError, TypeError):
        return None  # a wrapper with slots: iterate it through the driver instead
    return result  # type: ignore[no-any-return]


class ConcernMiddleware(Middleware):
    """A per-concern class: the driver with that concern's policy (``kitmw.wsgi.RateLimit``).

    Built from the registry (:mod:`kitmw.concerns`); the same options as its ASGI twin.
    """

    concern: str = ""

    def __init__(self, app: WSGIApp, *, handle_errors: bool | None = None, **options: Any) -> None:
        policy = build("server", self.concern, options)
        assert policy is not None
        super().__init__(app, policy, handle_errors=handle_errors)


def __getattr__(name: str) -> Any:
    cls = concern_class(ConcernMiddleware, name)  # the registry's per-concern classes, made on first use
    globals()[name] = cls
    return cls


if TYPE_CHECKING:
    # The per-concern classes as type checkers and editors see them: ConcernMiddleware
    # with the options of their concern (kitmw.concerns declares the constructors).
    from . import concerns

    class AccessLog(concerns.AccessLogInit[WSGIApp], ConcernMiddleware):
        """The WSGI driver with :class:`~kitmw.logging.AccessLogPolicy`; options: :class:`~kitmw.logging.AccessLogOptions`."""

    class Auth(concerns.AuthInit[WSGIApp], ConcernMiddleware):
        """The WSGI driver with :class:`~kitmw.auth.AuthPolicy`; options: :class:`~kitmw.auth.AuthOptions`."""

    class CircuitBreaker(concerns.CircuitBreakerInit[WSGIApp], ConcernMiddleware):
        """The WSGI driver with :class:`~kitmw.breaker.BreakerPolicy`; options: :class:`~kitmw.breaker.BreakerOptions`."""

    class ConcurrencyLimit(concerns.ConcurrencyLimitInit[WSGIApp], ConcernMiddleware):
        """The WSGI driver with :class:`~kitmw.concurrency.ConcurrencyPolicy`; options: :class:`~kitmw.concurrency.ConcurrencyOptions`."""

    class Metrics(concerns.MetricsInit[WSGIApp], ConcernMiddleware):
        """The WSGI driver with :class:`~kitmw.metrics.MetricsPolicy`; options: :class:`~kitmw.metrics.MetricsOptions`."""

    class RateLimit(concerns.RateLimitInit[WSGIApp], ConcernMiddleware):
        """The WSGI driver with :class:`~kitmw.ratelimit.RateLimitPolicy`; options: :class:`~kitmw.ratelimit.RateLimitOptions`."""

    class Timeout(concerns.TimeoutInit[WSGIApp], ConcernMiddleware):
        """The WSGI driver with :class:`~kitmw.timeout.TimeoutPolicy`; options: :class:`~kitmw.timeout.TimeoutOptions`."""

    class Tracing(concerns.TracingInit[WSGIApp], ConcernMiddleware):
        """The WSGI driver with :class:`~kitmw.tracing.TracingPolicy`; options: :class:`~kitmw.tracing.TracingOptions`."""


class Stack(Middleware):
    """:func:`kitmw.stack` as a WSGI middleware class: ``app.wsgi_app =
    kitmw.wsgi.Stack(app.wsgi_app, metrics=True, ...)``, the twin of :class:`kitmw.Stack`
    with the same options."""

    def __init__(
        self,
        app: WSGIApp,
        /,
        *,
        exclude_paths: Iterable[str] | str | None = None,
        handle_errors: bool | None = None,
        **concerns: Unpack[ServerConcerns],
    ) -> None:
        policies = build_all("server", concerns, shared={"exclude_paths": exclude_paths})
        super().__init__(app, *policies, handle_errors=handle_errors)
