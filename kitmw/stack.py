"""``stack()`` and ``kitmw.Stack``: every chosen concern fused into one layer.

The concerns run in the canonical order of :data:`kitmw.concerns.CONCERNS` (outermost
first; ``docs/architecture.md`` explains each place), around one wrapped ``send``
(ASGI) or ``start_response`` (WSGI), instead of one nested layer per concern.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from ._types import is_asgi
from .concerns import CONCERNS, ServerConcerns, build_all
from .errors import ConfigError
from .exchange import Policy

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["CANONICAL_ORDER", "StackOptions", "build_policies", "stack"]

#: (option, package, server policy class) of every server concern, outermost first
#: (read from :data:`kitmw.concerns.CONCERNS`).
CANONICAL_ORDER: tuple[tuple[str, str, str], ...] = tuple(
    (c.name, c.package, c.policies["server"]) for c in CONCERNS if "server" in c.policies
)


class StackOptions(ServerConcerns, total=False):
    """Every option of :func:`stack`, typed: the concerns and the layer's own options,
    for a dict of them (``stack(app, **options)``, a framework's settings)."""

    exclude_paths: Iterable[str] | str | None
    protocol: Literal["asgi", "wsgi"] | None
    handle_errors: bool | None


def build_policies(concerns: Mapping[str, Any], *, shared: Mapping[str, Any] | None = None) -> list[Policy]:
    """Server policies for the enabled ``concerns`` (name -> option value), in the
    canonical order. ``shared`` options (``exclude_paths``, ``registry``) go to every
    policy that accepts them unless that concern's own options set them."""
    return build_all("server", concerns, shared=shared)


def stack(
    app: Any,
    /,
    *,
    exclude_paths: Iterable[str] | str | None = None,
    protocol: Literal["asgi", "wsgi"] | None = None,
    handle_errors: bool | None = None,
    **concerns: Unpack[ServerConcerns],
) -> Any:
    """Wrap ``app`` (ASGI or WSGI, detected) in one layer running the chosen concerns.

    Each concern (``tracing``, ``access_log``, ``metrics``, ``timeout``, ``ratelimit``,
    ``auth``, ``concurrency``, ``breaker``) is ``True`` (defaults), a dict of that
    concern's options, or a policy object; ``timeout`` also takes seconds, ``ratelimit``
    a rate string, ``auth`` a backend (or a list) and ``concurrency`` a limit. A concern
    left out is off. The options are typed (:class:`~kitmw.concerns.ServerConcerns`,
    each concern's dict its package's ``...Options``), so editors complete them and
    type checkers reject a misspelled one. ``exclude_paths`` applies to every concern
    that does not set its own. ``protocol`` forces ``"asgi"`` or ``"wsgi"``.
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
