"""kitmw in Django's own way: a middleware in ``settings.MIDDLEWARE``, configured by
``settings.KITMW``, checked by ``manage.py check``.

.. code-block:: python

    # settings.py
    INSTALLED_APPS = [..., "kitmw.django"]   # optional: manage.py check validates KITMW
    MIDDLEWARE = ["kitmw.django.Middleware", ...]   # first: it sees every response
    KITMW = {"access_log": True, "metrics": True, "ratelimit": "100/minute"}

``KITMW`` takes the options of :func:`kitmw.stack` (typed: :class:`Options`). :class:`Middleware` runs under WSGI
and ASGI alike; :func:`principal` gives a view the caller kitmw's auth verified, under
this middleware or under ``kitmw.stack()`` wrapping Django's application.

Nothing here is imported until used: ``"kitmw.django"`` in ``INSTALLED_APPS`` loads the
app config only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._config import Options
    from .middleware import Middleware, principal

__all__ = ["Middleware", "Options", "principal"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        # Options is for settings.py: it comes without importing Django's request machinery.
        module = "._config" if name == "Options" else ".middleware"
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
