"""Settings of the example project: ``django-admin startproject``'s, plus the project's
own app (``catalog``). Adopting kitmw took the lines marked ``# kitmw``: the first entry
of ``MIDDLEWARE`` and ``KITMW``; ``"kitmw.django"`` in ``INSTALLED_APPS`` (so that
``manage.py check`` validates ``KITMW``), the ``Options`` type of ``KITMW`` and
``LOGGING`` (to print the access log with the request id on every record; the server's
own logging configuration can do that instead) are optional.
"""

import os
from pathlib import Path

import kitmw.auth
from kitmw.django import Options  # kitmw (optional): the type of KITMW, for editors and mypy

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "catalog",
    "kitmw.django",  # kitmw (optional): manage.py check validates KITMW
]

MIDDLEWARE = [
    "kitmw.django.Middleware",  # kitmw: first, so that it sees every response
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# kitmw: the options of kitmw.stack(), one per concern (the environment variables let
# the end-to-end tests tighten them).
KITMW: Options = {
    "tracing": True,  # spans go to the global tracer provider (opentelemetry-instrument sets it)
    "access_log": True,
    "metrics": True,  # also serves /metrics
    "timeout": float(os.environ.get("KITMW_TIMEOUT", "10")),
    "ratelimit": os.environ.get("KITMW_RATELIMIT", "100/second"),
    "auth": {
        "backend": kitmw.auth.APIKey(
            keys={
                os.environ.get("CATALOG_OPS_KEY", "ops-key-for-local-use"): "ops",
                os.environ.get("CATALOG_READER_KEY", "reader-key-for-local-use"): "reader",
            },
            scopes={"ops": ["orders:read"]},
        ),
        "optional": True,  # the catalogue is public...
        "scopes": {"/orders": ["orders:read"]},  # ...orders need a key granting this scope
    },
    "concurrency": int(os.environ.get("KITMW_CONCURRENCY", "64")),
    "breaker": {"fail_max": int(os.environ.get("KITMW_BREAKER_FAILURES", "5"))},
    "exclude_paths": ["/metrics", "/health", "/livez", "/readyz"],  # scrapes and probes
}

ROOT_URLCONF = "mysite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "mysite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# kitmw (optional): kitmw's access log, Django's records and the app's own, one JSON
# object per line, each carrying request_id / trace_id.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"kitmw": {"()": "kitmw.logging.ContextFilter"}},
    "formatters": {"json": {"()": "kitmw.logging.JsonFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "filters": ["kitmw"], "formatter": "json"},
    },
    "loggers": {
        "kitmw": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "django.request": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "catalog": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
