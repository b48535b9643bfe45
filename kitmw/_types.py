"""Protocol type aliases shared by every module (ASGI, WSGI, clocks)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

__all__ = [
    "ASGIApp",
    "Clock",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "StartResponse",
    "WSGIApp",
    "WSGIEnviron",
    "is_asgi",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WSGIEnviron = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

#: A monotonic clock in seconds; injectable so tests never sleep.
Clock = Callable[[], float]


def is_asgi(app: Any) -> bool:
    """True if ``app`` looks like an ASGI application (an async callable).

    Here, not in :mod:`kitmw.asgi`, so that ``stack()`` tells a WSGI app without loading
    the ASGI driver (and Starlette) for it.
    """
    if inspect.iscoroutinefunction(app):
        return True
    call = type(app).__call__ if callable(app) else None
    return call is not None and inspect.iscoroutinefunction(call)
