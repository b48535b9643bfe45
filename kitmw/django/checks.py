"""System checks for ``settings.KITMW`` (``manage.py check``; ``"kitmw.django"`` in
``INSTALLED_APPS`` registers them).

* ``kitmw.E001``: ``KITMW`` cannot configure kitmw; the message is the
  :class:`~kitmw.errors.ConfigError` the middleware would raise at startup (it names
  the concern, the option and the closest valid name).
* ``kitmw.W001``: ``KITMW`` is set but the middleware is not in ``MIDDLEWARE``.
* ``kitmw.W002``: the middleware is not the first one: answers of the middleware
  before it (redirects, 403s, 400s for a bad host) are neither counted nor logged,
  and their time is not measured.
* ``kitmw.W003``: the middleware is listed but ``KITMW`` enables no concern (Django
  then drops it).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from ..errors import ConfigError
from . import _config

__all__ = ["check_settings"]

#: The dotted paths ``MIDDLEWARE`` may name the middleware by (the class's own module too).
_PATHS = (_config.MIDDLEWARE, "kitmw.django.middleware.Middleware")


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """What is wrong with ``settings.KITMW`` and the middleware's place."""
    found: list[checks.CheckMessage] = []
    middleware = list(getattr(settings, "MIDDLEWARE", None) or ())
    at = next((i for i, entry in enumerate(middleware) if entry in _PATHS), None)
    listed = at is not None
    config = getattr(settings, _config.SETTING, None)
    try:
        enabled = _config.policies(config)
    except ConfigError as exc:
        found.append(
            checks.Error(
                f"settings.{_config.SETTING}: {exc}",
                hint="KITMW takes the options of kitmw.stack(): see the kitmw docs, page 'Django'.",
                id="kitmw.E001",
            )
        )
        enabled = None
    if config is not None and not listed:
        found.append(
            checks.Warning(
                f"settings.{_config.SETTING} is set but {_config.MIDDLEWARE!r} is not in settings.MIDDLEWARE,"
                " so it configures nothing.",
                hint=f"Put {_config.MIDDLEWARE!r} first in MIDDLEWARE.",
                id="kitmw.W001",
            )
        )
    if at:  # listed, not first
        found.append(
            checks.Warning(
                f"{_config.MIDDLEWARE!r} is not the first middleware: the answers of the ones before it"
                f" ({', '.join(middleware[:at])}) are neither logged,"
                " counted nor traced, and their time is not measured.",
                hint=f"Move {_config.MIDDLEWARE!r} to the top of MIDDLEWARE,"
                " or silence kitmw.W002 if that is what you want.",
                id="kitmw.W002",
            )
        )
    if listed and enabled == []:
        found.append(
            checks.Warning(
                f"{_config.MIDDLEWARE!r} is in MIDDLEWARE but settings.{_config.SETTING} enables no concern,"
                " so Django leaves it out.",
                hint="Set KITMW = {'access_log': True, 'metrics': True, ...}.",
                id="kitmw.W003",
            )
        )
    return found
