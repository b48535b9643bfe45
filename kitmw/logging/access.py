"""The server access-log policy: request id in, one record out.

:class:`AccessLogPolicy` takes or makes the request id, echoes it on the response, binds
the request context for every log record, and at exit emits exactly one record while
that context is still bound. It is protocol-neutral: it sees only the
:class:`~kitmw.exchange.Exchange`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Hashable, Iterable
from random import getrandbits
from typing import Any, ClassVar

from .._paths import PathMatcher
from ..errors import ConfigError, Rejection
from ..exchange import Exchange, Policy
from ._common import (
    DEFAULT_REDACT,
    bool_option,
    error_fields,
    level_option,
    logger_option,
    make_record,
    record_failed,
    redact_option,
    redact_query,
)
from ._context import printable, request_context
from ._direct import json_targets, write_json
from ._line import ACCESS, ACCESS_FIELDS, ACCESS_QUERY

__all__ = [
    "ACCESS_FIELDS",
    "AccessLogPolicy",
    "default_request_id",
    "is_valid_request_id",
]

_MAX_ID = 128
# Lenient on purpose: UUIDs with or without dashes, nginx $request_id, ULIDs, W3C trace
# ids, base64 ids all pass; CR/LF, spaces, quotes and non-ASCII can never reach a header
# or a log line. A lone "-" is what the log formats write for "no request id", so it
# would vanish from a JSON line: it counts as missing.
_ID_CHECK = re.compile(r"(?!-\Z)[A-Za-z0-9._:+/=\-]{1,128}").fullmatch
_TOKEN_CHECK = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z\-]+").fullmatch
_STATE = "kitmw.access_log.token"
_MAX_UA = 512


def is_valid_request_id(value: str) -> bool:
    """True if ``value`` is an acceptable request id (1-128 of ``[A-Za-z0-9._:+/=-]``, not ``-``)."""
    return len(value) <= _MAX_ID and _ID_CHECK(value) is not None


def default_request_id() -> str:
    """A new random request id: 32 lower-case hex digits, like nginx's ``$request_id``."""
    return f"{getrandbits(128):032x}"


class AccessLogPolicy(Policy):
    """Request id and one access-log record per request, emitted inside the request context.

    :param logger: logger name or :class:`logging.Logger` (``"kitmw.access"``).
    :param request_id_header: request and response header carrying the id (``X-Request-ID``).
    :param exclude_paths: paths that get a request id but no access record (health checks).
    :param generate: callable returning a new id (default: 32 random hex digits).
    :param validate: an extra check on incoming ids (e.g. UUID only); the built-in safety
        check (1-128 of ``[A-Za-z0-9._:+/=-]``) always applies first.
    :param trust_request_id: take a well-formed incoming id (default); ``False`` always
        generates one (an edge service facing untrusted callers).
    :param reject_invalid: answer a malformed incoming id with 400 ``bad_request_id``
        instead of replacing it.
    :param use_trace_id: when no usable id came in and tracing runs outside, use the trace
        id as the request id (one id to search for).
    :param level: level of the record (INFO); ``error_level`` (ERROR) for 5xx and exceptions.
    :param exc_info: attach the traceback of an application exception (off: the type and
        message are in the ``error`` and ``error_message`` fields).
    :param log_query: add the query string as ``query``, with secret values redacted.
    :param redact_query: parameter names (substrings, case-insensitive) or a pattern.
    :param counts_request_bytes: report ``bytes_in`` (the driver then counts request body
        bytes as the app reads them; never buffered). ``False``: ``bytes_in`` is ``None``.

    The raw value of a rejected id is never logged or echoed. ``Authorization``, cookies
    and bodies are never read.
    """

    __slots__ = (
        "_error_level",
        "_exc_info",
        "_exclude",
        "_generate",
        "_header",
        "_header_bytes",
        "_header_key",
        "_kind",
        "_level",
        "_log_query",
        "_logger",
        "_redact",
        "_reject",
        "_trust",
        "_use_trace_id",
        "_validate",
        "counts_request_bytes",
    )

    name: ClassVar[str] = "access_log"
    shared_options: ClassVar[tuple[str, ...]] = ("exclude_paths",)
    counts_request_bytes: bool  # type: ignore[misc]  # an option here, not a constant

    def __init__(
        self,
        *,
        logger: str | logging.Logger = "kitmw.access",
        request_id_header: str = "X-Request-ID",
        exclude_paths: Iterable[str] | str | None = (),
        generate: Callable[[], str] = default_request_id,
        validate: Callable[[str], bool] | None = None,
        trust_request_id: bool = True,
        reject_invalid: bool = False,
        use_trace_id: bool = False,
        level: int | str = logging.INFO,
        error_level: int | str = logging.ERROR,
        exc_info: bool = False,
        log_query: bool = False,
        redact_query: Iterable[str] | re.Pattern[str] | None = DEFAULT_REDACT,
        counts_request_bytes: bool = True,
    ) -> None:
        self._logger = logger_option(logger, "logger")
        self.counts_request_bytes = bool_option(counts_request_bytes, "counts_request_bytes")
        if not isinstance(request_id_header, str) or not _TOKEN_CHECK(request_id_header):
            raise ConfigError(f"request_id_header: expected a header name, got {request_id_header!r}")
        self._header = request_id_header
        self._header_key = request_id_header.lower()
        self._header_bytes = self._header_key.encode("latin-1")
        self._exclude = PathMatcher(exclude_paths, option="exclude_paths") or None
        if not callable(generate):
            raise ConfigError(f"generate: expected a callable returning a new id, got {generate!r}")
        try:
            sample = generate()
        except Exception as exc:
            raise ConfigError(f"generate: calling it failed: {exc!r}") from exc
        if not isinstance(sample, str) or not is_valid_request_id(sample):
            raise ConfigError(
                f"generate: must return 1-128 characters of [A-Za-z0-9._:+/=-], returned {sample!r}"
            )
        self._generate = generate
        if validate is not None and not callable(validate):
            raise ConfigError(f"validate: expected a callable or None, got {validate!r}")
        self._validate = validate
        self._trust = bool_option(trust_request_id, "trust_request_id")
        self._reject = (
            Rejection(400, "bad_request_id", detail=f"malformed {request_id_header} header")
            if bool_option(reject_invalid, "reject_invalid")
            else None
        )
        self._use_trace_id = bool_option(use_trace_id, "use_trace_id")
        self._level = level_option(level, "level")
        self._error_level = level_option(error_level, "error_level")
        self._exc_info = bool_option(exc_info, "exc_info")
        self._log_query = bool_option(log_query, "log_query")
        self._redact = redact_option(redact_query)
        self._kind = ACCESS_QUERY if self._log_query else ACCESS  # the record's fields, in order

    @property
    def logger(self) -> logging.Logger:
        return self._logger

    @property
    def request_id_header(self) -> str:
        return self._header

    @property
    def join_key(self) -> Hashable:
        # A second access log on the same logger would write every line twice.
        return (AccessLogPolicy, self._logger)

    def enter(self, ex: Exchange) -> Rejection | None:
        if ex.request_id is not None:
            self._enter_nested(ex)
            return None
        rid = None
        answer = None
        if self._trust:
            raw = ex.header(self._header_key)
            if raw is not None:
                if (
                    len(raw) <= _MAX_ID
                    and _ID_CHECK(raw) is not None
                    and (self._validate is None or self._validate(raw))
                ):
                    rid = raw
                else:
                    answer = self._reject
        if rid is None:
            rid = (self._use_trace_id and ex.trace_id) or self._generate()
        ex.request_id = rid
        ex.add_header((self._header_bytes, rid.encode("latin-1")))  # rid is ASCII: checked
        ex.state[_STATE] = request_context.set(ex)
        return answer

    def _enter_nested(self, ex: Exchange) -> None:
        """An access log on another logger in an outer kitmw layer already set the request
        id: keep that one (one id per request), echo it in this policy's header if that
        is another header, and leave the log context to the outer layer."""
        header = self._header_bytes
        if not any(name == header for name, _ in ex.added_headers or ()):
            ex.add_header((header, ex.request_id.encode("latin-1")))  # type: ignore[union-attr]
        state = ex.state
        state[_STATE] = (None, state.get(_STATE))  # exit() puts the outer token back
        return None

    def exit(self, ex: Exchange) -> None:
        try:
            err = ex.error
            status = ex.status
            level = self._error_level if (err is not None or status >= 500) else self._level
            if self._logger.isEnabledFor(level) and not (self._exclude and self._exclude(ex.path)):
                try:
                    self._record(ex, level, err, status)
                except Exception:
                    record_failed("access")
        finally:
            token = ex.state.pop(_STATE, None)
            if token is not None:
                if type(token) is tuple:  # a nested access log: the outer layer resets
                    ex.state[_STATE] = token[1]
                else:
                    try:
                        request_context.reset(token)
                    except ValueError:  # exit ran in another context than enter
                        pass

    def _record(self, ex: Exchange, level: int, err: BaseException | None, status: int) -> None:
        duration_ms = (ex.end_ns - ex.start_ns) / 1e6 if ex.end_ns else 0.0
        path = ex.path
        ua = ex.header("user-agent")
        if ua is not None and len(ua) > _MAX_UA:
            ua = ua[:_MAX_UA]
        error = error_message = None
        if err is None:
            msg = "%s %s %s %.1fms"
            args: tuple[Any, ...] = (ex.method, printable(path), status, duration_ms)
        else:
            error, error_message = error_fields(err)
            msg = "%s %s %s %.1fms %s"
            args = (ex.method, printable(path), status, duration_ms, error)
        query = redact_query(ex.query, self._redact) if self._log_query else None
        fields = self._fields_of(ex, status, duration_ms, ua, error, error_message, query)
        logger = self._logger
        exc = err if self._exc_info else None
        if exc is None:
            kind = self._kind
            targets = json_targets(logger, level, kind.names)
            if targets is not None and write_json(
                targets,
                logger,
                level,
                msg % args,
                kind.tail(fields),
                lambda: make_record(logger, level, msg, args, fields, None),
            ):
                return
        logger.handle(make_record(logger, level, msg, args, fields, exc))

    def _fields_of(
        self,
        ex: Exchange,
        status: int,
        duration_ms: float,
        ua: str | None,
        error: str | None,
        error_message: str | None,
        query: str | None,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "method": ex.method,
            "path": ex.path,
            "route": ex.route,
            "status": status,
            "duration_ms": round(duration_ms, 3),
            "bytes_in": ex.bytes_in if self.counts_request_bytes else None,
            "bytes_out": ex.bytes_out,
            "client": ex.client,
            "user_agent": ua,
            "request_id": ex.request_id,
            "trace_id": ex.trace_id,
            "span_id": ex.span_id,
            "principal": ex.principal,
            "error": error,
            "error_message": error_message,
        }
        if query is not None:
            fields["query"] = query
        return fields
