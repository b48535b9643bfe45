"""Settings of the example project: nothing kitmw-specific lives here."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "kitmw_example.urls"
WSGI_APPLICATION = "kitmw_example.wsgi.application"
ASGI_APPLICATION = "kitmw_example.asgi.application"
USE_TZ = True

# kitmw's access log and the app's own records, one JSON object per line, each carrying
# request_id / trace_id (kitmw.logging.configure() does the same in code).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"kitmw": {"()": "kitmw.logging.ContextFilter"}},
    "formatters": {"json": {"()": "kitmw.logging.JsonFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "filters": ["kitmw"], "formatter": "json"},
    },
    "loggers": {
        "kitmw.access": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "kitmw_example": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
