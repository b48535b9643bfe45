"""The endpoint-side log policy: one record per call of a ``kitmw.endpoint`` function."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from ..exchange import Exchange, Policy
from ._common import bool_option, error_fields, level_option, logger_option, make_record, record_failed
from ._context import request_context
from ._line import ENDPOINT_FIELDS

__all__ = ["ENDPOINT_FIELDS", "EndpointLogPolicy"]


class EndpointLogPolicy(Policy):
    """One record per call of a :func:`kitmw.endpoint` function, at DEBUG by default.

    The record (message ``charge_card ok 1.2ms``) carries :data:`ENDPOINT_FIELDS`:
    ``endpoint``, ``outcome`` (``ok``, ``error``, ``rejected``), ``duration_ms``, the
    ``request_id``, ``trace_id`` and ``span_id`` of the call (those of the request being
    served, when it runs inside one), and for a failed call ``error`` (the exception's
    class name; for a refusal the error the caller got, such as ``RateLimited``) and
    ``error_message``. The exception reaches the caller, whose handler decides how loud
    it is: by default the record keeps ``level`` whatever the outcome.

    :param logger: logger name or :class:`logging.Logger` (``"kitmw.endpoint"``).
    :param level: level of the record (DEBUG).
    :param error_level: level of the record of a call that raised or was refused
        (default: ``level``).
    :param exc_info: attach the traceback of the function's exception.
    """

    __slots__ = ("_error_level", "_exc_info", "_level", "_logger")

    name: ClassVar[str] = "access_log"
    shared_options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        logger: str | logging.Logger = "kitmw.endpoint",
        level: int | str = logging.DEBUG,
        error_level: int | str | None = None,
        exc_info: bool = False,
    ) -> None:
        self._logger = logger_option(logger, "logger")
        self._level = level_option(level, "level")
        self._error_level = self._level if error_level is None else level_option(error_level, "error_level")
        self._exc_info = bool_option(exc_info, "exc_info")

    @property
    def logger(self) -> logging.Logger:
        return self._logger

    def exit(self, ex: Exchange) -> None:
        rejection = ex.rejection
        err = ex.error
        level = self._level if rejection is None and err is None else self._error_level
        if not self._logger.isEnabledFor(level):
            return
        try:
            self._record(ex, level)
        except Exception:
            record_failed("endpoint")

    def _record(self, ex: Exchange, level: int) -> None:
        rejection = ex.rejection
        err = ex.error
        duration_ms = round((ex.end_ns - ex.start_ns) / 1e6 if ex.end_ns else 0.0, 3)
        ctx = request_context.get()
        name = ex.route_label()
        fields: dict[str, Any] = {
            "endpoint": name,
            "outcome": "ok",
            "duration_ms": duration_ms,
            "request_id": ex.request_id or (None if ctx is None else ctx.request_id),
            "trace_id": ex.trace_id or (None if ctx is None else ctx.trace_id),
            "span_id": ex.span_id or (None if ctx is None else ctx.span_id),
            "error": None,
            "error_message": None,
        }
        if rejection is not None:
            fields["outcome"] = "rejected"
            fields["error"], fields["error_message"] = error_fields(rejection.error())
            err = None  # a refusal has no traceback worth attaching
        elif err is not None:
            fields["outcome"] = "error"
            fields["error"], fields["error_message"] = error_fields(err)
        if fields["error"] is None:
            msg = "%s %s %.1fms"
            args: tuple[Any, ...] = (name, fields["outcome"], duration_ms)
        else:
            msg = "%s %s %.1fms %s"
            args = (name, fields["outcome"], duration_ms, fields["error"])
        self._logger.handle(
            make_record(self._logger, level, msg, args, fields, err if self._exc_info else None)
        )
