"""``limit()``: kitmw's rate limit as a dependency of one route."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import Depends
from starlette.requests import HTTPConnection
from starlette.responses import Response

from ..asgi import exchange_of
from ..concerns import check_storage_uri, construct
from ..errors import ConfigError
from ..exchange import Exchange
from ..ratelimit import RateLimitPolicy
from ._common import HTTPRejected, exchange

__all__ = ["limit"]


class _Limit:
    """The callable behind :func:`limit`: one :class:`~kitmw.ratelimit.RateLimitPolicy`
    per route it guards, each with its own budget (its own namespace)."""

    def __init__(self, options: dict[str, Any]) -> None:
        for name in ("routes", "exclude_paths"):
            if name in options:
                raise ConfigError(f"limit: {name!r} does not apply: the limit is the route's own")
        if "storage" in options:
            check_storage_uri(options["storage"], "limit")
        namespace = options.get("namespace", "kitmw")
        construct("limit", RateLimitPolicy, options)  # every option checked now
        self._options = options
        self._namespace = namespace if isinstance(namespace, str) else "kitmw"
        self._routes: dict[str, tuple[Callable[[Exchange], Any], bool]] = {}
        self._lock = threading.Lock()

    def _for(self, route: str) -> tuple[Callable[[Exchange], Any], bool]:
        with self._lock:
            found = self._routes.get(route)
            if found is None:
                namespace = f"{self._namespace}/{quote(route, safe='')}"  # one budget per route
                policy = RateLimitPolicy(**{**self._options, "namespace": namespace})
                hooks = policy.hooks("asgi", is_async=True)
                assert hooks.enter is not None
                found = self._routes[route] = (hooks.enter, hooks.enter_awaits)
            return found

    async def __call__(self, request: HTTPConnection, response: Response) -> None:
        scope = request.scope
        layered = exchange_of(scope)
        ex = layered if layered is not None else exchange(scope)
        route = ex.route_label()
        found = self._routes.get(route)
        enter, awaits = found if found is not None else self._for(route)
        added = ex.added_headers
        before = len(added) if added else 0
        refused = await enter(ex) if awaits else enter(ex)
        if refused is not None:
            raise HTTPRejected(refused)
        if layered is None and ex.added_headers:
            # No layer adds them to the response: FastAPI does, from this response object.
            for name, value in ex.added_headers[before:]:
                response.headers.append(name.decode("latin-1"), value.decode("latin-1"))


def limit(
    rate: str,
    *,
    key: str | Callable[[Exchange], str | None] = "client",
    storage: str = "memory://",
    strategy: str = "fixed-window",
    headers: bool = True,
    **options: Any,
) -> Any:
    """A dependency limiting one route: ``dependencies=[limit("5/minute")]``.

    The rate limit of :class:`kitmw.ratelimit.RateLimitPolicy` with its options (``key``
    ``"client"``, ``"header:X-API-Key"``, ``"principal"``, ``"route"`` or a callable;
    ``storage`` a ``limits`` URI; ``strategy``; ``fail_open``, ``trusted_proxies``, ``cost``,
    ``methods``, ...): the same 429 with ``Retry-After``, ``RateLimit`` and
    ``RateLimit-Policy`` (also on allowed responses unless ``headers=False``). Each route
    it is declared on has its own budget, also on a shared storage. ``key="principal"``
    reads the caller kitmw's auth or an earlier :func:`require` found.
    """
    given = {"limit": rate, "key": key, "storage": storage, "strategy": strategy, "headers": headers}
    return Depends(_Limit({**given, **options}))
