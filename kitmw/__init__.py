"""kitmw: Go kit's cross-cutting concerns for any Python web stack.

ASGI middlewares (``kitmw.AccessLog``, ``Metrics``, ``Tracing``, ``RateLimit``,
``CircuitBreaker``, ``Auth``), their WSGI twins (``kitmw.wsgi``), one fused layer
(``kitmw.stack``), httpx transports (``kitmw.httpx``, ``kitmw.httpx2``) and the same
concerns around any function (``kitmw.endpoint``).
Submodules and optional extras are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .concerns import middleware_names

# The submodule is loaded here, and the name bound to its function: the import system sets
# this package's attribute ``endpoint`` to the submodule only when it first loads it, so
# ``kitmw.endpoint`` stays the decorator after ``from kitmw.endpoint import ...`` too.
from .endpoint import endpoint
from .errors import (
    BreakerOpen,
    ConcurrencyLimited,
    ConfigError,
    DeadlineExceeded,
    KitmwError,
    RateLimited,
    Rejected,
    Rejection,
    StorageError,
)
from .exchange import Exchange, Policy
from .stack import stack

if TYPE_CHECKING:
    from .asgi import AccessLog, Auth, CircuitBreaker, Metrics, RateLimit, Tracing

__version__ = "0.1.0"

__all__ = [
    "AccessLog",
    "Auth",
    "BreakerOpen",
    "CircuitBreaker",
    "ConcurrencyLimited",
    "ConfigError",
    "DeadlineExceeded",
    "Exchange",
    "KitmwError",
    "Metrics",
    "Policy",
    "RateLimit",
    "RateLimited",
    "Rejected",
    "Rejection",
    "StorageError",
    "Tracing",
    "__version__",
    "endpoint",
    "stack",
]

_MIDDLEWARES = {"AccessLog", "Auth", "CircuitBreaker", "Metrics", "RateLimit", "Tracing"}
_SUBMODULES = {
    "asgi",
    "chain",
    "concerns",
    "auth",
    "balance",
    "breaker",
    "cli",
    "errors",
    "exchange",
    "httpx",
    "httpx2",
    "logging",
    "metrics",
    "ratelimit",
    "retry",
    "routes",
    "testing",
    "tracing",
    "wsgi",
}


def __getattr__(name: str) -> Any:
    if name in _MIDDLEWARES or name in middleware_names():
        value = getattr(importlib.import_module(".asgi", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'kitmw' has no attribute {name!r}")
    globals()[name] = value
    return value
