"""Bounded caches: the one way kitmw remembers what it derived from what it has seen.

Every cache keyed by something a caller controls (a route, a status, a logger name, a
token, an upstream origin) must stay bounded, or a scan of random values grows it
without end. Each is one of these two dicts: reads are the dict's own (``get``, ``[]``,
``in``), writes go through :meth:`BoundedCache.put`, which makes room first.

:class:`BoundedCache` ``(maxsize, evict=...)``:

* ``"clear"`` (the default): at ``maxsize`` entries, forget them all, then store. For
  values that are cheap to make again and a working set far below the bound (the routes,
  statuses, label sets and loggers of one service), where reaching the bound means
  unusual input: a hit costs one C-level ``dict.get``, with no bookkeeping, and after a
  scan the cache refills with the keys in use.
* ``"oldest"``: forget the entry stored first (FIFO), then store. For values that cost
  something to make again (a verified token, a breaker with its state): the others are
  kept, and hits still cost nothing more than ``dict.get``.

:class:`LRUCache` ``(maxsize)``: forget the least recently used entry. Its ``get`` marks
the entry used, so a hit costs a Python call: for lookups whose miss costs far more than
that (walking a router's routes).

None of them locks: concurrent writers may evict a little more than needed, never grow
past the bound by more than the number of threads, and never raise.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

__all__ = ["BoundedCache", "LRUCache"]

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

_MISSING: Any = object()
_EVICTIONS = ("clear", "oldest")


class BoundedCache(dict[K, V]):
    """A dict of at most ``maxsize`` entries; :meth:`put` stores, making room as ``evict`` says."""

    __slots__ = ("_oldest", "maxsize")

    def __init__(self, maxsize: int, *, evict: str = "clear") -> None:
        super().__init__()
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"maxsize: expected an integer >= 1, got {maxsize!r}")
        if evict not in _EVICTIONS:
            raise ValueError(f"evict: expected one of {', '.join(_EVICTIONS)}, got {evict!r}")
        self.maxsize = maxsize
        self._oldest = evict == "oldest"

    def put(self, key: K, value: V) -> V:
        """Store ``value`` under ``key`` (making room first when the cache is full) and return it."""
        if len(self) >= self.maxsize and key not in self:
            self._evict()
        self[key] = value
        return value

    def _evict(self) -> None:
        if not self._oldest:
            self.clear()
            return
        try:
            del self[next(iter(self))]
        except (StopIteration, KeyError, RuntimeError):
            pass  # another thread changed the dict first: it made room, or will

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.maxsize}, {len(self)} entries)"


class LRUCache(BoundedCache[K, V]):
    """A :class:`BoundedCache` that forgets the least recently used entry; :meth:`get`
    marks an entry used."""

    __slots__ = ()

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize, evict="oldest")

    @overload
    def get(self, key: K, default: None = None, /) -> V | None: ...

    @overload
    def get(self, key: K, default: V, /) -> V: ...

    @overload
    def get(self, key: K, default: T, /) -> V | T: ...

    def get(self, key: K, default: Any = None, /) -> Any:
        value = self.pop(key, _MISSING)
        if value is _MISSING:
            return default
        self[key] = value  # now the most recent: last in the dict's order
        return value

    def put(self, key: K, value: V) -> V:
        self.pop(key, None)  # a new value is a use: move it to the end
        return super().put(key, value)
