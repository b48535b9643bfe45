"""Path exclusion shared by every policy: anchored, trailing-slash tolerant."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import ConfigError

__all__ = ["PathMatcher"]


class PathMatcher:
    """Matches request paths against ``exclude_paths``.

    ``"/health"`` matches ``/health`` and ``/health/`` only (never ``/healthz-admin``);
    ``"/static/*"`` matches ``/static`` and everything below it. Matching is exact, not a
    regular expression search, so an exclusion can never match more than it says.
    """

    __slots__ = ("_exact", "_prefixes")

    def __init__(self, paths: Iterable[str] | str | None, *, option: str = "exclude_paths") -> None:
        if isinstance(paths, str):
            paths = [paths]
        exact: set[str] = set()
        prefixes: list[str] = []
        for path in paths or ():
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigError(f"{option}: each path must be a string starting with '/', got {path!r}")
            if path.endswith("*"):
                base = path.rstrip("*").rstrip("/")
                prefixes.append(base + "/")
                exact.add(base or "/")
            else:
                exact.add(path.rstrip("/") or "/")
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)

    def __bool__(self) -> bool:
        return bool(self._exact or self._prefixes)

    def __call__(self, path: str) -> bool:
        if (path.rstrip("/") or "/") in self._exact:
            return True
        return any(path.startswith(p) for p in self._prefixes)
