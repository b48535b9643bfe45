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


class BreakerOpen(LibraryError, errors.BreakerOpen, httpx2.TransportError):
    """The upstream's breaker is open; no request was sent (an ``httpx2.TransportError``)."""


class RateLimited(LibraryError, errors.RateLimited, httpx2.TransportError):
    """A client rate limit refused the call; no request was sent (an ``httpx2.TransportError``)."""


class ConcurrencyLimited(LibraryError, errors.ConcurrencyLimited, httpx2.TransportError):
    """Every slot of a client concurrency limit was taken; no request was sent."""


class DeadlineExceeded(LibraryError, errors.DeadlineExceeded, httpx2.TimeoutException):
    """The call's deadline passed (an ``httpx2.TimeoutException`` and a ``TimeoutError``)."""


_LIB = bind(httpx2, BreakerOpen, RateLimited, ConcurrencyLimited, DeadlineExceeded)
ClientExchange = _LIB.Exchange


class Transport(SyncTransportBase, httpx2.BaseTransport):
    """A sync httpx2 transport running kitmw's client concerns around ``transport``.

    Every option is keyword-only, typed (:class:`TransportOptions`: editors complete
    them, type checkers reject a misspelled one) and validated here
    (:class:`kitmw.errors.ConfigError` naming the option).
    """

    _lib = _LIB


class AsyncTransport(AsyncTransportBase, httpx2.AsyncBaseTransport):
    """The async twin of :class:`Transport` (same options)."""

    _lib = _LIB


Transport.__doc__ = (Transport.__doc__ or "") + OPTIONS_DOC
AsyncTransport.__doc__ = (AsyncTransport.__doc__ or "") + OPTIONS_DOC
