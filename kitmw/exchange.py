"""The neutral view of one request/response, and the policy protocol.

A *policy* holds one concern (logging, metrics, tracing, rate limit, auth, breaker)
and sees only an :class:`Exchange`. A *driver* (ASGI, WSGI, httpx) builds the exchange
from its protocol, runs the policies' ``enter`` in order, lets the request through
unless one of them answered early with a :class:`~kitmw.errors.Rejection`, then runs
``exit`` in reverse order once status, error, sizes and duration are known.

Everything on the exchange that costs something is lazy: headers are looked up on
demand from the protocol's own structure, the route template is resolved only when a
policy asks for it, the per-request ``state`` dict exists only once written to.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from contextvars import ContextVar, Token
from time import monotonic
from typing import Any, ClassVar, NamedTuple

from ._types import Clock
from .chain import SERVE, Hooks
from .errors import Rejection

__all__ = [
    "SERVE",
    "UNMATCHED",
    "Deadline",
    "Exchange",
    "Policy",
    "current_deadline",
    "current_remaining",
    "inherit_deadline",
    "reset_deadline",
    "set_deadline",
]

_EMPTY: frozenset[Any] = frozenset()

class Deadline(NamedTuple):
    """A deadline and the clock it is read on: ``time.monotonic`` seconds, unless a test
    injected another clock into the policy that set it (then every reader uses that one)."""

    at: float
    clock: Clock


#: The deadline of the exchange the current code runs in: Go kit's ``context``
#: deadline. The timeout concern sets it; client and endpoint exchanges start with it,
#: so an httpx call made while serving a request fits in what remains.
_DEADLINE: ContextVar[Deadline | None] = ContextVar("kitmw.deadline", default=None)


def current_deadline() -> float | None:
    """The deadline of the exchange the calling code runs inside, or None."""
    found = _DEADLINE.get()
    return None if found is None else found.at


def current_remaining() -> float | None:
    """Seconds left before :func:`current_deadline` (0.0 once it passed), or None."""
    found = _DEADLINE.get()
    return None if found is None else max(0.0, found.at - found.clock())


def set_deadline(deadline: float | None, clock: Clock = monotonic) -> Token[Deadline | None]:
    """Make ``deadline`` (on ``clock``) current, never later than the one already
    current; reset the returned token with :func:`reset_deadline` when it is over."""
    outer = _DEADLINE.get()
    if deadline is None or (outer is not None and outer.at < deadline):
        return _DEADLINE.set(outer)
    return _DEADLINE.set(Deadline(deadline, clock))


def reset_deadline(token: Token[Deadline | None]) -> None:
    _DEADLINE.reset(token)


def inherit_deadline(ex: Exchange) -> None:
    """Give an outgoing call's exchange the deadline of the code that makes it."""
    found = _DEADLINE.get()
    if found is not None:
        ex.deadline = found.at
        ex.deadline_clock = found.clock


#: Route label of a request no route matched: a scan of random URLs adds one series only.
UNMATCHED = "<unmatched>"



class Exchange:
    """One request/response as every policy sees it, whatever the protocol.

    Request side (filled by the driver, read by policies): ``method``, ``path``,
    ``header()``, ``client``, ``route``. Set by policies while the request runs:
    ``request_id``, ``trace_id``/``span_id`` and ``span`` (the OpenTelemetry span of the
    exchange, whoever started it: policies further in may add attributes to it),
    ``principal``/``scopes``/``claims``/``user``. Response side
    (filled by the driver): ``status`` (0 until known), ``error``, ``bytes_in``,
    ``bytes_out``, ``start_ns``/``end_ns`` and :attr:`duration`. Once every exit has run
    the drivers set ``error`` back to ``None`` (the httpx driver ``response`` too): the
    error's traceback holds the frames that hold the exchange, and without that link a
    finished exchange is freed by reference counting, not by the cyclic collector. A
    policy that needs the error later copies it in its ``exit``.
    """

    __slots__ = (
        "_added_headers",
        "_response_started",
        "_route",
        "_state",
        "applied",
        "bytes_in",
        "bytes_out",
        "claims",
        "deadline",
        "deadline_clock",
        "end_ns",
        "error",
        "method",
        "path",
        "principal",
        "rejection",
        "request_id",
        "scopes",
        "serving",
        "span",
        "span_id",
        "start_ns",
        "status",
        "trace_id",
        "user",
    )

    #: "asgi", "wsgi", "httpx" or "endpoint": the driver (read by :meth:`Policy.hooks`).
    protocol: ClassVar[str] = "neutral"
    #: "server", "client" or "endpoint".
    side: ClassVar[str] = "server"

    def __init__(self, method: str, path: str) -> None:
        self.method = method
        self.path = path
        self.status = 0
        self.error: BaseException | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.start_ns = 0
        self.end_ns = 0
        self.request_id: str | None = None
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self.span: Any = None
        self.principal: str | None = None
        self.scopes: frozenset[str] = _EMPTY
        self.claims: Any = None
        self.user: Any = None
        #: Monotonic time (``time.monotonic()``) by which the exchange must be over, or
        #: None. Client exchanges start with the deadline of the request being served.
        self.deadline: float | None = None
        #: The clock :attr:`deadline` is read on (``time.monotonic`` but in tests).
        self.deadline_clock: Clock = monotonic
        self._response_started = False
        #: The policy answering in place of the application (see :data:`SERVE`).
        self.serving: Policy | None = None
        #: The early answer a policy refused this exchange with, once one did.
        self.rejection: Rejection | None = None
        #: Join keys of the policies already run on this exchange (nested layers).
        self.applied: frozenset[Hashable] = _EMPTY
        self._route: str | bool | None = False  # False: not resolved yet
        self._added_headers: list[tuple[bytes, bytes]] | None = None
        self._state: dict[str, Any] | None = None

    # -- request side; drivers override what their protocol offers ---------------------

    def header(self, name: str) -> str | None:
        """First value of request header ``name`` (lower-case), or ``None``."""
        return None

    def header_all(self, name: str) -> list[str]:
        """Every value of request header ``name`` (lower-case), in order."""
        value = self.header(name)
        return [] if value is None else [value]

    def header_names(self) -> list[str]:
        """Lower-case names of every request header (for propagators)."""
        return []

    @property
    def client(self) -> str | None:
        """Address of the socket peer (never taken from forwarding headers)."""
        return None

    @property
    def query(self) -> str:
        """The raw query string, decoded as latin-1."""
        return ""

    @property
    def scheme(self) -> str:
        return "http"

    @property
    def host(self) -> str:
        """Server side: the ``Host`` header; client side: the upstream host (``host:port``)."""
        return self.header("host") or ""

    @property
    def url(self) -> str:
        """The request URL without its query string (client side: the upstream URL)."""
        return self.path

    def set_request_header(self, name: str, value: str) -> None:
        """Client side: add or replace a header on the outgoing request (propagation)."""
        return None

    @property
    def native(self) -> Any:
        """The protocol's own object (ASGI scope, WSGI environ, httpx request)."""
        return None

    def _resolve_route(self) -> str | None:
        return None

    @property
    def route(self) -> str | None:
        """The route template (``/items/{item_id}``), or ``None`` when nothing matched.

        Resolved on first access and cached; after dispatch it is the matched route.
        """
        route = self._route
        if route is False:
            route = self._route = self._resolve_route()
        return route  # type: ignore[return-value]

    def route_label(self) -> str:
        """The route template, or :data:`UNMATCHED`: never the raw path."""
        route = self.route
        return UNMATCHED if route is None else route

    @property
    def mount_prefix(self) -> str:
        """The path prefix the application is mounted under (ASGI ``root_path``, WSGI
        ``SCRIPT_NAME``): :attr:`path` is the full path, starting with it."""
        return ""

    def set_user(
        self, principal: str, scopes: Iterable[str] = (), claims: Any = None, user: Any = None
    ) -> None:
        """Record the authenticated principal (``user``: the object the application sees)."""
        self.principal = principal
        self.scopes = frozenset(scopes)
        self.claims = claims
        self.user = user

    @property
    def response_started(self) -> bool:
        """True once the response head went out (no early answer can replace it then)."""
        return self._response_started

    @response_started.setter
    def response_started(self, value: bool) -> None:
        self._response_started = value

    @property
    def remaining(self) -> float | None:
        """Seconds left before :attr:`deadline` (never negative), or None without one."""
        deadline = self.deadline
        return None if deadline is None else max(0.0, deadline - self.deadline_clock())

    # -- response side --------------------------------------------------------------------

    def response_header(self, name: str) -> str | None:
        """First value of response header ``name`` (lower-case), once the response started."""
        return None

    def response_headers(self) -> list[tuple[str, str]]:
        """Every ``(lower-case name, value)`` of the response head, in order, once the
        response started (the headers policies added included); empty before."""
        return []

    def add_response_header(self, name: str, value: str) -> None:
        """Add a header to the response (and to an early answer)."""
        pair = (name.lower().encode("latin-1"), value.encode("latin-1"))
        if self._added_headers is None:
            self._added_headers = [pair]
        else:
            self._added_headers.append(pair)

    def add_header(self, pair: tuple[bytes, bytes]) -> None:
        """:meth:`add_response_header` for a (lower-case name, value) pair already encoded:
        the hot path's form (policies encode their constant parts once)."""
        added = self._added_headers
        if added is None:
            self._added_headers = [pair]
        else:
            added.append(pair)

    @property
    def added_headers(self) -> list[tuple[bytes, bytes]] | None:
        return self._added_headers

    @property
    def duration(self) -> float:
        """Seconds from the start of the exchange to its last response byte."""
        return (self.end_ns - self.start_ns) / 1e9 if self.end_ns else 0.0

    @property
    def state(self) -> dict[str, Any]:
        """Per-request scratch space for policies (created on first use)."""
        if self._state is None:
            self._state = {}
        return self._state

    # -- attempts (an ``around`` that calls the rest more than once) ----------------------

    def begin_attempt(self) -> None:
        """Called before each call of the rest of the chain: the outcome starts afresh."""
        self.status = 0
        self.error = None
        self.rejection = None

    def discard(self, result: Any) -> None:
        """Give up a result an ``around`` called for and then called again (a retry)."""
        close = getattr(result, "close", None)
        if close is not None:
            close()

    async def adiscard(self, result: Any) -> None:
        """:meth:`discard` for async drivers."""
        aclose = getattr(result, "aclose", None)
        if aclose is not None:
            await aclose()
        else:
            self.discard(result)


class Policy:
    """Base class of policies: one concern, no knowledge of the protocol.

    A policy acts at up to three points of an exchange, each optional:

    * ``enter(ex)``: before the rest; may return a :class:`~kitmw.errors.Rejection` to
      answer early (or :data:`SERVE`). Free of network I/O unless ``enter_awaits``.
    * ``exit(ex)``: once the exchange is over (its last response byte, or its error);
      runs for every policy whose ``enter`` ran, innermost first, even on errors.
    * ``around(ex)``: a generator holding the call of the rest, Go kit's endpoint
      middleware. It yields :data:`~kitmw.chain.CALL` where the rest runs and gets its
      result back (or its exception thrown in); it may yield ``CALL`` again (a retry),
      ``Call(timeout=...)`` (a deadline), ``Sleep(seconds)``, or return a ``Rejection``.
      Written once, it runs on the sync and the async drivers.

    Drivers never inspect the class: they call :meth:`hooks`, which reads the declared
    attributes below, and compile the result once (:func:`kitmw.chain.compile_chain`).
    A concern with protocol-specific helpers overrides :meth:`hooks` to return them.
    """

    __slots__ = ()

    #: Key used by ``stack()`` and in error messages.
    name: ClassVar[str] = "policy"
    #: True if the policy wants websocket connections too (default: passed through).
    handles_websocket: ClassVar[bool] = False
    #: True if the policy reads ``bytes_in`` (the driver then counts request body bytes).
    counts_request_bytes: ClassVar[bool] = False
    #: True if the policy judges the application's own answers (the breaker): it is not
    #: run for an exchange another policy answers in place of the application (:data:`SERVE`).
    judges_application: ClassVar[bool] = False
    #: The name of a concern this policy must run after when both are enabled (a rate
    #: limit keyed by the principal runs after auth).
    runs_after: ClassVar[str | None] = None

    @property
    def enter_awaits(self) -> bool | None:
        """True if the async drivers must await ``aenter`` instead of calling ``enter``
        (network I/O, such as a Redis storage); ``None``: whether the class overrides
        ``aenter``. A policy decides per instance, e.g. by its storage."""
        return None

    @property
    def exit_awaits(self) -> bool | None:
        """As :attr:`enter_awaits`, for ``aexit``."""
        return None

    @property
    def join_key(self) -> Hashable:
        """Two layers on one request whose policies have equal keys run only the outer one.

        A request through nested kitmw layers (a ``stack()`` outside, ``add_middleware``
        inside) is one exchange, and every layer runs its own policies on it: each
        enforces its own configuration. Skipping a policy is only right where running it
        again could change nothing but duplicate its output. The default key is the
        policy object itself, so only the very same policy is skipped; observability
        policies share a key where a second run would only duplicate (two ``Metrics`` on
        one registry would count every request twice).
        """
        return self

    def enter(self, ex: Exchange) -> Rejection | None:
        return None

    async def aenter(self, ex: Exchange) -> Rejection | None:
        return self.enter(ex)

    def exit(self, ex: Exchange) -> None:
        return None

    async def aexit(self, ex: Exchange) -> None:
        self.exit(ex)

    def respond(self, ex: Exchange) -> Rejection:
        """The answer served in place of the application after ``enter`` returned :data:`SERVE`."""
        raise NotImplementedError(f"{type(self).__name__} returned SERVE but has no respond()")

    async def arespond(self, ex: Exchange) -> Rejection:
        """:meth:`respond` for the async drivers (override it to keep I/O off the event loop)."""
        return self.respond(ex)

    def hooks(self, protocol: str, is_async: bool) -> Hooks:
        """What this policy runs on a ``protocol`` driver (``"asgi"``, ``"wsgi"``,
        ``"httpx"``, ``"endpoint"``) of the given mode: only what it defines.

        Override it to hand a driver protocol-specific helpers of the concern's own
        package (the tracing policy's ASGI attribute scan), never to branch per request.
        """
        cls = type(self)
        enter: Any = None
        exit_: Any = None
        around: Any = None
        enter_awaits = exit_awaits = False
        if is_async and _declared(self.enter_awaits, cls, "aenter"):
            enter, enter_awaits = self.aenter, True
        elif _overrides(cls, "enter") or _overrides(cls, "aenter"):
            enter = self.enter
        if is_async and _declared(self.exit_awaits, cls, "aexit"):
            exit_, exit_awaits = self.aexit, True
        elif _overrides(cls, "exit") or _overrides(cls, "aexit"):
            exit_ = self.exit
        if getattr(cls, "around", None) is not None:
            around = self.around  # type: ignore[attr-defined]
        return Hooks(enter, exit_, around, enter_awaits, exit_awaits)


def _overrides(cls: type, method: str) -> bool:
    return getattr(cls, method) is not getattr(Policy, method)


def _declared(value: bool | None, cls: type, method: str) -> bool:
    return _overrides(cls, method) if value is None else bool(value)
