"""The Django driver: kitmw's policies as a middleware in ``settings.MIDDLEWARE``.

:class:`Middleware` is sync- and async-capable, so Django runs it in the mode of the
handler below it and adds no thread hop (under ASGI, as long as the middleware below
it are async-capable too). It builds the policies of ``settings.KITMW`` once, when
Django loads its middleware, and runs them as the ASGI and WSGI drivers do: the
same hooks (compiled for ``"wsgi"`` with a WSGI request, ``"asgi"`` with an ASGI one,
so each concern adds what it adds under the wrapping form: the same span attributes,
the same ``environ``/``scope`` keys), the same exchange fields, the same answers.

What a middleware sees differs from what a layer around the application sees:

* The route is the one Django's resolver matched (``request.resolver_match``), or
  ``resolve()`` of the path before dispatch, when a policy asks for it early (a rate
  limit or breaker per route).
* A view's exception reaches ``process_exception`` before Django renders its 500:
  it is recorded on the exchange (access log, span, breaker) when the answer is a 5xx.
* The exchange of an ordinary response ends when the response leaves the middleware;
  a streaming response's ends with its last chunk (or ``close()``, when the client went
  away or the server sent a file itself). The body is never buffered.

Every policy hook runs in a context of the request's own (a copy of the caller's),
so the context variables policies set (request id, trace context, deadline) are reset
in the context they were set in, wherever the exchange ends: the WSGI server's
thread, Django's ASGI task, or the thread Django closes a response in. The request
sees them: under ASGI the view runs in that context, under WSGI they are copied into
the request's thread for the view and taken back when the response leaves (Django's
per-thread state, such as cache connections, stays in the thread).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from contextvars import Token
from functools import lru_cache, partial
from time import perf_counter_ns
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from django.http import HttpResponse
from django.utils.log import log_response

from ..auth import Principal
from ..chain import Chain, Pending, afinish, compile_chain, finish
from ..errors import ConfigError, Rejected, Rejection
from ..exchange import Exchange, Policy
from ..routes import django_route, django_template
from . import _config

__all__ = ["CLIENT_CLOSED", "DjangoExchange", "Middleware", "principal"]

#: Status recorded when the client went away before the response was complete (nginx's,
#: as :data:`kitmw.asgi.CLIENT_CLOSED`).
CLIENT_CLOSED = 499

_log = logging.getLogger("kitmw")
_MISSING: Any = object()
#: ``primary`` of a finish whose response is already on its way: an exit that fails is
#: logged, never turned into an error of a request the application answered.
_SENT: Any = object()
#: The request attribute holding the run (read by ``process_exception``).
_RUN = "_kitmw_run"
#: Exit tasks started from inside the event loop (a response closed there): referenced
#: until they are done, as asyncio asks.
_BACKGROUND: set[asyncio.Task[Any]] = set()


@lru_cache(maxsize=256)
def _meta_key(name: str) -> str:
    """``x-request-id`` -> ``HTTP_X_REQUEST_ID`` (``CONTENT_TYPE``/``CONTENT_LENGTH`` bare)."""
    key = name.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key


class DjangoExchange(Exchange):
    """An exchange over a Django ``HttpRequest``: headers from ``request.META``."""

    __slots__ = ("_response", "meta", "request")

    def __init__(self, request: Any) -> None:
        super().__init__(request.method or "GET", request.path)
        self.request = request
        self.meta: dict[str, Any] = request.META
        self._response: Any = None

    def header(self, name: str) -> str | None:
        return self.meta.get(_meta_key(name))

    def header_all(self, name: str) -> list[str]:
        # Django (as WSGI servers) joins repeated headers into one value.
        value = self.meta.get(_meta_key(name))
        return [] if value is None else [value]

    def header_names(self) -> list[str]:
        meta = self.meta
        names = [k[5:].lower().replace("_", "-") for k in meta if k.startswith("HTTP_")]
        for key, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length")):
            if meta.get(key):
                names.append(name)
        return names

    @property
    def client(self) -> str | None:
        return self.meta.get("REMOTE_ADDR") or None

    @property
    def query(self) -> str:
        return self.meta.get("QUERY_STRING", "")  # type: ignore[no-any-return]

    @property
    def host(self) -> str:
        meta = self.meta
        host = meta.get("HTTP_HOST")
        if host:
            return host  # type: ignore[no-any-return]
        name, port = meta.get("SERVER_NAME", ""), str(meta.get("SERVER_PORT", ""))
        default = "443" if self.scheme == "https" else "80"
        return f"{name}:{port}" if port and port != default else name  # type: ignore[no-any-return]

    @property
    def mount_prefix(self) -> str:
        request = self.request
        return request.path[: len(request.path) - len(request.path_info)]  # type: ignore[no-any-return]

    def _resolve_route(self) -> str | None:
        match = getattr(self.request, "resolver_match", None)
        if match is not None:  # dispatched: the pattern Django matched
            return django_template(match.route)
        return django_route(self.request.path_info)  # before dispatch, or nothing matched

    def response_header(self, name: str) -> str | None:
        response = self._response
        if response is None:
            return None
        value = response.headers.get(name)
        return None if value is None else str(value)

    def response_headers(self) -> list[tuple[str, str]]:
        response = self._response
        if response is None:
            return []
        return [(key.lower(), str(value)) for key, value in response.headers.items()]


class _WsgiExchange(DjangoExchange):
    __slots__ = ()
    protocol = "wsgi"

    @property
    def scheme(self) -> str:
        return self.meta.get("wsgi.url_scheme", "http")  # type: ignore[no-any-return]

    @property
    def native(self) -> Any:
        return self.meta  # the WSGI environ


class _AsgiExchange(DjangoExchange):
    __slots__ = ()
    protocol = "asgi"

    @property
    def scheme(self) -> str:
        return self.request.scope.get("scheme", "http")  # type: ignore[no-any-return]

    @property
    def native(self) -> Any:
        return self.request.scope


# -- one request's state --------------------------------------------------------------------

_OWN, _JOINED_WSGI, _JOINED_ASGI = 0, 1, 2


class _Run:
    """What the driver keeps for one request: its exchange, the exits to run, the context
    the policies run in, and whether the exchange is this middleware's or an outer
    kitmw layer's (``kitmw.stack()`` around Django's application)."""

    __slots__ = ("ctx", "done", "ex", "exits", "failure", "loop", "outer")

    def __init__(self, ex: Exchange, ctx: contextvars.Context | None, outer: int = _OWN) -> None:
        self.ex = ex
        self.ctx = ctx
        self.exits: list[Pending] = []
        self.done = False
        #: The event loop, when some exit awaits (then exits run there).
        self.loop: asyncio.AbstractEventLoop | None = None
        #: The exception of the view Django turned into a response (``process_exception``).
        self.failure: BaseException | None = None
        self.outer = outer


class _InContext:
    """Await ``awaitable`` with each of its steps run in ``ctx``: the context variables
    the policies set belong to ``ctx``, whichever task or thread finishes the exchange
    (``asyncio.create_task(context=...)`` for one await, without a task, on every Python
    kitmw supports). What the task throws in (a cancellation) is passed on."""

    __slots__ = ("_awaitable", "_ctx")

    def __init__(self, awaitable: Awaitable[Any], ctx: contextvars.Context) -> None:
        self._awaitable = awaitable
        self._ctx = ctx

    def __await__(self) -> Generator[Any, Any, Any]:
        steps = self._awaitable.__await__()
        run = self._ctx.run
        send, throw = steps.send, steps.throw
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                signal = run(send, value) if error is None else run(throw, error)
            except StopIteration as stop:
                return stop.value
            error = None
            try:
                value = yield signal
            except BaseException as exc:
                value, error = None, exc


async def _in_context(awaitable: Awaitable[Any], ctx: contextvars.Context | None) -> Any:
    return await (awaitable if ctx is None else _InContext(awaitable, ctx))


# -- the end of an exchange -----------------------------------------------------------------


def _ending(run: _Run, primary: BaseException | None) -> object:
    """Mark the run done; the ``primary`` error to finish its exits with, or ``None`` when
    there is nothing to finish (done already, or no exit)."""
    if run.done:
        return None
    run.done = True
    ex = run.ex
    if not ex.end_ns:
        ex.end_ns = perf_counter_ns()
    if not run.exits:
        _release(run)
        return None
    return _SENT if primary is None else primary


def _finish_here(run: _Run, why: object) -> None:
    """Run the exits (none awaits) in the run's context, then let go of the request."""
    try:
        if run.ctx is None:
            finish(run.ex, run.exits, why)
        else:
            run.ctx.run(finish, run.ex, run.exits, why)
    finally:
        _release(run)


def _end(run: _Run, primary: BaseException | None = None) -> None:
    """Finish the exchange, once, from synchronous code in any thread."""
    why = _ending(run, primary)
    if why is None:
        return
    loop = run.loop
    if loop is None:
        _finish_here(run, why)
        return
    # Some exit awaits: on the loop, in the run's context.
    coro = _in_context(_afinish(run, why), run.ctx)
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    if here is loop:  # closed from inside the loop: it cannot wait for itself
        task = loop.create_task(coro)
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
    else:
        asyncio.run_coroutine_threadsafe(coro, loop).result()


async def _aend(run: _Run, primary: BaseException | None = None) -> None:
    """:func:`_end` from the event loop."""
    why = _ending(run, primary)
    if why is None:
        return
    if run.loop is None:
        _finish_here(run, why)
    else:
        await _in_context(_afinish(run, why), run.ctx)


async def _afinish(run: _Run, why: object) -> None:
    try:
        await afinish(run.ex, run.exits, why)
    finally:
        _release(run)


def _release(run: _Run) -> None:
    """Once the exits have run, drop what links the exchange back to the request (the
    request holds the run) and the error (its traceback holds the frames that hold
    both), so that reference counting frees a request: no cycle per request."""
    run.failure = None
    if run.outer != _OWN:
        return  # the outer layer's exchange: it is released by that layer
    ex = run.ex
    ex.error = None
    if isinstance(ex, DjangoExchange):
        ex.request = None
        ex._response = None


def _failed(run: _Run, exc: BaseException) -> None:
    """Record an error of the request (the middleware's or a streaming body's)."""
    ex = run.ex
    if isinstance(exc, asyncio.CancelledError):
        # Django's ASGI handler cancels a request whose client went away.
        ex.status = CLIENT_CLOSED
        return
    ex.error = exc
    if not ex.response_started:
        ex.status = 500  # Django's handler renders the 500 of a failing middleware
    elif ex.protocol == "wsgi" and not ex.bytes_out:
        ex.status = 500  # nothing written yet: the WSGI server answers 500 itself


def _answer(answer: Rejection) -> HttpResponse:
    response = HttpResponse(answer.body, status=answer.status)
    headers = response.headers
    for name, value in answer.header_pairs():
        headers[name.decode("latin-1")] = value.decode("latin-1")
    return response


def _add_headers(response: Any, added: list[tuple[bytes, bytes]]) -> None:
    """The headers policies added (``X-Request-ID``, ``RateLimit``), replacing the
    application's of the same name; two of one name are joined as a list."""
    merged: dict[str, str] = {}
    for name, value in added:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        merged[key] = f"{merged[key]}, {text}" if key in merged else text
    headers = response.headers
    for key, text in merged.items():
        headers[key] = text


def _publish(request: Any, ex: Exchange, decides: bool) -> None:
    """Tell Django who the caller is: ``request.kitmw_principal`` (the principal, or
    None), and, for a caller kitmw verified, ``REMOTE_USER`` in ``request.META``: what
    Django's ``RemoteUserMiddleware`` trusts. Under ASGI, Django 5.2's async
    ``RemoteUserMiddleware`` reads the ``Remote-User`` request header instead
    (``HTTP_REMOTE_USER``), which any client can send: when kitmw decides who the caller
    is (``decides``: auth is enabled), that key holds kitmw's verdict only."""
    request.kitmw_principal = user = ex.user
    meta = request.META
    if user is not None and ex.principal is not None:
        meta["REMOTE_USER"] = ex.principal
        if ex.protocol == "asgi":
            meta["HTTP_REMOTE_USER"] = ex.principal
    elif decides and ex.protocol == "asgi":
        meta.pop("HTTP_REMOTE_USER", None)


def _mirror(ctx: contextvars.Context) -> list[Token[Any]]:
    """Copy into the current context the variables the policies set in ``ctx``."""
    tokens: list[Token[Any]] = []
    for var, value in ctx.items():
        if var.get(_MISSING) is not value:
            tokens.append(var.set(value))
    return tokens


def _unmirror(tokens: list[Token[Any]]) -> None:
    for token in reversed(tokens):
        token.var.reset(token)


# -- streaming bodies -----------------------------------------------------------------------


class _SyncBody:
    """A streaming response's content as the server (or Django's ASGI handler) iterates
    it: each chunk counted and produced in the run's context, the exchange ended with
    the last one or by ``close()`` (registered with the response's closers)."""

    __slots__ = ("_file", "_inner", "_run", "_started")

    def __init__(self, run: _Run, inner: Iterator[bytes], file: bool) -> None:
        self._run = run
        self._inner = inner
        self._file = file
        self._started = False

    def __iter__(self) -> _SyncBody:
        return self

    def __next__(self) -> bytes:
        run = self._run
        self._started = True
        ctx = run.ctx
        try:
            chunk: bytes = next(self._inner) if ctx is None else ctx.run(next, self._inner)
        except StopIteration:
            _end(run)
            raise
        except BaseException as exc:
            _failed(run, exc)
            _end(run, exc)
            raise
        if run.outer == _OWN:
            run.ex.bytes_out += len(chunk)
        return chunk

    def close(self) -> None:
        run = self._run
        if not run.done:
            _cut(run, self._file and not self._started)
            _end(run)


class _AsyncBody:
    """:class:`_SyncBody` for async content (under ASGI)."""

    __slots__ = ("_inner", "_run")

    def __init__(self, run: _Run, inner: AsyncIterator[bytes]) -> None:
        self._run = run
        self._inner = inner

    def __aiter__(self) -> _AsyncBody:
        return self

    async def __anext__(self) -> bytes:
        run = self._run
        try:
            chunk: bytes = await _in_context(self._inner.__anext__(), run.ctx)
        except StopAsyncIteration:
            await _aend(run)
            raise
        except BaseException as exc:
            _failed(run, exc)
            await _aend(run, exc)
            raise
        if run.outer == _OWN:
            run.ex.bytes_out += len(chunk)
        return chunk

    def close(self) -> None:
        run = self._run
        if not run.done:
            _cut(run, False)
            _end(run)


def _cut(run: _Run, sent_by_server: bool) -> None:
    """A streaming body closed before its end: a file the WSGI server sent itself
    (``wsgi.file_wrapper``: its size is the Content-Length), or, under ASGI, a client
    that went away (Django stops streaming only then)."""
    ex = run.ex
    if run.outer != _OWN:
        return
    if sent_by_server:
        length = ex.response_header("content-length")
        if length is not None and length.isdigit():
            ex.bytes_out = int(length)
    elif ex.protocol == "asgi":
        ex.status = CLIENT_CLOSED


# -- the middleware -------------------------------------------------------------------------


class Middleware:
    """kitmw's concerns for a Django project: ``"kitmw.django.Middleware"`` in
    ``settings.MIDDLEWARE`` (first, so that it sees every response), configured by
    ``settings.KITMW``, a dict of :func:`kitmw.stack` options::

        KITMW = {"access_log": True, "metrics": True, "ratelimit": "100/minute"}

    Works under WSGI and ASGI: sync- and async-capable, it runs in the mode Django
    gives it. A misconfigured ``KITMW`` raises ``ImproperlyConfigured`` naming the
    option when Django loads its middleware (and ``manage.py check`` reports it, with
    ``"kitmw.django"`` in ``INSTALLED_APPS``); a ``KITMW`` that enables nothing (or no
    ``KITMW``) removes the middleware (``MiddlewareNotUsed``).

    Views find the caller kitmw's auth verified in ``request.kitmw_principal`` (a
    :class:`kitmw.auth.Principal`, or None), and its identity in
    ``request.META["REMOTE_USER"]`` for Django's ``RemoteUserMiddleware``;
    ``request.user`` stays Django's.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        if not callable(get_response):
            raise TypeError(f"get_response: expected the next handler, got {get_response!r}")
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        try:
            built = _config.policies(getattr(settings, _config.SETTING, None))
        except ConfigError as exc:
            raise ImproperlyConfigured(f"settings.{_config.SETTING}: {exc}") from exc
        if not built:
            raise MiddlewareNotUsed(f"settings.{_config.SETTING} enables no concern")
        self.policies: tuple[Policy, ...] = tuple(built)
        #: Auth decides who the caller is (what Django is told in REMOTE_USER).
        self._decides = any(p.name == "auth" for p in self.policies)
        self._chains: dict[str, Chain] = {}
        self._outer_layers: _OuterLayers | None = None

    def __repr__(self) -> str:
        names = ", ".join(p.name for p in self.policies)
        return f"<kitmw.django.Middleware {'async' if self.is_async else 'sync'} [{names}]>"

    # -- what Django calls ------------------------------------------------------------------

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        ex, chain, run = self._begin(request)
        setattr(request, _RUN, run)
        try:
            if chain.inline:
                if run.ctx is None:
                    chain.enter(ex, run.exits)
                else:
                    run.ctx.run(chain.enter, ex, run.exits)
                response = self._app(run, request, run.ctx is not None)
            else:  # an around policy holds the call (a custom one: server arounds are async)
                call = partial(self._app, run, request, False)
                if run.ctx is None:
                    response = chain.run_sync(ex, call, run.exits)
                else:
                    response = run.ctx.run(chain.run_sync, ex, call, run.exits)
        except Rejected as refusal:
            if refusal.rejection is not ex.rejection:  # the application's own kitmw error
                _failed(run, refusal)
                _end(run, refusal)
                raise
            response = _answer(refusal.rejection)
        except BaseException as exc:
            _failed(run, exc)
            _end(run, exc)
            raise
        self._settle(run, request, response)
        if response.streaming:
            self._stream(run, response)
        elif run.outer == _JOINED_ASGI:
            _snapshot(run, response)
        elif run.outer == _OWN:
            run.ex.bytes_out = len(response.content)
            _end(run)
        return response

    async def __acall__(self, request: Any) -> Any:
        ex, chain, run = self._begin(request)
        if chain.exits_await and not run.done:
            run.loop = asyncio.get_running_loop()
        setattr(request, _RUN, run)
        ctx = run.ctx
        try:
            if chain.inline:
                if ctx is None:
                    chain.enter(ex, run.exits)
                else:
                    ctx.run(chain.enter, ex, run.exits)
                response = await _in_context(self._aapp(run, request), ctx)
            else:
                call = partial(self._aapp, run, request)
                response = await _in_context(chain.run_async(ex, call, run.exits), ctx)
        except Rejected as refusal:
            if refusal.rejection is not ex.rejection:
                _failed(run, refusal)
                await _aend(run, refusal)
                raise
            response = _answer(refusal.rejection)
        except BaseException as exc:
            _failed(run, exc)
            await _aend(run, exc)
            raise
        self._settle(run, request, response)
        if response.streaming:
            self._stream(run, response)
        elif run.outer == _JOINED_ASGI:
            await _asnapshot(run, response)
        elif run.outer == _OWN:
            run.ex.bytes_out = len(response.content)
            await _aend(run)
        return response

    def process_exception(self, request: Any, exception: BaseException) -> None:
        """Keep the exception of a view for the exchange; Django renders the answer."""
        run = getattr(request, _RUN, None)
        if run is not None:
            run.failure = exception

    # -- internals --------------------------------------------------------------------------

    def _begin(self, request: Any) -> tuple[Exchange, Chain, _Run]:
        """The exchange, chain and run of ``request``: this middleware's own exchange, or
        the one of a kitmw layer around Django's application (``kitmw.stack()``), which
        this middleware then joins, as nested kitmw layers do (one exchange, each
        policy once)."""
        is_asgi = hasattr(request, "scope")
        protocol = "asgi" if is_asgi else "wsgi"
        chain = self._chains.get(protocol)
        if chain is None:
            chain = self._chains[protocol] = compile_chain(self.policies, protocol, is_async=self.is_async)
        layers = self._outer_layers
        if layers is None:
            layers = self._outer_layers = _outer_layers()
        if is_asgi:
            outer = layers[0](request.scope)
            if outer is not None:
                return outer, _joined(outer, chain), _Run(outer, contextvars.copy_context(), _JOINED_ASGI)
            ex: Exchange = _AsgiExchange(request)
        else:
            layer = layers[1](request.META)
            if layer is not None:
                outer, exits = layer
                run = _Run(outer, None, _JOINED_WSGI)
                run.exits, run.done = exits, True  # run by the outer layer when it finishes
                return outer, _joined(outer, chain), run
            ex = _WsgiExchange(request)
        ex.start_ns = perf_counter_ns()
        ex.applied = chain.keys
        if chain.counts_request_bytes:
            # Django has the body (ASGI: read whole before the middleware runs; WSGI: a
            # stream limited to it): its declared length is what the request carries.
            length = request.META.get("CONTENT_LENGTH")
            if length and length.isdigit():
                ex.bytes_in = int(length)
        return ex, chain, _Run(ex, contextvars.copy_context())

    def _app(self, run: _Run, request: Any, mirror: bool) -> Any:
        """Call the rest of Django (or answer for the policy serving in its place)."""
        ex = run.ex
        tokens = _mirror(run.ctx) if mirror and run.ctx is not None else None
        try:
            _publish(request, ex, self._decides)
            serving = ex.serving
            if serving is None:
                return self.get_response(request)
            return _answer(serving.respond(ex))
        finally:
            if tokens:
                _unmirror(tokens)

    async def _aapp(self, run: _Run, request: Any) -> Any:
        ex = run.ex
        _publish(request, ex, self._decides)
        serving = ex.serving
        if serving is None:
            return await self.get_response(request)
        return _answer(await serving.arespond(ex))

    def _settle(self, run: _Run, request: Any, response: Any) -> None:
        """The outcome, once the response leaves: status, the view's exception, headers."""
        ex = run.ex
        status = response.status_code
        failure = run.failure
        if failure is not None and status >= 500 and ex.error is None:
            ex.error = failure  # the view raised; Django rendered its 500
        if status >= 400:
            # Django's own record of an error answer ("Not Found: /x" on django.request),
            # which its handler writes once the middleware returned, written here, in the
            # request's context, so that it carries the request id; Django then skips it.
            if run.ctx is None:
                _log_response(request, response)
            else:
                run.ctx.run(_log_response, request, response)
        if run.outer != _OWN:
            return  # the outer layer records the status and adds the headers when it sends
        ex.status = status
        ex.response_started = True
        if isinstance(ex, DjangoExchange):
            ex._response = response
        added = ex.added_headers
        if added:
            _add_headers(response, added)

    def _stream(self, run: _Run, response: Any) -> None:
        """Hand Django a streaming body that ends the exchange with its last chunk."""
        if run.outer == _JOINED_WSGI:
            return  # the outer layer iterates and counts it, and finishes
        file = getattr(response, "file_to_stream", None)
        inner = response.streaming_content
        body: Any = _AsyncBody(run, inner) if response.is_async else _SyncBody(run, inner, file is not None)
        response.streaming_content = body  # Django registers body.close with the response
        if file is not None:
            response.file_to_stream = file  # keep the server's sendfile (wsgi.file_wrapper)


def _log_response(request: Any, response: Any) -> None:
    """What ``BaseHandler.get_response`` logs for an error answer (once per response)."""
    log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)


def _joined(ex: Exchange, chain: Chain) -> Chain:
    """The part of ``chain`` an outer layer did not already apply to ``ex``."""
    left = chain.without(ex.applied)
    ex.applied |= left.keys
    return left


def _snapshot(run: _Run, response: Any) -> None:
    """An ordinary response inside an outer ASGI layer, which counts the body when it
    sends it, after this middleware: the exits run now on what the response is, then
    the outer layer's exchange is left as it was for its own count."""
    ex = run.ex
    saved = (ex.status, ex.bytes_out, ex.end_ns, ex.response_started)
    ex.status = response.status_code
    ex.bytes_out += len(response.content)
    try:
        _end(run)
    finally:
        ex.status, ex.bytes_out, ex.end_ns, ex.response_started = saved


async def _asnapshot(run: _Run, response: Any) -> None:
    ex = run.ex
    saved = (ex.status, ex.bytes_out, ex.end_ns, ex.response_started)
    ex.status = response.status_code
    ex.bytes_out += len(response.content)
    try:
        await _aend(run)
    finally:
        ex.status, ex.bytes_out, ex.end_ns, ex.response_started = saved


_OuterLayers = tuple[Callable[[Any], Exchange | None], Callable[[Any], "tuple[Exchange, list[Pending]] | None"]]


def _outer_layers() -> _OuterLayers:
    """How to find the exchange of a kitmw layer around Django's application
    (``kitmw.stack()``) under ASGI and WSGI: this middleware then runs on that one."""
    from ..asgi import exchange_of
    from ..wsgi import layer_of

    return exchange_of, layer_of


def principal(request: Any) -> Principal | None:
    """The caller kitmw's auth verified for ``request``, or None (no auth, an excluded
    path, ``optional`` without credentials).

    Works under :class:`Middleware` (``request.kitmw_principal``) and under
    ``kitmw.stack()`` wrapping Django's application (``environ["kitmw.user"]`` under
    WSGI, ``scope["user"]`` under ASGI), so a view reads it one way in both.
    """
    found = getattr(request, "kitmw_principal", None)
    if isinstance(found, Principal):
        return found
    meta = getattr(request, "META", None) or {}
    found = meta.get("kitmw.user")
    if isinstance(found, Principal):
        return found
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict):
        user = scope.get("user")
        if isinstance(user, Principal):
            return user
    return None
