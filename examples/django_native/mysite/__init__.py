"""A Django project that adopted kitmw in its settings only (``MIDDLEWARE`` and ``KITMW``)."""
