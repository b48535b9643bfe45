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
import time
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import IO, Any

from ..errors import ConfigError
from ._common import _level, _logger
from ._context import ACCESS_FIELDS, CLIENT_FIELDS, CONTEXT_FIELDS, _current, _safe

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
_JSON = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":"))
_JSON_ASCII = json.JSONEncoder(default=str, separators=(",", ":"))
_NO_ESCAPE = frozenset({"message", "exc_text", "stack_info", "msg", "args", "exc_info"})


_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


class _Stamper:
    """ISO 8601 UTC timestamps with milliseconds; strftime runs once per second, not per record."""

    __slots__ = ("_second",)

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, record: logging.LogRecord) -> str:
        return self.at(record.created, record.msecs)

    def at(self, created: float, msecs: float) -> str:
        ms = int(msecs)
        return self.second(int(created)) + (_MILLIS[ms] if 0 <= ms < 1000 else f".{ms:03d}Z")

    def second(self, second: int) -> str:
        """``YYYY-MM-DDTHH:MM:SS`` of ``second`` (UTC)."""
        cached = self._second
        if cached[0] != second:  # a tuple swap is atomic, so threads may share the stamper
            cached = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return cached[1]


_esc = encode_basestring  # the C escaper json.dumps(ensure_ascii=False) uses for strings
_INF = float("inf")
#: Keys the JSON line writes itself: a static field by one of these names takes the dict path.
_FIXED_KEYS = frozenset(("time", "level", "logger", "message", "exc_info", "stack_info", *CONTEXT_FIELDS))
#: Keys before the static fields: an extra field by one of these names is left out.
_BASE_KEYS = frozenset(("time", "level", "logger", "message"))
_KEY_JSON = {k: _esc(k) + ":" for k in (*CONTEXT_FIELDS, *ACCESS_FIELDS, *CLIENT_FIELDS, "query")}
_CONTEXT_JSON = {k: "," + _KEY_JSON[k] for k in CONTEXT_FIELDS}


def _orders(*fields: tuple[str, ...]) -> dict[int, tuple[frozenset[str], tuple[tuple[str, str], ...]]]:
    out = {}
    for names in fields:
        extras = tuple(k for k in names if k not in _RESERVED)
        out[len(extras)] = (frozenset(extras), tuple((k, "," + _KEY_JSON[k]) for k in extras))
    assert len(out) == len(fields), "the known field sets must differ in size"
    return out


#: Extra fields of kitmw's access and client records, by number: (set, insertion order).
_KNOWN_ORDERS = _orders(ACCESS_FIELDS, (*ACCESS_FIELDS, "query"), CLIENT_FIELDS)


def _key_json(key: str) -> str:
    known = _KEY_JSON.get(key)
    return known if known is not None else _esc(key) + ":"


def _float_json(value: float) -> str:
    return float.__repr__(value) if -_INF < value < _INF else _JSON.encode(value)


#: Exact type -> how json.dumps writes a value of it (C functions but for floats);
#: anything else goes through the encoder itself.
_ENCODERS: dict[type[Any], Callable[[Any], str]] = {
    str: _esc,
    int: int.__repr__,
    type(None): "null".format,  # str.format ignores the argument: always "null"
    float: _float_json,
    bool: {True: "true", False: "false"}.__getitem__,
}


def _value_json(value: Any) -> str:
    """``_JSON.encode(value)``, without the encoder's setup for the common scalar types."""
    return _ENCODERS.get(type(value), _JSON.encode)(value)


def _context_values(record: logging.LogRecord) -> list[tuple[str, Any]]:
    """The context fields: from the record (ContextFilter) or, without the filter, the context."""
    d = record.__dict__
    ctx: Any = _MISSING
    out = []
    for key in CONTEXT_FIELDS:
        value = d.get(key, _MISSING)
        if value is _MISSING:
            if ctx is _MISSING:
                ctx = _current.get()
            value = None if ctx is None else getattr(ctx, key)
        if value is not None and value != "-":
            out.append((key, value))
    return out


def _extras(record: logging.LogRecord) -> list[tuple[str, Any]]:
    d = record.__dict__
    keys = d.keys() - _RESERVED  # a set operation in C: cheap when there are no extras
    if not keys:
        return []
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
        self._stamp = _Stamper()
        self._static_of: Any = None  # the static dict _static_json was made from
        self._static_len = -1
        self._static_json: str | None = ""
        self._skip: frozenset[str] = _BASE_KEYS

    def _static_fragment(self) -> str | None:
        """``,"k":v`` for every static field, or None when one would collide with a fixed key."""
        static = self.static
        if static is not self._static_of or len(static) != self._static_len:
            if not static:
                self._static_json, self._skip = "", _BASE_KEYS
            elif _FIXED_KEYS.isdisjoint(static) and all(type(k) is str for k in static):
                self._static_json = "".join("," + _key_json(k) + _value_json(v) for k, v in static.items())
            else:
                self._static_json = None
            if static:
                self._skip = _BASE_KEYS | frozenset(static)
            self._static_of = static
            self._static_len = len(static)
        return self._static_json

    def format(self, record: logging.LogRecord) -> str:
        # Written directly, pair by pair (strings through the C escaper json.dumps uses):
        # the same line as json.dumps of the dict below, at a third of the cost.
        static = self._static_fragment()
        if static is not None:
            parts = [
                '{"time":"',
                self._stamp(record),
                '","level":',
                _esc(record.levelname.lower()),
                ',"logger":',
                _esc(record.name),
                ',"message":',
                _esc(record.getMessage()),
                static,
            ]
            append = parts.append
            enc = _ENCODERS.get
            other = _JSON.encode
            for key, value in _context_values(record):
                append(_CONTEXT_JSON[key])
                append(enc(type(value), other)(value))
            d = record.__dict__
            keys = d.keys() - _RESERVED  # a set operation in C: cheap when there are no extras
            if keys:
                skip = self._skip
                known = _KNOWN_ORDERS.get(len(keys))
                if known is not None and skip is _BASE_KEYS and keys == known[0]:
                    # kitmw's own records: their fields in the order the policies add them.
                    for key, prefix in known[1]:
                        value = d[key]
                        append(prefix)
                        append(enc(type(value), other)(value))
                else:
                    for key in [k for k in d if k in keys and k[0] != "_"]:
                        if key not in skip:
                            value = d[key]
                            append("," + _key_json(key))
                            append(enc(type(value), other)(value))
            exc = _exception_text(self, record)
            if exc:
                append(',"exc_info":' + _esc(exc))
            if record.stack_info:
                append(',"stack_info":' + _esc(self.formatStack(record.stack_info)))
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
        line = _JSON.encode(out)
        if not line.isprintable():  # U+2028, bidi controls, lone surrogates: go pure ASCII
            line = _JSON_ASCII.encode(out)
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


# Keys every access or client record has: known safe, no regex needed.
_SAFE_KEYS = frozenset(
    ("time", "level", "logger", "msg", "query", "exc_info", "stack_info", *CONTEXT_FIELDS, *ACCESS_FIELDS)
) | frozenset(CLIENT_FIELDS)


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
        self._stamp = _Stamper()

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
    return _safe(value) if isinstance(value, str) else value


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
        ctx = _current.get()
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


def _write(stream: Any, text: str) -> None:
    """What ``StreamHandler.emit`` does with a formatted line (the handler's lock held)."""
    stream.write(text)
    flush = getattr(stream, "flush", None)
    if flush is not None:
        flush()


class _KitmwHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure` installs (so a second call replaces it)."""

    def emit(self, record: logging.LogRecord) -> None:
        # StreamHandler.emit, minus flush()'s second trip through the handler lock:
        # handle() holds it already while emit runs.
        try:
            formatter = self.formatter
            msg = formatter.format(record) if formatter is not None else self.format(record)
            _write(self.stream, msg + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


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
    target = logging.getLogger() if logger is None else _logger(logger, "logger")
    lvl = _level(level, "level")
    if static is not None and not isinstance(static, Mapping):
        raise ConfigError(f"static: expected a mapping of fields, got {static!r}")
    formatter: logging.Formatter
    if format == "json":
        formatter = JsonFormatter(static=static)
    elif format == "logfmt":
        formatter = LogfmtFormatter(static=static)
    else:
        formatter = TextFormatter()
    handler = _KitmwHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(ContextFilter(default="-" if format == "text" else None))
    handler.setFormatter(formatter)
    for old in [h for h in target.handlers if isinstance(h, _KitmwHandler)]:
        target.removeHandler(old)
        old.close()
    target.addHandler(handler)
    target.setLevel(lvl)
    return handler
