"""Rate limiting on ``limits``: a neutral :class:`Limiter` and the server :class:`RateLimitPolicy`.

* :class:`Limiter` (``hit`` / ``ahit`` -> :class:`Decision`) is protocol-neutral; the
  server policy and the httpx client helper both use it.
* :class:`RateLimitPolicy` keys requests (client address through trusted proxies, a
  header, the principal, the route, or a callable), picks per-route limits, and answers
  429 with ``Retry-After`` and the IETF ``RateLimit``/``RateLimit-Policy`` headers, or
  503 when the storage is down and ``fail_open=False``.
* :class:`ClientRateLimitPolicy` (httpx transports, per upstream origin) and
  :class:`EndpointRateLimitPolicy` (``kitmw.endpoint``, per endpoint) wait for their
  slot (Go kit's delaying limiter) or refuse at once (the erroring one).
* :class:`ClientAddress` is the trusted-proxy client-address key on its own.
* :class:`HeapMemoryStorage` is the ``limits`` storage behind ``memory://``: ``limits``'
  in-memory semantics, keys expired from a heap instead of a sweep of every key.

See ``docs/ratelimit.md``.
"""

from __future__ import annotations

from ._client import ClientRateLimitPolicy, EndpointRateLimitPolicy
from ._keys import ClientAddress
from ._limiter import Decision, Limiter
from ._limits import HeapMemoryStorage
from ._options import ClientRateLimitOptions, EndpointRateLimitOptions, RateLimitOptions
from ._policy import RateLimitPolicy
from ._storage import STRATEGY_NAMES

__all__ = [
    "STRATEGY_NAMES",
    "ClientAddress",
    "ClientRateLimitOptions",
    "ClientRateLimitPolicy",
    "Decision",
    "EndpointRateLimitOptions",
    "EndpointRateLimitPolicy",
    "HeapMemoryStorage",
    "Limiter",
    "RateLimitOptions",
    "RateLimitPolicy",
]
