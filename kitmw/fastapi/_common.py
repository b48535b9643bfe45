"""What the dependencies share: the refusal they raise, its handler, the exchange they read."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..asgi import AsgiExchange, exchange_of
from ..errors import Rejected, Rejection

__all__ = ["HTTPRejected", "exchange", "rejection_handler"]

#: Where a request without a kitmw layer keeps the exchange its dependencies share
#: (the principal ``require()`` found is the key ``limit(key="principal")`` reads).
_OWN_EXCHANGE = "kitmw.fastapi.exchange"


class HTTPRejected(Rejected, HTTPException):
    """A dependency refused the request (401, 403, 429, 503): a kitmw :class:`Rejected`
    carrying the :class:`~kitmw.errors.Rejection`, and a Starlette ``HTTPException``.

    With :func:`rejection_handler` registered (:func:`instrument` does it) the answer is
    kitmw's, byte for byte the middleware's: ``{"error": "unauthorized"}`` and the
    policy's headers. Without it, FastAPI's ``HTTPException`` handler answers with the
    same status and headers and its own body (``{"detail": "unauthorized"}``).
    """

    def __init__(self, rejection: Rejection) -> None:
        merged: dict[str, str] = {}
        for name, value in rejection.headers:  # several challenges: one header, RFC 7235 list
            merged[name] = f"{merged[name]}, {value}" if name in merged else value
        HTTPException.__init__(self, rejection.status, detail=rejection.code, headers=merged or None)
        self._rejection = rejection
        self.status = rejection.status
        self.code = rejection.code
        retry_after = rejection.header("retry-after")
        self.retry_after = float(retry_after) if retry_after and retry_after.isdigit() else 0.0

    def __str__(self) -> str:
        return f"{self.status_code}: {self.detail}"


async def rejection_handler(request: Request, exc: Exception) -> Response:
    """Answer a :class:`HTTPRejected` as kitmw's middleware answers the same refusal:
    ``app.add_exception_handler(HTTPRejected, rejection_handler)``."""
    rejection = exc.rejection if isinstance(exc, Rejected) else Rejection(500)
    response = Response(rejection.body, status_code=rejection.status, media_type=rejection.content_type)
    for name, value in rejection.headers:
        response.headers.append(name, value)
    return response


def exchange(scope: Any) -> AsgiExchange:
    """The kitmw layer's exchange of this request, or one its dependencies share."""
    ex = exchange_of(scope)
    if ex is None:
        ex = scope.get(_OWN_EXCHANGE)
        if ex is None:
            ex = scope[_OWN_EXCHANGE] = AsgiExchange(scope, scope.get("app"))
    return ex
