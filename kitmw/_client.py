"""The httpx client driver, written once and bound to a library (httpx or httpx2).

:mod:`kitmw.httpx` and :mod:`kitmw.httpx2` each bind this driver to their library
with :func:`bind`; the transports they export are this code. Per logical request,
outermost first (Go kit's client endpoint middlewares, in the order that makes each
one see what it should):

1. **tracing**: one CLIENT span over the whole call, retries and waits included; it
   injects ``traceparent`` so every attempt carries the same parent;
2. **access log**: one record per call (not per attempt), with the trace id;
3. **metrics**: one count and one duration per call, so retries do not inflate the
   request rate (they are counted apart in ``client_retries``);
4. **rate limit**: per upstream origin; a call that waits or is refused never
   reaches the balancer or the network, and a retry does not take a second slot;
5. **balancing**: picks an instance per attempt, skipping those whose breaker is open;
6. **retry**: around the breaker, so each attempt asks its instance's breaker and a
   retry can move to the next instance; a refused attempt is not retried blindly;
7. **breaker** (per origin or instance): closest to the network, it judges only the
   upstream's health (connection errors, timeouts, 5xx; not 4xx, not our own limits);
8. the wrapped transport.

The observability policies' ``exit`` runs when the response body is closed (like
httpx's ``BoundSyncStream``), so durations, byte counts, spans and breaker verdicts
cover the body, and an error while reading it is recorded.
"""

from __future__ import annotations

import importlib
import inspect
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from time import perf_counter_ns
from types import ModuleType
from typing import Any

from . import errors
from .balance import Balancer, Instance, origin_key
from .concerns import check_options, construct
from .errors import ConfigError, Rejection
from .exchange import Exchange, Policy
from .retry import Retry

__all__ = ["OPTIONS_DOC", "AsyncTransportBase", "Binding", "ClientExchange", "SyncTransportBase", "bind"]

Failure = Callable[[Any, "BaseException | None"], "bool | None"]


class ClientExchange(Exchange):
    """An outgoing request as policies see it (``side = "client"``), over the library's
    ``Request``; ``host`` is the upstream ``host:port``, ``url`` has no query and no
    user info. ``state["attempts"]`` counts the attempts made."""

    __slots__ = ("request", "response")
    protocol = "httpx"
    side = "client"

    def __init__(self, request: Any) -> None:
        super().__init__(request.method, request.url.path)
        self.request = request
        self.response: Any = None

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
        return self.request.url.scheme  # type: ignore[no-any-return]

    @property
    def host(self) -> str:
        url = self.request.url
        return origin_key(url.scheme, url.host, url.port).partition("://")[2]

    @property
    def url(self) -> str:
        url = self.request.url
        path = url.raw_path.partition(b"?")[0].decode("ascii", "replace")
        return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}{path}"

    def set_request_header(self, name: str, value: str) -> None:
        self.request.headers[name] = value

    @property
    def native(self) -> Any:
        return self.request

    def response_header(self, name: str) -> str | None:
        response = self.response
        return None if response is None else response.headers.get(name)


# -- the library binding -------------------------------------------------------------------


class Binding:
    """What the driver needs from one client library (httpx or httpx2)."""

    __slots__ = (
        "AsyncBody",
        "BreakerOpen",
        "ByteStream",
        "RateLimited",
        "Response",
        "SyncBody",
        "TransportError",
        "module",
        "retryable",
    )

    def __init__(
        self, module: ModuleType, breaker_open: type[Exception], rate_limited: type[Exception]
    ) -> None:
        self.module = module
        self.TransportError: type[Exception] = module.TransportError
        self.ByteStream: type = module.ByteStream
        self.Response: Any = module.Response
        self.BreakerOpen: Any = breaker_open
        self.RateLimited: Any = rate_limited
        #: errors after which the request may be sent again (it failed, not our refusal)
        self.retryable: tuple[type[Exception], ...] = (
            module.TimeoutException,
            module.NetworkError,
            module.RemoteProtocolError,
        )
        self.SyncBody, self.AsyncBody = _body_classes(module)


def bind(module: ModuleType, breaker_open: type[Exception], rate_limited: type[Exception]) -> Binding:
    return Binding(module, breaker_open, rate_limited)


def _body_classes(module: ModuleType) -> tuple[type, type]:
    """Response streams that finish the exchange on close; they subclass the library's
    own stream bases because its client checks ``isinstance`` on them."""

    class SyncBody(module.SyncByteStream):  # type: ignore[name-defined,misc]
        """Counts bytes, records a body error, finishes the exchange on ``close``."""

        def __init__(self, stream: Any, done: _Done) -> None:
            self._stream = stream
            self._done = done

        def __iter__(self) -> Iterator[bytes]:
            ex = self._done.ex
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
                self._done.finish()

    class AsyncBody(module.AsyncByteStream):  # type: ignore[name-defined,misc]
        """The async twin of ``SyncBody``."""

        def __init__(self, stream: Any, done: _Done) -> None:
            self._stream = stream
            self._done = done

        async def __aiter__(self) -> Any:
            ex = self._done.ex
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
                await self._done.afinish()

    return SyncBody, AsyncBody


# -- per-origin breakers ---------------------------------------------------------------------


class _Breakers:
    """One breaker per upstream origin (or instance), created lazily, in a bounded dict."""

    __slots__ = ("_breakers", "_factory", "_lock", "_max", "_single", "failure")

    def __init__(
        self,
        factory: Callable[[str], Any] | None,
        *,
        single: Any = None,
        max_origins: int = 1024,
        failure: Failure,
    ) -> None:
        self._factory = factory
        self._single = single
        self._max = max_origins
        self._breakers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.failure = failure

    def owned(self) -> list[Any]:
        """The breakers this set created (a breaker the user passed is theirs to close)."""
        with self._lock:
            return list(self._breakers.values())

    def peek(self, key: str) -> Any:
        """The breaker of ``key`` if one exists (never creates one)."""
        return self._single if self._single is not None else self._breakers.get(key)

    def get(self, key: str) -> Any:
        if self._single is not None:
            return self._single
        breaker = self._breakers.get(key)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(key)
                if breaker is None:
                    assert self._factory is not None
                    breaker = self._factory(key)
                    if len(self._breakers) >= self._max:
                        # evict the oldest origin: a client calling unbounded hosts stays bounded
                        self._breakers.pop(next(iter(self._breakers)))
                    self._breakers[key] = breaker
        return breaker


def _make_breakers(value: Any, lib: Binding, registry: Any) -> _Breakers | None:
    if value is None or value is False:
        return None
    default_failure = _default_failure(lib)
    if hasattr(value, "acquire") and hasattr(value, "release"):
        return _Breakers(None, single=value, failure=default_failure)
    if value is True:
        options: dict[str, Any] = {}
    elif isinstance(value, Mapping):
        options = dict(value)
    else:
        raise ConfigError(
            f"breaker: expected True, a dict of options or a kitmw.breaker.Breaker, got {value!r}"
        )
    failure = options.pop("failure", None) or default_failure
    if not callable(failure):
        raise ConfigError(
            f"breaker: failure must be a callable (response, error) -> bool | None, got {failure!r}"
        )
    max_origins = options.pop("max_origins", 1024)
    if not isinstance(max_origins, int) or max_origins < 1:
        raise ConfigError(f"breaker: max_origins must be an int >= 1, got {max_origins!r}")
    prefix = options.pop("name", "client")
    if not isinstance(prefix, str) or not prefix:
        raise ConfigError(f"breaker: name must be a non-empty string, got {prefix!r}")
    if registry is not None and "registry" not in options:
        options["registry"] = registry
    breaker_cls = importlib.import_module(".breaker", __package__).Breaker
    check_options("breaker", breaker_cls, options, extra=("failure", "max_origins", "name"), supplied=("name",))

    def factory(key: str) -> Any:
        return breaker_cls(name=f"{prefix}:{key}", **options)

    # Build one now, on a scratch registry, so that bad options fail at construction.
    from prometheus_client import CollectorRegistry

    try:
        probe = breaker_cls(name=f"{prefix}:validate", **{**options, "registry": CollectorRegistry()})
    except ConfigError as exc:
        raise ConfigError(f"breaker: {exc}") from exc
    except TypeError as exc:  # an unknown option
        raise ConfigError(f"breaker: {exc}") from exc
    probe.close()
    return _Breakers(factory, max_origins=max_origins, failure=failure)


def _default_failure(lib: Binding) -> Failure:
    transport_error = lib.TransportError

    def failure(response: Any, error: BaseException | None) -> bool | None:
        """Connection errors, timeouts and 5xx count against the upstream; 4xx do not,
        and neither do cancellations or errors that are not the transport's."""
        if error is not None:
            return True if isinstance(error, transport_error) else None
        return bool(response.status_code >= 500)

    return failure


# -- rate limit ----------------------------------------------------------------------------


class _Limit:
    __slots__ = ("key", "limiter", "max_wait", "mode", "sleep")

    def __init__(self, limiter: Any, mode: str, max_wait: float, key: Any, sleep: Any) -> None:
        self.limiter = limiter
        self.mode = mode
        self.max_wait = max_wait
        self.key = key
        self.sleep = sleep


def _make_limit(value: Any, registry: Any) -> _Limit | None:
    if value is None or value is False:
        return None
    limiter: Any = None
    if isinstance(value, str):
        options: dict[str, Any] = {"limit": value}
    elif isinstance(value, Mapping):
        options = dict(value)
    elif hasattr(value, "hit"):
        limiter, options = value, {}
    else:
        raise ConfigError(
            f"ratelimit: expected a rate string, a dict of options or a kitmw.ratelimit.Limiter, got {value!r}"
        )
    mode = options.pop("mode", "delay")
    if mode not in ("delay", "error"):
        raise ConfigError(f"ratelimit: mode must be 'delay' or 'error', got {mode!r}")
    max_wait = options.pop("max_wait", 10.0)
    if not isinstance(max_wait, (int, float)) or max_wait < 0:
        raise ConfigError(f"ratelimit: max_wait must be seconds >= 0, got {max_wait!r}")
    key = options.pop("key", None)
    if key is not None and not callable(key):
        raise ConfigError(f"ratelimit: key must be a callable on the exchange, got {key!r}")
    sleep = options.pop("sleep", None)
    if sleep is not None and not callable(sleep):
        raise ConfigError(f"ratelimit: sleep must be a callable, got {sleep!r}")
    if limiter is None:
        if "limit" not in options:
            raise ConfigError("ratelimit: limit is required (a rate string such as '10/second')")
        options.setdefault("side", "client")
        if registry is not None:
            options.setdefault("registry", registry)
        limiter_cls = importlib.import_module(".ratelimit", __package__).Limiter
        check_options("ratelimit", limiter_cls, options, extra=("key", "max_wait", "mode", "sleep"))
        try:
            limiter = limiter_cls(**options)
        except TypeError as exc:  # an unknown option
            raise ConfigError(f"ratelimit: {exc}") from exc
    return _Limit(limiter, mode, float(max_wait), key, sleep)


# -- observability policies ------------------------------------------------------------------

_POLICIES = (
    ("tracing", ".tracing", "ClientTracingPolicy"),
    ("access_log", ".logging", "ClientLogPolicy"),
    ("metrics", ".metrics", "ClientMetricsPolicy"),
)


def _make_policy(option: str, module: str, attr: str, value: Any) -> Policy | None:
    if value is None or value is False:
        return None
    if isinstance(value, Policy):
        return value
    if value is True:
        options: dict[str, Any] = {}
    elif isinstance(value, Mapping):
        options = dict(value)
    else:
        raise ConfigError(f"{option}: expected True, a dict of options or a kitmw policy, got {value!r}")
    policy_cls = getattr(importlib.import_module(module, __package__), attr)
    return construct(option, policy_cls, options)  # type: ignore[no-any-return]


def _make_retry(value: Any) -> Retry | None:
    if value is None or value is False:
        return None
    if isinstance(value, Retry):
        return value
    if value is True:
        return Retry()
    if isinstance(value, int):
        return Retry(attempts=value)
    if isinstance(value, Mapping):
        return construct("retry", Retry, value)  # type: ignore[no-any-return]
    raise ConfigError(
        f"retry: expected True, an attempt count, a dict of options or a kitmw.retry.Retry, got {value!r}"
    )


def _retry_counter(registry: Any) -> Any:
    """``instruments(registry).client_retries`` from :mod:`kitmw.metrics`, if it has one."""
    if registry is None:
        return None
    try:
        metrics = importlib.import_module(".metrics", __package__)
        return metrics.instruments(registry).client_retries
    except (ImportError, AttributeError):
        return None


def _counter_incrementer(counter: Any) -> Callable[[ClientExchange], None] | None:
    if counter is None:
        return None
    names = tuple(getattr(counter, "_labelnames", ()))
    if not names:
        return lambda ex: counter.inc()

    def inc(ex: ClientExchange) -> None:
        values = {"method": ex.method, "host": ex.host, "side": "client", "scheme": ex.scheme}
        counter.labels(**{n: values.get(n, "") for n in names}).inc()

    return inc


def _request_id_source() -> Callable[[], str | None] | None:
    try:
        logging_ = importlib.import_module(".logging", __package__)
    except ImportError:
        return None
    source = getattr(logging_, "current_request_id", None)
    return source if callable(source) else None


# -- the core --------------------------------------------------------------------------------


def _no_enter(ex: ClientExchange) -> None:
    return None


class _Done:
    """Finishes one exchange exactly once: breaker verdict, then policies' exits."""

    __slots__ = ("breaker", "core", "entered", "ex", "finished", "permit")

    def __init__(self, core: _Core, ex: ClientExchange, entered: int, breaker: Any, permit: Any) -> None:
        self.core = core
        self.ex = ex
        self.entered = entered
        self.breaker = breaker
        self.permit = permit
        self.finished = False

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        ex = self.ex
        if not ex.end_ns:
            ex.end_ns = perf_counter_ns()
        core = self.core
        try:
            if self.breaker is not None:
                self.breaker.release(self.permit, failed=core.failure(ex.response, ex.error), error=ex.error)
        finally:
            core.exit(ex, self.entered)

    async def afinish(self) -> None:
        if self.finished:
            return
        self.finished = True
        ex = self.ex
        if not ex.end_ns:
            ex.end_ns = perf_counter_ns()
        core = self.core
        try:
            if self.breaker is not None:
                failed = core.failure(ex.response, ex.error)
                await _shielded(self.breaker.arelease(self.permit, failed=failed, error=ex.error))
        finally:
            await core.aexit(ex, self.entered)


async def _shielded(awaitable: Any) -> Any:
    """Await ``awaitable`` even inside a cancelled scope (a permit must be released)."""
    import anyio

    with anyio.CancelScope(shield=True):
        return await awaitable


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


def _stays_open(breaker: Any, delay: float) -> bool:
    """True if ``breaker`` is open and will still refuse after ``delay`` seconds."""
    return getattr(breaker, "state", None) == "open" and getattr(breaker, "retry_after", 0.0) > delay


def _not_retried(exc: BaseException, why: str) -> None:
    """Say on the error itself why it was not retried (Python >= 3.11 shows notes)."""
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        add_note(f"kitmw: not retried: {why} is open")


class _Core:
    """Options resolved once; ``send``/``asend`` run one logical request."""

    def __init__(
        self,
        lib: Binding,
        *,
        is_async: bool,
        transport: Any,
        access_log: Any,
        metrics: Any,
        tracing: Any,
        breaker: Any,
        ratelimit: Any,
        retry: Any,
        instances: Sequence[str] | None,
        balance: str,
        request_id_header: str | None,
    ) -> None:
        self.lib = lib
        module = lib.module
        method = "handle_async_request" if is_async else "handle_request"
        if transport is None:
            transport = module.AsyncHTTPTransport() if is_async else module.HTTPTransport()
        elif not callable(getattr(transport, method, None)):
            raise ConfigError(
                f"transport: expected an {'async ' if is_async else ''}{module.__name__} transport "
                f"with {method}(), got {transport!r}"
            )
        self.inner = transport
        given = {"tracing": tracing, "access_log": access_log, "metrics": metrics}
        policies = [p for o, m, a in _POLICIES if (p := _make_policy(o, m, a, given[o])) is not None]
        self.policies = tuple(policies)
        # the metrics policy's registry also receives retry and breaker counts
        registry = next((r for p in policies if (r := getattr(p, "registry", None)) is not None), None)
        hooks = [p.hooks("httpx", is_async) for p in policies]
        self.enters: tuple[tuple[Any, bool], ...] = tuple(
            (h.enter, h.enter_awaits) if h.enter is not None else (_no_enter, False) for h in hooks
        )
        self.exits = tuple((h.exit, h.exit_awaits) for h in hooks)
        self.limit = _make_limit(ratelimit, registry)
        self.retry = _make_retry(retry)
        self.breakers = _make_breakers(breaker, lib, registry)
        self.failure: Failure = self.breakers.failure if self.breakers else _default_failure(lib)
        if instances is not None:
            self.balancer: Balancer | None = Balancer(instances, balance)
        else:
            if balance not in ("round_robin", "random"):
                raise ConfigError(f"balance: expected 'round_robin' or 'random', got {balance!r}")
            self.balancer = None
        if request_id_header is not None and (
            not isinstance(request_id_header, str) or not request_id_header
        ):
            raise ConfigError(f"request_id_header: expected a header name or None, got {request_id_header!r}")
        self.request_id_header = request_id_header
        self.request_id = _request_id_source() if request_id_header else None
        self.count_retry = _counter_incrementer(_retry_counter(registry)) if self.retry else None
        self.sleep = _async_sleep if is_async else time.sleep

    # -- shared helpers ---------------------------------------------------------------------

    def begin(self, request: Any) -> ClientExchange:
        ex = ClientExchange(request)
        ex.start_ns = perf_counter_ns()
        source = self.request_id
        if source is not None:
            rid = source()
            if rid:
                ex.request_id = rid
                header = self.request_id_header
                if header not in request.headers:
                    request.headers[header] = rid
        return ex

    def answer(self, rejection: Rejection, ex: ClientExchange) -> Any:
        response = self.lib.Response(
            rejection.status, headers=rejection.header_pairs(), content=rejection.body, request=ex.request
        )
        ex.status = rejection.status
        ex.response = response
        ex.bytes_out = len(rejection.body)
        return response

    def exit(self, ex: ClientExchange, entered: int) -> None:
        first: BaseException | None = None
        exits = self.exits
        for i in range(entered - 1, -1, -1):
            fn = exits[i][0]
            if fn is not None:
                try:
                    fn(ex)
                except Exception as exc:  # every exit runs; the first error is raised
                    first = first or exc
        if first is not None:
            raise first

    async def aexit(self, ex: ClientExchange, entered: int) -> None:
        first: BaseException | None = None
        exits = self.exits
        for i in range(entered - 1, -1, -1):
            fn, is_async = exits[i]
            if fn is not None:
                try:
                    if is_async:
                        await fn(ex)
                    else:
                        fn(ex)
                except Exception as exc:
                    first = first or exc
        if first is not None:
            raise first

    def rate_key(self, ex: ClientExchange, origin: str) -> str:
        limit = self.limit
        assert limit is not None
        return origin if limit.key is None else str(limit.key(ex))

    def refuse_rate(self, wait: float) -> Exception:
        refusal: Exception = self.lib.RateLimited(
            f"client rate limit reached (retry after {wait:.3g}s)", retry_after=wait
        )
        return refusal

    def refuse_breaker(self, exc: errors.BreakerOpen | None, request: Any) -> Exception:
        retry_after = exc.retry_after if exc is not None else 0.0
        name = exc.name if exc is not None else ""
        message = str(exc) if exc is not None else "circuit breaker is open"
        refusal: Exception = self.lib.BreakerOpen(
            message, retry_after=retry_after, name=name, request=request
        )
        return refusal

    def balanced(self, request: Any) -> tuple[int | None, bool]:
        """(index of the requested instance or None, whether to rewrite the Host header)."""
        balancer = self.balancer
        if balancer is None:
            return None, False
        url = request.url
        index = balancer.index_of(origin_key(url.scheme, url.host, url.port))
        if index is None:
            return None, False
        return index, request.headers.get("host") == url.netloc.decode("ascii")

    @staticmethod
    def point(request: Any, inst: Instance, rewrite_host: bool) -> None:
        url = request.url
        if url.host == inst.host and url.port == inst.port and url.scheme == inst.scheme:
            return  # already there; a URL copy re-parses the whole URL
        request.url = url.copy_with(scheme=inst.scheme, host=inst.host, port=inst.port)
        if rewrite_host:
            request.headers["Host"] = inst.netloc

    def may_retry(
        self, retry: Retry, delay: float | None, deadline_at: float | None, ex: ClientExchange
    ) -> bool:
        if delay is None:
            return False
        if deadline_at is not None and retry.clock() + delay >= deadline_at:
            return False
        budget = retry.budget
        if budget is not None and not budget.withdraw():
            return False
        if self.count_retry is not None:
            self.count_retry(ex)
        return True

    def refused_next(self, breaker: Any, index: int | None, delay: float) -> str | None:
        """Which breaker would refuse a retry after ``delay`` (this call's own failures may
        just have opened it), or None. Retrying would only wait to be refused, draw on the
        budget and count a retry that never happens, and hide the upstream's own answer."""
        breakers = self.breakers
        if breakers is None or breaker is None:
            return None
        if index is None:
            return f"circuit breaker {breaker.name!r}" if _stays_open(breaker, delay) else None
        balancer = self.balancer
        assert balancer is not None
        for inst in balancer.instances:
            other = breakers.peek(inst.key)
            if other is None or not _stays_open(other, delay):
                return None
        return "the circuit breaker of every instance"

    def retryable_error(self, retry: Retry, exc: BaseException) -> bool:
        if isinstance(exc, (errors.BreakerOpen, errors.RateLimited)):
            return False
        if retry.retry_on is not None:
            return bool(retry.retry_on(exc))
        return isinstance(exc, self.lib.retryable)

    @staticmethod
    def cut_timeouts(request: Any, retry: Retry, deadline_at: float) -> None:
        """Cut this attempt's httpx timeouts to what remains of the overall deadline."""
        remaining = max(deadline_at - retry.clock(), 0.001)
        timeout = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {
            k: remaining if timeout.get(k) is None else min(timeout[k], remaining)
            for k in ("connect", "read", "write", "pool")
        }

    def retry_plan(self, ex: ClientExchange) -> tuple[Retry | None, float | None]:
        retry = self.retry
        if retry is None:
            return None, None
        request = ex.request
        if ex.method not in retry.methods or not isinstance(request.stream, self.lib.ByteStream):
            return None, None  # not idempotent, or a stream that cannot be sent twice
        if retry.budget is not None:
            retry.budget.deposit()
        deadline_at = retry.clock() + retry.deadline if retry.deadline is not None else None
        return retry, deadline_at

    # -- sync ---------------------------------------------------------------------------------

    def send(self, request: Any) -> Any:
        ex = self.begin(request)
        entered = 0
        try:
            for enter, _ in self.enters:
                entered += 1
                rejection = enter(ex)
                if rejection is not None:
                    response = self.answer(rejection, ex)
                    _Done(self, ex, entered, None, None).finish()
                    return response
            response, breaker, permit = self._attempts(ex)
        except BaseException as exc:
            ex.error = exc
            ex.end_ns = perf_counter_ns()
            self.exit(ex, entered)
            raise
        return self._bind_response(ex, response, _Done(self, ex, entered, breaker, permit))

    def _bind_response(self, ex: ClientExchange, response: Any, done: _Done) -> Any:
        ex.status = response.status_code
        ex.response = response
        if response.is_closed:  # already read (MockTransport with content): finish now
            ex.bytes_out = len(response.content)
            done.finish()
        else:
            response.stream = self.lib.SyncBody(response.stream, done)
        return response

    def _wait_for_slot(self, ex: ClientExchange, origin: str) -> None:
        limit = self.limit
        assert limit is not None
        key = self.rate_key(ex, origin)
        sleep = limit.sleep or time.sleep
        waited = 0.0
        while True:
            decision = limit.limiter.hit(key)
            if decision.allowed:
                return
            wait = max(float(decision.retry_after or 0.0), 0.01)
            if limit.mode == "error" or waited + wait > limit.max_wait:
                raise self.refuse_rate(wait)
            sleep(wait)
            waited += wait

    def _acquire(
        self, request: Any, index: int | None, avoid: int | None, rewrite: bool
    ) -> tuple[Any, Any, int | None]:
        breakers = self.breakers
        if index is None:
            if breakers is None:
                return None, None, None
            url = request.url
            breaker = breakers.get(origin_key(url.scheme, url.host, url.port))
            try:
                return breaker, breaker.acquire(), None
            except errors.BreakerOpen as exc:
                raise self.refuse_breaker(exc, request) from exc
        balancer = self.balancer
        assert balancer is not None
        refused: errors.BreakerOpen | None = None
        for i in balancer.order(avoid):
            inst = balancer.instances[i]
            if breakers is None:
                self.point(request, inst, rewrite)
                return None, None, i
            breaker = breakers.get(inst.key)
            try:
                permit = breaker.acquire()
            except errors.BreakerOpen as exc:
                refused = exc  # skip an instance whose breaker is open
                continue
            self.point(request, inst, rewrite)
            return breaker, permit, i
        raise self.refuse_breaker(refused, request) from refused

    def _attempts(self, ex: ClientExchange) -> tuple[Any, Any, Any]:
        request = ex.request
        url = request.url
        origin = origin_key(url.scheme, url.host, url.port)
        if self.limit is not None:
            self._wait_for_slot(ex, origin)
        index, rewrite = self.balanced(request)
        retry, deadline_at = self.retry_plan(ex)
        sleep = (retry.sleep if retry is not None else None) or time.sleep
        inner = self.inner
        attempt = 0
        at: int | None = None
        last: Exception | None = None  # the previous attempt's transport error
        while True:
            try:
                breaker, permit, at = self._acquire(request, index, at, rewrite)
            except errors.BreakerOpen:
                if last is None:
                    raise
                ended: Exception | None = last  # opened meanwhile, by others: end with our error
            else:
                ended = None
            if ended is not None:  # raised outside the handler: its context stays its own
                _not_retried(ended, "the circuit breaker")
                raise ended
            attempt += 1
            ex.state["attempts"] = attempt
            if deadline_at is not None:
                assert retry is not None
                self.cut_timeouts(request, retry, deadline_at)
            try:
                response = inner.handle_request(request)
            except Exception as exc:
                if breaker is not None:
                    breaker.release(permit, failed=self.failure(None, exc), error=exc)
                if retry is not None and attempt < retry.attempts and self.retryable_error(retry, exc):
                    backoff = retry.backoff(attempt)
                    why = self.refused_next(breaker, index, backoff)
                    if why is not None:
                        _not_retried(exc, why)
                    elif self.may_retry(retry, backoff, deadline_at, ex):
                        sleep(backoff)
                        last = exc
                        continue
                raise
            except BaseException:
                if breaker is not None:
                    breaker.release(permit, failed=None)
                raise
            if retry is not None and attempt < retry.attempts and response.status_code in retry.statuses:
                delay = retry.delay(attempt, response.headers.get("retry-after"))
                if delay is not None:
                    if breaker is not None:
                        breaker.release(permit, failed=self.failure(response, None))
                    if self.refused_next(breaker, index, delay) is None and self.may_retry(
                        retry, delay, deadline_at, ex
                    ):
                        response.close()
                        sleep(delay)
                        last = None
                        continue
                    return response, None, None  # the answer as is; its verdict is recorded
            return response, breaker, permit

    # -- async --------------------------------------------------------------------------------

    async def asend(self, request: Any) -> Any:
        ex = self.begin(request)
        entered = 0
        try:
            for enter, is_async in self.enters:
                entered += 1
                rejection = (await enter(ex)) if is_async else enter(ex)
                if rejection is not None:
                    response = self.answer(rejection, ex)
                    await _Done(self, ex, entered, None, None).afinish()
                    return response
            response, breaker, permit = await self._aattempts(ex)
        except BaseException as exc:
            ex.error = exc
            ex.end_ns = perf_counter_ns()
            await _shielded(self.aexit(ex, entered))
            raise
        done = _Done(self, ex, entered, breaker, permit)
        ex.status = response.status_code
        ex.response = response
        if response.is_closed:
            ex.bytes_out = len(response.content)
            await done.afinish()
        else:
            response.stream = self.lib.AsyncBody(response.stream, done)
        return response

    async def _await_slot(self, ex: ClientExchange, origin: str) -> None:
        limit = self.limit
        assert limit is not None
        key = self.rate_key(ex, origin)
        sleep = limit.sleep or _async_sleep
        waited = 0.0
        while True:
            decision = await limit.limiter.ahit(key)
            if decision.allowed:
                return
            wait = max(float(decision.retry_after or 0.0), 0.01)
            if limit.mode == "error" or waited + wait > limit.max_wait:
                raise self.refuse_rate(wait)
            await _maybe_await(sleep(wait))
            waited += wait

    async def _aacquire(
        self, request: Any, index: int | None, avoid: int | None, rewrite: bool
    ) -> tuple[Any, Any, int | None]:
        breakers = self.breakers
        if index is None:
            if breakers is None:
                return None, None, None
            url = request.url
            breaker = breakers.get(origin_key(url.scheme, url.host, url.port))
            try:
                return breaker, await breaker.aacquire(), None
            except errors.BreakerOpen as exc:
                raise self.refuse_breaker(exc, request) from exc
        balancer = self.balancer
        assert balancer is not None
        refused: errors.BreakerOpen | None = None
        for i in balancer.order(avoid):
            inst = balancer.instances[i]
            if breakers is None:
                self.point(request, inst, rewrite)
                return None, None, i
            breaker = breakers.get(inst.key)
            try:
                permit = await breaker.aacquire()
            except errors.BreakerOpen as exc:
                refused = exc
                continue
            self.point(request, inst, rewrite)
            return breaker, permit, i
        raise self.refuse_breaker(refused, request) from refused

    async def _aattempts(self, ex: ClientExchange) -> tuple[Any, Any, Any]:
        request = ex.request
        url = request.url
        origin = origin_key(url.scheme, url.host, url.port)
        if self.limit is not None:
            await self._await_slot(ex, origin)
        index, rewrite = self.balanced(request)
        retry, deadline_at = self.retry_plan(ex)
        sleep = (retry.sleep if retry is not None else None) or _async_sleep
        inner = self.inner
        attempt = 0
        at: int | None = None
        last: Exception | None = None  # the previous attempt's transport error
        while True:
            try:
                breaker, permit, at = await self._aacquire(request, index, at, rewrite)
            except errors.BreakerOpen:
                if last is None:
                    raise
                ended: Exception | None = last  # opened meanwhile, by others: end with our error
            else:
                ended = None
            if ended is not None:  # raised outside the handler: its context stays its own
                _not_retried(ended, "the circuit breaker")
                raise ended
            attempt += 1
            ex.state["attempts"] = attempt
            if deadline_at is not None:
                assert retry is not None
                self.cut_timeouts(request, retry, deadline_at)
            try:
                response = await inner.handle_async_request(request)
            except Exception as exc:
                if breaker is not None:
                    await _shielded(breaker.arelease(permit, failed=self.failure(None, exc), error=exc))
                if retry is not None and attempt < retry.attempts and self.retryable_error(retry, exc):
                    backoff = retry.backoff(attempt)
                    why = self.refused_next(breaker, index, backoff)
                    if why is not None:
                        _not_retried(exc, why)
                    elif self.may_retry(retry, backoff, deadline_at, ex):
                        await _maybe_await(sleep(backoff))
                        last = exc
                        continue
                raise
            except BaseException:
                if breaker is not None:
                    await _shielded(breaker.arelease(permit, failed=None))
                raise
            if retry is not None and attempt < retry.attempts and response.status_code in retry.statuses:
                delay = retry.delay(attempt, response.headers.get("retry-after"))
                if delay is not None:
                    if breaker is not None:
                        await _shielded(breaker.arelease(permit, failed=self.failure(response, None)))
                    if self.refused_next(breaker, index, delay) is None and self.may_retry(
                        retry, delay, deadline_at, ex
                    ):
                        await response.aclose()
                        await _maybe_await(sleep(delay))
                        last = None
                        continue
                    return response, None, None  # the answer as is; its verdict is recorded
            return response, breaker, permit


async def _async_sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


# -- the public transport classes ---------------------------------------------------------------

OPTIONS_DOC = """
    :param transport: the wrapped transport (default the library's standard one); a
        ``MockTransport`` works too, for users' tests.
    :param access_log: one record per call on ``kitmw.client`` (``ClientLogPolicy``).
    :param metrics: ``http_client_requests_total`` and
        ``http_client_request_duration_seconds`` by method, host, status.
    :param tracing: a CLIENT span per call, ``traceparent`` injected.
    :param breaker: one breaker per upstream origin (per instance when balancing):
        ``True``, a dict of :class:`kitmw.breaker.Breaker` options plus ``failure``
        (classifier ``(response, error) -> bool | None``), ``name`` (prefix) and
        ``max_origins``, or one ``Breaker`` shared by every origin.
    :param ratelimit: a rate string, a dict (``limit``, ``storage``, ``strategy``,
        ``mode="delay"|"error"``, ``max_wait``, ``key``, ``sleep``) or a
        :class:`kitmw.ratelimit.Limiter`; per upstream origin by default.
    :param retry: ``True``, an attempt count, a dict of :class:`kitmw.retry.Retry`
        options or a ``Retry``.
    :param instances: base URLs of several instances of one service to balance over.
    :param balance: ``"round_robin"`` (default) or ``"random"``.
    :param request_id_header: header carrying the current request id (``None``: off).
"""


class _Options:
    """Keyword-only options shared by both transports (see the class docstrings)."""

    __slots__ = ()

    @staticmethod
    def core(
        lib: Binding,
        is_async: bool,
        *,
        transport: Any = None,
        access_log: Any = None,
        metrics: Any = None,
        tracing: Any = None,
        breaker: Any = None,
        ratelimit: Any = None,
        retry: Any = None,
        instances: Sequence[str] | None = None,
        balance: str = "round_robin",
        request_id_header: str | None = "X-Request-ID",
    ) -> _Core:
        return _Core(
            lib,
            is_async=is_async,
            transport=transport,
            access_log=access_log,
            metrics=metrics,
            tracing=tracing,
            breaker=breaker,
            ratelimit=ratelimit,
            retry=retry,
            instances=instances,
            balance=balance,
            request_id_header=request_id_header,
        )


class SyncTransportBase:
    """The sync transport, bound to a library by a subclass setting ``_lib``."""

    _lib: Binding

    def __init__(
        self,
        *,
        transport: Any = None,
        access_log: Any = None,
        metrics: Any = None,
        tracing: Any = None,
        breaker: Any = None,
        ratelimit: Any = None,
        retry: Any = None,
        instances: Sequence[str] | None = None,
        balance: str = "round_robin",
        request_id_header: str | None = "X-Request-ID",
    ) -> None:
        self._core = _Options.core(
            self._lib,
            False,
            transport=transport,
            access_log=access_log,
            metrics=metrics,
            tracing=tracing,
            breaker=breaker,
            ratelimit=ratelimit,
            retry=retry,
            instances=instances,
            balance=balance,
            request_id_header=request_id_header,
        )

    @property
    def transport(self) -> Any:
        """The wrapped transport."""
        return self._core.inner

    def handle_request(self, request: Any) -> Any:
        return self._core.send(request)

    def close(self) -> None:
        try:
            self._core.inner.close()
        finally:
            if self._core.breakers is not None:
                for breaker in self._core.breakers.owned():
                    breaker.close()


class AsyncTransportBase:
    """The async transport, bound to a library by a subclass setting ``_lib``."""

    _lib: Binding

    def __init__(
        self,
        *,
        transport: Any = None,
        access_log: Any = None,
        metrics: Any = None,
        tracing: Any = None,
        breaker: Any = None,
        ratelimit: Any = None,
        retry: Any = None,
        instances: Sequence[str] | None = None,
        balance: str = "round_robin",
        request_id_header: str | None = "X-Request-ID",
    ) -> None:
        self._core = _Options.core(
            self._lib,
            True,
            transport=transport,
            access_log=access_log,
            metrics=metrics,
            tracing=tracing,
            breaker=breaker,
            ratelimit=ratelimit,
            retry=retry,
            instances=instances,
            balance=balance,
            request_id_header=request_id_header,
        )

    @property
    def transport(self) -> Any:
        """The wrapped transport."""
        return self._core.inner

    async def handle_async_request(self, request: Any) -> Any:
        return await self._core.asend(request)

    async def aclose(self) -> None:
        try:
            await self._core.inner.aclose()
        finally:
            if self._core.breakers is not None:
                for breaker in self._core.breakers.owned():
                    await breaker.aclose()
