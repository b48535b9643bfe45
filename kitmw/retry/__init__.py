"""Retries: which attempts are retried, how long to wait, a retry budget, and the policies.

* :class:`Retry` and :class:`RetryBudget` hold the decisions (free of I/O).
* :class:`ClientRetryPolicy` retries ``kitmw.httpx`` calls (the transports' ``retry``
  option); :class:`EndpointRetryPolicy` retries ``kitmw.endpoint`` functions. Both are
  one ``around`` generator run by the sync and the async drivers.

Go kit's ``lb.Retry`` retries any error until a count or a timeout runs out, with no
backoff, no idempotency check and no budget (go-kit #341, #1015). These retry
idempotent methods only (on the client), wait with exponential backoff and full jitter
or as long as ``Retry-After`` asks, stop at an overall ``deadline``, and draw every
retry from a :class:`RetryBudget` so retries cannot multiply an outage (the Finagle /
gRPC retry budget).
"""

from __future__ import annotations

from ._options import ClientRetryOptions, EndpointRetryOptions
from ._policy import GATE, ClientRetryPolicy, EndpointRetryPolicy
from ._retry import IDEMPOTENT_METHODS, RETRY_STATUSES, Retry, RetryBudget, parse_retry_after

__all__ = [
    "GATE",
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "ClientRetryOptions",
    "ClientRetryPolicy",
    "EndpointRetryOptions",
    "EndpointRetryPolicy",
    "Retry",
    "RetryBudget",
    "parse_retry_after",
]
