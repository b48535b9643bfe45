"""WSGI entry point: ``gunicorn -k gthread --threads 4 kitmw_example.wsgi:application``.

kitmw wraps Django's handler from the outside, so it sees every request (the ones
Django's own middleware rejects too) and labels metrics with the URL pattern
(``/items/<int:pk>``). ``/metrics`` is served by the metrics concern.
"""

import os

from django.core.wsgi import get_wsgi_application

import kitmw

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kitmw_example.settings")

application = kitmw.stack(
    get_wsgi_application(),
    access_log=True,
    metrics=True,
    ratelimit=os.environ.get("KITMW_RATELIMIT", "100/second"),
    exclude_paths=["/metrics", "/health", "/livez", "/readyz"],  # scrapes and probes
)
