"""The request context every log record can carry: request id, trace id, span id, principal.

One :class:`~contextvars.ContextVar` holds the *current context object*: while kitmw runs
a request it is the request's :class:`~kitmw.exchange.Exchange` itself, so values set by
policies that run later (the principal, found by auth inside the access log) are seen by
every record without another ``set``; :func:`bind_context` binds a plain object with the
same four attributes (background jobs, tests). Each ``set`` is undone with its
``Token``, so nothing leaks from one request into the next one run by the same thread
or task (the structlog ``contextvars`` discipline).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

__all__ = [
    "ACCESS_FIELDS",
    "CLIENT_FIELDS",
    "CONTEXT_FIELDS",
    "ContextFilter",
    "bind_context",
    "current_principal",
    "current_request_id",
    "current_span_id",
    "current_trace_id",
    "structlog_processor",
]

#: Record attributes :class:`ContextFilter` adds to every record.
CONTEXT_FIELDS = ("request_id", "trace_id", "span_id", "principal")

#: Attributes :class:`~kitmw.logging.AccessLogPolicy` puts on its record (plus ``query`` with ``log_query``).
ACCESS_FIELDS = (
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "client",
    "user_agent",
    "request_id",
    "trace_id",
    "span_id",
    "principal",
    "error",
    "error_message",
)

#: Attributes :class:`~kitmw.logging.ClientLogPolicy` puts on its record.
CLIENT_FIELDS = (
    "method",
    "url",
    "host",
    "status",
    "duration_ms",
    "attempts",
    "request_id",
    "error",
    "error_message",
)


class _Context(Protocol):
    request_id: str | None
    trace_id: str | None
    span_id: str | None
    principal: str | None


_current: ContextVar[_Context | None] = ContextVar("kitmw.request", default=None)

_KEEP: Any = object()


class _Bound:
    __slots__ = CONTEXT_FIELDS

    def __init__(
        self, request_id: str | None, trace_id: str | None, span_id: str | None, principal: str | None
    ) -> None:
        self.request_id = request_id
        self.trace_id = trace_id
        self.span_id = span_id
        self.principal = principal


def current_request_id() -> str | None:
    """The request id of the request being handled, or ``None`` outside a request."""
    ctx = _current.get()
    return None if ctx is None else ctx.request_id


def current_trace_id() -> str | None:
    """The trace id (32 hex) of the request being handled, if tracing is on."""
    ctx = _current.get()
    return None if ctx is None else ctx.trace_id


def current_span_id() -> str | None:
    """The server span id (16 hex) of the request being handled, if tracing is on."""
    ctx = _current.get()
    return None if ctx is None else ctx.span_id


def current_principal() -> str | None:
    """The authenticated principal of the request being handled, once auth found it."""
    ctx = _current.get()
    return None if ctx is None else ctx.principal


@contextmanager
def bind_context(
    *,
    request_id: str | None = _KEEP,
    trace_id: str | None = _KEEP,
    span_id: str | None = _KEEP,
    principal: str | None = _KEEP,
) -> Iterator[None]:
    """Bind context values for the block (a job, a test); unspecified values are kept.

    Outgoing kitmw httpx calls made in the block forward this request id.
    """
    cur = _current.get()
    bound = _Bound(
        (None if cur is None else cur.request_id) if request_id is _KEEP else request_id,
        (None if cur is None else cur.trace_id) if trace_id is _KEEP else trace_id,
        (None if cur is None else cur.span_id) if span_id is _KEEP else span_id,
        (None if cur is None else cur.principal) if principal is _KEEP else principal,
    )
    token = _current.set(bound)
    try:
        yield
    finally:
        _current.reset(token)


def _safe(value: str | None) -> str | None:
    # The principal may come from a header (Basic user name): never let it break a line.
    if value is None or value.isprintable():
        return value
    return value.encode("unicode_escape", "backslashreplace").decode("ascii")


class ContextFilter(logging.Filter):
    """Adds ``request_id``, ``trace_id``, ``span_id`` and ``principal`` to every record.

    Attach it to the *handlers* whose formatters use those attributes (handler filters
    see records from every logger below, the application's own included). Outside a
    request the attributes are ``default``. Attributes already on the record (passed in
    ``extra``) are kept. Never drops a record.

    :param default: value outside a request (``None``; ``"-"`` suits text formats).
    """

    def __init__(self, name: str = "", *, default: Any = None) -> None:
        super().__init__(name)
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        d = record.__dict__
        ctx = _current.get()
        default = self.default
        if ctx is None:
            d.setdefault("request_id", default)
            d.setdefault("trace_id", default)
            d.setdefault("span_id", default)
            d.setdefault("principal", default)
        else:
            d.setdefault("request_id", ctx.request_id or default)
            d.setdefault("trace_id", ctx.trace_id or default)
            d.setdefault("span_id", ctx.span_id or default)
            d.setdefault("principal", _safe(ctx.principal) or default)
        return True


def structlog_processor(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """A structlog processor adding the request context to the event dict (when set)."""
    ctx = _current.get()
    if ctx is not None:
        for key in CONTEXT_FIELDS:
            value = getattr(ctx, key)
            if value is not None:
                event_dict.setdefault(key, value)
    return event_dict
