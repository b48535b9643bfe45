"""``settings.KITMW``: the options of :func:`kitmw.stack`, turned into policies once.

The middleware and the system check both read the setting through :func:`policies`, so
``manage.py check`` reports exactly the :class:`~kitmw.errors.ConfigError` the middleware
would raise when Django loads it (the concern, the option and the closest valid name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..concerns import ServerConcerns
from ..errors import ConfigError
from ..exchange import Policy
from ..stack import build_policies

__all__ = ["MIDDLEWARE", "SETTING", "Options", "policies"]

#: The setting kitmw reads.
SETTING = "KITMW"
#: The dotted path that goes in ``settings.MIDDLEWARE``.
MIDDLEWARE = "kitmw.django.Middleware"

class Options(ServerConcerns, total=False):
    """``settings.KITMW``, typed (``KITMW: Options = {...}``): the options of
    :func:`kitmw.stack` (:class:`kitmw.stack.StackOptions`) but the two that mean
    nothing inside Django, ``protocol`` and ``handle_errors``."""

    exclude_paths: Iterable[str] | str | None


#: ``stack()`` options that mean nothing inside Django, and why.
_NOT_HERE = {
    "protocol": "Django tells the middleware whether it serves WSGI or ASGI; leave it out",
    "handle_errors": "Django renders the 500 of a failing view itself; leave it out",
}


def policies(config: Any) -> list[Policy]:
    """The server policies ``config`` (the value of ``settings.KITMW``) enables, in the
    canonical order; ``[]`` for ``None``. Raises :class:`ConfigError` naming the option."""
    if config is None:
        return []
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"expected a dict of kitmw.stack() options such as {{'metrics': True}}, got {type(config).__name__}"
        )
    options = dict(config)
    for key, why in _NOT_HERE.items():
        if key in options:
            raise ConfigError(f"{key}: not a Django option: {why}")
    exclude_paths = options.pop("exclude_paths", None)
    return build_policies(options, shared={"exclude_paths": exclude_paths})
