"""kitmw: Go kit's cross-cutting concerns for any Python web stack.

ASGI middlewares (``kitmw.AccessLog``, ``Metrics``, ``Tracing``, ``RateLimit``,
``CircuitBreaker``, ``Auth``), their WSGI twins (``kitmw.wsgi``), one fused layer
(``kitmw.stack``; ``kitmw.Stack`` for ``app.add_middleware``), httpx transports
(``kitmw.httpx``, ``kitmw.httpx2``) and the same concerns around any function
(``kitmw.endpoint``). FastAPI's own forms are in ``kitmw.fastapi``.
Submodules and optional extras are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .concerns import CONCERNS, middleware_names

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
    from .asgi import (
        AccessLog,
        Auth,
        CircuitBreaker,
        ConcurrencyLimit,
        Metrics,
        RateLimit,
        Stack,
        Timeout,
        Tracing,
    )

__version__ = "0.1.0"

__all__ = [
    "AccessLog",
    "Auth",
    "BreakerOpen",
    "CircuitBreaker",
    "ConcurrencyLimit",
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
    "Stack",
    "StorageError",
    "Timeout",
    "Tracing",
    "__version__",
    "endpoint",
    "stack",
]

#: ASGI classes: per concern (``kitmw.RateLimit``, named by the registry) and fused (``kitmw.Stack``).
_MIDDLEWARES = frozenset(middleware_names()) | {"Stack"}
_SUBMODULES = {
    "asgi",
    "chain",
    "cli",
    "concerns",
    "errors",
    "exchange",
    "fastapi",
    "flask",
    "httpx",
    "httpx2",
    "routes",
    "testing",
    "wsgi",
    *(c.package.rpartition(".")[2] for c in CONCERNS),
}


def __getattr__(name: str) -> Any:
    if name in _MIDDLEWARES:
        value = getattr(importlib.import_module(".asgi", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'kitmw' has no attribute {name!r}")
    globals()[name] = value
    return value
