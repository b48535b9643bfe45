"""The six concerns by name: where each policy class lives, imported on first use.

One table for ``stack()`` and for the per-concern classes of every driver, so a concern
is named in one place.
"""

from __future__ import annotations

import importlib
from typing import Any

from .exchange import Policy

__all__ = ["CONCERNS", "build_policy", "policy_class"]

#: option name -> (module, policy class), in the canonical server order, outermost first.
CONCERNS: dict[str, tuple[str, str]] = {
    "tracing": (".tracing", "TracingPolicy"),
    "access_log": (".logging", "AccessLogPolicy"),
    "metrics": (".metrics", "MetricsPolicy"),
    "ratelimit": (".ratelimit", "RateLimitPolicy"),
    "auth": (".auth", "AuthPolicy"),
    "breaker": (".breaker", "BreakerPolicy"),
}


def policy_class(concern: str) -> Any:
    """The policy class of ``concern`` (its module is imported now, not at ``import kitmw``)."""
    module, attr = CONCERNS[concern]
    return getattr(importlib.import_module(module, __package__), attr)


def build_policy(concern: str, options: dict[str, Any]) -> Policy:
    """``concern``'s policy built with ``options`` (validated by the policy itself)."""
    policy: Policy = policy_class(concern)(**options)
    return policy
