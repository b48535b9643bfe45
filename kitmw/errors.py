"""The kitmw error tree and the early answers policies give.

::

    KitmwError
    ├── ConfigError (also ValueError)      a bad option, raised at construction
    ├── Rejected                           a policy refused a call (carries its Rejection)
    │   ├── BreakerOpen                    an open breaker (circuit_open)
    │   ├── RateLimited                    a rate limit (rate_limited)
    │   ├── ConcurrencyLimited             every slot taken (concurrency_limited)
    │   └── DeadlineExceeded (TimeoutError) the deadline passed (timeout)
    ├── StorageError                       a limits/breaker storage could not be reached
    └── NoResponse                         recorded when the app sent no response (a 500)

A policy never raises to refuse: it returns a :class:`Rejection`. The server drivers
(ASGI, WSGI) answer it as JSON; the drivers of calls (httpx, :func:`kitmw.endpoint`)
raise its :meth:`Rejection.error` (the httpx ones a subclass that is also
``httpx.TransportError``, so existing handlers still catch it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

__all__ = [
    "BreakerOpen",
    "ConcurrencyLimited",
    "ConfigError",
    "DeadlineExceeded",
    "KitmwError",
    "NoResponse",
    "RateLimited",
    "Rejected",
    "Rejection",
    "StorageError",
]


class KitmwError(Exception):
    """Base class of every error kitmw raises."""


class ConfigError(KitmwError, ValueError):
    """An option is invalid; the message names the option."""


class Rejected(KitmwError):
    """A policy refused the call: no request was sent, the function was not called.

    ``rejection`` is the policy's answer (status, ``code``, headers); ``retry_after``
    the seconds it asks to wait (0 when it says nothing).
    """

    #: Status and code of the answer this class stands for (subclasses set them).
    status: int = 503
    code: str = "unavailable"

    def __init__(
        self, message: str = "", *, retry_after: float = 0.0, rejection: Rejection | None = None
    ) -> None:
        super().__init__(message or (rejection.code if rejection is not None else self.code))
        self.retry_after = retry_after
        self._rejection = rejection

    @property
    def rejection(self) -> Rejection:
        rejection = self._rejection
        if rejection is None:
            headers = (("Retry-After", str(max(1, math.ceil(self.retry_after)))),) if self.retry_after else ()
            rejection = self._rejection = Rejection(self.status, self.code, headers=headers)
        return rejection


class BreakerOpen(Rejected):
    """The circuit breaker is open; no request was sent."""

    status = 503
    code = "circuit_open"

    def __init__(
        self,
        message: str = "circuit breaker is open",
        *,
        retry_after: float = 0.0,
        name: str = "",
        rejection: Rejection | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after, rejection=rejection)
        self.name = name


class RateLimited(Rejected):
    """A rate limit refused the call (erroring mode, or the wait would be too long)."""

    status = 429
    code = "rate_limited"

    def __init__(
        self, message: str = "rate limited", *, retry_after: float = 0.0, rejection: Rejection | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after, rejection=rejection)


class ConcurrencyLimited(Rejected):
    """Every slot of a concurrency limit was taken (and none freed within the wait)."""

    status = 503
    code = "concurrency_limited"

    def __init__(
        self,
        message: str = "concurrency limit reached",
        *,
        retry_after: float = 0.0,
        rejection: Rejection | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after, rejection=rejection)


class DeadlineExceeded(Rejected, TimeoutError):
    """The call's deadline passed (a ``TimeoutError``); an async call was cancelled."""

    status = 504
    code = "timeout"

    def __init__(
        self, message: str = "deadline exceeded", *, retry_after: float = 0.0, rejection: Rejection | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after, rejection=rejection)


class StorageError(KitmwError):
    """A shared storage (Redis, …) failed; policies decide whether to fail open or closed."""


_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


@dataclass(frozen=True)
class Rejection:
    """An early answer: status, a stable machine-readable ``code`` and extra headers.

    Drivers render it as ``{"error": code}`` with ``content-type: application/json``,
    unless ``body`` is given (a policy serving content, such as the metrics exposition).
    """

    status: int
    code: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    detail: str | None = None
    body: bytes = field(default=b"", repr=False, compare=False)
    content_type: str = "application/json"

    def __post_init__(self) -> None:
        if self.body or self.content_type != "application/json":
            return  # a non-error early answer (the /metrics exposition) carries its own body
        code = self.code or _REASONS.get(self.status, "error")
        object.__setattr__(self, "code", code)
        payload: dict[str, str] = {"error": code}
        if self.detail:
            payload["detail"] = self.detail
        object.__setattr__(self, "body", json.dumps(payload, separators=(",", ":")).encode())

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        """Raw (lower-case name, value) pairs including content type and length."""
        pairs = [
            (b"content-type", self.content_type.encode("latin-1")),
            (b"content-length", str(len(self.body)).encode()),
        ]
        pairs.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers)
        return pairs

    def header(self, name: str) -> str | None:
        """The value of extra header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def error(self, message: str = "") -> Rejected:
        """The exception a driver of calls raises for this answer: :class:`BreakerOpen`,
        :class:`RateLimited`, :class:`ConcurrencyLimited`, :class:`DeadlineExceeded` by
        ``code``, else :class:`Rejected`; ``retry_after`` from ``Retry-After``."""
        cls = _ERRORS.get(self.code, Rejected)
        retry_after = 0.0
        value = self.header("retry-after")
        if value is not None:
            try:
                retry_after = float(value)
            except ValueError:
                pass
        return cls(message or self.detail or self.code, retry_after=retry_after, rejection=self)


class NoResponse(KitmwError):
    """Recorded, never raised: the application returned without sending a response.

    The server answers such a request with a 500 of its own; the drivers record that 500
    with this error, so the access log, metrics, span and breaker tell the same story.
    """

    def __init__(self, message: str = "the application returned without sending a response") -> None:
        super().__init__(message)


_ERRORS: dict[str, type[Rejected]] = {
    cls.code: cls for cls in (BreakerOpen, RateLimited, ConcurrencyLimited, DeadlineExceeded)
}
