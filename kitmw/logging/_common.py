"""Helpers shared by the server and client log policies: option checks, redaction, emission."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus

from ..errors import ConfigError

__all__ = [
    "DEFAULT_REDACT",
    "bool_option",
    "error_fields",
    "level_option",
    "logger_option",
    "make_record",
    "record_failed",
    "redact_option",
    "redact_query",
]

#: Query parameter names (case-insensitive substrings) whose values are never logged.
DEFAULT_REDACT = (
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "pwd",
    "auth",
    "session",
    "signature",
    "sig",
    "code",
    "credential",
    "jwt",
)

_MAX_ERROR = 1000
_SRC = __file__


def logger_option(value: Any, option: str) -> logging.Logger:
    if isinstance(value, logging.Logger):
        return value
    if isinstance(value, str) and value:
        return logging.getLogger(value)
    raise ConfigError(f"{option}: expected a logger name or a logging.Logger, got {value!r}")


def level_option(value: Any, option: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        level = logging.getLevelName(value.upper())
        if isinstance(level, int):
            return level
    raise ConfigError(f"{option}: expected a logging level (int or name such as 'INFO'), got {value!r}")


def bool_option(value: Any, option: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{option}: expected True or False, got {value!r}")
    return value


def redact_option(value: Any) -> re.Pattern[str] | None:
    if value is None:
        return None
    if isinstance(value, re.Pattern):
        return value
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(f"redact_query: expected parameter names or a compiled pattern, got {value!r}")
    names = list(value)
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"redact_query: every name must be a non-empty string, got {names!r}")
    if not names:
        return None
    return re.compile("|".join(re.escape(n) for n in names), re.IGNORECASE)


def redact_query(query: str, pattern: re.Pattern[str] | None) -> str:
    """``query`` with the values of parameters whose name matches ``pattern`` replaced."""
    if not query or pattern is None:
        return query
    out = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if eq and value and pattern.search(unquote_plus(name)):
            out.append(name + "=[REDACTED]")
        else:
            out.append(part)
    return "&".join(out)


def error_fields(err: BaseException) -> tuple[str, str]:
    try:
        message = str(err)
    except Exception:  # a broken __str__ must not break the log
        message = "<unprintable>"
    if len(message) > _MAX_ERROR:
        message = message[:_MAX_ERROR] + "..."
    return type(err).__name__, message


def make_record(
    logger: logging.Logger,
    level: int,
    msg: str,
    args: tuple[Any, ...],
    fields: dict[str, Any],
    err: BaseException | None,
) -> logging.LogRecord:
    exc_info = None if err is None else (type(err), err, err.__traceback__)
    # makeRecord instead of logger.log(): no findCaller() stack walk, and the fields are
    # known not to collide with LogRecord attributes, so no per-key check.
    if (
        _FAST_RECORD
        and logging.getLogRecordFactory() is _LogRecord
        and type(logger).makeRecord is _MAKE_RECORD
        and "makeRecord" not in logger.__dict__
    ):
        return _record(logger.name, level, msg, args, exc_info, fields)
    # a custom record factory or logger class: let it build the record
    record = logger.makeRecord(logger.name, level, _SRC, 0, msg, args, exc_info, "exit")
    record.__dict__.update(fields)
    return record


# -- a LogRecord without LogRecord.__init__ ---------------------------------------------------
#
# LogRecord.__init__ recomputes per record what is constant for kitmw's records (the
# source file's basename and module, the level name) and sets thirty attributes one by
# one. _record() fills the same attributes, with the same values, in one dict: a third
# of the cost. It is used only while logging's own factory and Logger.makeRecord are in
# place, and only if this Python's LogRecord has no attribute it does not know.

_LogRecord = logging.LogRecord
_MAKE_RECORD = logging.Logger.makeRecord
_FILENAME = os.path.basename(_SRC)
_MODULE = os.path.splitext(_FILENAME)[0]
_START = getattr(logging, "_startTime", None)
_START_S: float = (_START / 1e9 if isinstance(_START, int) else _START) if _START is not None else time.time()
_HAS_TASK = "taskName" in vars(_LogRecord("", 0, "", 0, "", (), None))
_KNOWN = frozenset(
    (
        "name",
        "msg",
        "args",
        "levelname",
        "levelno",
        "pathname",
        "filename",
        "module",
        "exc_info",
        "exc_text",
        "stack_info",
        "lineno",
        "funcName",
        "created",
        "msecs",
        "relativeCreated",
        "thread",
        "threadName",
        "processName",
        "process",
        "taskName",
    )
)
_FAST_RECORD = frozenset(vars(_LogRecord("", 0, "", 0, "", (), None))) <= _KNOWN
_new = object.__new__


def _record(
    name: str, level: int, msg: str, args: Any, exc_info: Any, fields: dict[str, Any]
) -> logging.LogRecord:
    ns = time.time_ns()
    ct = ns / 1e9
    if args and len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
        args = args[0]  # as LogRecord does
    threads = logging.logThreads
    if logging.logMultiprocessing:
        process_name: str | None = "MainProcess"
        mp = sys.modules.get("multiprocessing")
        if mp is not None:
            try:
                process_name = mp.current_process().name
            except Exception:  # pragma: no cover - as LogRecord
                pass
    else:  # pragma: no cover
        process_name = None
    d = {
        "name": name,
        "msg": msg,
        "args": args,
        "levelname": logging.getLevelName(level),
        "levelno": level,
        "pathname": _SRC,
        "filename": _FILENAME,
        "module": _MODULE,
        "exc_info": exc_info,
        "exc_text": None,
        "stack_info": None,
        "lineno": 0,
        "funcName": "exit",
        "created": ct,
        "msecs": (ns % 1_000_000_000) // 1_000_000 + 0.0,
        "relativeCreated": (ct - _START_S) * 1000,
        "thread": threading.get_ident() if threads else None,
        "threadName": threading.current_thread().name if threads else None,
        "processName": process_name,
        "process": os.getpid() if logging.logProcesses else None,
    }
    if _HAS_TASK:
        d["taskName"] = _task_name()
    d.update(fields)
    record: logging.LogRecord = _new(_LogRecord)
    record.__dict__ = d
    return record


def _task_name() -> str | None:
    if not getattr(logging, "logAsyncioTasks", True):
        return None
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        try:
            return asyncio.current_task().get_name()  # type: ignore[no-any-return,union-attr]
        except Exception:
            pass
    return None


def record_failed(kind: str) -> None:
    # Logging must never break a request: say so once per failure, on kitmw's own logger.
    logging.getLogger("kitmw").exception("kitmw: the %s log record could not be built", kind)
