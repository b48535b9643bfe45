"""The httpx client driver, written once and bound to a library (httpx or httpx2).

:mod:`kitmw.httpx` and :mod:`kitmw.httpx2` bind this driver to their library with
:func:`bind`; the transports they export are this code. The driver knows no concern:
the transports' options are the concerns of the registry (:mod:`kitmw.concerns`) that
have a client policy, checked by one :class:`ClientOptions`, built in the canonical
order (tracing, access log, request id, metrics, timeout, rate limit, concurrency,
retry, instances, breaker; ``docs/client.md`` says why) and compiled once
(:func:`kitmw.chain.compile_chain`). Per call the driver

* makes a :class:`ClientExchange` whose deadline is the current one
  (:func:`kitmw.exchange.current_deadline`: a request being served);
* runs the chain, and for each attempt the wrapped transport, with the request's httpx
  timeouts capped to what remains of the exchange's deadline;
* raises a policy's refusal as the library's own error (``BreakerOpen``,
  ``RateLimited``, ``ConcurrencyLimited``, ``DeadlineExceeded``: each also a kitmw
  error and the library's ``TransportError``);
* finishes the exchange (the policies' exits: duration, bytes, log record, span end,
  breaker verdict) when the response body is closed, like httpx's ``BoundSyncStream``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache
from time import perf_counter_ns
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from . import concerns as _concerns
from .balance import STRATEGIES
from .chain import Pending, afinish, compile_chain, finish
from .concerns import ClientConcerns, build_all, check_options, concern, policy_objects
from .errors import BreakerOpen, ConfigError, Rejected, Rejection
from .exchange import Exchange, Policy, current_remaining, inherit_deadline

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "OPTIONS_DOC",
    "AsyncTransportBase",
    "AsyncTransportOptions",
    "AsyncWrappedTransport",
    "Binding",
    "ClientExchange",
    "ClientOptions",
    "LibraryError",
    "SyncTransportBase",
    "TransportOptions",
    "WrappedTransport",
    "bind",
    "client_options",
]

_TIMEOUTS = ("connect", "read", "write", "pool")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class ClientExchange(Exchange):
    """An outgoing request as policies see it (``side = "client"``), over the library's
    ``Request``.

    ``host`` is the upstream ``host:port`` (default port filled in), ``url`` the URL
    without query and user info, ``result`` the response once the transport returned
    it. The binding (``kitmw.httpx.ClientExchange``, ``kitmw.httpx2.ClientExchange``)
    says which of its library's errors are the transport's (``transport_errors``, what
    a breaker counts) and which may be retried (``retryable_errors``), and whether the
    request body can be sent again (:attr:`replayable`). ``attempts`` counts the
    attempts made (also ``state["attempts"]`` from the second one on).
    """

    __slots__ = ("_host", "_scheme", "attempts", "request", "response")
    protocol = "httpx"
    side = "client"

    #: The library's transport errors (connection errors, timeouts, protocol errors).
    transport_errors: ClassVar[tuple[type[BaseException], ...] | None] = None
    #: The errors after which the request may be sent again.
    retryable_errors: ClassVar[tuple[type[BaseException], ...] | None] = None
    #: Request streams that can be sent again (bytes, text, JSON, forms).
    replayable_streams: ClassVar[type | tuple[type, ...]] = object

    def __init__(self, request: Any) -> None:
        super().__init__(request.method, request.url.path)
        self.request = request
        self.response: Any = None
        self.attempts = 0
        self._scheme: str | None = None
        self._host: str | None = None

    def header(self, name: str) -> str | None:
        return self.request.headers.get(name)  # type: ignore[no-any-return]

    def header_all(self, name: str) -> list[str]:
        return self.request.headers.get_list(name)  # type: ignore[no-any-return]

    def header_names(self) -> list[str]:
        return [k.lower() for k in self.request.headers.keys()]  # noqa: SIM118

    @property
    def query(self) -> str:
        return self.request.url.query.decode("latin-1")  # type: ignore[no-any-return]

    @property
    def scheme(self) -> str:
        scheme = self._scheme
        return scheme if scheme is not None else self._locate()[0]

    @property
    def host(self) -> str:
        host = self._host
        return host if host is not None else self._locate()[1]

    def _locate(self) -> tuple[str, str]:
        """Scheme and ``host:port`` (default port filled in: origin_key's), read once per
        origin: the breaker and the rate limit key by them, metrics label by ``host``."""
        url = self.request.url
        scheme = url.scheme
        name = url.host
        port = url.port
        if port is None:
            port = _DEFAULT_PORTS.get(scheme, 0)
        self._scheme = scheme
        host = self._host = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
        return scheme, host

    @property
    def url(self) -> str:
        url = self.request.url
        path = url.raw_path.partition(b"?")[0].decode("ascii", "replace")
        return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}{path}"

    def set_request_header(self, name: str, value: str) -> None:
        self.request.headers[name] = value

    def set_origin(self, scheme: str, host: str, port: int | None) -> None:
        """Send the request to another origin (balancing): path and query are kept, and
        the ``Host`` header follows unless it was set to something else."""
        request = self.request
        url = request.url
        if url.host == host and url.port == port and url.scheme == scheme:
            return  # already there; a URL copy re-parses the whole URL
        follows = request.headers.get("host") == url.netloc.decode("ascii")
        request.url = url.copy_with(scheme=scheme, host=host, port=port)
        if follows:
            request.headers["Host"] = request.url.netloc.decode("ascii")
        self._scheme = self._host = None

    @property
    def native(self) -> Any:
        return self.request

    @property
    def result(self) -> Any:
        """The response of the current attempt, once the transport returned it."""
        return self.response

    @property
    def replayable(self) -> bool:
        """True if the request body can be sent again (not a stream read once)."""
        return isinstance(self.request.stream, self.replayable_streams)

    def response_header(self, name: str) -> str | None:
        response = self.response
        return None if response is None else response.headers.get(name)

    def response_headers(self) -> list[tuple[str, str]]:
        response = self.response
        return [] if response is None else [(k.lower(), v) for k, v in response.headers.multi_items()]

    def begin_attempt(self) -> None:
        super().begin_attempt()
        self.response = None


# -- the library binding -------------------------------------------------------------------


class LibraryError(Exception):
    """The first base of a binding's refusal errors (``kitmw.httpx.BreakerOpen(LibraryError,
    kitmw.BreakerOpen, httpx.TransportError)``): the kitmw error's arguments (its own
    message by default; ``name=`` for a ``BreakerOpen``) and the library's ``request``."""

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float = 0.0,
        rejection: Rejection | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> None:
        init: Any = super().__init__  # the kitmw error's
        init(*(() if message is None else (message,)), retry_after=retry_after, rejection=rejection, **kwargs)
        self._request = request  # where the library's RequestError keeps it


class Binding:
    """What the driver needs from one client library (httpx or httpx2): its exchange
    class, its body wrappers, and its error classes for the refusals."""

    __slots__ = ("AsyncBody", "Exchange", "SyncBody", "errors", "module")

    def __init__(self, module: ModuleType, errors: Iterable[type[Rejected]]) -> None:
        self.module = module
        #: refusal code -> the library's error class (``circuit_open`` -> ``BreakerOpen``)
        self.errors: dict[str, type[Rejected]] = {cls.code: cls for cls in errors}
        self.Exchange: type[ClientExchange] = type(
            "ClientExchange",
            (ClientExchange,),
            {
                "__slots__": (),
                "__module__": f"kitmw.{module.__name__}",
                "__doc__": ClientExchange.__doc__,
                "transport_errors": (module.TransportError,),
                "retryable_errors": (module.TimeoutException, module.NetworkError, module.RemoteProtocolError),
                "replayable_streams": module.ByteStream,
            },
        )
        self.SyncBody, self.AsyncBody = _body_classes(module)

    def refusal(self, exc: Rejected, request: Any) -> Exception:
        """The library's error for a policy's refusal (``exc`` itself for another code)."""
        cls: Any = self.errors.get(exc.rejection.code)
        if cls is None:
            return exc
        if isinstance(exc, BreakerOpen):
            return cls(  # type: ignore[no-any-return]
                str(exc), retry_after=exc.retry_after, name=exc.name, rejection=exc.rejection, request=request
            )
        return cls(str(exc), retry_after=exc.retry_after, rejection=exc.rejection, request=request)  # type: ignore[no-any-return]


def bind(module: ModuleType, *errors: type[Rejected]) -> Binding:
    """The driver bound to ``module`` (httpx or httpx2) raising ``errors`` for refusals."""
    return Binding(module, errors)


def _body_classes(module: ModuleType) -> tuple[type, type]:
    """Response streams that finish the exchange on close; they subclass the library's
    own stream bases because its client checks ``isinstance`` on them."""

    class SyncBody(module.SyncByteStream):  # type: ignore[name-defined,misc]
        """Counts bytes, records a body error, finishes the exchange on ``close``."""

        def __init__(self, stream: Any, ex: ClientExchange, exits: list[Pending]) -> None:
            self._stream = stream
            self._ex = ex
            self._exits: list[Pending] | None = exits

        def __iter__(self) -> Iterator[bytes]:
            ex = self._ex
            try:
                for chunk in self._stream:
                    ex.bytes_out += len(chunk)
                    yield chunk
            except GeneratorExit:
                raise
            except BaseException as exc:
                if ex.error is None:
                    ex.error = exc
                raise

        def close(self) -> None:
            try:
                self._stream.close()
            finally:
                exits, self._exits = self._exits, None
                if exits is not None:  # once
                    ex = self._ex
                    _ended(ex)
                    try:
                        finish(ex, exits, ex.error)
                    finally:
                        _released(ex)

    class AsyncBody(module.AsyncByteStream):  # type: ignore[name-defined,misc]
        """The async twin of ``SyncBody``."""

        def __init__(self, stream: Any, ex: ClientExchange, exits: list[Pending], awaits: bool) -> None:
            self._stream = stream
            self._ex = ex
            self._exits: list[Pending] | None = exits
            self._awaits = awaits

        async def __aiter__(self) -> Any:
            ex = self._ex
            stream = self._stream.__aiter__()
            try:
                async for chunk in stream:
                    ex.bytes_out += len(chunk)
                    yield chunk
            except GeneratorExit:
                raise
            except BaseException as exc:
                if ex.error is None:
                    ex.error = exc
                raise
            finally:
                if inspect.isasyncgen(stream):
                    await stream.aclose()

        async def aclose(self) -> None:
            try:
                await self._stream.aclose()
            finally:
                exits, self._exits = self._exits, None
                if exits is not None:
                    ex = self._ex
                    _ended(ex)
                    try:
                        if self._awaits:
                            await _shielded(afinish(ex, exits, ex.error))
                        else:
                            finish(ex, exits, ex.error)
                    finally:
                        _released(ex)

    return SyncBody, AsyncBody


def _released(ex: ClientExchange) -> None:
    """Let go of what the exits needed once they ran: the response holds its body, which
    holds the exchange; the error's traceback holds the frames that hold it. Without
    these links the exchange is freed by reference counting, not the cyclic collector."""
    ex.response = None
    ex.error = None


def _ended(ex: ClientExchange) -> None:
    if not ex.end_ns:
        ex.end_ns = perf_counter_ns()


async def _shielded(awaitable: Any) -> Any:
    """Await even inside a cancelled scope: a permit must be released."""
    import anyio

    with anyio.CancelScope(shield=True):
        return await awaitable


# -- one options object for every transport ------------------------------------------------------

#: Options of the transports that are not concerns.
_OWN = ("balance", "policies", "request_id_header", "transport")


def client_options() -> list[str]:
    """The options the transports accept: every concern of the registry that has a
    client policy, plus ``transport``, ``policies``, ``balance`` and ``request_id_header``."""
    return sorted([c.name for c in _concerns.CONCERNS if "client" in c.policies] + list(_OWN))


class WrappedTransport(Protocol):
    """What the sync transports wrap: the library's ``HTTPTransport``, a ``MockTransport``…"""

    def handle_request(self, request: Any) -> Any: ...

    def close(self) -> None: ...


class AsyncWrappedTransport(Protocol):
    """What the async transports wrap: ``AsyncHTTPTransport``, a ``MockTransport``…"""

    async def handle_async_request(self, request: Any) -> Any: ...

    async def aclose(self) -> None: ...


class TransportOptions(ClientConcerns, total=False):
    """Every option of ``kitmw.httpx.Transport`` / ``kitmw.httpx2.Transport``, typed: the
    client concerns (:class:`~kitmw.concerns.ClientConcerns`) and the transport's own."""

    transport: WrappedTransport | None
    policies: Policy | Iterable[Policy] | None
    balance: Literal["round_robin", "random"]
    request_id_header: str | None


class AsyncTransportOptions(ClientConcerns, total=False):
    """Every option of ``kitmw.httpx.AsyncTransport`` / ``kitmw.httpx2.AsyncTransport``, typed:
    those of :class:`TransportOptions`, with an async ``transport``."""

    transport: AsyncWrappedTransport | None
    policies: Policy | Iterable[Policy] | None
    balance: Literal["round_robin", "random"]
    request_id_header: str | None


@lru_cache(maxsize=8)
def _signature_target(names: tuple[str, ...]) -> Callable[..., None]:
    """A function whose signature is the options ``names`` (for ``check_options``)."""

    def transport_options(**options: Any) -> None:
        """The options of ``kitmw.httpx.Transport``."""

    transport_options.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in names]
    )
    return transport_options


class ClientOptions:
    """The transports' options, checked once, for the sync and the async transports of
    both bindings: an unknown name raises :class:`~kitmw.errors.ConfigError` with the
    closest valid one, a bad value one that names the concern and its option.

    ``policies`` are the client policies, outermost first (the ``policies`` option's
    own policy objects last, closest to the wrapped transport); ``owned`` those built
    here (closed with the transport; a policy object given as an option is the caller's).
    """

    __slots__ = ("owned", "policies", "transport")

    def __init__(self, options: Mapping[str, Any], *, what: str = "Transport") -> None:
        check_options(what, _signature_target(tuple(client_options())), options)
        self.transport = options.get("transport")
        values = {k: v for k, v in options.items() if k not in _OWN}
        if "balance" in options:
            values["instances"] = _with_balance(options["balance"], values.get("instances"))
        if "request_id_header" in options:
            header = options["request_id_header"]
            if header is not None and (not isinstance(header, str) or not header):
                raise ConfigError(f"request_id_header: expected a header name or None, got {header!r}")
            if "request_id" in values:
                raise ConfigError("request_id_header: give request_id or request_id_header, not both")
            values["request_id"] = False if header is None else {"header": header}
        for name, value in values.items():
            values[name] = _bare(name, value)
        given = {id(v) for v in values.values() if isinstance(v, Policy)}
        built = build_all("client", values)
        self.owned = tuple(p for p in built if id(p) not in given)
        self.policies: tuple[Policy, ...] = (*built, *policy_objects(options.get("policies")))


def _with_balance(balance: Any, instances: Any) -> Any:
    if balance not in STRATEGIES:
        raise ConfigError(f"balance: expected one of {', '.join(STRATEGIES)}, got {balance!r}")
    if instances is None or instances is False:
        return instances
    if isinstance(instances, Policy):
        raise ConfigError("balance: give it to the instances policy you pass (InstancesPolicy(balance=...))")
    if isinstance(instances, Mapping):
        return {"balance": balance, **instances}
    if instances is True:
        return {"balance": balance}
    return {"instances": instances, "balance": balance}


def _bare(name: str, value: Any) -> Any:
    """A concern's value as its options: a bare object its client policy accepts (a
    ``Breaker``, a ``Limiter``, a ``Retry``) becomes the option it stands for."""
    if value is None or isinstance(value, (bool, Mapping, Policy)):
        return value
    adopt = getattr(concern(name).policy_class("client"), "options_from", None)
    found = adopt(value) if adopt is not None else None
    return value if found is None else found


def _options_doc() -> str:
    lines = [
        "",
        "    Options (keyword-only; each concern is ``True``, a dict of its client policy's",
        "    options, a bare value where noted, or a policy object; ``docs/client.md``):",
        "",
        "    :param transport: the wrapped transport (default the library's standard one); a",
        "        ``MockTransport`` works too, for users' tests.",
    ]
    for entry in _concerns.CONCERNS:
        policy = entry.policies.get("client")
        if policy is None:
            continue
        bare = f"; a bare value is its ``{entry.shorthand}``" if entry.shorthand else ""
        default = " On by default." if "client" in entry.on_by_default else ""
        lines.append(f"    :param {entry.name}: :class:`{entry.package}.{policy}`{bare}.{default}")
    lines += [
        "    :param policies: your own policy objects, run inside the concerns (closest to the",
        "        wrapped transport), outermost first.",
        "    :param balance: ``\"round_robin\"`` (default) or ``\"random\"``, for ``instances``.",
        "    :param request_id_header: header carrying the current request id (``None``: off).",
        "",
    ]
    return "\n".join(lines)


OPTIONS_DOC = _options_doc()


# -- the driver --------------------------------------------------------------------------------


def _cap_timeouts(request: Any, remaining: float) -> None:
    """Fit this attempt's httpx timeouts in the ``remaining`` seconds of its deadline."""
    if remaining < 0.001:
        remaining = 0.001
    timeout = request.extensions.get("timeout") or {}
    capped = {}
    for key in _TIMEOUTS:
        value = timeout.get(key)
        capped[key] = remaining if value is None or value > remaining else value
    request.extensions["timeout"] = capped


def _prepare(ex: ClientExchange) -> Any:
    """Before each attempt: count it, cap its timeouts to the deadline."""
    n = ex.attempts = ex.attempts + 1
    if n > 1:
        ex.state["attempts"] = n
    request = ex.request
    remaining = ex.remaining
    if remaining is not None:
        _cap_timeouts(request, remaining)
    return request


class _Driver:
    """The chain of one transport, and what both modes share."""

    __slots__ = ("chain", "enter", "exits_await", "inline", "inner", "lib", "new")

    def __init__(self, lib: Binding, inner: Any, policies: tuple[Policy, ...], *, is_async: bool) -> None:
        self.lib = lib
        self.inner = inner
        self.new = lib.Exchange
        self.chain = compile_chain(policies, "httpx", is_async=is_async)
        self.inline = self.chain.inline
        self.enter = self.chain.enter
        self.exits_await = self.chain.exits_await

    def begin(self, request: Any) -> ClientExchange:
        ex = self.new(request)
        ex.start_ns = perf_counter_ns()
        inherit_deadline(ex)
        return ex

    def failed(self, ex: ClientExchange, exc: BaseException) -> BaseException:
        """Record a call that raised; a refusal of its own policies becomes the library's error."""
        ex.end_ns = perf_counter_ns()
        ex.status = 0  # the caller gets no response
        ex.response = None
        if isinstance(exc, Rejected) and exc.rejection is ex.rejection:
            exc = self.lib.refusal(exc, ex.request)
        ex.error = exc
        return exc

    def responded(self, ex: ClientExchange, response: Any) -> bool:
        """Record the response the caller gets; True if its body is already read."""
        if ex.response is not response:  # an around returned another attempt's response
            ex.response = response
            ex.status = response.status_code
        if not response.is_closed:
            return False
        ex.bytes_out = len(response.content)  # already read (a MockTransport's content)
        _ended(ex)
        return True


class _SyncDriver(_Driver):
    __slots__ = ()

    def attempt(self, ex: ClientExchange) -> Any:
        response = self.inner.handle_request(_prepare(ex))
        ex.response = response
        ex.status = response.status_code
        return response

    def send(self, request: Any) -> Any:
        if not self.chain:  # no policy: only the deadline
            remaining = current_remaining()
            if remaining is not None:
                _cap_timeouts(request, remaining)
            return self.inner.handle_request(request)
        ex = self.begin(request)
        exits: list[Pending] = []
        try:
            if self.inline:
                self.enter(ex, exits)
                response = self.attempt(ex)
            else:
                response = self.chain.run_sync(ex, lambda: self.attempt(ex), exits)
        except BaseException as exc:
            error = self.failed(ex, exc)
            finish(ex, exits, error)
            _released(ex)
            if error is exc:
                del error
                raise
            try:
                raise error from None
            finally:
                del error  # this frame joins its traceback
        if exits:
            if self.responded(ex, response):
                finish(ex, exits)
            else:
                response.stream = self.lib.SyncBody(response.stream, ex, exits)
        return response


class _AsyncDriver(_Driver):
    __slots__ = ()

    async def attempt(self, ex: ClientExchange) -> Any:
        response = await self.inner.handle_async_request(_prepare(ex))
        ex.response = response
        ex.status = response.status_code
        return response

    async def send(self, request: Any) -> Any:
        if not self.chain:
            remaining = current_remaining()
            if remaining is not None:
                _cap_timeouts(request, remaining)
            return await self.inner.handle_async_request(request)
        ex = self.begin(request)
        exits: list[Pending] = []
        try:
            if self.inline:
                self.enter(ex, exits)
                response = await self.attempt(ex)
            else:
                response = await self.chain.run_async(ex, lambda: self.attempt(ex), exits)
        except BaseException as exc:
            error = self.failed(ex, exc)
            if self.exits_await:
                await _shielded(afinish(ex, exits, error))
            else:
                finish(ex, exits, error)
            _released(ex)
            if error is exc:
                del error
                raise
            try:
                raise error from None
            finally:
                del error  # this frame joins its traceback
        if exits:
            if self.responded(ex, response):
                if self.exits_await:
                    await afinish(ex, exits)
                else:
                    finish(ex, exits)
            else:
                response.stream = self.lib.AsyncBody(response.stream, ex, exits, self.exits_await)
        return response


# -- the public transport classes ---------------------------------------------------------------


class _TransportBase:
    _lib: Binding
    _options: ClientOptions
    _driver: _Driver

    def _setup(self, options: Mapping[str, Any], *, is_async: bool) -> None:
        self._options = ClientOptions(options, what=type(self).__name__)
        module = self._lib.module
        method = "handle_async_request" if is_async else "handle_request"
        transport = self._options.transport
        if transport is None:
            transport = module.AsyncHTTPTransport() if is_async else module.HTTPTransport()
        elif not callable(getattr(transport, method, None)):
            kind = "an async" if is_async else "a"
            raise ConfigError(
                f"transport: expected {kind} {module.__name__} transport with {method}(), got {transport!r}"
            )
        driver = _AsyncDriver if is_async else _SyncDriver
        self._driver = driver(self._lib, transport, self._options.policies, is_async=is_async)

    @property
    def transport(self) -> Any:
        """The wrapped transport."""
        return self._driver.inner

    @property
    def policies(self) -> tuple[Policy, ...]:
        """The client policies this transport runs, outermost first."""
        return self._options.policies


class SyncTransportBase(_TransportBase):
    """The sync transport, bound to a library by a subclass setting ``_lib``."""

    _driver: _SyncDriver

    def __init__(self, **options: Unpack[TransportOptions]) -> None:
        self._setup(options, is_async=False)

    def handle_request(self, request: Any) -> Any:
        return self._driver.send(request)

    def close(self) -> None:
        try:
            self._driver.inner.close()
        finally:
            for policy in self._options.owned:
                close = getattr(policy, "close", None)
                if close is not None:
                    close()


class AsyncTransportBase(_TransportBase):
    """The async transport, bound to a library by a subclass setting ``_lib``."""

    _driver: _AsyncDriver

    def __init__(self, **options: Unpack[AsyncTransportOptions]) -> None:
        self._setup(options, is_async=True)

    async def handle_async_request(self, request: Any) -> Any:
        return await self._driver.send(request)

    async def aclose(self) -> None:
        try:
            await self._driver.inner.aclose()
        finally:
            for policy in self._options.owned:
                aclose = getattr(policy, "aclose", None)
                if aclose is not None:
                    await aclose()
