"""ASGI entry point: ``uvicorn kitmw_example.asgi:application``.

The same concerns as :mod:`kitmw_example.wsgi`, around Django's ASGI handler.
"""

import os

from django.core.asgi import get_asgi_application

import kitmw

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kitmw_example.settings")

application = kitmw.stack(
    get_asgi_application(),
    access_log=True,
    metrics=True,
    ratelimit=os.environ.get("KITMW_RATELIMIT", "100/second"),
    exclude_paths=["/metrics", "/health", "/livez", "/readyz"],  # scrapes and probes
)
