"""kitmw's own records written straight to JSON handlers, when ``logging`` would add nothing.

A record on its way through ``Logger.handle`` → filters → ``callHandlers`` →
``Handler.handle`` → ``JsonFormatter.format`` costs about twice what building its line
does. When every handler a record reaches is a plain ``StreamHandler`` (or the one
:func:`~kitmw.logging.configure` installs) with a :class:`~kitmw.logging.JsonFormatter`
and no filter but :class:`~kitmw.logging.ContextFilter`, and the logger has no filter
and logging's own record factory is in place, that path can only format the record and
write it. :func:`json_targets` checks exactly that, per record (the configuration may
change at any time), and :func:`write_json` then writes the very line the formatter
would have written, under each handler's lock. Anything else takes the ordinary path.

The line is not laid out here: the head, the encoders and the order of the record's
fields are :mod:`kitmw.logging._line`'s, which the formatter writes through too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ._context import ContextFilter
from ._line import OPEN, KitmwHandler, Stamper, between, esc, write
from .formatters import JsonFormatter

__all__ = ["Targets", "json_targets", "write_json"]

_HANDLERS = (logging.StreamHandler, KitmwHandler)
_LogRecord = logging.LogRecord
_Logger = logging.Logger
_factory = logging.getLogRecordFactory
#: (handler, its lock, the formatter's ``,"k":v`` static fragment) per handler reached
Targets = list[tuple[logging.Handler, Any, str]]


def json_targets(logger: logging.Logger, level: int, fields: frozenset[str]) -> Targets | None:
    """The handlers a record of ``level`` from ``logger`` reaches, if writing it directly
    is exactly what ``logging`` would do; ``None`` otherwise (take the ordinary path).

    ``fields`` are the record's extra fields: a formatter whose static fields share a name
    with one of them leaves that field out, so it takes the ordinary path.
    """
    if logger.filters or logger.disabled or type(logger) is not _Logger or _factory() is not _LogRecord:
        return None
    targets: Targets = []
    found = False
    node: Any = logger
    while node is not None:
        for handler in node.handlers:
            found = True
            if level < handler.level:
                continue
            formatter = handler.formatter
            lock = handler.lock
            if type(handler) not in _HANDLERS or type(formatter) is not JsonFormatter or lock is None:
                return None
            for f in handler.filters:
                if type(f) is not ContextFilter:
                    return None
            static = formatter.static_json()  # type: ignore[union-attr]
            if static is None:
                return None
            if static and not fields.isdisjoint(formatter.static):  # type: ignore[union-attr]
                return None
            targets.append((handler, lock, static))
        if not node.propagate:
            break
        node = node.parent
    return targets if found else None  # no handler at all: logging's last resort decides


_stamper = Stamper()


def write_json(
    targets: Targets,
    logger: logging.Logger,
    level: int,
    message: str,
    tail: str,
    slow: Callable[[], logging.LogRecord],
) -> bool:
    """Write the line ``JsonFormatter`` makes of the record to each target.

    ``tail`` is what follows the static fields (:meth:`kitmw.logging._line.Layout.tail`
    of the record's kind). Returns ``False`` (nothing written) when the line needs the
    formatter's pure-ASCII fallback; ``slow`` builds the record a failing handler
    reports to its ``handleError``.
    """
    head = "".join((OPEN, _stamper.at_ns(time.time_ns()), between(level, logger.name), esc(message)))
    if not (head.isprintable() and tail.isprintable()):
        return False
    for handler, lock, static in targets:
        line = "".join((head, static, tail, "}", handler.terminator))  # type: ignore[attr-defined]
        with lock:
            try:
                write(handler.stream, line)  # type: ignore[attr-defined]
            except RecursionError:
                raise
            except Exception:
                handler.handleError(slow())
    return True
