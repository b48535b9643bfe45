"""The catalogue's views. kitmw needs nothing from them: what they read from it
(``request.kitmw_principal``) is there because ``settings.KITMW`` enables auth."""

import asyncio
import logging
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

log = logging.getLogger(__name__)


def item(request: HttpRequest, pk: int) -> JsonResponse:
    log.info("item %s requested", pk)  # carries the request id in the log output
    return JsonResponse({"id": pk})


def orders(request: HttpRequest) -> JsonResponse:
    """Only callers whose key grants ``orders:read`` get here (``KITMW["auth"]["scopes"]``)."""
    caller = request.kitmw_principal  # type: ignore[attr-defined]
    return JsonResponse({"orders": [], "for": caller.identity})


async def report(request: HttpRequest) -> JsonResponse:
    """A slow async view: ``?seconds=`` of work (the timeout and concurrency limit apply)."""
    await asyncio.sleep(float(request.GET.get("seconds", "0.1")))
    return JsonResponse({"report": "ready"})


def inventory(request: HttpRequest) -> JsonResponse:
    """Backed by a service that is down: Django renders a 500, the breaker opens."""
    raise ConnectionError("inventory service unreachable")


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


def events(request: HttpRequest) -> StreamingHttpResponse:
    def body() -> Iterator[bytes]:
        for i in range(3):
            yield f"data: {i}\n\n".encode()

    return StreamingHttpResponse(body(), content_type="text/event-stream")
