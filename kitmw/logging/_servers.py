"""uvicorn's and gunicorn's own loggers, taken over by :func:`~kitmw.logging.configure`.

Both servers configure their loggers before they import the application, each with its
own handlers and ``propagate=False``:

* uvicorn (its ``LOGGING_CONFIG``): a handler on ``uvicorn`` (``uvicorn.error`` and
  ``uvicorn.asgi`` pass their records up to it), another on ``uvicorn.access``;
* gunicorn (``gunicorn.glogging.Logger``): a handler on ``gunicorn.error`` and, with
  ``--access-logfile``, on ``gunicorn.access``; its uvicorn worker then gives
  ``uvicorn.error`` and ``uvicorn.access`` *the same handler lists* as gunicorn's.

Taking over gives each server's top logger kitmw's handler instead (``propagate`` stays
off, as the servers set it, so their lines are written once), sends the other loggers'
records up to it, and turns the access loggers off: kitmw's access log replaces them,
and uvicorn does not even format its access line when ``uvicorn.access`` has no handler
(``hasHandlers()``, checked per connection). Handler lists are replaced, never mutated:
the worker's loggers share gunicorn's lists.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError

__all__ = ["SERVERS", "server_names", "swap_handler", "take_over"]

#: Per server: (the logger that gets the handler, loggers whose records go up to it,
#: its access logger).
SERVERS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "uvicorn": ("uvicorn", ("uvicorn.error", "uvicorn.asgi"), "uvicorn.access"),
    "gunicorn": ("gunicorn.error", (), "gunicorn.access"),
}
_ALL_LOGGERS = tuple(name for top, children, access in SERVERS.values() for name in (top, *children, access))


def server_names(value: Any) -> tuple[str, ...]:
    """The ``servers`` option: ``True`` (all), ``False``/``None`` (none), or names."""
    if value is True:
        return tuple(SERVERS)
    if value is False or value is None:
        return ()
    names = [value] if isinstance(value, str) else value
    try:
        found = list(names)
    except TypeError:
        found = [value]
    for name in found:
        if not isinstance(name, str) or name not in SERVERS:
            raise ConfigError(f"servers: expected True, False or names from {', '.join(SERVERS)}, got {value!r}")
    return tuple(dict.fromkeys(found))


def take_over(servers: Iterable[str], handler: logging.Handler, access: bool) -> None:
    """Route ``servers``' own loggers to ``handler``; their access loggers too if ``access``."""
    for name in servers:
        top, children, access_name = SERVERS[name]
        _route(logging.getLogger(top), [handler], propagate=False)
        for child in children:
            _route(logging.getLogger(child), [], propagate=True)
        _route(logging.getLogger(access_name), [handler] if access else [], propagate=False)


def swap_handler(old: list[logging.Handler], new: logging.Handler) -> None:
    """Put ``new`` in place of the ``old`` handlers wherever a takeover put them (a later
    :func:`configure` keeps the servers on its new handler)."""
    manager = logging.Logger.manager
    for name in _ALL_LOGGERS:
        lg = manager.loggerDict.get(name)
        if isinstance(lg, logging.Logger) and any(h in old for h in lg.handlers):
            lg.handlers = list(dict.fromkeys(new if h in old else h for h in lg.handlers))


def _route(lg: logging.Logger, handlers: list[logging.Handler], *, propagate: bool) -> None:
    lg.handlers = handlers
    lg.propagate = propagate
    lg.disabled = False  # a dictConfig with disable_existing_loggers may have silenced it
