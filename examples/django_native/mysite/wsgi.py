"""WSGI entry point, as ``django-admin startproject`` writes it:
``gunicorn -k gthread --threads 8 mysite.wsgi:application``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = get_wsgi_application()
