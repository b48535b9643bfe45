"""httpx2 transports with Go kit's client-side concerns: :mod:`kitmw.httpx` bound to httpx2.

httpx2 continues httpx's design under its own module name (``import httpx2``), with its
own classes and exception tree. These transports are the same driver as
:mod:`kitmw.httpx`, with the same options; the errors they raise subclass httpx2's::

    httpx2.TransportError
    ├── kitmw.httpx2.BreakerOpen   (also kitmw.errors.BreakerOpen)  no request was sent
    └── kitmw.httpx2.RateLimited   (also kitmw.errors.RateLimited)  no request was sent

::

    client = httpx2.Client(transport=kitmw.httpx2.Transport(retry=True, breaker=True))
"""

from __future__ import annotations

import httpx2

from . import errors
from ._client import OPTIONS_DOC, AsyncTransportBase, ClientExchange, SyncTransportBase, bind

__all__ = ["AsyncTransport", "BreakerOpen", "ClientExchange", "RateLimited", "Transport"]


class BreakerOpen(errors.BreakerOpen, httpx2.TransportError):
    """The upstream's breaker is open; no request was sent (an ``httpx2.TransportError``)."""

    def __init__(
        self,
        message: str = "circuit breaker is open",
        *,
        retry_after: float = 0.0,
        name: str = "",
        request: httpx2.Request | None = None,
    ) -> None:
        errors.BreakerOpen.__init__(self, message, retry_after=retry_after, name=name)
        self._request = request


class RateLimited(errors.RateLimited, httpx2.TransportError):
    """A client rate limit refused the call; no request was sent (an ``httpx2.TransportError``)."""

    def __init__(
        self,
        message: str = "rate limited",
        *,
        retry_after: float = 0.0,
        request: httpx2.Request | None = None,
    ) -> None:
        errors.RateLimited.__init__(self, message, retry_after=retry_after)
        self._request = request


_LIB = bind(httpx2, BreakerOpen, RateLimited)


class Transport(SyncTransportBase, httpx2.BaseTransport):
    """A sync httpx2 transport running kitmw's client concerns around ``transport``."""

    _lib = _LIB


class AsyncTransport(AsyncTransportBase, httpx2.AsyncBaseTransport):
    """The async twin of :class:`Transport` (same options)."""

    _lib = _LIB


Transport.__doc__ = (Transport.__doc__ or "") + OPTIONS_DOC
AsyncTransport.__doc__ = (AsyncTransport.__doc__ or "") + OPTIONS_DOC
