"""kitmw's ``memory://`` storage (heap expiry) and the seam with ``limits`` it relies on.

The first tests fail loudly on a ``limits`` release that changes what
``kitmw/ratelimit/_limits.py`` relies on: the storage interface the strategies call,
the key layout, the fixed window's hit. The others check expiry with a fake clock and
that memory stays bounded as keys expire; none of them measures time.
"""

from __future__ import annotations

import inspect
import pickle
import uuid

import pytest
from limits import parse, parse_many
from limits.storage import MemoryStorage, MovingWindowSupport, SlidingWindowCounterSupport, Storage
from limits.strategies import STRATEGIES, FixedWindowRateLimiter
from prometheus_client import CollectorRegistry

from kitmw.ratelimit import STRATEGY_NAMES, Limiter, RateLimitPolicy
from kitmw.ratelimit._limits import HeapMemoryStorage, key_affixes
from kitmw.testing import FakeClock, make_exchange


def storage(clock: FakeClock | None = None) -> HeapMemoryStorage:
    return HeapMemoryStorage(clock=clock or FakeClock(1_000_000.0))


# -- the seam: what kitmw relies on from limits ---------------------------------------------


def test_the_storage_implements_every_abstract_method_of_limits_storage_interface() -> None:
    """A limits release adding an abstract method makes this (and kitmw's memory://) fail here."""
    s = HeapMemoryStorage()
    assert isinstance(s, Storage)
    assert isinstance(s, MovingWindowSupport)
    assert isinstance(s, SlidingWindowCounterSupport)
    for base in (Storage, MovingWindowSupport, SlidingWindowCounterSupport):
        for name in base.__abstractmethods__:
            if isinstance(getattr(base, name), property):
                assert isinstance(getattr(HeapMemoryStorage, name), property), name
                continue
            ours = inspect.signature(getattr(HeapMemoryStorage, name))
            theirs = inspect.signature(getattr(base, name))
            # every argument limits passes is accepted under the same name
            assert set(theirs.parameters) <= set(ours.parameters), name
    assert s.sliding_window_keys("k", 10, 25.0) == ("k/1", "k/2")


def test_not_registered_for_any_scheme() -> None:
    """memory:// elsewhere in the process keeps meaning limits' own storage."""
    from limits.storage import storage_from_string

    assert type(storage_from_string("memory://")) is MemoryStorage


def test_kitmw_strategies_are_limits_strategies_and_accept_the_storage() -> None:
    for name in STRATEGY_NAMES:
        assert STRATEGIES[name](HeapMemoryStorage()).storage is not None


@pytest.mark.parametrize("rate", ["10/second", "5 per 2 minutes", "1000/hour", "3/day"])
def test_key_affixes_rebuild_key_for(rate: str) -> None:
    item = type(parse(rate))(parse(rate).amount, parse(rate).multiples, namespace="kitmw/server/fixed-window")
    prefix, suffix = key_affixes(item)
    for key in ("10.0.0.1", "route:%2Fitems", "user:alice"):
        assert prefix + key + suffix == item.key_for(key)


def test_the_fixed_windows_hit_is_one_incr() -> None:
    item = parse("3/minute")
    s = HeapMemoryStorage()
    theirs = FixedWindowRateLimiter(s)
    ours = HeapMemoryStorage()
    for cost in (1, 2, 1, 1):
        assert theirs.hit(item, "k", cost=cost) == (
            ours.incr(item.key_for("k"), item.get_expiry(), amount=cost) <= item.amount
        )


def _replay(s: Storage, strategy: str, rate: str, costs: list[int]) -> list[tuple[bool, int]]:
    limiter = STRATEGIES[strategy](s)
    out = []
    for cost in costs:
        for item in parse_many(rate):
            allowed = limiter.hit(item, "client", cost=cost)
            out.append((allowed, limiter.get_window_stats(item, "client").remaining))
    return out


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_same_decisions_as_limits_memory_storage(strategy: str) -> None:
    """The same hits, replayed on limits' MemoryStorage and on ours (both on the real clock)."""
    costs = [1, 1, 2, 1, 3, 1, 1, 1, 2, 1, 1, 1]
    theirs = MemoryStorage()
    try:
        expected = _replay(theirs, strategy, "7/day;20/day", costs)
    finally:
        theirs.timer.cancel()
    assert _replay(HeapMemoryStorage(), strategy, "7/day;20/day", costs) == expected
    assert [ok for ok, _ in expected[::2]].count(False) > 0  # the sequence does reach the limit


# -- kitmw uses it for memory:// ------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_memory_uri_uses_the_heap_storage_with_every_strategy(strategy: str) -> None:
    policy = RateLimitPolicy(
        limit="2/minute", strategy=strategy, registry=CollectorRegistry(), namespace=uuid.uuid4().hex
    )
    assert isinstance(policy.backend.sync, HeapMemoryStorage)
    answers = [policy.enter(make_exchange("GET", "/", client="10.0.0.9")) for _ in range(3)]
    assert [a is None for a in answers] == [True, True, False]
    assert answers[2] is not None and answers[2].status == 429


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_no_thread_sweeps_the_keys_under_traffic(strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """limits' MemoryStorage starts a timer every ~10 ms whose run walks every key; ours none."""
    import threading

    started: list[threading.Thread] = []
    start = threading.Thread.start

    def spy(thread: threading.Thread) -> None:
        started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", spy)
    policy = RateLimitPolicy(
        limit="100/minute", strategy=strategy, registry=CollectorRegistry(), namespace=uuid.uuid4().hex
    )
    for i in range(200):
        policy.enter(make_exchange("GET", "/", client=f"10.0.{i // 250}.{i % 250}"))
    assert started == []


def test_storage_options_reach_the_storage() -> None:
    clock = FakeClock(50.0)
    limiter = Limiter(limit="1/minute", storage_options={"clock": clock}, registry=CollectorRegistry())
    assert limiter.hit("k", stats=False).allowed
    assert not limiter.hit("k", stats=False).allowed
    clock.now += 60
    assert limiter.hit("k", stats=False).allowed


# -- expiry on a fake clock -----------------------------------------------------------------------


def test_a_counter_expires_exactly_at_the_end_of_its_window() -> None:
    clock = FakeClock(1_000_000.0)
    s = storage(clock)
    assert [s.incr("k", 10) for _ in range(3)] == [1, 2, 3]
    assert s.get_expiry("k") == clock.now + 10
    clock.now += 9.999
    assert s.get("k") == 3
    assert s.incr("k", 10, amount=2) == 5  # the window is not extended
    clock.now += 0.001
    assert s.get("k") == 0
    assert s.get_expiry("k") == clock.now
    assert s.incr("k", 10) == 1  # a new window
    assert s.get_expiry("k") == clock.now + 10


def test_elastic_expiry_as_limits_4_passes_it() -> None:
    clock = FakeClock(1_000_000.0)
    s = storage(clock)
    s.incr("k", 10)
    clock.now += 5
    assert s.incr("k", 10, elastic_expiry=True) == 2
    assert s.get_expiry("k") == clock.now + 10


def test_decr_clear_reset() -> None:
    s = storage()
    s.incr("a", 10, amount=3)
    assert s.decr("a", 2) == 1
    assert s.decr("a", 5) == 0
    assert s.decr("missing") == 0
    s.incr("b", 10)
    s.clear("b")
    assert s.get("b") == 0
    s.acquire_entry("w", 2, 10)
    assert s.reset() == 1
    assert len(s) == 0 and s.get("a") == 0 and s.get_moving_window("w", 2, 10)[1] == 0


def test_memory_stays_bounded_as_keys_expire() -> None:
    clock = FakeClock(1_000_000.0)
    s = storage(clock)
    for i in range(1000):
        s.incr(f"old-{i}", 10)
    assert len(s) == 1000
    clock.now += 11
    for i in range(1000):
        s.incr(f"new-{i}", 10)
    assert len(s) == 1000  # every old key was dropped on the way
    assert sorted(s.held_keys()) == sorted(f"new-{i}" for i in range(1000))
    assert len(s._heap) == 1000


def test_a_burst_of_expiries_is_spread_over_calls() -> None:
    clock = FakeClock(1_000_000.0)
    s = storage(clock)
    for i in range(5000):
        s.incr(f"k{i}", 10)
    clock.now += 11
    s.incr("x", 10)
    assert len(s) >= 5000 - 16  # one call dropped at most 16 expired keys, not all of them
    for _ in range(400):
        s.incr("x", 10)
    assert len(s) == 1


def test_moving_window_on_a_fake_clock() -> None:
    clock = FakeClock(1_000_000.0)
    s = storage(clock)
    assert [s.acquire_entry("k", 3, 10) for _ in range(4)] == [True, True, True, False]
    assert s.get_moving_window("k", 3, 10) == (clock.now, 3)
    clock.now += 5
    assert not s.acquire_entry("k", 3, 10)
    clock.now += 5  # the first three entries leave the window now
    assert s.get_moving_window("k", 3, 10) == (clock.now, 0)
    assert s.acquire_entry("k", 3, 10, amount=2)
    assert not s.acquire_entry("k", 3, 10, amount=2)
    assert s.acquire_entry("k", 3, 10)
    assert not s.acquire_entry("k", 4, 10, amount=5)  # more than the limit at once


def test_a_busy_moving_window_holds_at_most_limit_entries() -> None:
    clock = FakeClock(1_000_000.0)
    s = storage(clock)
    for _ in range(10_000):
        s.acquire_entry("k", 50, 1)
        clock.now += 0.01
    window = s._windows["k"]
    assert len(window.events) - window.start <= 50
    assert len(window.events) <= 2 * 50 + 33  # trimmed lazily, compacted now and then


def test_moving_windows_are_dropped_once_their_last_entry_expires() -> None:
    clock = FakeClock(1_000_000.0)
    s = storage(clock)
    for i in range(500):
        s.acquire_entry(f"w{i}", 5, 10)
    clock.now += 5
    s.acquire_entry("w0", 5, 10)  # w0 stays in use longer
    clock.now += 6
    for _ in range(100):
        s.acquire_entry("other", 1000, 60)
    assert set(s._windows) == {"w0", "other"}
    clock.now += 5
    for _ in range(5):
        s.acquire_entry("other", 1000, 60)
    assert set(s._windows) == {"other"}


def test_sliding_window_counter_on_a_fake_clock() -> None:
    """limits' weighting: previous count x the share of the window still ahead, plus current."""
    clock = FakeClock(1_000_000.0)  # a multiple of 10: a window starts here
    s = storage(clock)
    assert [s.acquire_sliding_window_entry("k", 10, 10) for _ in range(11)] == [True] * 10 + [False]
    clock.now += 10  # next window: the previous one weighs fully
    assert not s.acquire_sliding_window_entry("k", 10, 10)
    previous, previous_ttl, current, _ = s.get_sliding_window("k", 10)
    assert (previous, previous_ttl, current) == (10, 10.0, 0)
    clock.now += 5  # half of the previous window still weighs: 5 of 10 used
    assert [s.acquire_sliding_window_entry("k", 10, 10) for _ in range(6)] == [True] * 5 + [False]
    clock.now += 10  # the 5 hits are the previous window now, half of it ahead: 2.5 + 0
    assert [s.acquire_sliding_window_entry("k", 10, 10) for _ in range(9)] == [True] * 8 + [False]
    s.clear_sliding_window("k", 10)
    assert s.get_sliding_window("k", 10)[::2] == (0, 0)


def test_pickles_without_its_lock() -> None:
    s = storage()
    s.incr("k", 10)
    copy = pickle.loads(pickle.dumps(s))
    assert copy.get("k") == 1
    assert copy.incr("k", 10) == 2
