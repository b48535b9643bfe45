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

from ._line import ACCESS_FIELDS, CLIENT_FIELDS, CONTEXT_FIELDS

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
    "printable",
    "request_context",
    "structlog_processor",
]

class _Context(Protocol):
    request_id: str | None
    trace_id: str | None
    span_id: str | None
    principal: str | None


#: The current context object: the exchange of the request being served, or what
#: :func:`bind_context` bound; None outside both.
request_context: ContextVar[_Context | None] = ContextVar("kitmw.request", default=None)

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
    ctx = request_context.get()
    return None if ctx is None else ctx.request_id


def current_trace_id() -> str | None:
    """The trace id (32 hex) of the request being handled, if tracing is on."""
    ctx = request_context.get()
    return None if ctx is None else ctx.trace_id


def current_span_id() -> str | None:
    """The server span id (16 hex) of the request being handled, if tracing is on."""
    ctx = request_context.get()
    return None if ctx is None else ctx.span_id


def current_principal() -> str | None:
    """The authenticated principal of the request being handled, once auth found it."""
    ctx = request_context.get()
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
    cur = request_context.get()
    bound = _Bound(
        (None if cur is None else cur.request_id) if request_id is _KEEP else request_id,
        (None if cur is None else cur.trace_id) if trace_id is _KEEP else trace_id,
        (None if cur is None else cur.span_id) if span_id is _KEEP else span_id,
        (None if cur is None else cur.principal) if principal is _KEEP else principal,
    )
    token = request_context.set(bound)
    try:
        yield
    finally:
        request_context.reset(token)


def printable(value: str | None) -> str | None:
    """``value`` with non-printable characters escaped (CR/LF, controls): a principal may
    come from a header (a Basic user name) and must never break a line of a text log."""
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
        ctx = request_context.get()
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
            d.setdefault("principal", printable(ctx.principal) or default)
        return True


def structlog_processor(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """A structlog processor adding the request context to the event dict (when set)."""
    ctx = request_context.get()
    if ctx is not None:
        for key in CONTEXT_FIELDS:
            value = getattr(ctx, key)
            if value is not None:
                event_dict.setdefault(key, value)
    return event_dict
