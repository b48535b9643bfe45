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
from collections.abc import Callable, Hashable, Iterable, Iterator
from functools import lru_cache
from http import HTTPStatus
from time import perf_counter_ns
from typing import Any

from ._concerns import build_policy
from ._types import StartResponse, WSGIApp, WSGIEnviron
from .errors import NoResponse, Rejection
from .exchange import SERVE, Exchange, Policy, _join_keys
from .routes import django_route, flask_route

__all__ = [
    "AccessLog",
    "Auth",
    "CircuitBreaker",
    "Metrics",
    "Middleware",
    "RateLimit",
    "Tracing",
    "WsgiExchange",
]

_INTERNAL_ERROR = Rejection(500, "internal_error")
_STATUS_LINES = {int(s): f"{int(s)} {s.phrase}" for s in HTTPStatus}
_MAX_WALK = 16
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

    __slots__ = ("_applied", "_django", "_flask", "_start_headers", "environ")
    protocol = "wsgi"

    def __init__(self, environ: WSGIEnviron, flask_app: Any = None, django: bool = False) -> None:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        super().__init__(environ.get("REQUEST_METHOD", "GET"), _decode_path(path or "/"))
        self.environ = environ
        self._flask = flask_app
        self._django = django
        self._start_headers: list[tuple[str, str]] | None = None
        self._applied: frozenset[Hashable] = frozenset()

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

    def _resolve_route(self) -> str | None:
        flask_app = self._flask
        if flask_app is not None:
            # After dispatch Flask's request (kept in the environ by werkzeug) knows its rule.
            request = self.environ.get("werkzeug.request")
            if request is not None:
                rule = getattr(request, "url_rule", None)
                if rule is not None:
                    return str(rule.rule)
                if getattr(request, "routing_exception", None) is not None:
                    return None
            return flask_route(flask_app, self.environ)
        if self._django:
            return django_route(_decode_path(self.environ.get("PATH_INFO", "") or "/"))
        return None

    def set_user(self, principal: str, scopes: Any = (), claims: Any = None, user: Any = None) -> None:
        """Record the principal; the app finds it as ``environ["kitmw.user"]``/``REMOTE_USER``."""
        super().set_user(principal, scopes, claims)
        environ = self.environ
        environ["kitmw.user"] = principal if user is None else user
        environ["kitmw.scopes"] = self.scopes
        if claims is not None:
            environ["kitmw.claims"] = claims
        environ["REMOTE_USER"] = principal

    def response_header(self, name: str) -> str | None:
        for key, value in self._start_headers or ():
            if key.lower() == name:
                return value
        return None


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
        "_entered",
        "_finished",
        "_iterable",
        "_iterator",
        "_joined",
        "_mw",
        "_ran",
        "_start_response",
        "_started",
        "_write",
        "ex",
    )

    def __init__(
        self, mw: Middleware, ex: WsgiExchange, ctx: contextvars.Context, start_response: StartResponse
    ) -> None:
        self._mw = mw
        self.ex = ex
        self._ctx = ctx
        self._start_response = start_response
        self._write: Callable[[bytes], Any] = _unstarted
        self._iterable: Iterable[bytes] | None = None
        self._iterator: Iterator[bytes] | None = None
        self._entered = 0
        self._ran: list[int] | None = None  # set when the policies that ran are not a prefix
        self._joined: list[Callable[[Exchange], None]] = []
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
        first: BaseException | None = None
        exits = self._mw._exits
        # Exits of inner kitmw layers that joined this exchange run first (they are inside).
        for joined in reversed(self._joined):
            try:
                joined(ex)
            except BaseException as exc:
                if first is None:
                    first = exc
        ran = self._ran
        for i in range(self._entered - 1, -1, -1) if ran is None else reversed(ran):
            exit_ = exits[i]
            if exit_ is not None:
                try:
                    exit_(ex)
                except BaseException as exc:  # every exit runs; the first error wins
                    if first is None:
                        first = exc
        if first is not None:
            if primary is None:
                raise first
            _log.error("a kitmw policy failed while finishing a request", exc_info=first)


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
        self._enters = tuple(p.enter for p in self.policies)
        self._exits = tuple(p.exit if type(p)._overrides("exit") else None for p in self.policies)
        self._count_in = any(p.counts_request_bytes for p in self.policies)
        self._join_keys = _join_keys(self.policies)
        self._keys = frozenset(self._join_keys)

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        ctx = contextvars.copy_context()
        return ctx.run(self._call, ctx, environ, start_response)

    def _call(
        self, ctx: contextvars.Context, environ: WSGIEnviron, start_response: StartResponse
    ) -> Iterable[bytes]:
        outer = environ.get(_BODY_KEY)
        if outer is not None:
            return self._join(outer, environ, start_response)
        ex = WsgiExchange(environ, self._flask, self._django)
        ex.start_ns = perf_counter_ns()
        ex._applied = self._keys
        body = _Body(self, ex, ctx, start_response)
        environ[_BODY_KEY] = body
        try:
            for enter in self._enters:
                body._entered += 1
                answer = enter(ex)
                if answer is not None:
                    if answer is SERVE:
                        return self._serve_outer(body, environ)
                    return body._answer(answer)
            if self._count_in and "wsgi.input" in environ:
                environ["wsgi.input"] = _CountingInput(environ["wsgi.input"], ex)
            result = self.app(environ, body.start_response)
            body._iterable = result
            wrapper = environ.get("wsgi.file_wrapper")
            if isinstance(wrapper, type) and isinstance(result, wrapper):
                passed = _pass_file(body, result)
                if passed is not None:
                    return passed
            body._iterator = iter(result)
        except BaseException as exc:
            body._fail(exc)
            if self.handle_errors and not body._started:
                try:
                    return body._answer(_INTERNAL_ERROR, sys.exc_info())
                except Exception:
                    pass  # the server refused the answer: fall back to re-raising
            body._closed = True
            body._close(primary=exc)  # closes what the app returned, if it got that far
            raise
        return body

    def _serve_outer(self, body: _Body, environ: WSGIEnviron) -> Iterable[bytes]:
        """A policy returned :data:`SERVE` (``/metrics``): the policies further in still
        guard it, except those that judge the application (the breaker)."""
        ex = body.ex
        serving = self.policies[body._entered - 1]
        ran = body._ran = list(range(body._entered))
        for i in range(body._entered, len(self._enters)):
            if self.policies[i].judges_application:
                continue
            ran.append(i)
            answer = self._enters[i](ex)
            if answer is not None and answer is not SERVE:  # a second SERVE: the first answers
                return body._answer(answer)
        if _inner_layer(self):
            # A kitmw layer inside the app: its policies guard the answer too.
            ex.state[_SERVE_KEY] = serving
            result = self.app(environ, body.start_response)
            if ex.state.pop(_SERVE_KEY, None) is None or body._started:
                body._iterable = result
                body._iterator = iter(result)
                return body
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return body._answer(serving.respond(ex))

    def _join(self, outer: _Body, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        """Run this layer's policies on an outer kitmw layer's exchange.

        The outer layer already wraps ``start_response`` and the body and finishes the
        exchange; this layer's exits run then, before the outer layer's. Every policy
        runs, except one whose :attr:`~kitmw.exchange.Policy.join_key` an outer layer
        already applied (the same policy object, or a second ``Metrics`` on the same
        registry): running it again could only duplicate its output.
        """
        ex = outer.ex
        applied = ex._applied
        keys = self._join_keys
        ex._applied = applied | self._keys
        state = ex._state
        serving: Policy | None = None if state is None else state.pop(_SERVE_KEY, None)
        for i, policy in enumerate(self.policies):
            if keys[i] in applied or (serving is not None and policy.judges_application):
                continue
            if type(policy)._overrides("exit"):
                outer._joined.append(policy.exit)
            answer = policy.enter(ex)
            if answer is SERVE:
                if serving is None:
                    serving = policy
                continue
            if answer is not None:
                return _answer(answer, start_response)
        if (
            self._count_in
            and "wsgi.input" in environ
            and not isinstance(environ["wsgi.input"], _CountingInput)
        ):
            environ["wsgi.input"] = _CountingInput(environ["wsgi.input"], ex)
        if serving is not None:
            if _inner_layer(self):
                ex.state[_SERVE_KEY] = serving
                return self.app(environ, start_response)
            return _answer(serving.respond(ex), start_response)
        return self.app(environ, start_response)


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
#: ``ex.state`` key of a policy whose answer an inner kitmw layer is to serve (SERVE).
_SERVE_KEY = "kitmw.serve"


def _pass_file(body: _Body, result: Any) -> Iterable[bytes] | None:
    """Hand the server's own file wrapper back so it can use ``sendfile``."""
    try:
        result.close = _FileBody(body, getattr(result, "close", None))
    except (AttributeError, TypeError):
        return None  # a wrapper with slots: iterate it through the driver instead
    return result  # type: ignore[no-any-return]


class AccessLog(Middleware):
    """Access log and request id (:class:`kitmw.logging.AccessLogPolicy` options)."""

    def __init__(self, app: WSGIApp, *, handle_errors: bool | None = None, **options: Any) -> None:
        super().__init__(app, build_policy("access_log", options), handle_errors=handle_errors)


class Metrics(Middleware):
    """Prometheus RED metrics and ``/metrics`` (:class:`kitmw.metrics.MetricsPolicy` options)."""

    def __init__(self, app: WSGIApp, *, handle_errors: bool | None = None, **options: Any) -> None:
        super().__init__(app, build_policy("metrics", options), handle_errors=handle_errors)


class Tracing(Middleware):
    """OpenTelemetry server spans (:class:`kitmw.tracing.TracingPolicy` options)."""

    def __init__(self, app: WSGIApp, *, handle_errors: bool | None = None, **options: Any) -> None:
        super().__init__(app, build_policy("tracing", options), handle_errors=handle_errors)


class RateLimit(Middleware):
    """Rate limiting with ``limits`` (:class:`kitmw.ratelimit.RateLimitPolicy` options)."""

    def __init__(self, app: WSGIApp, *, handle_errors: bool | None = None, **options: Any) -> None:
        super().__init__(app, build_policy("ratelimit", options), handle_errors=handle_errors)


class CircuitBreaker(Middleware):
    """Circuit breaking with pybreaker (:class:`kitmw.breaker.BreakerPolicy` options)."""

    def __init__(self, app: WSGIApp, *, handle_errors: bool | None = None, **options: Any) -> None:
        super().__init__(app, build_policy("breaker", options), handle_errors=handle_errors)


class Auth(Middleware):
    """Authentication and scopes (:class:`kitmw.auth.AuthPolicy` options)."""

    def __init__(self, app: WSGIApp, *, handle_errors: bool | None = None, **options: Any) -> None:
        super().__init__(app, build_policy("auth", options), handle_errors=handle_errors)
