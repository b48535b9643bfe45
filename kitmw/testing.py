"""Helpers for users' own tests: exchanges, scopes, environs, a fake clock, log capture.

Policies are plain objects, so they can be tested without a server::

    from kitmw.testing import FakeClock, make_exchange
    from kitmw.breaker import BreakerPolicy

    clock = FakeClock()
    policy = BreakerPolicy(fail_max=1, reset_timeout=10, clock=clock)
    ex = make_exchange("GET", "/orders")
    policy.enter(ex)
    ex.status = 500
    policy.exit(ex)
    assert policy.enter(make_exchange("GET", "/orders")).status == 503

What is here:

* :class:`FakeClock`: monotonic seconds that move only when told to
  (``clock.advance(30)``, or ``clock.now = ...``), for every ``clock=`` option
  (breaker, timeout, concurrency, retry, JWT leeway: ``FakeClock(time.time())``).
* :class:`NeutralExchange`: an exchange with no protocol behind it, built from
  keywords: ``headers`` (a mapping, a value may be a list for a repeated header, or
  (name, value) pairs), ``client`` (the peer address), ``query``, ``route`` (the
  template a router would match), ``mount_prefix`` (ASGI ``root_path`` / WSGI
  ``SCRIPT_NAME``; ``path`` is the full path, starting with it), ``host``,
  ``scheme``, ``principal``/``scopes`` (what auth would have set), and the outcome a
  driver records: ``status``, ``error``, ``response_headers``, ``result``,
  ``duration`` (seconds: sets ``start_ns``/``end_ns``), ``deadline``.
* One class per side, as the drivers make them: :class:`NeutralExchange`
  (``side == "server"``), :class:`NeutralClientExchange` (``"client"``: ``path`` may
  be a whole URL, which fills ``scheme``, ``host`` (``host:port``, default port filled
  in, as the httpx driver does), ``url`` and ``query``; ``set_request_header`` records
  into :attr:`NeutralClientExchange.sent_headers`) and
  :class:`NeutralEndpointExchange` (``"endpoint"``: ``path`` is the endpoint's name
  and its route, ``method`` ``"CALL"``, ``arguments`` for key functions).
  :func:`make_exchange` picks one with ``side=``. Their ``protocol`` is
  ``"neutral"``: no driver made them.
* :func:`asgi_scope` and :func:`wsgi_environ`: what a server would hand an app, to
  call a wrapped app (or build the drivers' own exchanges) directly.
* :func:`capture_logs`: the records of a logger for a block (``kitmw.access``,
  ``kitmw.client``, ``kitmw.endpoint``).

A policy is driven with them as a driver would: ``enter(ex)``, then set the outcome
(``ex.status``, ``ex.error``) and ``exit(ex)``; an ``around`` through
:func:`kitmw.chain.compile_chain` (see ``docs/writing-policies.md``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .exchange import Exchange

__all__ = [
    "FakeClock",
    "NeutralClientExchange",
    "NeutralEndpointExchange",
    "NeutralExchange",
    "asgi_scope",
    "capture_logs",
    "make_exchange",
    "wsgi_environ",
]

Headers = Mapping[str, "str | Iterable[str]"] | Iterable[tuple[str, str]]

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: ``start_ns`` of an exchange given a ``duration`` (any value will do: not 0, "not ended").
_START_NS = 1_000_000_000


class FakeClock:
    """A monotonic clock for ``clock=`` options that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _pairs(headers: Headers) -> list[tuple[str, str]]:
    """(lower-case name, value) pairs; a mapping's list value is a repeated header."""
    if not isinstance(headers, Mapping):
        return [(k.lower(), v) for k, v in headers]
    pairs: list[tuple[str, str]] = []
    for key, value in headers.items():
        values = [value] if isinstance(value, str) else list(value)
        pairs.extend((key.lower(), v) for v in values)
    return pairs


class NeutralExchange(Exchange):
    """An exchange with no protocol behind it: everything given directly (server side).

    See the module docstring for the keywords; each one is what a driver would fill in
    from its protocol, and ``status``/``error``/``duration``/``response_headers`` what
    it records once the exchange is over.
    """

    __slots__ = (
        "_client",
        "_headers",
        "_host",
        "_mount_prefix",
        "_query",
        "_response_headers",
        "_route_template",
        "_scheme",
        "result",
    )

    protocol = "neutral"

    def __init__(
        self,
        method: str = "GET",
        path: str = "/",
        *,
        headers: Headers = (),
        client: str | None = "127.0.0.1",
        query: str = "",
        route: str | None = None,
        mount_prefix: str = "",
        scheme: str = "http",
        host: str | None = None,
        principal: str | None = None,
        scopes: Iterable[str] = (),
        status: int = 0,
        error: BaseException | None = None,
        response_headers: Headers = (),
        result: Any = None,
        duration: float | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__(method, path)
        self._headers = _pairs(headers)
        self._client = client
        self._query = query
        self._route_template = route
        self._mount_prefix = mount_prefix
        self._scheme = scheme
        self._host = host
        self._response_headers = _pairs(response_headers)
        if principal is not None:
            self.set_user(principal, scopes)
        self.status = status
        self.error = error
        #: What the call returned (the endpoint side's ``result``; the client's response).
        self.result = result
        self.deadline = deadline
        if duration is not None:
            self.start_ns = _START_NS
            self.end_ns = _START_NS + round(duration * 1e9)

    def header(self, name: str) -> str | None:
        for key, value in self._headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self._headers if k == name]

    def header_names(self) -> list[str]:
        return [k for k, _ in self._headers]

    @property
    def client(self) -> str | None:
        return self._client

    @property
    def query(self) -> str:
        return self._query

    @property
    def scheme(self) -> str:
        return self._scheme

    @property
    def host(self) -> str:
        host = self._host
        return host if host is not None else (self.header("host") or "")

    @property
    def mount_prefix(self) -> str:
        return self._mount_prefix

    def _resolve_route(self) -> str | None:
        return self._route_template

    def response_header(self, name: str) -> str | None:
        for key, value in self._response_headers:
            if key == name:
                return value
        return None

    def set_response_headers(self, headers: Headers) -> None:
        """Replace the response headers (what an upstream or the app answered with)."""
        self._response_headers = _pairs(headers)


class NeutralClientExchange(NeutralExchange):
    """An outgoing call as the httpx driver presents it (``side == "client"``).

    ``path`` may be a whole URL (``"https://api.example/v1/items?id=3"``): it gives
    ``scheme``, ``host`` (``"api.example:443"``: default port filled in), ``url``
    (no query, no user info) and ``query``. ``set_request_header`` (propagation)
    sets the header on the request and records it in :attr:`sent_headers`;
    ``response`` is an alias of ``result``.
    """

    __slots__ = ("_url", "sent_headers")

    side = "client"

    def __init__(self, method: str = "GET", path: str = "/", **options: Any) -> None:
        url = None
        if "://" in path:
            parts = urlsplit(path)
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
            name = parts.hostname or ""
            options.setdefault("scheme", parts.scheme)
            options.setdefault("host", f"[{name}]:{port}" if ":" in name else f"{name}:{port}")
            options.setdefault("query", parts.query)
            netloc = name if parts.port is None else f"{name}:{parts.port}"
            url = f"{parts.scheme}://{netloc}{parts.path or '/'}"
            path = parts.path or "/"
        options.setdefault("client", None)
        super().__init__(method, path, **options)
        self._url = url
        #: Headers the policies set on the outgoing request (lower-case name -> value).
        self.sent_headers: dict[str, str] = {}

    @property
    def url(self) -> str:
        return self._url if self._url is not None else f"{self.scheme}://{self.host}{self.path}"

    @property
    def response(self) -> Any:
        return self.result

    def set_request_header(self, name: str, value: str) -> None:
        key = name.lower()
        self.sent_headers[key] = value
        self._headers = [(k, v) for k, v in self._headers if k != key] + [(key, value)]


class NeutralEndpointExchange(NeutralExchange):
    """A call of a :func:`kitmw.endpoint` function as that driver presents it
    (``side == "endpoint"``): ``path`` is the endpoint's name, and its route unless
    ``route`` says otherwise; ``arguments`` the call's arguments by parameter name."""

    __slots__ = ("arguments",)

    side = "endpoint"

    def __init__(
        self,
        method: str = "CALL",
        path: str = "endpoint",
        *,
        arguments: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        options.setdefault("route", path)
        options.setdefault("client", None)
        super().__init__(method, path, **options)
        self.arguments: dict[str, Any] = dict(arguments or {})

    @property
    def endpoint(self) -> str:
        return self.path

    @property
    def outcome(self) -> str:
        """``"rejected"``, ``"error"`` or ``"ok"``, as :class:`kitmw.endpoint.EndpointExchange` says."""
        if self.rejection is not None:
            return "rejected"
        return "ok" if self.error is None else "error"


_SIDES: dict[str, type[NeutralExchange]] = {
    "server": NeutralExchange,
    "client": NeutralClientExchange,
    "endpoint": NeutralEndpointExchange,
}


def make_exchange(
    method: str = "GET", path: str = "/", *, side: str = "server", **options: Any
) -> NeutralExchange:
    """A neutral exchange of ``side`` (``"server"``, ``"client"`` or ``"endpoint"``) with
    the keywords of :class:`NeutralExchange` (``headers=``, ``client=``, ``route=``, ...)."""
    try:
        cls = _SIDES[side]
    except KeyError:
        raise ConfigError(f"side: expected one of {', '.join(_SIDES)}, got {side!r}") from None
    return cls(method, path, **options)


def asgi_scope(
    method: str = "GET",
    path: str = "/",
    *,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    query: str = "",
    client: tuple[str, int] = ("127.0.0.1", 50000),
    root_path: str = "",
) -> dict[str, Any]:
    """An HTTP ASGI scope as a server would build it (``root_path``: the mount prefix,
    which ``path`` starts with, as ASGI servers give it)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "root_path": root_path,
        "query_string": query.encode("latin-1"),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in items],
        "client": client,
        "server": ("127.0.0.1", 8000),
    }


def wsgi_environ(
    method: str = "GET",
    path: str = "/",
    *,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    query: str = "",
    remote_addr: str = "127.0.0.1",
    script_name: str = "",
) -> dict[str, Any]:
    """A WSGI environ as a server would build it (``script_name``: the mount prefix;
    ``path`` is what comes after it, ``PATH_INFO``)."""
    import io

    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": remote_addr,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        name = key.upper().replace("-", "_")
        if name not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = "HTTP_" + name
        environ[name] = value
    return environ


@contextlib.contextmanager
def capture_logs(
    logger: str = "kitmw.access", level: int = logging.INFO
) -> Iterator[list[logging.LogRecord]]:
    """Collect the records of ``logger`` (and its children) for the block."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    target = logging.getLogger(logger)
    handler = _Keep(level)
    previous = target.level
    target.addHandler(handler)
    if target.level == logging.NOTSET or target.level > level:
        target.setLevel(level)
    try:
        yield records
    finally:
        target.removeHandler(handler)
        target.setLevel(previous)
