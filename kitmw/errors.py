"""The kitmw error tree and the early answers policies give.

::

    KitmwError
    ├── ConfigError (also ValueError)      a bad option, raised at construction
    ├── BreakerOpen                        a client call refused by an open breaker
    │     (the httpx drivers raise a subclass that is also httpx.TransportError)
    ├── RateLimited                        a client call refused by a rate limit
    ├── StorageError                       a limits/breaker storage could not be reached
    └── NoResponse                         recorded when the app sent no response (a 500)

A server-side policy never raises to refuse a request: it returns a
:class:`Rejection`, which every driver turns into the same JSON response.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = [
    "BreakerOpen",
    "ConfigError",
    "KitmwError",
    "NoResponse",
    "RateLimited",
    "Rejection",
    "StorageError",
]


class KitmwError(Exception):
    """Base class of every error kitmw raises."""


class ConfigError(KitmwError, ValueError):
    """An option is invalid; the message names the option."""


class BreakerOpen(KitmwError):
    """The circuit breaker for this upstream is open; no request was sent."""

    def __init__(
        self, message: str = "circuit breaker is open", *, retry_after: float = 0.0, name: str = ""
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.name = name


class RateLimited(KitmwError):
    """A client-side rate limit refused the call (erroring mode, or the wait was too long)."""

    def __init__(self, message: str = "rate limited", *, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageError(KitmwError):
    """A shared storage (Redis, …) failed; policies decide whether to fail open or closed."""


_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
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


class NoResponse(KitmwError):
    """Recorded, never raised: the application returned without sending a response.

    The server answers such a request with a 500 of its own; the drivers record that 500
    with this error, so the access log, metrics, span and breaker tell the same story.
    """

    def __init__(self, message: str = "the application returned without sending a response") -> None:
        super().__init__(message)
