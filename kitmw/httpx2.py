"""httpx2 transports with Go kit's client-side concerns: :mod:`kitmw.httpx` bound to httpx2.

httpx2 continues httpx's design under its own module name (``import httpx2``), with its
own classes and exception tree. These transports are the same driver as
:mod:`kitmw.httpx`, with the same options; the errors they raise subclass httpx2's::

    httpx2.TransportError
    ├── kitmw.httpx2.BreakerOpen         (also kitmw.BreakerOpen)          no request was sent
    ├── kitmw.httpx2.RateLimited         (also kitmw.RateLimited)          no request was sent
    ├── kitmw.httpx2.ConcurrencyLimited  (also kitmw.errors.ConcurrencyLimited)
    └── httpx2.TimeoutException
        └── kitmw.httpx2.DeadlineExceeded (also kitmw.errors.DeadlineExceeded, TimeoutError)

::

    client = httpx2.Client(transport=kitmw.httpx2.Transport(retry=True, breaker=True))
"""

from __future__ import annotations

import httpx2

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


class BreakerOpen(errors.BreakerOpen, httpx2.TransportError):
    """The upstream's breaker is open; no request was sent (an ``httpx2.TransportError``)."""

    def __init__(
        self,
        message: str = "circuit breaker is open",
        *,
        retry_after: float = 0.0,
        name: str = "",
        rejection: errors.Rejection | None = None,
        request: httpx2.Request | None = None,
    ) -> None:
        errors.BreakerOpen.__init__(self, message, retry_after=retry_after, name=name, rejection=rejection)
        self._request = request


class RateLimited(errors.RateLimited, httpx2.TransportError):
    """A client rate limit refused the call; no request was sent (an ``httpx2.TransportError``)."""

    def __init__(
        self,
        message: str = "rate limited",
        *,
        retry_after: float = 0.0,
        rejection: errors.Rejection | None = None,
        request: httpx2.Request | None = None,
    ) -> None:
        errors.RateLimited.__init__(self, message, retry_after=retry_after, rejection=rejection)
        self._request = request


class ConcurrencyLimited(errors.ConcurrencyLimited, httpx2.TransportError):
    """Every slot of a client concurrency limit was taken; no request was sent."""

    def __init__(
        self,
        message: str = "concurrency limit reached",
        *,
        retry_after: float = 0.0,
        rejection: errors.Rejection | None = None,
        request: httpx2.Request | None = None,
    ) -> None:
        errors.ConcurrencyLimited.__init__(self, message, retry_after=retry_after, rejection=rejection)
        self._request = request


class DeadlineExceeded(errors.DeadlineExceeded, httpx2.TimeoutException):
    """The call's deadline passed (an ``httpx2.TimeoutException`` and a ``TimeoutError``)."""

    def __init__(
        self,
        message: str = "deadline exceeded",
        *,
        retry_after: float = 0.0,
        rejection: errors.Rejection | None = None,
        request: httpx2.Request | None = None,
    ) -> None:
        errors.DeadlineExceeded.__init__(self, message, retry_after=retry_after, rejection=rejection)
        self._request = request


_LIB = bind(httpx2, BreakerOpen, RateLimited, ConcurrencyLimited, DeadlineExceeded)
ClientExchange = _LIB.Exchange


class Transport(SyncTransportBase, httpx2.BaseTransport):
    """A sync httpx2 transport running kitmw's client concerns around ``transport``.

    Every option is keyword-only and validated here (:class:`kitmw.errors.ConfigError`
    naming the option).
    """

    _lib = _LIB


class AsyncTransport(AsyncTransportBase, httpx2.AsyncBaseTransport):
    """The async twin of :class:`Transport` (same options)."""

    _lib = _LIB


Transport.__doc__ = (Transport.__doc__ or "") + OPTIONS_DOC
AsyncTransport.__doc__ = (AsyncTransport.__doc__ or "") + OPTIONS_DOC
