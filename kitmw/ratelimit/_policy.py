"""The server-side rate-limit policy: key, per-route limits, 429/503 answers, headers."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

from .._paths import PathMatcher
from ..errors import ConfigError, Rejection
from ..exchange import Exchange, Policy
from ._keys import ClientAddress
from ._limiter import Decision, Limiter, on_backend
from ._storage import Backend

__all__ = ["RateLimitPolicy"]

#: Runs of slashes: werkzeug (Flask) serves ``//api/x`` as ``/api/x``, so prefixes must too.
_SLASHES = re.compile(r"//+")

KeyFunc = Callable[[Exchange], "str | None"]


def _header_key(name: str, client: ClientAddress) -> KeyFunc:
    def key(ex: Exchange) -> str | None:
        value = ex.header(name)
        return "key:" + value if value else client(ex)  # no header: limited by address

    return key


def _principal_key(client: ClientAddress) -> KeyFunc:
    def key(ex: Exchange) -> str | None:
        principal = ex.principal
        return "user:" + principal if principal else client(ex)

    return key


def _route_key(ex: Exchange) -> str | None:
    return "route:" + ex.route_label()


def _route_id(route: str) -> str:
    # Escaped: "/" separates limits' key parts, and braces would be a Redis Cluster hash
    # tag putting every client of a templated route on one slot.
    escaped = route.replace("%", "%25").replace("/", "%2F").replace("{", "%7B").replace("}", "%7D")
    return "route:" + escaped


class RateLimitPolicy(Policy):
    """Limit requests per key with ``limits``; answer 429 with ``Retry-After`` and IETF headers.

    :param limit: a ``limits`` string (``"100/minute"``, several with ``;``), or None
        when only ``routes`` are limited.
    :param key: ``"client"`` (socket peer, or the client a trusted proxy names),
        ``"header:X-API-Key"`` (the header's value; requests without it are keyed by
        address), ``"principal"`` (set by auth; runs after auth in ``stack()``),
        ``"route"`` (one budget per route for everybody), or a callable on the exchange
        returning a key, or None to exempt the request.
    :param storage: a ``limits`` storage URI (default ``memory://``, per process).
    :param strategy: ``fixed-window``, ``moving-window``, ``sliding-window-counter``.
    :param trusted_proxies: addresses/CIDRs whose ``X-Forwarded-For``/``Forwarded``
        are believed (default none: the socket peer is the client).
    :param fail_open: storage down: let requests through (True) or answer 503 (False).
    :param exclude_paths: paths neither limited nor counted.
    :param routes: route template or path prefix -> limit string (own budget per route),
        or None to exempt that route.
    :param methods: only these methods are limited (default all).
    :param cost: callable on the exchange giving the request's cost; a fractional cost is
        rounded up (0.5 costs 1), a cost of 0 or less is not limited.
    :param headers: add ``RateLimit``/``RateLimit-Policy`` to allowed responses too.
    :param ipv6_prefix: IPv6 clients share a budget per prefix (default /64).
    :param registry: Prometheus registry for decision/storage-error counters.
    :param storage_timeout: seconds a storage call may take.
    """

    __slots__ = (
        "_cost",
        "_default",
        "_exclude",
        "_headers",
        "_key",
        "_memory",
        "_methods",
        "_only",
        "_policy_pairs",
        "_prefixes",
        "_templates",
        "_unavailable",
        "backend",
        "limit",
        "needs_principal",
    )

    name: ClassVar[str] = "ratelimit"
    shared_options: ClassVar[tuple[str, ...]] = ("exclude_paths", "registry")

    def __init__(
        self,
        *,
        limit: str | None = None,
        key: str | KeyFunc = "client",
        storage: str = "memory://",
        strategy: str = "fixed-window",
        trusted_proxies: Iterable[str] | str = (),
        fail_open: bool = True,
        exclude_paths: Iterable[str] | str | None = (),
        routes: Mapping[str, str | None] | None = None,
        methods: Iterable[str] | None = None,
        cost: Callable[[Exchange], float] | None = None,
        headers: bool = True,
        ipv6_prefix: int = 64,
        registry: Any = None,
        storage_timeout: float = 0.25,
        storage_options: Mapping[str, Any] | None = None,
        proxy_header: str = "auto",
        namespace: str = "kitmw",
        recovery_interval: float = 1.0,
    ) -> None:
        if limit is None and not routes:
            raise ConfigError("limit: a rate string such as '100/minute' is required (or give routes)")
        if routes is not None and not isinstance(routes, Mapping):
            raise ConfigError(f"routes: expected a mapping of route -> limit string or None, got {routes!r}")
        if cost is not None and not callable(cost):
            raise ConfigError(f"cost: expected a callable on the exchange, got {cost!r}")
        client = ClientAddress(
            trusted_proxies=trusted_proxies, ipv6_prefix=ipv6_prefix, proxy_header=proxy_header
        )
        self._key = self._key_func(key, client)
        self.needs_principal = key == "principal"
        self.limit = limit
        self._exclude = PathMatcher(exclude_paths)
        self._methods = None if methods is None else frozenset(self._method_names(methods))
        self._cost = cost
        self._headers = bool(headers)

        self._memory = _is_memory(storage)
        self.backend = Backend(
            storage=storage,
            strategy=strategy,
            fail_open=fail_open,
            storage_timeout=storage_timeout,
            registry=registry,
            side="server",
            storage_options=storage_options,
            recovery_interval=recovery_interval,
        )

        def build(rate: str, ns: str, option: str) -> Limiter:
            return on_backend(
                self.backend, limit=rate, strategy=strategy, registry=registry, namespace=ns, option=option
            )

        self._default: Limiter | None = None if limit is None else build(limit, namespace, "limit")
        templates: dict[str, Limiter | None] = {}
        prefixes: list[tuple[str, Limiter | None]] = []
        for route, rate in (routes or {}).items():
            if not isinstance(route, str) or not route.startswith("/"):
                raise ConfigError(
                    f"routes: each key must be a route template or path starting with '/', got {route!r}"
                )
            if rate is not None and not isinstance(rate, str):
                raise ConfigError(f"routes: {route!r} must map to a rate string or None, got {rate!r}")
            limiter = (
                None if rate is None else build(rate, f"{namespace}/{_route_id(route)}", f"routes[{route!r}]")
            )
            if route.endswith("*"):
                prefixes.append((route.rstrip("*").rstrip("/"), limiter))
                continue
            templates[route] = limiter
            if "{" not in route and "<" not in route and route.rstrip("/"):
                prefixes.append((route.rstrip("/"), limiter))  # a plain path also covers what is below it
        prefixes.sort(key=lambda p: len(p[0]), reverse=True)
        self._templates = templates
        self._prefixes = tuple(prefixes)
        # RateLimit-Policy is fixed per limiter: encoded once.
        self._policy_pairs = {
            limiter.policy: (b"ratelimit-policy", limiter.policy.encode("latin-1"))
            for limiter in (self._default, *templates.values(), *(p[1] for p in prefixes))
            if limiter is not None
        }
        # One limit for every request (no route limits, exclusions, methods or cost):
        # enter() goes straight to the key and the limiter.
        simple = not templates and not prefixes and not self._exclude and methods is None and cost is None
        self._only = self._default if simple else None
        self._unavailable = Rejection(
            503,
            "unavailable",
            headers=(("Retry-After", str(max(1, int(self.backend.recovery_interval + 0.999)))),),
        )

    @staticmethod
    def _method_names(methods: Iterable[str]) -> list[str]:
        if isinstance(methods, str):
            methods = [methods]
        names = []
        for method in methods:
            if not isinstance(method, str) or not method.isalpha():
                raise ConfigError(f"methods: expected HTTP method names, got {method!r}")
            names.append(method.upper())
        return names

    @staticmethod
    def _key_func(key: Any, client: ClientAddress) -> KeyFunc:
        if callable(key):
            return key  # type: ignore[no-any-return]
        if key == "client":
            return client
        if key == "principal":
            return _principal_key(client)
        if key == "route":
            return _route_key
        if isinstance(key, str) and key.startswith("header:") and len(key) > len("header:"):
            return _header_key(key[len("header:") :].strip().lower(), client)
        raise ConfigError(
            f"key: expected 'client', 'header:<name>', 'principal', 'route' or a callable, got {key!r}"
        )

    # -- per request ----------------------------------------------------------------------

    def _select(self, ex: Exchange) -> Limiter | None:
        """The limiter for this request (per-route limit, the default, or None: exempt)."""
        if not self._prefixes and not self._templates:
            return self._default
        route = ex.route
        if route is not None and route in self._templates:
            return self._templates[route]
        path = ex.path
        if "//" in path:
            path = _SLASHES.sub("/", path)
        for prefix, limiter in self._prefixes:
            if path == prefix or path.startswith(prefix + "/") or not prefix:
                return limiter
        return self._default

    def _plan(self, ex: Exchange) -> tuple[Limiter, str, int] | None:
        if self._exclude and self._exclude(ex.path):
            return None
        if self._methods is not None and ex.method not in self._methods:
            return None
        limiter = self._select(ex)
        if limiter is None:
            return None
        key = self._key(ex)
        if key is None:
            return None
        cost = 1
        if self._cost is not None:
            given = self._cost(ex)
            cost = given if type(given) is int else _whole_cost(given)
            if cost < 1:
                return None
        return limiter, str(key), cost

    def _answer(self, ex: Exchange, decision: Decision) -> Rejection | None:
        if decision.allowed:
            if self._headers and not decision.degraded:
                pair = self._policy_pairs.get(decision.policy)
                if pair is None:
                    pair = (b"ratelimit-policy", decision.policy.encode("latin-1"))
                ex.add_header(pair)
                ex.add_header((b"ratelimit", decision.ratelimit.encode("latin-1")))
            return None
        if decision.degraded:
            return self._unavailable
        return Rejection(429, "rate_limited", headers=decision.headers())

    def enter(self, ex: Exchange) -> Rejection | None:
        limiter = self._only
        if limiter is not None:
            key = self._key(ex)
            if key is None:
                return None
            cost = 1
        else:
            plan = self._plan(ex)
            if plan is None:
                return None
            limiter, key, cost = plan
        if not self._headers:
            return self._answer(ex, limiter.hit(str(key), cost, stats=False))
        # Allowed: the RateLimit value comes encoded, no Decision is built.
        value = limiter.hit_header(str(key), cost)
        if isinstance(value, bytes):
            ex.add_header(self._policy_pairs[limiter.policy])
            ex.add_header((b"ratelimit", value))
            return None
        return self._answer(ex, value)

    @property
    def runs_after(self) -> str | None:  # type: ignore[override]
        """A limit keyed by the principal runs after auth, which finds the principal."""
        return "auth" if self.needs_principal else None

    @property
    def enter_awaits(self) -> bool:
        """In-memory storage does no I/O: the async drivers call ``enter`` (no coroutine per
        request); other storages (Redis…) are awaited through ``aenter``."""
        return not self._memory

    async def aenter(self, ex: Exchange) -> Rejection | None:
        plan = self._plan(ex)
        if plan is None:
            return None
        limiter, key, cost = plan
        return self._answer(ex, await limiter.ahit(key, cost, stats=self._headers))


def _whole_cost(cost: Any) -> int:
    """A cost as a whole number of requests, rounded up: 0.5 costs 1, never 0 (unlimited)."""
    try:
        whole: int = math.ceil(cost)  # floats, Fraction, Decimal
        return whole
    except TypeError:
        raise TypeError(f"cost: the callable must return a number, got {cost!r}") from None
    except (ValueError, OverflowError):
        raise ValueError(f"cost: the callable must return a finite number, got {cost!r}") from None


def _is_memory(storage: Any) -> bool:
    return isinstance(storage, str) and urlsplit(storage.removeprefix("async+")).scheme == "memory"
