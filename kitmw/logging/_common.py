"""Helpers shared by the server and client log policies: option checks, redaction, emission."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

from ..errors import ConfigError

__all__ = ["DEFAULT_REDACT", "redact_query"]

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


def _logger(value: Any, option: str) -> logging.Logger:
    if isinstance(value, logging.Logger):
        return value
    if isinstance(value, str) and value:
        return logging.getLogger(value)
    raise ConfigError(f"{option}: expected a logger name or a logging.Logger, got {value!r}")


def _level(value: Any, option: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        level = logging.getLevelName(value.upper())
        if isinstance(level, int):
            return level
    raise ConfigError(f"{option}: expected a logging level (int or name such as 'INFO'), got {value!r}")


def _bool(value: Any, option: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{option}: expected True or False, got {value!r}")
    return value


def _redactor(value: Any) -> re.Pattern[str] | None:
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


def _error_fields(err: BaseException) -> tuple[str, str]:
    try:
        message = str(err)
    except Exception:  # a broken __str__ must not break the log
        message = "<unprintable>"
    if len(message) > _MAX_ERROR:
        message = message[:_MAX_ERROR] + "..."
    return type(err).__name__, message


def _emit(
    logger: logging.Logger,
    level: int,
    msg: str,
    args: tuple[Any, ...],
    fields: dict[str, Any],
    err: BaseException | None,
) -> None:
    exc_info = None if err is None else (type(err), err, err.__traceback__)
    # makeRecord + handle instead of logger.log(): no findCaller() stack walk, and the
    # fields are known not to collide with LogRecord attributes, so no per-key check.
    record = logger.makeRecord(logger.name, level, _SRC, 0, msg, args, exc_info, "exit")
    record.__dict__.update(fields)
    logger.handle(record)


def _failed(kind: str) -> None:
    # Logging must never break a request: say so once per failure, on kitmw's own logger.
    logging.getLogger("kitmw").exception("kitmw: the %s log record could not be built", kind)
