"""Circuit breaking: pybreaker's state machine, async-safe, optionally shared through Redis.

* :class:`Breaker` is the protocol-neutral primitive: ``acquire()`` a :class:`Permit`
  (or :class:`~kitmw.errors.BreakerOpen`), make the call, ``release(permit, failed=...)``;
  ``aacquire``/``arelease`` on asyncio. Server policies and httpx transports both use it.
* :class:`BreakerPolicy` answers 503 ``circuit_open`` with ``Retry-After`` on the server.
* :class:`ClientBreakerPolicy` (httpx transports, one breaker per upstream origin) and
  :class:`EndpointBreakerPolicy` (``kitmw.endpoint``, one per endpoint) refuse calls
  while open, raised as :class:`~kitmw.errors.BreakerOpen`.
* :func:`get_breaker` / :class:`BreakerRegistry` share one breaker by name in a process;
  ``storage="redis://..."`` shares one state by name across processes.
"""

from __future__ import annotations

from ._client import ClientBreakerPolicy, EndpointBreakerPolicy
from ._core import Breaker
from ._machine import CLOSED, HALF_OPEN, OPEN, Permit, ReportedFailure, guarded_call
from ._options import BreakerOptions, ClientBreakerOptions, EndpointBreakerOptions
from ._policy import (
    OTHER_ROUTES,
    ROUTE_OPTIONS,
    BreakerPolicy,
    check_route_options,
    default_is_failure,
    default_name,
)
from ._registry import BreakerRegistry, default_registry, get_breaker

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "OTHER_ROUTES",
    "ROUTE_OPTIONS",
    "Breaker",
    "BreakerOptions",
    "BreakerPolicy",
    "BreakerRegistry",
    "ClientBreakerOptions",
    "ClientBreakerPolicy",
    "EndpointBreakerOptions",
    "EndpointBreakerPolicy",
    "Permit",
    "ReportedFailure",
    "check_route_options",
    "default_is_failure",
    "default_name",
    "default_registry",
    "get_breaker",
    "guarded_call",
]
