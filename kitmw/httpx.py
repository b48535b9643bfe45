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
from ._client import (
    OPTIONS_DOC,
    AsyncTransportBase,
    AsyncTransportOptions,
    LibraryError,
    SyncTransportBase,
    TransportOptions,
    bind,
)

__all__ = [
    "AsyncTransport",
    "AsyncTransportOptions",
    "BreakerOpen",
    "ClientExchange",
    "ConcurrencyLimited",
    "DeadlineExceeded",
    "RateLimited",
    "Transport",
    "TransportOptions",
]


class BreakerOpen(LibraryError, errors.BreakerOpen, httpx.TransportError):
    """The upstream's breaker is open; no request was sent (an ``httpx.TransportError``)."""


class RateLimited(LibraryError, errors.RateLimited, httpx.TransportError):
    """A client rate limit refused the call; no request was sent (an ``httpx.TransportError``)."""


class ConcurrencyLimited(LibraryError, errors.ConcurrencyLimited, httpx.TransportError):
    """Every slot of a client concurrency limit was taken; no request was sent."""


class DeadlineExceeded(LibraryError, errors.DeadlineExceeded, httpx.TimeoutException):
    """The call's deadline passed (an ``httpx.TimeoutException`` and a ``TimeoutError``)."""


_LIB = bind(httpx, BreakerOpen, RateLimited, ConcurrencyLimited, DeadlineExceeded)
ClientExchange = _LIB.Exchange


class Transport(SyncTransportBase, httpx.BaseTransport):
    """A sync httpx transport running kitmw's client concerns around ``transport``.

    Every option is keyword-only, typed (:class:`TransportOptions`: editors complete
    them, type checkers reject a misspelled one) and validated here
    (:class:`kitmw.errors.ConfigError` naming the option).
    """

    _lib = _LIB


class AsyncTransport(AsyncTransportBase, httpx.AsyncBaseTransport):
    """The async twin of :class:`Transport` (same options)."""

    _lib = _LIB


Transport.__doc__ = (Transport.__doc__ or "") + OPTIONS_DOC
AsyncTransport.__doc__ = (AsyncTransport.__doc__ or "") + OPTIONS_DOC
