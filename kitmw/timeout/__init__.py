"""Deadlines: Go kit's ``context`` deadline for requests, outgoing calls and functions.

* :class:`TimeoutPolicy` (what ``kitmw.Timeout`` and ``stack(timeout=...)`` run): a
  deadline per request; on ASGI the application is cancelled at it and the client
  gets 504 ``{"error": "timeout"}``; on WSGI it is exposed and propagated only.
* :class:`ClientTimeoutPolicy` (a transport's ``timeout=``): a total deadline for a
  call, attempts and waits included, never later than the request's.
* :class:`EndpointTimeoutPolicy` (``kitmw.endpoint(timeout=...)``).
* :func:`remaining`, :func:`deadline`: the budget left to the code that runs now;
  :func:`within` gives a block a deadline of its own.
"""

from __future__ import annotations

from ..errors import DeadlineExceeded
from ._context import deadline, remaining, within
from ._options import ClientTimeoutOptions, EndpointTimeoutOptions, TimeoutOptions
from ._policy import ClientTimeoutPolicy, EndpointTimeoutPolicy, TimeoutPolicy

__all__ = [
    "ClientTimeoutOptions",
    "ClientTimeoutPolicy",
    "DeadlineExceeded",
    "EndpointTimeoutOptions",
    "EndpointTimeoutPolicy",
    "TimeoutOptions",
    "TimeoutPolicy",
    "deadline",
    "remaining",
    "within",
]
