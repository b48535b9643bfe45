"""The JSON log line, defined once for both ways kitmw writes it.

A line is the head ``{"time":…,"level":…,"logger":…,"message":…``, the formatter's static
fields, the context fields that are set (:data:`CONTEXT_FIELDS`, in that order), the
record's other fields, ``exc_info``/``stack_info``, and ``}``.
:class:`~kitmw.logging.JsonFormatter` writes every record that way; the access log's
direct path (:mod:`kitmw.logging._direct`) writes its records without making a
``LogRecord``. Both render through this module, so they cannot drift apart:

* the fields of each kind of kitmw record, in order (:data:`ACCESS`, :data:`ACCESS_QUERY`,
  :data:`CLIENT`, :data:`ENDPOINT`); the field tuples the policies document come from here;
* the encoders (:func:`value_json`: strings through the C escaper ``json.dumps`` uses);
* the head (:data:`OPEN` + time + :func:`between` + message) and the timestamp
  (:class:`Stamper`);
* how a finished line reaches a stream (:func:`write`, :class:`KitmwHandler`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

from .._cache import BoundedCache

__all__ = [
    "ACCESS",
    "ACCESS_FIELDS",
    "ACCESS_QUERY",
    "CLIENT",
    "CLIENT_FIELDS",
    "CONTEXT_FIELDS",
    "CONTEXT_JSON",
    "ENCODERS",
    "ENDPOINT",
    "ENDPOINT_FIELDS",
    "JSON",
    "JSON_ASCII",
    "KINDS",
    "MILLIS",
    "OPEN",
    "KitmwHandler",
    "Layout",
    "Stamper",
    "between",
    "esc",
    "key_json",
    "value_json",
    "write",
]

#: Record attributes :class:`~kitmw.logging.ContextFilter` adds to every record.
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

#: Attributes :class:`~kitmw.logging.EndpointLogPolicy` puts on its record.
ENDPOINT_FIELDS = (
    "endpoint",
    "outcome",
    "duration_ms",
    "request_id",
    "trace_id",
    "span_id",
    "error",
    "error_message",
)

# -- encoders ------------------------------------------------------------------------------

JSON = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":"))
#: For a line that is not printable as it is (U+2028, bidi controls, lone surrogates).
JSON_ASCII = json.JSONEncoder(default=str, separators=(",", ":"))
esc = encode_basestring  # the C escaper json.dumps(ensure_ascii=False) uses for strings
_INF = float("inf")


def _float_json(value: float) -> str:
    return float.__repr__(value) if -_INF < value < _INF else JSON.encode(value)


#: Exact type -> how json.dumps writes a value of it (C functions but for floats);
#: anything else goes through the encoder itself.
ENCODERS: dict[type[Any], Callable[[Any], str]] = {
    str: esc,
    int: int.__repr__,
    type(None): "null".format,  # str.format ignores the argument: always "null"
    float: _float_json,
    bool: {True: "true", False: "false"}.__getitem__,
}


def value_json(value: Any) -> str:
    """``value`` as the line writes it: ``JSON.encode(value)``, without the encoder's
    setup for the common scalar types."""
    return ENCODERS.get(type(value), JSON.encode)(value)


_KEY_JSON = {k: esc(k) + ":" for k in (*CONTEXT_FIELDS, *ACCESS_FIELDS, *CLIENT_FIELDS, *ENDPOINT_FIELDS, "query")}
#: ``,"key":`` of each context field.
CONTEXT_JSON = {k: "," + _KEY_JSON[k] for k in CONTEXT_FIELDS}


def key_json(key: str) -> str:
    """``"key":``"""
    known = _KEY_JSON.get(key)
    return known if known is not None else esc(key) + ":"


# -- the fields of kitmw's records ---------------------------------------------------------


class Layout:
    """The fields of one kind of kitmw record and the order the line writes them in.

    The context fields of the kind come first (those that are set, in
    :data:`CONTEXT_FIELDS` order), then the others in the order of ``fields``.
    """

    __slots__ = ("context", "extras", "fields", "names", "others", "pairs")

    def __init__(self, fields: tuple[str, ...]) -> None:
        #: every field, as the policy documents them
        self.fields = fields
        self.names = frozenset(fields)
        self.context = tuple(k for k in CONTEXT_FIELDS if k in self.names)
        #: the fields that are not context fields, in order
        self.others = tuple(k for k in fields if k not in CONTEXT_FIELDS)
        #: what a record of this kind holds beyond LogRecord's and the context attributes:
        #: how a formatter recognises the kind
        self.extras = frozenset(self.others)
        #: (key, ``,"key":``) of :attr:`others`, in order: what a writer of the line loops over
        self.pairs = tuple((k, "," + key_json(k)) for k in self.others)

    def tail(self, values: Mapping[str, Any]) -> str:
        """What follows the static fields for a record of this kind with ``values``: the
        context fields that are set, then the others in order (``,"key":value`` each, as
        :class:`~kitmw.logging.JsonFormatter` writes a record of this kind). Only for a
        kind whose record carries every context field itself (the access record): the
        others take theirs from the request context, which only the formatter reads."""
        parts = [
            CONTEXT_JSON[key] + value_json(value)
            for key in self.context
            if (value := values[key]) is not None and value != "-"
        ]
        append = parts.append
        enc = ENCODERS.get
        other = JSON.encode
        for key, prefix in self.pairs:
            value = values[key]
            append(prefix)
            append(enc(type(value), other)(value))
        return "".join(parts)


ACCESS = Layout(ACCESS_FIELDS)
#: The access record with ``log_query``.
ACCESS_QUERY = Layout((*ACCESS_FIELDS, "query"))
CLIENT = Layout(CLIENT_FIELDS)
ENDPOINT = Layout(ENDPOINT_FIELDS)


def _by_size(*layouts: Layout) -> dict[int, Layout]:
    out = {len(layout.extras): layout for layout in layouts}
    if len(out) != len(layouts):
        raise RuntimeError("the record kinds must differ in their number of extra fields")
    return out


#: The kinds by their number of extra fields (a formatter compares the set only then).
KINDS = _by_size(ACCESS, ACCESS_QUERY, CLIENT, ENDPOINT)


# -- the head ------------------------------------------------------------------------------

#: Every line starts so, the time follows.
OPEN = '{"time":"'
_BETWEEN: BoundedCache[tuple[int | str, str], str] = BoundedCache(256)
_between = _BETWEEN.get


def between(level: int | str, logger_name: str) -> str:
    """``","level":"info","logger":"app","message":``: what stands between the time and
    the message of a record of ``level`` (a number, or a record's ``levelname``) from the
    logger named ``logger_name``."""
    key = (level, logger_name)
    found = _between(key)
    if found is None:
        name = logging.getLevelName(level) if type(level) is int else str(level)
        found = _BETWEEN.put(
            key, '","level":' + esc(name.lower()) + ',"logger":' + esc(logger_name) + ',"message":'
        )
    return found


MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


class Stamper:
    """ISO 8601 UTC timestamps with milliseconds; strftime runs once per second, not per record."""

    __slots__ = ("_second",)

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, record: logging.LogRecord) -> str:
        return self.at(record.created, record.msecs)

    def at(self, created: float, msecs: float) -> str:
        ms = int(msecs)
        return self.second(int(created)) + (MILLIS[ms] if 0 <= ms < 1000 else f".{ms:03d}Z")

    def at_ns(self, ns: int) -> str:
        """The timestamp of ``time.time_ns()`` value ``ns``."""
        second, rest = divmod(ns, 1_000_000_000)
        return self.second(second) + MILLIS[rest // 1_000_000]

    def second(self, second: int) -> str:
        """``YYYY-MM-DDTHH:MM:SS`` of ``second`` (UTC)."""
        cached = self._second
        if cached[0] != second:  # a tuple swap is atomic, so threads may share the stamper
            cached = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return cached[1]


# -- to the stream ---------------------------------------------------------------------------


def write(stream: Any, text: str) -> None:
    """What ``StreamHandler.emit`` does with a formatted line (the handler's lock held)."""
    stream.write(text)
    flush = getattr(stream, "flush", None)
    if flush is not None:
        flush()


class KitmwHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`~kitmw.logging.configure` installs (so a second call replaces it)."""

    def emit(self, record: logging.LogRecord) -> None:
        # StreamHandler.emit, minus flush()'s second trip through the handler lock:
        # handle() holds it already while emit runs.
        try:
            formatter = self.formatter
            msg = formatter.format(record) if formatter is not None else self.format(record)
            write(self.stream, msg + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
