"""Views as users write them: kitmw needs nothing from them."""

import logging
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

log = logging.getLogger(__name__)


def item(request: HttpRequest, pk: int) -> JsonResponse:
    log.info("item %s requested", pk)  # carries the request id in the log output
    return JsonResponse({"id": pk})


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


def events(request: HttpRequest) -> StreamingHttpResponse:
    def body() -> Iterator[bytes]:
        for i in range(3):
            yield f"data: {i}\n\n".encode()

    return StreamingHttpResponse(body(), content_type="text/event-stream")
