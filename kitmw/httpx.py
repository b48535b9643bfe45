"""httpx transports with Go kit's client-side concerns (sync and async).

::

    import httpx, kitmw.httpx

    client = httpx.Client(transport=kitmw.httpx.Transport(
        access_log=True, metrics=True, tracing=True,
        breaker=True, ratelimit="50/second", retry=True,
        instances=["http://10.0.0.1:8000", "http://10.0.0.2:8000"],
    ), base_url="http://10.0.0.1:8000", timeout=5)

The options are the client concerns of :mod:`kitmw.concerns`, run in the canonical
order (tracing → access log → metrics → rate limit → retry → balancing → breaker →
the wrapped transport; ``docs/client.md`` explains why). The errors kitmw raises for
its policies' refusals subclass httpx's own tree::

    httpx.TransportError
    ├── kitmw.httpx.BreakerOpen         (also kitmw.BreakerOpen)          no request was sent
    ├── kitmw.httpx.RateLimited         (also kitmw.RateLimited)          no request was sent
    ├── kitmw.httpx.ConcurrencyLimited  (also kitmw.errors.ConcurrencyLimited)
    └── httpx.TimeoutException
        └── kitmw.httpx.DeadlineExceeded (also kitmw.errors.DeadlineExceeded, TimeoutError)

:mod:`kitmw.httpx2` is the same driver bound to httpx2. Importing ``kitmw`` does not
import httpx; importing this module does.
"""

from __future__ import annotations

import httpx

from . import errors
from ._client import OPTIONS_DOC, AsyncTransportBase, SyncTransportBase, bind

__all__ = [
    "AsyncTransport",
    "BreakerOpen",
    "ClientExchange",
    "ConcurrencyLimited",
    "DeadlineExceeded",
    "RateLimited",
    "Transport",
]


class BreakerOpen(errors.BreakerOpen, httpx.TransportError):
    """The upstream's breaker is open; no request was sent (an ``httpx.TransportError``)."""

    def __init__(
        self,
        message: str = "circuit breaker is open",
        *,
        retry_after: float = 0.0,
        name: str = "",
        rejection: errors.Rejection | None = None,
        request: httpx.Request | None = None,
    ) -> None:
        errors.BreakerOpen.__init__(self, message, retry_after=retry_after, name=name, rejection=rejection)
        self._request = request


class RateLimited(errors.RateLimited, httpx.TransportError):
    """A client rate limit refused the call; no request was sent (an ``httpx.TransportError``)."""

    def __init__(
        self,
        message: str = "rate limited",
        *,
        retry_after: float = 0.0,
        rejection: errors.Rejection | None = None,
        request: httpx.Request | None = None,
    ) -> None:
        errors.RateLimited.__init__(self, message, retry_after=retry_after, rejection=rejection)
        self._request = request


class ConcurrencyLimited(errors.ConcurrencyLimited, httpx.TransportError):
    """Every slot of a client concurrency limit was taken; no request was sent."""

    def __init__(
        self,
        message: str = "concurrency limit reached",
        *,
        retry_after: float = 0.0,
        rejection: errors.Rejection | None = None,
        request: httpx.Request | None = None,
    ) -> None:
        errors.ConcurrencyLimited.__init__(self, message, retry_after=retry_after, rejection=rejection)
        self._request = request


class DeadlineExceeded(errors.DeadlineExceeded, httpx.TimeoutException):
    """The call's deadline passed (an ``httpx.TimeoutException`` and a ``TimeoutError``)."""

    def __init__(
        self,
        message: str = "deadline exceeded",
        *,
        retry_after: float = 0.0,
        rejection: errors.Rejection | None = None,
        request: httpx.Request | None = None,
    ) -> None:
        errors.DeadlineExceeded.__init__(self, message, retry_after=retry_after, rejection=rejection)
        self._request = request


_LIB = bind(httpx, BreakerOpen, RateLimited, ConcurrencyLimited, DeadlineExceeded)
ClientExchange = _LIB.Exchange


class Transport(SyncTransportBase, httpx.BaseTransport):
    """A sync httpx transport running kitmw's client concerns around ``transport``.

    Every option is keyword-only and validated here (:class:`kitmw.errors.ConfigError`
    naming the option).
    """

    _lib = _LIB


class AsyncTransport(AsyncTransportBase, httpx.AsyncBaseTransport):
    """The async twin of :class:`Transport` (same options)."""

    _lib = _LIB


Transport.__doc__ = (Transport.__doc__ or "") + OPTIONS_DOC
AsyncTransport.__doc__ = (AsyncTransport.__doc__ or "") + OPTIONS_DOC
