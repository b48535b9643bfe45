"""The client-side policies of logging: one record per outgoing call, and the request id it carries."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any, ClassVar

from ..errors import ConfigError
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
from ._context import CLIENT_FIELDS, printable, request_context

__all__ = ["CLIENT_FIELDS", "ClientLogPolicy", "ClientRequestIdPolicy"]


class ClientRequestIdPolicy(Policy):
    """Forwards the request id of the request being served on every outgoing call.

    The transports' ``request_id`` concern, on by default: inside a request handled by
    kitmw's server middleware (or a :func:`~kitmw.logging.bind_context` block) the call
    carries the request id in ``header``, unless the request already sets that header;
    the exchange's ``request_id`` is set for the client log record. Outside a request
    it does nothing.

    :param header: the header name (default ``"X-Request-ID"``).
    """

    __slots__ = ("_header", "_lower")

    name: ClassVar[str] = "request_id"

    def __init__(self, *, header: str = "X-Request-ID") -> None:
        if not isinstance(header, str) or not header or not header.isascii() or ":" in header:
            raise ConfigError(f"header: expected a header name, got {header!r}")
        self._header = header
        self._lower = header.lower()

    @property
    def header(self) -> str:
        return self._header

    def enter(self, ex: Exchange) -> None:
        ctx = request_context.get()
        if ctx is None:
            return
        rid = ctx.request_id
        if rid:
            ex.request_id = rid
            if ex.header(self._lower) is None:
                ex.set_request_header(self._header, rid)


class ClientLogPolicy(Policy):
    """One record per outgoing call (for the httpx transports), tagged with the request id.

    :param logger: logger name or :class:`logging.Logger` (``"kitmw.client"``).
    :param level: level of the record (INFO); ``error_level`` (ERROR) for failures and 5xx.
    :param exc_info: attach the traceback of a failed call.
    :param log_query: keep the query string in ``url``, with secret values redacted
        (default: the URL is logged without its query string).
    :param redact_query: parameter names (substrings, case-insensitive) or a pattern.
    """

    __slots__ = ("_error_level", "_exc_info", "_level", "_log_query", "_logger", "_redact")

    name: ClassVar[str] = "access_log"
    shared_options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        logger: str | logging.Logger = "kitmw.client",
        level: int | str = logging.INFO,
        error_level: int | str = logging.ERROR,
        exc_info: bool = False,
        log_query: bool = False,
        redact_query: Iterable[str] | re.Pattern[str] | None = DEFAULT_REDACT,
    ) -> None:
        self._logger = logger_option(logger, "logger")
        self._level = level_option(level, "level")
        self._error_level = level_option(error_level, "error_level")
        self._exc_info = bool_option(exc_info, "exc_info")
        self._log_query = bool_option(log_query, "log_query")
        self._redact = redact_option(redact_query)

    @property
    def logger(self) -> logging.Logger:
        return self._logger

    def exit(self, ex: Exchange) -> None:
        err = ex.error
        status = ex.status
        level = self._error_level if (err is not None or status >= 500) else self._level
        if not self._logger.isEnabledFor(level):
            return
        try:
            self._record(ex, level, err, status)
        except Exception:
            record_failed("client")

    def _record(self, ex: Exchange, level: int, err: BaseException | None, status: int) -> None:
        url = ex.url
        if self._log_query:
            query = ex.query
            if query:
                url = url + "?" + redact_query(query, self._redact)
        duration_ms = (ex.end_ns - ex.start_ns) / 1e6 if ex.end_ns else 0.0
        rid = ex.request_id
        if rid is None:
            ctx = request_context.get()
            rid = None if ctx is None else ctx.request_id
        fields: dict[str, Any] = {
            "method": ex.method,
            "url": url,
            "host": ex.host,
            "status": status or None,
            "duration_ms": round(duration_ms, 3),
            "attempts": ex.state.get("attempts", 1),
            "request_id": rid,
            "error": None,
            "error_message": None,
        }
        if err is None:
            msg = "%s %s %s %.1fms"
            args: tuple[Any, ...] = (ex.method, printable(url), status, duration_ms)
        else:
            fields["error"], fields["error_message"] = error_fields(err)
            msg = "%s %s %s %.1fms %s"
            args = (ex.method, printable(url), status or "-", duration_ms, fields["error"])
        self._logger.handle(
            make_record(self._logger, level, msg, args, fields, err if self._exc_info else None)
        )
