"""Formatters that can never be tricked into forging a log line, and ``configure()``.

Every formatter here writes one record per line whatever the values hold: JSON escapes
control characters (and falls back to pure ASCII when a value holds a character some
tools treat as a line break, such as U+2028), logfmt quotes and escapes any value that
is not a plain token, and the text formatter escapes control characters in the message
arguments and in the record attributes its format string reads.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import IO, Any

from ..errors import ConfigError
from ._common import level_option, logger_option
from ._context import printable, request_context
from ._line import (
    CONTEXT_FIELDS,
    CONTEXT_JSON,
    ENCODERS,
    JSON,
    JSON_ASCII,
    KINDS,
    OPEN,
    KitmwHandler,
    Layout,
    Stamper,
    between,
    esc,
    key_json,
    value_json,
)

__all__ = ["FORMATS", "JsonFormatter", "LogfmtFormatter", "TextFormatter", "configure"]

FORMATS = ("json", "logfmt", "text")

# Attributes every LogRecord has: anything else on a record came from ``extra`` (or a
# filter) and is rendered as a field.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    *CONTEXT_FIELDS,
}
_MISSING: Any = object()
_BARE = re.compile(r"[A-Za-z0-9_.:/@+\-,%~^*!#$&()\[\]{}|;<>?']+").fullmatch
_KEY_OK = re.compile(r"[A-Za-z0-9_.\-]+").fullmatch
_KEY_FIX = re.compile(r"[^A-Za-z0-9_.\-]")
_NO_ESCAPE = frozenset({"message", "exc_text", "stack_info", "msg", "args", "exc_info"})
#: Keys the JSON line writes itself: a static field by one of these names takes the dict path.
_FIXED_KEYS = frozenset(("time", "level", "logger", "message", "exc_info", "stack_info", *CONTEXT_FIELDS))
#: Keys before the static fields: an extra field by one of these names is left out.
_BASE_KEYS = frozenset(("time", "level", "logger", "message"))


def _context_values(record: logging.LogRecord) -> list[tuple[str, Any]]:
    """The context fields: from the record (ContextFilter) or, without the filter, the context."""
    d = record.__dict__
    ctx: Any = _MISSING
    out = []
    for key in CONTEXT_FIELDS:
        value = d.get(key, _MISSING)
        if value is _MISSING:
            if ctx is _MISSING:
                ctx = request_context.get()
            value = None if ctx is None else getattr(ctx, key)
        if value is not None and value != "-":
            out.append((key, value))
    return out


def _kind(keys: set[str]) -> Layout | None:
    """The kind of kitmw record whose extra fields are ``keys``, if it is one."""
    kind = KINDS.get(len(keys))
    return kind if kind is not None and keys == kind.extras else None


def _extras(record: logging.LogRecord) -> list[tuple[str, Any]]:
    """The record's own fields: a kitmw record's in the order of its kind, others' in
    the order they were set."""
    d = record.__dict__
    keys = d.keys() - _RESERVED  # a set operation in C: cheap when there are no extras
    if not keys:
        return []
    kind = _kind(keys)
    if kind is not None:
        return [(k, d[k]) for k in kind.others]
    return [(k, d[k]) for k in d if k in keys and k[0] != "_"]


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text or None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context, then every extra field.

    :param static: fields added to every line (``{"service": "api"}``).
    """

    def __init__(self, *, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})
        self._stamp = Stamper()
        self._static_of: Any = None  # the static dict _static_json was made from
        self._static_len = -1
        self._static_json: str | None = ""
        self._skip: frozenset[str] = _BASE_KEYS

    def static_json(self) -> str | None:
        """``,"k":v`` for every field of :attr:`static` (changes to it are seen), or
        None when one collides with a key the line writes itself (such a line is built
        as a dict, with the static field overridden). kitmw's direct access-log path
        writes this fragment too."""
        static = self.static
        if static is not self._static_of or len(static) != self._static_len:
            if not static:
                self._static_json, self._skip = "", _BASE_KEYS
            elif _FIXED_KEYS.isdisjoint(static) and all(type(k) is str for k in static):
                self._static_json = "".join("," + key_json(k) + value_json(v) for k, v in static.items())
            else:
                self._static_json = None
            if static:
                self._skip = _BASE_KEYS | frozenset(static)
            self._static_of = static
            self._static_len = len(static)
        return self._static_json

    def format(self, record: logging.LogRecord) -> str:
        # Written directly, pair by pair, through kitmw.logging._line (strings through the
        # C escaper json.dumps uses): the same line as json.dumps of the dict below, at a
        # third of the cost.
        static = self.static_json()
        if static is not None:
            parts = [
                OPEN,
                self._stamp(record),
                between(record.levelname, record.name),
                esc(record.getMessage()),
                static,
            ]
            append = parts.append
            enc = ENCODERS.get
            other = JSON.encode
            for key, value in _context_values(record):
                append(CONTEXT_JSON[key])
                append(enc(type(value), other)(value))
            d = record.__dict__
            keys = d.keys() - _RESERVED  # a set operation in C: cheap when there are no extras
            if keys:
                skip = self._skip
                kind = KINDS.get(len(keys))
                if kind is not None and keys == kind.extras and (skip is _BASE_KEYS or skip.isdisjoint(keys)):
                    # kitmw's own records: their kind's fields, in its order (as Layout.tail writes them)
                    for key, prefix in kind.pairs:
                        value = d[key]
                        append(prefix)
                        append(enc(type(value), other)(value))
                else:
                    for key in [k for k in d if k in keys and k[0] != "_"]:
                        if key not in skip:
                            value = d[key]
                            append("," + key_json(key))
                            append(enc(type(value), other)(value))
            exc = _exception_text(self, record)
            if exc:
                append(',"exc_info":' + esc(exc))
            if record.stack_info:
                append(',"stack_info":' + esc(self.formatStack(record.stack_info)))
            append("}")
            line = "".join(parts)
            if line.isprintable():
                return line
            # U+2028, bidi controls, lone surrogates: go pure ASCII (below)
        out: dict[str, Any] = {
            "time": self._stamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(self.static)
        for key, value in _context_values(record):
            out[key] = value
        for key, value in _extras(record):
            out.setdefault(key, value)
        exc = _exception_text(self, record)
        if exc:
            out["exc_info"] = exc
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        line = JSON.encode(out)
        if not line.isprintable():  # U+2028, bidi controls, lone surrogates: go pure ASCII
            line = JSON_ASCII.encode(out)
        return line


def _logfmt_value(value: Any) -> str:
    kind = type(value)
    if kind is int or kind is float:
        return repr(value)
    if kind is bool:
        return "true" if value else "false"
    text = value if kind is str else str(value)
    if _BARE(text):
        return text
    return json.dumps(text, ensure_ascii=not text.isprintable())


# Keys every kitmw record has: known safe, no regex needed.
_SAFE_KEYS = frozenset(
    ("time", "level", "logger", "msg", "exc_info", "stack_info", *CONTEXT_FIELDS)
).union(*(kind.names for kind in KINDS.values()))


def _logfmt_key(key: str) -> str:
    return key if _KEY_OK(key) else (_KEY_FIX.sub("_", key) or "_")


class LogfmtFormatter(logging.Formatter):
    """``key=value`` pairs, one record per line; values quoted and escaped unless plain.

    ``None`` values are left out. Keys are reduced to ``[A-Za-z0-9_.-]`` so a field name
    can never forge another key either.

    :param static: fields added to every line.
    """

    def __init__(self, *, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})
        self._stamp = Stamper()

    def format(self, record: logging.LogRecord) -> str:
        pairs: list[tuple[str, Any]] = [
            ("time", self._stamp(record)),
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("msg", record.getMessage()),
        ]
        pairs.extend(self.static.items())
        pairs.extend(_context_values(record))
        pairs.extend(_extras(record))
        exc = _exception_text(self, record)
        if exc:
            pairs.append(("exc_info", exc))
        if record.stack_info:
            pairs.append(("stack_info", self.formatStack(record.stack_info)))
        return " ".join(
            (k if k in _SAFE_KEYS else _logfmt_key(k)) + "=" + _logfmt_value(v)
            for k, v in pairs
            if v is not None
        )


def _escape_arg(value: Any) -> Any:
    return printable(value) if isinstance(value, str) else value


class _View:
    """A record stand-in whose ``__dict__`` holds escaped values, for the format string."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


class TextFormatter(logging.Formatter):
    """A plain ``logging.Formatter`` that escapes CR/LF and control characters in values.

    The message's own format string is kept (an application's deliberate multi-line
    message stays multi-line); its arguments and the record attributes the format reads
    (``%(path)s``, ``%(principal)s``, ...) are escaped. Context fields outside a request
    render as ``-``.
    """

    default_format = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, style: Any = "%") -> None:
        super().__init__(fmt or self.default_format, datefmt, style)

    def format(self, record: logging.LogRecord) -> str:
        d = record.__dict__
        if "request_id" not in d:  # no ContextFilter on this handler: read the context
            for key, value in zip(CONTEXT_FIELDS, self._context(record), strict=True):
                d.setdefault(key, value)
        record.message = self._message(record)
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        s = self.formatMessage(record)
        exc = _exception_text(self, record)
        if exc:
            s = s + "\n" + exc
        if record.stack_info:
            s = s + "\n" + self.formatStack(record.stack_info)
        return s

    @staticmethod
    def _context(record: logging.LogRecord) -> list[Any]:
        ctx = request_context.get()
        if ctx is None:
            return ["-"] * len(CONTEXT_FIELDS)
        return [getattr(ctx, k) or "-" for k in CONTEXT_FIELDS]

    @staticmethod
    def _message(record: logging.LogRecord) -> str:
        msg = str(record.msg)
        args = record.args
        if args:
            if isinstance(args, Mapping):
                msg = msg % {k: _escape_arg(v) for k, v in args.items()}
            else:
                msg = msg % tuple(_escape_arg(a) for a in args)
        return msg

    def formatMessage(self, record: logging.LogRecord) -> str:
        d = record.__dict__
        dirty = any(isinstance(v, str) and k not in _NO_ESCAPE and not v.isprintable() for k, v in d.items())
        if not dirty:
            return self._style.format(record)
        view = {k: (v if k in _NO_ESCAPE else _escape_arg(v)) for k, v in d.items()}
        return self._style.format(_View(view))  # type: ignore[arg-type]


def configure(
    format: str = "json",
    *,
    level: int | str = logging.INFO,
    logger: str | logging.Logger | None = None,
    stream: IO[str] | None = None,
    static: Mapping[str, Any] | None = None,
) -> logging.Handler:
    """Send ``logger``'s records (root by default) to ``stream`` as JSON, logfmt or text.

    Installs one handler carrying :class:`ContextFilter`, so every record, the
    application's own included, has the request id, trace id, span id and principal.
    Calling it again replaces the handler it installed before; other handlers are kept.

    :param format: ``"json"`` (default), ``"logfmt"`` or ``"text"``.
    :param level: level set on ``logger``.
    :param logger: logger name or object; ``None`` for the root logger.
    :param stream: where lines go (default ``sys.stderr``).
    :param static: fields added to every JSON/logfmt line (``{"service": "api"}``).
    :returns: the installed handler.
    """
    from ._context import ContextFilter

    if format not in FORMATS:
        raise ConfigError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    target = logging.getLogger() if logger is None else logger_option(logger, "logger")
    lvl = level_option(level, "level")
    if static is not None and not isinstance(static, Mapping):
        raise ConfigError(f"static: expected a mapping of fields, got {static!r}")
    formatter: logging.Formatter
    if format == "json":
        formatter = JsonFormatter(static=static)
    elif format == "logfmt":
        formatter = LogfmtFormatter(static=static)
    else:
        formatter = TextFormatter()
    handler = KitmwHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(ContextFilter(default="-" if format == "text" else None))
    handler.setFormatter(formatter)
    for old in [h for h in target.handlers if isinstance(h, KitmwHandler)]:
        target.removeHandler(old)
        old.close()
    target.addHandler(handler)
    target.setLevel(lvl)
    return handler
