"""Breakers by name within one process."""

from __future__ import annotations

import threading
from typing import Any

from ..errors import ConfigError
from ._core import Breaker

__all__ = ["BreakerRegistry", "default_registry", "get_breaker"]


class BreakerRegistry:
    """Breakers by name, so several clients or apps in one process share one breaker.

    Asking again for a name returns the same breaker; asking with other options is an
    error (two meanings for one name would silently share state).
    """

    __slots__ = ("_breakers", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, tuple[dict[str, Any], Breaker]] = {}

    def get(self, name: str, **options: Any) -> Breaker:
        with self._lock:
            found = self._breakers.get(name)
            if found is not None:
                if found[0] != options:
                    raise ConfigError(f"name: breaker {name!r} already exists with other options")
                return found[1]
            breaker = Breaker(name=name, **options)
            self._breakers[name] = (dict(options), breaker)
            return breaker

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def clear(self) -> None:
        with self._lock:
            self._breakers.clear()


#: The process-wide registry behind :func:`get_breaker` (like prometheus-client's REGISTRY).
default_registry = BreakerRegistry()


def get_breaker(name: str, **options: Any) -> Breaker:
    """The process-wide breaker called ``name``, built with ``options`` on first use."""
    return default_registry.get(name, **options)
