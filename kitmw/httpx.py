"""httpx transports with Go kit's client-side concerns (sync and async).

::

    import httpx, kitmw.httpx

    client = httpx.Client(transport=kitmw.httpx.Transport(
        access_log=True, metrics=True, tracing=True,
        breaker=True, ratelimit="50/second", retry=True,
        instances=["http://10.0.0.1:8000", "http://10.0.0.2:8000"],
    ), base_url="http://10.0.0.1:8000", timeout=5)

Order per call, outermost first: tracing → access log → metrics → rate limit →
balancing → retry → breaker (per origin or instance) → the wrapped transport
(``docs/client.md`` explains why). Errors kitmw raises subclass httpx's own tree::

    httpx.TransportError
    ├── kitmw.httpx.BreakerOpen   (also kitmw.errors.BreakerOpen)  no request was sent
    └── kitmw.httpx.RateLimited   (also kitmw.errors.RateLimited)  no request was sent

:mod:`kitmw.httpx2` is the same driver bound to httpx2. Importing ``kitmw`` does not
import httpx; importing this module does.
"""

from __future__ import annotations

import httpx

from . import errors
from ._client import OPTIONS_DOC, AsyncTransportBase, ClientExchange, SyncTransportBase, bind

__all__ = ["AsyncTransport", "BreakerOpen", "ClientExchange", "RateLimited", "Transport"]


class BreakerOpen(errors.BreakerOpen, httpx.TransportError):
    """The upstream's breaker is open; no request was sent (an ``httpx.TransportError``)."""

    def __init__(
        self,
        message: str = "circuit breaker is open",
        *,
        retry_after: float = 0.0,
        name: str = "",
        request: httpx.Request | None = None,
    ) -> None:
        errors.BreakerOpen.__init__(self, message, retry_after=retry_after, name=name)
        self._request = request


class RateLimited(errors.RateLimited, httpx.TransportError):
    """A client rate limit refused the call; no request was sent (an ``httpx.TransportError``)."""

    def __init__(
        self, message: str = "rate limited", *, retry_after: float = 0.0, request: httpx.Request | None = None
    ) -> None:
        errors.RateLimited.__init__(self, message, retry_after=retry_after)
        self._request = request


_LIB = bind(httpx, BreakerOpen, RateLimited)


class Transport(SyncTransportBase, httpx.BaseTransport):
    """A sync httpx transport running kitmw's client concerns around ``transport``.

    Every option is keyword-only and validated here (:class:`kitmw.errors.ConfigError`
    naming the option); each concern is ``True``, a dict of options, or a
    policy/primitive object.
    """

    _lib = _LIB


class AsyncTransport(AsyncTransportBase, httpx.AsyncBaseTransport):
    """The async twin of :class:`Transport` (same options)."""

    _lib = _LIB


Transport.__doc__ = (Transport.__doc__ or "") + OPTIONS_DOC
AsyncTransport.__doc__ = (AsyncTransport.__doc__ or "") + OPTIONS_DOC
