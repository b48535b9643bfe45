"""The rate-limit policies' options as typed dicts, for editors and type checkers.

``kitmw.RateLimit(app, ...)``, ``stack(ratelimit={...})``, a transport's
``ratelimit={...}`` and ``kitmw.endpoint(..., ratelimit={...})`` take these keys (a
bare string is ``limit``); what each one does is in the policy's docstring (the call
policies pass the :class:`~kitmw.ratelimit.Limiter` options on). tests/test_options.py
keeps them equal to the policies' keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..exchange import Exchange
    from ._limiter import Limiter

__all__ = ["ClientRateLimitOptions", "EndpointRateLimitOptions", "RateLimitOptions"]

#: The ``strategy`` names (:data:`kitmw.ratelimit.STRATEGY_NAMES`).
Strategy = Literal["fixed-window", "moving-window", "sliding-window-counter"]


class _StorageOptions(TypedDict, total=False):
    """What every side passes to its :class:`~kitmw.ratelimit.Limiter` (``limit`` aside)."""

    storage: str
    strategy: Strategy
    fail_open: bool
    storage_timeout: float
    storage_options: Mapping[str, Any] | None
    namespace: str
    recovery_interval: float
    registry: CollectorRegistry | None


class RateLimitOptions(_StorageOptions, total=False):
    """Options of :class:`~kitmw.ratelimit.RateLimitPolicy` (``kitmw.RateLimit``, ``stack(ratelimit=...)``)."""

    limit: str | None
    key: str | Callable[[Exchange], str | None]
    trusted_proxies: Iterable[str] | str
    exclude_paths: Iterable[str] | str | None
    routes: Mapping[str, str | None] | None
    methods: Iterable[str] | None
    cost: Callable[[Exchange], float] | None
    headers: bool
    ipv6_prefix: int
    proxy_header: Literal["auto", "x-forwarded-for", "forwarded"]


class _CallOptions(_StorageOptions, total=False):
    limit: str  # required unless ``limiter`` is given
    max_wait: float
    key: Callable[[Exchange], Any] | None
    sleep: Callable[[float], Any] | None
    limiter: Limiter | None


class ClientRateLimitOptions(_CallOptions, total=False):
    """Options of :class:`~kitmw.ratelimit.ClientRateLimitPolicy` (a transport's ``ratelimit=``)."""

    mode: Literal["delay", "error"]


class EndpointRateLimitOptions(_CallOptions, total=False):
    """Options of :class:`~kitmw.ratelimit.EndpointRateLimitPolicy` (``kitmw.endpoint(ratelimit=...)``)."""

    wait: bool
