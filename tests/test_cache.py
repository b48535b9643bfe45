"""kitmw's bounded caches: one helper (kitmw/_cache.py), its evictions, and no cache
bounded by hand anywhere else."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from kitmw._cache import BoundedCache, LRUCache

ROOT = Path(__file__).resolve().parent.parent


def test_clear_forgets_everything_at_the_bound_then_stores() -> None:
    cache: BoundedCache[int, str] = BoundedCache(3)
    for n in range(3):
        assert cache.put(n, str(n)) == str(n)
    assert dict(cache) == {0: "0", 1: "1", 2: "2"}
    cache.put(3, "3")
    assert dict(cache) == {3: "3"}


def test_replacing_a_key_is_not_growth() -> None:
    cache: BoundedCache[int, str] = BoundedCache(2)
    cache.put(1, "a")
    cache.put(2, "b")
    cache.put(2, "c")
    assert dict(cache) == {1: "a", 2: "c"}


def test_oldest_forgets_the_entry_stored_first() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2, evict="oldest")
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a read is not a use: "a" stays the oldest
    cache.put("c", 3)
    assert list(cache) == ["b", "c"]


def test_lru_forgets_the_least_recently_used() -> None:
    cache: LRUCache[str, int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # now "b" is the least recently used
    cache.put("c", 3)
    assert list(cache) == ["a", "c"]
    assert cache.get("b") is None and cache.get("b", 0) == 0
    cache.put("a", 10)  # storing is a use too
    cache.put("d", 4)
    assert dict(cache) == {"a": 10, "d": 4}


def test_reads_are_the_dicts_own() -> None:
    """The hot path's hit is a C-level dict lookup: no Python method in between."""
    assert BoundedCache.get is dict.get
    assert BoundedCache.__getitem__ is dict.__getitem__
    assert BoundedCache.__contains__ is dict.__contains__


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        pytest.param((0,), {}, "maxsize: expected an integer >= 1, got 0", id="zero"),
        pytest.param((True,), {}, "maxsize: expected an integer >= 1, got True", id="bool"),
        pytest.param((8,), {"evict": "random"}, "evict: expected one of clear, oldest, got 'random'", id="evict"),
    ],
)
def test_bad_bounds_are_refused(args: tuple[object, ...], kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        BoundedCache(*args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("make", [lambda: BoundedCache(16), lambda: BoundedCache(16, evict="oldest"), lambda: LRUCache(16)])
def test_threads_writing_at_once_stay_near_the_bound_and_never_raise(make: object) -> None:
    cache = make()  # type: ignore[operator]
    errors: list[BaseException] = []

    def write(base: int) -> None:
        try:
            for n in range(2000):
                cache.put(base * 10_000 + n, n)
                cache.get(base * 10_000 + n - 1)
        except BaseException as exc:  # pragma: no cover - the failure this test looks for
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(cache) <= 16 + len(threads)


#: A cache bounded by hand: a length check against a bound, then clear(), pop or del.
HAND_BOUNDED = re.compile(
    r"if len\((?P<name>[\w.]+)\) *(>=|>|<) *[\w.]+:\s*\n(\s*#.*\n)*\s*(?P=name)\.(clear\(\)|pop\(|popitem\()"
    r"|if len\((?P<other>[\w.]+)\) *(>=|>) *[\w.]+:\s*\n\s*(try:\s*\n\s*)?del (?P=other)\["
    r"|if len\((?P<keep>[\w.]+)\) *< *\w+:\s*\n\s*(?P=keep)\[",
)


def test_no_cache_is_bounded_by_hand_outside_the_helper() -> None:
    found = []
    for path in sorted((ROOT / "kitmw").rglob("*.py")):
        if path.name == "_cache.py":
            continue
        text = path.read_text(encoding="utf-8")
        for match in HAND_BOUNDED.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"{path.relative_to(ROOT)}:{line}: {match.group(0).splitlines()[0].strip()}")
    assert found == [], "\n".join(found)
