"""The logging policies' options as typed dicts, for editors and type checkers.

``kitmw.AccessLog(app, ...)``, ``stack(access_log={...})``, a transport's
``access_log={...}``/``request_id={...}`` and ``kitmw.endpoint(..., access_log={...})``
take these keys; what each one does is in the policy's docstring.
tests/test_options.py keeps them equal to the policies' keyword arguments.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import TypedDict

__all__ = ["AccessLogOptions", "ClientLogOptions", "ClientRequestIdOptions", "EndpointLogOptions"]


class _RecordOptions(TypedDict, total=False):
    logger: str | logging.Logger
    level: int | str
    exc_info: bool


class EndpointLogOptions(_RecordOptions, total=False):
    """Options of :class:`~kitmw.logging.EndpointLogPolicy` (``kitmw.endpoint(access_log=...)``)."""

    error_level: int | str | None


class ClientLogOptions(_RecordOptions, total=False):
    """Options of :class:`~kitmw.logging.ClientLogPolicy` (a transport's ``access_log=``)."""

    error_level: int | str
    log_query: bool
    redact_query: Iterable[str] | re.Pattern[str] | None


class AccessLogOptions(ClientLogOptions, total=False):
    """Options of :class:`~kitmw.logging.AccessLogPolicy` (``kitmw.AccessLog``, ``stack(access_log=...)``)."""

    request_id_header: str
    exclude_paths: Iterable[str] | str | None
    generate: Callable[[], str]
    validate: Callable[[str], bool] | None
    trust_request_id: bool
    reject_invalid: bool
    use_trace_id: bool
    counts_request_bytes: bool


class ClientRequestIdOptions(TypedDict, total=False):
    """Options of :class:`~kitmw.logging.ClientRequestIdPolicy` (a transport's ``request_id=``)."""

    header: str
