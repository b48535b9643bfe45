"""The ASGI driver: one wrapped ``send`` for any number of policies.

:class:`Middleware` runs a list of policies around an ASGI app. The per-concern classes
(:class:`AccessLog`, :class:`Metrics`, :class:`Tracing`, :class:`RateLimit`,
:class:`CircuitBreaker`, :class:`Auth`) are that driver with one policy, usable with
``app.add_middleware(cls, **options)`` or by wrapping any ASGI app directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect

from ._types import ASGIApp, Message, Receive, Scope, Send, is_asgi
from .chain import Chain, Pending, afinish, compile_chain, finish
from .concerns import build, build_all, concern_class
from .errors import NoResponse, Rejected, Rejection
from .exchange import Exchange, Policy
from .routes import django_route, starlette_route, url_map_route

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .concerns import ServerConcerns

__all__ = [
    "AccessLog",
    "AsgiExchange",
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
    "exchange_of",
    "is_asgi",
]

_INTERNAL_ERROR = Rejection(500, "internal_error")

#: Status recorded when the client went away before the response was complete (nginx's).
CLIENT_CLOSED = 499


def _find_url_map(app: Any) -> Any:
    """The Quart-like app (with a werkzeug ``url_map``) that ``app`` is or wraps, else None."""
    for _ in range(32):
        if app is None:
            return None
        owner = getattr(app, "__self__", None)  # app.asgi_app, a bound method
        for candidate in (app, owner):
            if candidate is not None and hasattr(candidate, "url_map") and hasattr(candidate, "asgi_app"):
                return candidate
        app = getattr(app, "app", None) or getattr(owner, "app", None)
    return None


def _is_django(app: Any) -> bool:
    """True if ``app``, or an app it wraps (kitmw layers, other middlewares), is Django's."""
    for _ in range(32):
        if app is None:
            return False
        if type(app).__module__.startswith("django."):
            return True
        app = getattr(app, "app", None) or getattr(app, "application", None)
    return False


class AsgiExchange(Exchange):
    """An exchange over an ASGI ``scope``: headers are read from the scope on demand."""

    __slots__ = ("_counting", "_gone", "_root", "_router_kind", "_start_headers", "scope")
    protocol = "asgi"

    def __init__(self, scope: Scope, root: Any = None, router_kind: int = 0) -> None:
        super().__init__(scope.get("method", "GET"), scope.get("path", "/"))
        self.scope = scope
        self._root = root
        self._router_kind = router_kind
        self._start_headers: Any = None
        self._counting = False
        self._gone = False  # the client disconnected (http.disconnect seen, or send failed)

    def header(self, name: str) -> str | None:
        key = name.encode("latin-1")
        for k, v in self.scope.get("headers", ()):
            if k == key or k.lower() == key:
                return v.decode("latin-1")  # type: ignore[no-any-return]
        return None

    def header_all(self, name: str) -> list[str]:
        key = name.encode("latin-1")
        return [v.decode("latin-1") for k, v in self.scope.get("headers", ()) if k.lower() == key]

    def header_names(self) -> list[str]:
        return [k.decode("latin-1").lower() for k, _ in self.scope.get("headers", ())]

    @property
    def client(self) -> str | None:
        client = self.scope.get("client")
        return client[0] if client else None

    @property
    def query(self) -> str:
        return self.scope.get("query_string", b"").decode("latin-1")  # type: ignore[no-any-return]

    @property
    def scheme(self) -> str:
        return self.scope.get("scheme", "http")  # type: ignore[no-any-return]

    @property
    def native(self) -> Scope:
        return self.scope

    @property
    def mount_prefix(self) -> str:
        root_path = self.scope.get("root_path")
        return root_path if isinstance(root_path, str) else ""

    @property
    def response_started(self) -> bool:
        return self._start_headers is not None or self._response_started

    @response_started.setter
    def response_started(self, value: bool) -> None:
        self._response_started = value

    def begin_attempt(self) -> None:
        if self.response_started:
            raise RuntimeError("an around policy called the application again after it started its response")
        super().begin_attempt()

    def _resolve_route(self) -> str | None:
        kind = self._router_kind
        if kind == _ROUTER_DJANGO:
            path = self.scope.get("path", "/")
            root_path = self.scope.get("root_path", "")
            if root_path and path.startswith(root_path):
                path = path[len(root_path) :] or "/"
            return django_route(path)
        if kind == _ROUTER_URL_MAP:
            return url_map_route(self._root, self.scope)
        template = self.scope.get("path_template")  # Litestar records the matched template
        if isinstance(template, str) and template:
            return template
        return starlette_route(self.scope, self._root)  # type: ignore[arg-type]

    def response_header(self, name: str) -> str | None:
        key = name.encode("latin-1")
        for k, v in self._start_headers or ():
            if k.lower() == key:
                return v.decode("latin-1")  # type: ignore[no-any-return]
        return None

    def response_headers(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in self._start_headers or ()]


_ROUTER_STARLETTE = 0
_ROUTER_DJANGO = 1
_ROUTER_URL_MAP = 2  # Quart (werkzeug url rules, as Flask)


class Middleware:
    """Run ``policies`` (outermost first) around an ASGI ``app`` with one wrapped ``send``.

    :param app: the ASGI application.
    :param policies: policy objects, outermost first.
    :param handle_errors: answer an unhandled exception with a JSON 500 (carrying the
        added headers such as ``X-Request-ID``) when nothing was sent yet, then re-raise.
        ``None`` (default) does so unless a Starlette app outside kitmw will render it
        (kitmw added with ``add_middleware``).

    Websocket connections are seen only by the policies that handle them
    (:attr:`~kitmw.exchange.Policy.handles_websocket`: auth); the others never see
    them, whichever concerns are enabled. A refused handshake gets the policy's real
    answer (401/403/429/503 with its headers) where the server supports the ASGI
    ``websocket.http.response`` extension (uvicorn does), else it is closed before
    ``accept``, which the server turns into an HTTP 403.
    """

    def __init__(self, app: ASGIApp, /, *policies: Policy, handle_errors: bool | None = None) -> None:
        if not callable(app):
            raise TypeError(f"app: expected an ASGI application, got {app!r}")
        for policy in policies:
            if not isinstance(policy, Policy):
                raise TypeError(f"policies: expected kitmw policies, got {policy!r}")
        self.app = app
        self.policies: tuple[Policy, ...] = tuple(policies)
        self.handle_errors = handle_errors
        self._url_map_app = _find_url_map(app)
        if _is_django(app):
            self._router_kind = _ROUTER_DJANGO
        elif self._url_map_app is not None:
            self._router_kind = _ROUTER_URL_MAP
        else:
            self._router_kind = _ROUTER_STARLETTE
        self._chain: Chain = compile_chain(self.policies, "asgi", is_async=True)
        self._inline = self._chain.inline
        self._enter = self._chain.enter
        ws = [p for p in self.policies if p.handles_websocket]
        self._ws_chain: Chain | None = compile_chain(ws, "asgi", is_async=True) if ws else None
        self._inner: bool | None = None  # another kitmw layer inside (found on first use)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket" and self._ws_chain is not None:
                await self._websocket(self._ws_chain, scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        outer = scope.get(_EXCHANGE_KEY)
        if outer is not None:
            # Another kitmw layer outside this one owns the exchange and its wrapped send:
            # join it, so policies in separate layers see one exchange (trace id, principal).
            await self._join(outer, scope, receive, send)
            return
        outer_app = scope.get("app")
        ex = AsgiExchange(scope, self._url_map_app or outer_app or self.app, self._router_kind)
        scope[_EXCHANGE_KEY] = ex
        chain = self._chain
        ex.applied = chain.keys
        handle_errors = self.handle_errors
        if handle_errors is None:
            handle_errors = outer_app is None and "app" not in scope
        ex.start_ns = perf_counter_ns()
        exits: list[Pending] = []

        async def send_wrapper(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                body = message.get("body")
                if body:
                    ex.bytes_out += len(body)
                if not message.get("more_body", False):
                    ex.end_ns = perf_counter_ns()
            elif kind == "http.response.start":
                ex.status = message["status"]
                added = ex._added_headers
                if added:
                    headers = list(message.get("headers", ()))
                    headers.extend(added)
                    message["headers"] = headers
                    ex._start_headers = headers
                else:
                    ex._start_headers = message.get("headers") or ()
            elif kind == "http.response.pathsend":
                ex.end_ns = perf_counter_ns()
            try:
                await send(message)
            except OSError:  # ASGI 2.4 servers raise it once the client is gone
                ex._gone = True
                ex.end_ns = 0  # the response did not reach its end
                raise

        counted = _counting_receive(ex, receive, chain.counts_request_bytes)
        try:
            if self._inline:  # no around, no awaiting enter: no coroutine in between
                self._enter(ex, exits)
                if ex.serving is None:
                    await self.app(scope, counted, send_wrapper)
                else:
                    await self._serve(ex, scope, counted, send_wrapper)
            else:

                async def call() -> None:
                    if ex.serving is None:
                        await self.app(scope, counted, send_wrapper)
                    else:
                        await self._serve(ex, scope, counted, send_wrapper)

                await chain.run_async(ex, call, exits)
        except Rejected as refusal:
            if not _refused_here(ex, refusal):
                _record(ex, refusal)
                raise
            await _answer(refusal.rejection, ex, send_wrapper)
        except BaseException as exc:
            _record(ex, exc)
            if not ex.response_started and not ex._gone:
                ex.status = 500
                if handle_errors:
                    try:
                        await _send_answer(_INTERNAL_ERROR, ex, send, add=True)
                    except Exception:
                        pass  # the client is gone; the original error is what matters
            raise
        finally:
            scope.pop(_EXCHANGE_KEY, None)
            if ex._gone or not ex.end_ns or not ex.status:
                _settle(ex)
            if chain.exits_await:
                await afinish(ex, exits, ex.error)
            else:
                finish(ex, exits, ex.error)
            ex.error = None  # its traceback holds the frames that hold ex: no cycle

    async def _serve(self, ex: AsgiExchange, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the answer of the policy serving in place of the application.

        If a kitmw layer runs inside the application (``add_middleware`` under a
        ``stack()``), the exchange is handed to it, so that its policies guard it too.
        """
        inner = self._inner
        if inner is None:
            inner = self._inner = _inner_layer(self)
        if inner:
            await self.app(scope, receive, send)
            if ex.response_started:
                return  # an inner layer served it (or the application answered itself)
        serving = ex.serving
        assert serving is not None
        await _send_answer(await serving.arespond(ex), ex, send)

    async def _join(self, ex: AsgiExchange, scope: Scope, receive: Receive, send: Send) -> None:
        """Run this layer's policies on an outer layer's exchange; its send is already wrapped.

        Every policy runs, except one whose :attr:`~kitmw.exchange.Policy.join_key` an outer
        layer already applied (the same policy object, or a second ``Metrics`` on the
        same registry): running it again could only duplicate its output.
        """
        chain = self._chain.without(ex.applied)
        ex.applied |= chain.keys
        exits: list[Pending] = []
        if chain.counts_request_bytes and not ex._counting:
            receive = _counting_receive(ex, receive)

        async def call() -> None:
            if ex.serving is None:
                await self.app(scope, receive, send)
            else:
                await self._serve(ex, scope, receive, send)

        try:
            await chain.run_async(ex, call, exits)
        except Rejected as refusal:
            if not _refused_here(ex, refusal):
                _record(ex, refusal)
                raise
            await _answer(refusal.rejection, ex, send)
        except BaseException as exc:
            _record(ex, exc)
            if not ex.status and not ex._gone:
                ex.status = 500
            raise
        finally:
            if ex._gone or not ex.end_ns or not ex.status:
                _settle(ex)  # the exits here run before the outer layer's: same verdict
            await afinish(ex, exits, ex.error)

    async def _websocket(self, chain: Chain, scope: Scope, receive: Receive, send: Send) -> None:
        """A websocket connection, seen only by the policies that handle websockets."""
        outer = scope.get(_EXCHANGE_KEY)
        if outer is None:
            ex = AsgiExchange(scope, self._url_map_app or scope.get("app") or self.app, self._router_kind)
            ex.start_ns = perf_counter_ns()
            scope[_EXCHANGE_KEY] = ex
        else:
            ex = outer
            chain = chain.without(ex.applied)
        ex.applied |= chain.keys
        exits: list[Pending] = []

        async def send_wrapper(message: Message) -> None:
            kind = message["type"]
            if kind == "websocket.accept":
                ex.status = 101
                ex.response_started = True
            elif kind == "websocket.http.response.start":
                ex.status = message["status"]
                ex.response_started = True
            elif kind == "websocket.close" and not ex.status:
                ex.status = 403  # closed before accept: the server answers 403
            await send(message)

        async def call() -> None:
            await self.app(scope, receive, send_wrapper if outer is None else send)

        try:
            await chain.run_async(ex, call, exits)
        except Rejected as refusal:
            if not _refused_here(ex, refusal):
                raise
            await _deny_websocket(refusal.rejection, ex, scope, send_wrapper)
        except BaseException as exc:
            if not isinstance(exc, _DISCONNECT_ERRORS):
                ex.error = exc
            raise
        finally:
            if outer is None:
                scope.pop(_EXCHANGE_KEY, None)
                ex.end_ns = perf_counter_ns()
            await afinish(ex, exits)


_EXCHANGE_KEY = "kitmw.exchange"
_MAX_WALK = 32


#: What an app raises because its client went away (not a fault of the app).
_DISCONNECT_ERRORS = (OSError, ClientDisconnect, asyncio.CancelledError)


def _refused_here(ex: Exchange, refusal: Rejected) -> bool:
    """True if a policy of this exchange refused it (not the application raising a
    kitmw error of its own, such as a ``BreakerOpen`` from an httpx client it called)."""
    return refusal.rejection is ex.rejection


def _record(ex: AsgiExchange, exc: BaseException) -> None:
    if not (ex._gone and isinstance(exc, _DISCONNECT_ERRORS)):
        ex.error = exc  # not the app's answer to a client that left: record it


async def _answer(answer: Rejection, ex: AsgiExchange, send: Send) -> None:
    """A refusal: the JSON answer; once the response has started (a deadline that passed
    mid-stream), nothing can be said any more: the body is left incomplete, so the server
    closes the connection without its end and the client sees a truncated response,
    never a short one that looks complete."""
    if not ex.response_started:
        await _send_answer(answer, ex, send)
        return
    if ex.error is None:
        ex.error = answer.error()
    ex.status = answer.status


def _settle(ex: AsgiExchange) -> None:
    """The final status: 499 for a client that left before the response was complete
    (whatever the framework sent after that), 500 when the app sent no response."""
    if ex._gone:
        ex.status = CLIENT_CLOSED
        if not ex.end_ns:
            ex.end_ns = perf_counter_ns()
        return
    if not ex.end_ns:
        ex.end_ns = perf_counter_ns()
    if not ex.status:
        # The app returned without a response: the server answers 500 itself.
        ex.status = 500
        if ex.error is None:
            ex.error = NoResponse()


def _inner_layer(layer: Middleware) -> bool:
    """True if another kitmw ASGI layer runs inside ``layer``: wrapped directly (through
    ``.app`` chains and bound methods), or added to a Starlette/FastAPI app with
    ``add_middleware``."""
    seen = {id(layer)}
    obj: Any = layer.app
    for _ in range(_MAX_WALK):
        if obj is None or id(obj) in seen:
            return False
        seen.add(id(obj))
        if isinstance(obj, Middleware):
            return True
        user = getattr(obj, "user_middleware", None)  # Starlette's add_middleware list
        if isinstance(user, list):
            for item in user:
                cls = getattr(item, "cls", None)
                if isinstance(cls, type) and issubclass(cls, Middleware):
                    return True
        nxt = getattr(obj, "app", None)
        if nxt is None:
            nxt = getattr(obj, "__self__", None)
        obj = nxt
    return False


def _counting_receive(ex: AsgiExchange, receive: Receive, count: bool = True) -> Receive:
    """Count request body bytes (if ``count``) and notice a client that disconnected.

    ``http.disconnect`` means the client left only while the response is incomplete:
    servers also deliver it to an app that calls ``receive()`` after its response.
    """
    if count:
        ex._counting = True

    async def receive_wrapper() -> Message:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            if count:
                ex.bytes_in += len(message.get("body", b""))
        elif kind == "http.disconnect" and not ex.end_ns:
            ex._gone = True
        return message

    return receive_wrapper


async def _send_answer(answer: Rejection, ex: Exchange, send: Send, *, add: bool = False) -> None:
    headers = answer.header_pairs()
    if add and ex.added_headers:
        headers.extend(ex.added_headers)
    ex.status = answer.status
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


async def _deny_websocket(answer: Rejection, ex: Exchange, scope: Scope, send: Send) -> None:
    """Refuse a websocket handshake with the policy's own HTTP answer when the server
    supports the ``websocket.http.response`` extension, else close before ``accept``."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        headers = answer.header_pairs()
        if ex.added_headers:
            headers.extend(ex.added_headers)
        await send({"type": "websocket.http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": answer.body})
        return
    # Before accept the close code never reaches the client: the server answers 403.
    code = 1008 if answer.status in (401, 403) else 1013
    await send({"type": "websocket.close", "code": code, "reason": answer.code})


class ConcernMiddleware(Middleware):
    """A per-concern class: the driver with that concern's policy (``kitmw.RateLimit``).

    Built from the registry (:mod:`kitmw.concerns`) for every concern with a
    ``middleware`` name; its options are that concern's server policy options.
    """

    concern: str = ""

    def __init__(self, app: ASGIApp, *, handle_errors: bool | None = None, **options: Any) -> None:
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

    class AccessLog(concerns.AccessLogInit[ASGIApp], ConcernMiddleware):
        """The ASGI driver with :class:`~kitmw.logging.AccessLogPolicy`; options: :class:`~kitmw.logging.AccessLogOptions`."""

    class Auth(concerns.AuthInit[ASGIApp], ConcernMiddleware):
        """The ASGI driver with :class:`~kitmw.auth.AuthPolicy`; options: :class:`~kitmw.auth.AuthOptions`."""

    class CircuitBreaker(concerns.CircuitBreakerInit[ASGIApp], ConcernMiddleware):
        """The ASGI driver with :class:`~kitmw.breaker.BreakerPolicy`; options: :class:`~kitmw.breaker.BreakerOptions`."""

    class ConcurrencyLimit(concerns.ConcurrencyLimitInit[ASGIApp], ConcernMiddleware):
        """The ASGI driver with :class:`~kitmw.concurrency.ConcurrencyPolicy`; options: :class:`~kitmw.concurrency.ConcurrencyOptions`."""

    class Metrics(concerns.MetricsInit[ASGIApp], ConcernMiddleware):
        """The ASGI driver with :class:`~kitmw.metrics.MetricsPolicy`; options: :class:`~kitmw.metrics.MetricsOptions`."""

    class RateLimit(concerns.RateLimitInit[ASGIApp], ConcernMiddleware):
        """The ASGI driver with :class:`~kitmw.ratelimit.RateLimitPolicy`; options: :class:`~kitmw.ratelimit.RateLimitOptions`."""

    class Timeout(concerns.TimeoutInit[ASGIApp], ConcernMiddleware):
        """The ASGI driver with :class:`~kitmw.timeout.TimeoutPolicy`; options: :class:`~kitmw.timeout.TimeoutOptions`."""

    class Tracing(concerns.TracingInit[ASGIApp], ConcernMiddleware):
        """The ASGI driver with :class:`~kitmw.tracing.TracingPolicy`; options: :class:`~kitmw.tracing.TracingOptions`."""


def exchange_of(scope: Scope) -> AsgiExchange | None:
    """The exchange a kitmw layer opened for the request of ``scope``, while it runs.

    What code running inside the layer (a FastAPI dependency, a handler) reads to see the
    request as the policies see it: ``principal``, ``scopes``, ``request_id``, ``route``.
    """
    found = scope.get(_EXCHANGE_KEY)
    return found if isinstance(found, AsgiExchange) else None


class Stack(Middleware):
    """:func:`kitmw.stack` as a middleware class: the same fused layer, added the framework's way.

    ``app.add_middleware(kitmw.Stack, tracing=True, metrics=True, ratelimit="100/minute")``
    keeps the Starlette/FastAPI object itself (``dependency_overrides``, ``state``,
    routes added later, ``TestClient(app)``). The options are ``stack()``'s: each concern
    ``True``, a dict of its options, its shorthand value or a policy object;
    ``exclude_paths`` for every concern that sets none; ``handle_errors`` as for
    :class:`Middleware`.
    """

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        exclude_paths: Iterable[str] | str | None = None,
        handle_errors: bool | None = None,
        **concerns: Unpack[ServerConcerns],
    ) -> None:
        policies = build_all("server", concerns, shared={"exclude_paths": exclude_paths})
        super().__init__(app, *policies, handle_errors=handle_errors)
