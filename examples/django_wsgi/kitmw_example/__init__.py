"""A minimal Django project served with kitmw under gunicorn (WSGI) or uvicorn (ASGI)."""
