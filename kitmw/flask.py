"""kitmw as a Flask extension: ``Kitmw(app)`` or ``Kitmw().init_app(app)``.

The extension reads the options of :func:`kitmw.stack` from ``app.config["KITMW"]``
and from its own keywords, and installs the same one fused layer as
``app.wsgi_app = kitmw.stack(app.wsgi_app, ...)``. Nothing else runs per request: the
views read the caller and the request id with :func:`principal` and
:func:`request_id`, which look at what the layer already put in the request's environ
and context.

Where options come from, later over earlier: ``app.config["KITMW"]``, the keywords of
``Kitmw(...)``, the keywords of ``init_app(...)``. For each option the later value
replaces the earlier one, except that two option sets of one concern (``True``, a
dict, or the concern's shorthand such as ``"100/minute"``) are merged, option by
option, the later winning; ``False`` turns a concern off, a policy object replaces.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._paths import PathMatcher
from .concerns import CONCERNS, concern
from .errors import ConfigError
from .exchange import Policy

if TYPE_CHECKING:
    from flask import Flask
    from typing_extensions import Unpack

    from .auth import Principal
    from .stack import StackOptions
    from .wsgi import Middleware

__all__ = ["CONFIG_KEY", "EXTENSION_KEY", "Kitmw", "State", "principal", "request_id", "scopes"]

#: The ``app.config`` key holding kitmw's options (a dict of :func:`kitmw.stack` options).
CONFIG_KEY = "KITMW"
#: The ``app.extensions`` key of an app's :class:`State`.
EXTENSION_KEY = "kitmw"

#: Options of the layer itself, beside one per server concern.
_LAYER_OPTIONS = ("exclude_paths", "handle_errors")
_CONCERNS = tuple(c.name for c in CONCERNS if "server" in c.policies)
_OPTIONS = (*_CONCERNS, *_LAYER_OPTIONS)
_NO_SCOPES: frozenset[str] = frozenset()


@dataclass(frozen=True)
class State:
    """What :meth:`Kitmw.init_app` installed on one app (``app.extensions["kitmw"]``).

    :param extension: the :class:`Kitmw` that installed it.
    :param middleware: the layer now in ``app.wsgi_app`` (its ``policies``, outermost first).
    :param options: the merged options it was built from (config and keywords).
    """

    extension: Kitmw
    middleware: Middleware
    options: Mapping[str, Any]


class Kitmw:
    """Install kitmw's fused layer on a Flask app's ``wsgi_app``.

    ``Kitmw(app, **options)`` installs it at once; ``Kitmw(**options)`` then
    ``init_app(app)`` does it for each app an application factory makes. The options
    are those of :func:`kitmw.stack` (each concern, ``exclude_paths``,
    ``handle_errors``), merged over ``app.config["KITMW"]`` (see the module docstring).
    Each ``init_app`` builds its own policies: apps share only the objects the options
    hand them (a registry, a storage, a policy object).
    """

    __slots__ = ("options",)

    def __init__(self, app: Flask | None = None, /, **options: Unpack[StackOptions]) -> None:
        _check_names(options, "Kitmw()")
        self.options: dict[str, Any] = dict(options)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, /, **options: Unpack[StackOptions]) -> State:
        """Build the layer from ``app.config["KITMW"]`` and the keywords and install it.

        :raises ConfigError: an invalid option, naming it (and ``app.config["KITMW"]``
            when the value came from there), or an app kitmw is already installed on.
        """
        extensions = getattr(app, "extensions", None)
        if not isinstance(extensions, dict) or not callable(getattr(app, "wsgi_app", None)):
            raise ConfigError(f"app: expected a Flask application, got {app!r}")
        if EXTENSION_KEY in extensions:
            raise ConfigError(
                f'app: kitmw is already installed on {app!r} (app.extensions["{EXTENSION_KEY}"]);'
                " call init_app once per app"
            )
        _check_names(options, "init_app()")
        config = app.config.get(CONFIG_KEY)
        if config is None:
            config = {}
        elif not isinstance(config, Mapping):
            raise ConfigError(
                f'app.config["{CONFIG_KEY}"]: expected a dict of kitmw.stack() options'
                f" such as {{'metrics': True}}, got {config!r}"
            )
        _check_names(config, f'app.config["{CONFIG_KEY}"]')
        source = f'app.config["{CONFIG_KEY}"]'
        origins: dict[str, str] = {}
        try:
            merged = _merge({}, config, source, origins)
            merged = _merge(merged, self.options, "the keywords", origins)
            merged = _merge(merged, options, "the keywords", origins)
            _check_layer_options(merged)
            from .stack import stack

            layer = stack(app.wsgi_app, protocol="wsgi", **merged)
        except ConfigError as exc:
            # Name the config when the bad value came from there: it is not in the code.
            origin = origins.get(str(exc).partition(":")[0], "")
            if origin.startswith(source):
                exc.args = (f"{origin}: {exc}", *exc.args[1:])
            raise
        state = State(self, layer, merged)
        app.wsgi_app = layer  # type: ignore[method-assign]
        extensions[EXTENSION_KEY] = state
        return state


def principal() -> Principal | None:
    """The caller kitmw's auth verified for the current request (``.identity``,
    ``.scopes``, ``.claims``), or None: no credentials on a path auth lets through
    (``exclude_paths``, ``optional=True``), or no ``auth`` configured.

    Reads ``request.environ["kitmw.user"]``; outside a request Flask raises its
    "working outside of request context" error.
    """
    from flask import request

    found: Principal | None = request.environ.get("kitmw.user")
    return found


def scopes() -> frozenset[str]:
    """The scopes of :func:`principal` (empty without a caller)."""
    from flask import request

    found: frozenset[str] = request.environ.get("kitmw.scopes") or _NO_SCOPES
    return found


def request_id() -> str | None:
    """The request id of the current request (``X-Request-ID``, taken or made by the
    access log and echoed on the response), or None without ``access_log`` or outside
    a request. It is what every log record of the request carries."""
    from .logging import current_request_id

    return current_request_id()


def _check_names(options: Mapping[str, Any], where: str) -> None:
    for name in options:
        if name in _OPTIONS:
            continue
        if name == "protocol":
            raise ConfigError(f"{where}: protocol: a Flask app is always WSGI; leave the option out")
        close = difflib.get_close_matches(str(name), _OPTIONS, n=1)
        suggestion = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{where}: unknown option {name!r}{suggestion} (options: {', '.join(sorted(_OPTIONS))})"
        )


def _check_layer_options(options: Mapping[str, Any]) -> None:
    """The layer's own options, checked here so that an error names them (through
    ``stack()`` a bad ``exclude_paths`` is reported by the first concern it reaches)."""
    PathMatcher(options.get("exclude_paths"))
    handle_errors = options.get("handle_errors")
    if handle_errors is not None and not isinstance(handle_errors, bool):
        raise ConfigError(f"handle_errors: expected True, False or None, got {handle_errors!r}")


def _merge(base: dict[str, Any], over: Mapping[str, Any], source: str, origins: dict[str, str]) -> dict[str, Any]:
    """``over`` on top of ``base``: per option a replacement, per concern a merge of
    the two option sets (``True``, a dict, a shorthand value). ``origins`` records
    where each option's value came from."""
    merged = dict(base)
    for name, value in over.items():
        origin = source
        if name in _CONCERNS:
            earlier = merged.get(name)
            if name in merged and _is_option_set(earlier) and _is_option_set(value):
                entry = concern(name)
                first = entry.options(earlier)  # an error here is the earlier source's
                previous = origins[name]
                origins[name] = source
                value = {**first, **entry.options(value)}
                origin = previous if previous.endswith(source) else f"{previous} merged with {source}"
            elif isinstance(value, Mapping):
                value = dict(value)
        merged[name] = value
        origins[name] = origin
    return merged


def _is_option_set(value: Any) -> bool:
    return value is not None and value is not False and not isinstance(value, Policy)
