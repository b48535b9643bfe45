"""``stack()`` and ``kitmw.Stack``: every chosen concern fused into one layer.

The concerns run in the canonical order of :data:`kitmw.concerns.CONCERNS` (outermost
first; ``docs/architecture.md`` explains each place), around one wrapped ``send``
(ASGI) or ``start_response`` (WSGI), instead of one nested layer per concern.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._types import is_asgi
from .concerns import CONCERNS, build_all
from .errors import ConfigError
from .exchange import Policy

__all__ = ["CANONICAL_ORDER", "build_policies", "stack"]

#: (option, package, server policy class) of every server concern, outermost first
#: (read from :data:`kitmw.concerns.CONCERNS`).
CANONICAL_ORDER: tuple[tuple[str, str, str], ...] = tuple(
    (c.name, c.package, c.policies["server"]) for c in CONCERNS if "server" in c.policies
)


def build_policies(concerns: Mapping[str, Any], *, shared: Mapping[str, Any] | None = None) -> list[Policy]:
    """Server policies for the enabled ``concerns`` (name -> option value), in the
    canonical order. ``shared`` options (``exclude_paths``, ``registry``) go to every
    policy that accepts them unless that concern's own options set them."""
    return build_all("server", concerns, shared=shared)


def stack(
    app: Any,
    /,
    *,
    exclude_paths: Any = None,
    protocol: str | None = None,
    handle_errors: bool | None = None,
    **concerns: Any,
) -> Any:
    """Wrap ``app`` (ASGI or WSGI, detected) in one layer running the chosen concerns.

    Each concern (``tracing``, ``access_log``, ``metrics``, ``ratelimit``, ``auth``,
    ``breaker``, …) is ``True`` (defaults), a dict of that concern's options, or a
    policy object; ``ratelimit`` also takes a rate string and ``auth`` a backend (or a
    list). A concern left out is off. ``exclude_paths`` applies to every concern that
    does not set its own. ``protocol`` forces ``"asgi"`` or ``"wsgi"``.
    """
    if app is None or not callable(app):
        raise ConfigError(
            f"app: expected the ASGI or WSGI application to wrap, as in stack(app, metrics=True), got {app!r}"
        )
    if protocol not in (None, "asgi", "wsgi"):
        raise ConfigError(f"protocol: expected 'asgi', 'wsgi' or None, got {protocol!r}")
    policies = build_policies(concerns, shared={"exclude_paths": exclude_paths})
    if protocol is None:
        protocol = "asgi" if is_asgi(app) else "wsgi"
    if protocol == "asgi":
        from .asgi import Middleware

        return Middleware(app, *policies, handle_errors=handle_errors)
    from .wsgi import Middleware as WsgiMiddleware

    return WsgiMiddleware(app, *policies, handle_errors=handle_errors)
