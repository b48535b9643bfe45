"""Concurrency limits: at most N exchanges in flight, static or adaptive (a bulkhead).

* :class:`ConcurrencyPolicy` (what ``kitmw.ConcurrencyLimit`` and
  ``stack(concurrency=...)`` run): per service or per route template; 503
  ``{"error": "concurrency_limited"}`` with ``Retry-After``, or a bounded wait.
* :class:`ClientConcurrencyPolicy` (a transport's ``concurrency=``): per upstream origin.
* :class:`EndpointConcurrencyPolicy` (``kitmw.endpoint(concurrency=...)``).
* The limiter (:class:`Limiter`, who holds a :class:`Slot`) is kept apart from the
  algorithms that move the limit (:class:`FixedLimit`, :class:`AIMDLimit`,
  :class:`GradientLimit`, :class:`WindowedLimit`), as in Netflix's concurrency-limits.
"""

from __future__ import annotations

from ..errors import ConcurrencyLimited
from ._algorithms import AIMDLimit, FixedLimit, GradientLimit, LimitAlgorithm, WindowedLimit, algorithm
from ._limiter import Limiter, Slot
from ._options import ClientConcurrencyOptions, ConcurrencyOptions, EndpointConcurrencyOptions
from ._policy import ALL, OTHER, ClientConcurrencyPolicy, ConcurrencyPolicy, EndpointConcurrencyPolicy

__all__ = [
    "ALL",
    "OTHER",
    "AIMDLimit",
    "ClientConcurrencyOptions",
    "ClientConcurrencyPolicy",
    "ConcurrencyLimited",
    "ConcurrencyOptions",
    "ConcurrencyPolicy",
    "EndpointConcurrencyOptions",
    "EndpointConcurrencyPolicy",
    "FixedLimit",
    "GradientLimit",
    "LimitAlgorithm",
    "Limiter",
    "Slot",
    "WindowedLimit",
    "algorithm",
]
