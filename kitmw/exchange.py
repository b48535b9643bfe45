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
from typing import Any, ClassVar

from .errors import Rejection

__all__ = ["SERVE", "UNMATCHED", "Exchange", "Policy"]

#: Route label of a request no route matched: a scan of random URLs adds one series only.
UNMATCHED = "<unmatched>"

#: Returned by :meth:`Policy.enter` to answer the exchange itself *in place of the
#: application* (the ``/metrics`` exposition). Unlike a refusal it does not stop the
#: policies further in: the driver runs their ``enter`` first, so auth and rate limits
#: guard the answer like any path (a refusal of theirs wins), skips the policies that
#: judge the application (:attr:`Policy.judges_application`, the breaker), and sends
#: :meth:`Policy.respond` where the application would have been called. A kitmw layer
#: inside the application (``add_middleware`` under a ``stack()``) is handed the answer
#: so that its policies guard it too.
SERVE = Rejection(200, "serve")


class Exchange:
    """One request/response as every policy sees it, whatever the protocol.

    Request side (filled by the driver, read by policies): ``method``, ``path``,
    ``header()``, ``client``, ``route``. Set by policies while the request runs:
    ``request_id``, ``trace_id``/``span_id``, ``principal``/``scopes``. Response side
    (filled by the driver): ``status`` (0 until known), ``error``, ``bytes_in``,
    ``bytes_out``, ``start_ns``/``end_ns`` and :attr:`duration`.
    """

    __slots__ = (
        "_added_headers",
        "_route",
        "_state",
        "bytes_in",
        "bytes_out",
        "claims",
        "end_ns",
        "error",
        "method",
        "path",
        "principal",
        "request_id",
        "scopes",
        "span",
        "span_id",
        "start_ns",
        "status",
        "trace_id",
    )

    #: "asgi", "wsgi" or "httpx": lets a policy pick protocol helpers (OTel attributes).
    protocol: ClassVar[str] = "neutral"
    #: "server" or "client".
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
        self.scopes: frozenset[str] = frozenset()
        self.claims: Any = None
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

    def set_user(
        self, principal: str, scopes: Iterable[str] = (), claims: Any = None, user: Any = None
    ) -> None:
        """Record the authenticated principal; drivers also expose it to the app."""
        self.principal = principal
        self.scopes = frozenset(scopes)
        self.claims = claims

    # -- response side --------------------------------------------------------------------

    def response_header(self, name: str) -> str | None:
        """First value of response header ``name`` (lower-case), once the response started."""
        return None

    def add_response_header(self, name: str, value: str) -> None:
        """Add a header to the response (and to an early answer)."""
        pair = (name.lower().encode("latin-1"), value.encode("latin-1"))
        if self._added_headers is None:
            self._added_headers = [pair]
        else:
            self._added_headers.append(pair)

    def _add_header_pair(self, pair: tuple[bytes, bytes]) -> None:
        """:meth:`add_response_header` with a lower-case name and value already encoded."""
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


class Policy:
    """Base class of policies: one concern, no knowledge of the protocol.

    Override ``enter`` (decide, free of network I/O on the async path) and ``exit``
    (record). A policy whose storage does I/O overrides ``aenter``/``aexit`` too: the
    async drivers call those, the sync drivers (WSGI, sync httpx) call ``enter``/``exit``.
    ``enter`` may return a :class:`~kitmw.errors.Rejection` to answer early; ``exit``
    runs for every policy whose ``enter`` ran, in reverse order, even on errors.
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

    # -- helpers drivers use to skip what a policy does not override ------------------

    @classmethod
    def _overrides(cls, method: str) -> bool:
        return getattr(cls, method) is not getattr(Policy, method)


def _join_keys(policies: Iterable[Policy]) -> tuple[Hashable, ...]:
    """Each policy's :attr:`Policy.join_key` (for the drivers), checked to be hashable."""
    keys = []
    for policy in policies:
        key = policy.join_key
        try:
            hash(key)
        except TypeError:
            name = type(policy).__name__
            raise TypeError(f"{name}.join_key: expected a hashable value, got {key!r}") from None
        keys.append(key)
    return tuple(keys)
