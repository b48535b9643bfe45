"""``stack()``: every chosen concern fused into one layer, in the canonical order.

Server order, outermost first, and why:

1. **tracing**: the span covers everything below and gives the logs a trace id;
2. **access_log**: every request is logged, the rejected ones too;
3. **metrics**: rejections (429, 401, 503) are counted;
4. **ratelimit**: cheap, it protects what follows; keyed by client address unless a
   principal key is asked for, which moves it after auth;
5. **auth**: verifies the caller before the application is reached;
6. **breaker**: closest to the application, it judges the application's health only.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from ._concerns import CONCERNS, build_policy, policy_class
from .errors import ConfigError
from .exchange import Policy

__all__ = ["CANONICAL_ORDER", "build_policies", "stack"]

#: (option, module, policy class), outermost first.
CANONICAL_ORDER: tuple[tuple[str, str, str], ...] = tuple((name, *where) for name, where in CONCERNS.items())


def _options(name: str, value: Any) -> dict[str, Any]:
    if value is True:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if name == "ratelimit" and isinstance(value, str):
        return {"limit": value}
    if name == "auth" and value is not None and not isinstance(value, (bool, str, int, float)):
        return {"backend": value}  # a backend, or a list of backends
    raise ConfigError(
        f"{name}: expected "
        + ("a backend, a list of backends, a dict of options" if name == "auth" else "True, a dict of options")
        + (", a rate string" if name == "ratelimit" else "")
        + f" or a policy, got {value!r}"
    )


def build_policies(concerns: Mapping[str, Any], *, shared: Mapping[str, Any] | None = None) -> list[Policy]:
    """Policies for the enabled ``concerns`` in canonical order.

    ``shared`` options (``exclude_paths``, ``registry``) are given to every policy that
    accepts them unless that concern's own options set them.
    """
    unknown = sorted(set(concerns) - set(CONCERNS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(CONCERNS), n=1)
        raise ConfigError(
            f"unknown concern(s): {', '.join(unknown)}"
            + (f"; did you mean {close[0]!r}?" if close else "")
            + f" (concerns: {', '.join(CONCERNS)})"
        )
    policies: list[Policy] = []
    registry = None
    for name in CONCERNS:
        value = concerns.get(name)
        if value is None or value is False:
            continue
        if isinstance(value, Policy):
            policies.append(value)
            continue
        options = _options(name, value)
        policy_cls = policy_class(name)
        accepted = getattr(policy_cls, "shared_options", ())
        for key, shared_value in (shared or {}).items():
            if key in accepted and key not in options and shared_value is not None:
                options[key] = shared_value
        if registry is not None and "registry" in accepted and "registry" not in options:
            options["registry"] = registry  # one registry for every kitmw metric
        policy = build_policy(name, options)
        if name == "metrics":
            registry = getattr(policy, "registry", None)
        policies.append(policy)
    # A rate limit keyed by principal must run after auth has found the principal.
    for i, policy in enumerate(policies):
        if getattr(policy, "needs_principal", False):
            auth_at = next((j for j, p in enumerate(policies) if p.name == "auth"), None)
            if auth_at is not None and auth_at > i:
                policies.insert(auth_at, policies.pop(i))
            break
    return policies


def stack(
    app: Any,
    /,
    *,
    access_log: Any = False,
    metrics: Any = False,
    tracing: Any = False,
    ratelimit: Any = False,
    auth: Any = False,
    breaker: Any = False,
    exclude_paths: Any = None,
    protocol: str | None = None,
    handle_errors: bool | None = None,
) -> Any:
    """Wrap ``app`` (ASGI or WSGI, detected) in one layer running the chosen concerns.

    Each concern is ``True`` (defaults), a dict of that concern's options, or a policy
    object; ``ratelimit`` also takes a rate string and ``auth`` a backend (or a list).
    A concern left out is off. ``exclude_paths`` applies to every concern that does not
    set its own. ``protocol`` forces ``"asgi"`` or ``"wsgi"``.
    """
    if app is None or not callable(app):
        raise ConfigError(
            f"app: expected the ASGI or WSGI application to wrap, as in stack(app, metrics=True), got {app!r}"
        )
    if protocol not in (None, "asgi", "wsgi"):
        raise ConfigError(f"protocol: expected 'asgi', 'wsgi' or None, got {protocol!r}")
    concerns = {
        "tracing": tracing,
        "access_log": access_log,
        "metrics": metrics,
        "ratelimit": ratelimit,
        "auth": auth,
        "breaker": breaker,
    }
    policies = build_policies(concerns, shared={"exclude_paths": exclude_paths})
    from .asgi import Middleware, is_asgi

    if protocol is None:
        protocol = "asgi" if is_asgi(app) else "wsgi"
    if protocol == "asgi":
        return Middleware(app, *policies, handle_errors=handle_errors)
    from .wsgi import Middleware as WsgiMiddleware

    return WsgiMiddleware(app, *policies, handle_errors=handle_errors)
