"""A minimal Django project for the tests: settings, views and URLs in one module.

Django's settings can be configured once per process, and several test modules (WSGI
and ASGI) use Django. :func:`setup` is idempotent: it configures the settings only if
nothing did yet, with ``ROOT_URLCONF`` pointing here. :func:`urls` makes this module the
URLconf for a block even if another module configured the settings first.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from django.urls import include, path, re_path

__all__ = ["GATES", "URLCONF", "setup", "urlpatterns", "urls"]

URLCONF = "django_project"

#: Gates the streaming view waits on, by the value of its ``X-Gate`` request header.
GATES: dict[str, tuple[threading.Event, list[bool]]] = {}


def setup() -> None:
    """Configure Django once per process (a no-op if something else already did)."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="kitmw-tests-only",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=URLCONF,
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
            USE_TZ=True,
        )
    django.setup()


@contextlib.contextmanager
def urls() -> Iterator[None]:
    """Serve this module's URLs for the block, whoever configured the settings."""
    setup()
    from django.conf import settings

    if settings.ROOT_URLCONF == URLCONF:
        yield
        return
    from django.test.utils import override_settings

    with override_settings(ROOT_URLCONF=URLCONF, ALLOWED_HOSTS=["*"]):
        yield


def item(request: Any, pk: int) -> Any:
    from django.http import HttpResponse

    return HttpResponse(f"item {pk}", content_type="text/plain")


def boom(request: Any) -> Any:
    raise RuntimeError("boom")


def stream(request: Any) -> Any:
    from django.http import StreamingHttpResponse

    gate = GATES.get(request.headers.get("X-Gate", ""))

    def body() -> Iterator[bytes]:
        yield b"first\n"
        if gate is not None:
            event, released = gate
            released.append(event.wait(timeout=10))  # False: the client saw nothing yet
        yield b"second\n"

    return StreamingHttpResponse(body(), content_type="text/plain")


urlpatterns = [
    path("items/<int:pk>", item),
    path("boom", boom),
    path("stream", stream),
    path("api/v1/", include([path("items/<int:pk>", item)])),
    re_path(r"^articles/(?P<pk>[0-9]{4})/$", item),
    path("kitmw-metrics/items/<int:pk>", item),  # the metrics tests' Django route
]
