"""The concurrency concern: the limit algorithms and the limiter (fake clock, threads,
asyncio waiters), the policies with neutral exchanges, the ASGI driver with Starlette and
FastAPI apps (in process and under real uvicorn for disconnects), the WSGI driver with
Flask under a real threaded server, and the call sides on the chain."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from flask import Flask, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

import kitmw
import kitmw.concurrency
import kitmw.wsgi
from kitmw.chain import compile_chain
from kitmw.concurrency import (
    AIMDLimit,
    ClientConcurrencyPolicy,
    ConcurrencyPolicy,
    EndpointConcurrencyPolicy,
    FixedLimit,
    GradientLimit,
    LimitAlgorithm,
    Limiter,
    WindowedLimit,
)
from kitmw.errors import ConcurrencyLimited, ConfigError, DeadlineExceeded
from kitmw.testing import FakeClock, NeutralClientExchange, NeutralEndpointExchange, NeutralExchange


def samples(registry: CollectorRegistry, metric: str) -> dict[tuple[str, str], float]:
    """(side, scope) -> value of ``metric`` (a kitmw concurrency series)."""
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == metric:
                found[(sample.labels["side"], sample.labels["scope"])] = sample.value
    return found


class Recording(LimitAlgorithm):
    """A static limit that records the samples it is given."""

    __slots__ = ("log",)

    def __init__(self, limit: int, log: list[tuple[float, int, bool]] | None = None) -> None:
        super().__init__(limit)
        self.log = [] if log is None else log

    def update(self, rtt: float, inflight: int, dropped: bool, now: float) -> int:
        self.log.append((round(rtt, 6), inflight, dropped))
        return self.limit

    def fresh(self, initial_limit: int | None = None) -> Recording:
        return Recording(self.limit if initial_limit is None else initial_limit, self.log)


# -- the algorithms -------------------------------------------------------------------------------


def test_aimd_adds_one_while_in_use_and_backs_off_on_drops_and_slow_samples() -> None:
    aimd = AIMDLimit(initial_limit=10, min_limit=2, max_limit=12, backoff_ratio=0.5, timeout=1.0)
    assert aimd.update(0.1, 5, False, 0) == 11  # half in use: +1
    assert aimd.update(0.1, 2, False, 0) == 11  # a limit nobody reaches is not raised
    assert aimd.update(0.1, 11, False, 0) == 12
    assert aimd.update(0.1, 12, False, 0) == 12  # max_limit
    assert aimd.update(0.1, 12, True, 0) == 6  # a drop
    assert aimd.update(1.5, 6, False, 0) == 3  # slower than timeout: a drop too
    assert aimd.update(1.5, 3, False, 0) == 2  # min_limit
    assert aimd.fresh().limit == 10 and aimd.fresh(40).limit == 12  # kept within its bounds


def test_gradient_lowers_when_latency_rises_and_climbs_back_when_it_falls() -> None:
    gradient = GradientLimit(initial_limit=40, min_limit=4, max_limit=100)
    limit = 40
    for _ in range(20):  # warm: 100 ms round trips, the limit in use
        limit = gradient.update(0.1, limit, False, 0)
    warm = limit
    assert warm >= 40
    for _ in range(30):  # requests queue: round trips triple
        limit = gradient.update(0.3, limit, False, 0)
    assert limit <= 15 < warm
    low = limit
    for _ in range(40):  # the queue drained
        limit = gradient.update(0.1, limit, False, 0)
    assert limit >= low + 25
    assert gradient.update(0.1, 1, False, 0) == limit  # less than half in use: unchanged


def test_windowed_feeds_one_average_sample_per_window() -> None:
    seen: list[tuple[float, int, bool]] = []
    windowed = WindowedLimit(Recording(10, seen), min_window=1.0, max_window=1.0, min_samples=3)
    windowed.update(0.5, 1, False, now=0.0)  # opens the first window (too few samples: not fed)
    for now, rtt, inflight, dropped in [(0.2, 0.1, 2, False), (0.4, 0.3, 5, True), (0.6, 0.2, 3, False)]:
        windowed.update(rtt, inflight, dropped, now)
    assert seen == []
    windowed.update(0.00001, 9, False, now=1.1)  # under min_rtt: not taken
    windowed.update(0.2, 4, False, now=1.2)
    assert seen == [(0.2, 5, True)]  # average round trip, most in flight, any drop


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: AIMDLimit(backoff_ratio=1.0), r"backoff_ratio: expected a number in \[0.5, 1.0\)"),
        (lambda: AIMDLimit(min_limit=5, max_limit=4), "min_limit: 5 is above max_limit 4"),
        (lambda: AIMDLimit(initial_limit=0), "initial_limit: expected an integer >= 1"),
        (lambda: AIMDLimit(timeout=0), "timeout: expected a positive number"),
        (lambda: GradientLimit(rtt_tolerance=0.9), "rtt_tolerance: expected a number in"),
        (lambda: GradientLimit(smoothing=0), r"smoothing: expected a number in \(0, 1\]"),
        (lambda: GradientLimit(initial_limit=2000), "initial_limit: 2000 is outside"),
        (lambda: WindowedLimit("gradient"), "delegate: expected a kitmw.concurrency limit algorithm"),
        (lambda: FixedLimit(0), "limit: expected an integer >= 1"),
    ],
)
def test_bad_algorithm_options_name_the_option(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


# -- the limiter ----------------------------------------------------------------------------------


def test_slots_up_to_the_limit_then_refused_and_each_frees_once() -> None:
    limiter = Limiter(FixedLimit(2))
    a, b = limiter.try_acquire(), limiter.try_acquire()
    assert a is not None and b is not None and limiter.try_acquire() is None
    assert (a.inflight, b.inflight) == (1, 2)
    a.success()
    a.dropped()  # a second release is a no-op
    assert limiter.inflight == 1
    assert limiter.try_acquire() is not None and limiter.inflight == 2


@pytest.mark.anyio
async def test_async_waiters_are_served_first_in_first_out() -> None:
    limiter = Limiter(FixedLimit(1), max_queue=10)
    held = limiter.try_acquire()
    assert held is not None
    order: list[str] = []

    async def wait(name: str) -> None:
        slot = await limiter.aacquire(30)
        assert slot is not None
        order.append(name)
        await asyncio.sleep(0)
        slot.success()

    tasks = []
    for name in "abcd":
        tasks.append(asyncio.ensure_future(wait(name)))
        await asyncio.sleep(0)  # each one queues before the next
    assert limiter.waiting == 4
    assert limiter.try_acquire() is None  # a newcomer never overtakes the queue
    held.success()
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c", "d"]
    assert limiter.inflight == 0 and limiter.waiting == 0


@pytest.mark.anyio
async def test_the_queue_is_bounded_and_a_wait_runs_out() -> None:
    limiter = Limiter(FixedLimit(1), max_queue=1)
    held = limiter.try_acquire()
    assert held is not None
    waiting = asyncio.ensure_future(limiter.aacquire(0.02))
    await asyncio.sleep(0)
    assert await limiter.aacquire(30) is None  # the queue is full: refused at once
    assert await waiting is None  # its wait ran out
    assert limiter.waiting == 0 and limiter.inflight == 1


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_the_queue_or_passes_its_slot_on() -> None:
    limiter = Limiter(FixedLimit(1), max_queue=10)
    held = limiter.try_acquire()
    assert held is not None
    first = asyncio.ensure_future(limiter.aacquire(30))
    second = asyncio.ensure_future(limiter.aacquire(30))
    await asyncio.sleep(0)
    first.cancel()  # a deadline, a client gone: it leaves the queue
    await asyncio.sleep(0)
    assert limiter.waiting == 1
    held.success()  # the slot goes to `second`, and `second` is cancelled before it runs
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert limiter.inflight == 0 and limiter.waiting == 0  # passed on: nothing leaked
    assert limiter.try_acquire() is not None


def test_threads_never_exceed_the_limit_and_free_every_slot() -> None:
    limiter = Limiter(FixedLimit(3), max_queue=100)
    lock = threading.Lock()
    now = [0]
    most = [0]
    refused = [0]

    def work() -> None:
        for _ in range(200):
            slot = limiter.acquire(30)
            if slot is None:
                with lock:
                    refused[0] += 1
                continue
            with lock:
                now[0] += 1
                most[0] = max(most[0], now[0])
            time.sleep(0)
            with lock:
                now[0] -= 1
            slot.success()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most[0] <= 3 and refused[0] == 0
    assert limiter.inflight == 0 and limiter.waiting == 0


@pytest.mark.anyio
async def test_a_slot_freed_by_a_thread_wakes_an_asyncio_waiter() -> None:
    limiter = Limiter(FixedLimit(1), max_queue=10)
    held = limiter.try_acquire()
    assert held is not None
    waiter = asyncio.ensure_future(limiter.aacquire(30))
    await asyncio.sleep(0)
    thread = threading.Thread(target=held.success)
    thread.start()
    slot = await asyncio.wait_for(waiter, 10)
    thread.join(10)
    assert slot is not None and limiter.inflight == 1


def test_a_raised_adaptive_limit_serves_the_waiters_it_makes_room_for() -> None:
    limiter = Limiter(AIMDLimit(initial_limit=1, max_limit=5), max_queue=10)
    held = limiter.try_acquire()
    assert held is not None
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(limiter.acquire(30))) for _ in range(2)]
    for t in threads:
        t.start()
    while limiter.waiting < 2:
        time.sleep(0.001)
    held.success()  # in use: the limit goes to 2, and both waiters fit
    for t in threads:
        t.join(10)
    assert limiter.limit == 2 and all(r is not None for r in results) and limiter.inflight == 2


# -- the policies, with neutral exchanges ---------------------------------------------------------


def run(policy: ConcurrencyPolicy, ex: Any, status: int = 200, error: BaseException | None = None) -> Any:
    answer = policy.enter(ex)
    if answer is None:
        ex.status, ex.error = status, error
    policy.exit(ex)
    return answer


@pytest.mark.parametrize(
    ("status", "error", "sample"),
    [
        (200, None, False),
        (404, None, False),
        (429, None, False),  # the caller's fault, answered fast: a sample like any
        (503, None, True),  # the application is overloaded
        (504, None, True),
        (500, None, None),  # a failure says nothing about latency
        (500, RuntimeError("boom"), None),
        (504, TimeoutError(), True),  # the deadline passed
        (504, DeadlineExceeded(), True),
        (499, None, None),  # the client went away
        (499, asyncio.CancelledError(), None),
    ],
)
def test_what_an_exchange_tells_the_limit(registry, status: int, error: Any, sample: bool | None) -> None:
    log: list[tuple[float, int, bool]] = []
    clock = FakeClock()
    policy = ConcurrencyPolicy(adaptive=Recording(4, log), clock=clock, registry=registry)
    ex = NeutralExchange()
    assert policy.enter(ex) is None
    clock.advance(0.25)
    ex.status, ex.error = status, error
    policy.exit(ex)
    assert log == ([] if sample is None else [(0.25, 1, sample)])
    assert policy.limiters["<all>"].inflight == 0


def test_a_request_another_policy_answered_holds_nothing_and_tells_nothing(registry) -> None:
    log: list[tuple[float, int, bool]] = []
    policy = ConcurrencyPolicy(adaptive=Recording(4, log), registry=registry)
    ex = NeutralExchange()
    policy.enter(ex)
    ex.rejection = kitmw.Rejection(503, "circuit_open")  # the breaker, inside, refused it
    ex.status = 503
    policy.exit(ex)
    assert log == [] and policy.limiters["<all>"].inflight == 0


def test_full_limit_answers_503_with_retry_after_and_counts(registry) -> None:
    policy = ConcurrencyPolicy(limit=1, retry_after=3, registry=registry)
    first = NeutralExchange()
    assert policy.enter(first) is None
    answer = policy.enter(NeutralExchange())
    assert answer is not None and (answer.status, answer.code) == (503, "concurrency_limited")
    assert answer.header("retry-after") == "3" and answer.body == b'{"error":"concurrency_limited"}'
    assert isinstance(answer.error(), ConcurrencyLimited)
    assert samples(registry, "kitmw_concurrency_rejections_total") == {("server", "<all>"): 1.0}
    assert samples(registry, "kitmw_concurrency_in_flight") == {("server", "<all>"): 1.0}
    assert samples(registry, "kitmw_concurrency_limit") == {("server", "<all>"): 1.0}
    policy.exit(first)
    assert samples(registry, "kitmw_concurrency_in_flight") == {("server", "<all>"): 0.0}


def test_per_route_limits_routes_table_exclusions_and_the_bound(registry) -> None:
    policy = ConcurrencyPolicy(
        limit=1, per_route=True, routes={"/reports/{id}": 2, "/health": None}, max_routes=2, registry=registry
    )

    def enter(path: str, route: str | None = None) -> bool:
        return policy.enter(NeutralExchange("GET", path, route=route)) is None

    assert enter("/items/1", "/items/{id}") and not enter("/items/2", "/items/{id}")
    assert enter("/users/1", "/users/{id}")  # another route, its own limit
    assert enter("/reports/1", "/reports/{id}") and enter("/reports/2", "/reports/{id}")
    assert not enter("/reports/3", "/reports/{id}")
    assert all(enter("/health") for _ in range(5))  # not limited
    assert enter("/a", "/a") and not enter("/b", "/b")  # beyond max_routes: one shared <other>
    assert set(policy.limiters) == {"/items/{id}", "/users/{id}", "/reports/{id}", "<other>"}
    excluded = ConcurrencyPolicy(limit=1, exclude_paths=["/health"], registry=registry)
    assert excluded.enter(NeutralExchange("GET", "/x")) is None
    assert all(excluded.enter(NeutralExchange("GET", "/health")) is None for _ in range(3))


def test_with_routes_and_no_limit_other_routes_are_not_limited(registry) -> None:
    """``adaptive`` without ``limit`` made a service-wide limit of 20 for every other route."""
    policy = ConcurrencyPolicy(adaptive="aimd", routes={"/reports/{id}": 1}, registry=registry)
    assert policy.enter(NeutralExchange("GET", "/reports/1", route="/reports/{id}")) is None
    assert policy.enter(NeutralExchange("GET", "/reports/2", route="/reports/{id}")) is not None
    assert all(policy.enter(NeutralExchange("GET", "/items/1", route="/items/{id}")) is None for _ in range(30))
    assert set(policy.limiters) == {"/reports/{id}"}


def test_the_limit_moves_down_under_rising_latency_and_back_up(registry) -> None:
    """The default adaptive limit (Gradient2 over 1 s windows), driven through the policy
    with a fake clock: every round fills the limit, the round trip is what the test says."""
    clock = FakeClock()
    policy = ConcurrencyPolicy(limit=40, adaptive="gradient", clock=clock, registry=registry)
    limiter = policy.limiters["<all>"]

    def round_trip(rtt: float) -> int:
        held = []
        for _ in range(60):
            ex = NeutralExchange()
            if policy.enter(ex) is None:
                held.append(ex)
        clock.advance(rtt)
        for ex in held:
            ex.status = 200
            policy.exit(ex)
        clock.advance(1.01 - rtt)  # one window (1 s) per round
        return limiter.limit

    history = [round_trip(0.05) for _ in range(15)]
    assert history == sorted(history) and history[-1] > 40  # in use, latency steady: it grows
    history += [round_trip(0.2) for _ in range(20)]  # requests queue: 4 x the round trip
    assert history[-20:] == sorted(history[-20:], reverse=True) and history[-1] <= 15
    history += [round_trip(0.05) for _ in range(30)]  # the queue drained
    assert history[-30:] == sorted(history[-30:]) and history[-1] >= 30
    gauge = samples(registry, "kitmw_concurrency_limit")[("server", "<all>")]
    assert gauge == history[-1]


def test_aimd_backs_off_once_per_window_of_timeouts_and_climbs_back(registry) -> None:
    """adaptive="aimd": one decision per window of about a round trip (as TCP backs off
    once per round trip), never once per slow answer of a burst."""
    clock = FakeClock()
    policy = ConcurrencyPolicy(adaptive="aimd", limit=10, clock=clock, registry=registry)
    limiter = policy.limiters["<all>"]

    def window(status: int, error: BaseException | None) -> int:
        held = [ex for ex in (NeutralExchange() for _ in range(limiter.limit)) if policy.enter(ex) is None]
        clock.advance(0.2)
        for ex in held:
            ex.status, ex.error = status, error
            policy.exit(ex)
        clock.advance(1.0)
        return limiter.limit

    # x0.9 (rounded down) once per window, though each window held up to 10 timeouts
    assert [window(504, TimeoutError()) for _ in range(4)] == [9, 8, 7, 6]
    # one more per window in use and on time (the first window to close still held timeouts)
    assert [window(200, None) for _ in range(4)] == [5, 6, 7, 8]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "limit: the number of requests allowed in flight is required"),
        ({"limit": 0}, "limit: expected an integer >= 1"),
        ({"limit": 2.5}, "limit: expected an integer >= 1"),
        ({"limit": 4, "max_wait": -1}, "max_wait: expected a number of seconds >= 0"),
        ({"limit": 4, "max_queue": -1}, "max_queue: expected an integer >= 0"),
        ({"limit": 4, "retry_after": 0}, "retry_after: expected an integer >= 1"),
        ({"limit": 4, "per_route": "yes"}, "per_route: expected True or False"),
        ({"limit": 4, "adaptive": "vegas"}, "adaptive: expected None, 'aimd', 'gradient'"),
        ({"limit": 4, "adaptive": AIMDLimit()}, "limit: adaptive=AIMDLimit.* sets its own initial_limit"),
        ({"limit": 4, "routes": {"r": 1}}, "routes: each key must be a route template"),
        ({"routes": {"/r": 0}}, r"routes\['/r'\]: expected a limit >= 1 or None"),
        ({"limit": 4, "max_routes": 0}, "max_routes: expected an integer >= 1"),
    ],
)
def test_bad_options_name_the_option(registry, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ConcurrencyPolicy(registry=registry, **options)


def test_options_through_stack_and_the_registry(registry) -> None:
    from kitmw.concerns import build, concern

    with pytest.raises(ConfigError, match=r"^concurrency: limit: the number of requests allowed"):
        kitmw.stack(Starlette(), concurrency=True)
    with pytest.raises(ConfigError, match=r"^concurrency: unknown option 'max_wiat'; did you mean 'max_wait'"):
        kitmw.stack(Starlette(), concurrency={"limit": 2, "max_wiat": 1})
    assert concern("concurrency").policies == {
        "server": "ConcurrencyPolicy",
        "client": "ClientConcurrencyPolicy",
        "endpoint": "EndpointConcurrencyPolicy",
    }
    assert isinstance(build("client", "concurrency", 8), ClientConcurrencyPolicy)
    assert isinstance(build("endpoint", "concurrency", 8), EndpointConcurrencyPolicy)
    assert kitmw.ConcurrencyLimit.__name__ == "ConcurrencyLimit"
    assert kitmw.wsgi.ConcurrencyLimit.__name__ == "ConcurrencyLimit"
    from kitmw.stack import CANONICAL_ORDER

    names = [name for name, *_ in CANONICAL_ORDER]
    assert names.index("auth") < names.index("concurrency") < names.index("breaker")


# -- the call sides on the chain ------------------------------------------------------------------


@pytest.mark.anyio
async def test_client_limits_are_per_upstream_origin(registry) -> None:
    policy = ClientConcurrencyPolicy(limit=1, registry=registry)
    chain = compile_chain([policy], "httpx", is_async=True)
    gate = asyncio.Event()

    async def call() -> str:
        await gate.wait()
        return "response"

    def ex(host: str) -> NeutralClientExchange:
        return NeutralClientExchange("GET", "/", headers={"host": host})

    a, b = ex("a.test"), ex("b.test")
    first = asyncio.ensure_future(chain.run_async(a, call, a_exits := []))
    await asyncio.sleep(0)
    with pytest.raises(ConcurrencyLimited):
        await chain.run_async(ex("a.test"), call, [])
    other = asyncio.ensure_future(chain.run_async(b, call, b_exits := []))
    gate.set()
    assert await first == "response" and await other == "response"
    for done, pending in ((a, a_exits), (b, b_exits)):
        await chain.finish_async(done, pending)  # the driver finishes when the response closes
    rejections = samples(registry, "kitmw_concurrency_rejections_total")
    assert rejections == {("client", "http://a.test"): 1.0, ("client", "http://b.test"): 0.0}
    assert set(samples(registry, "kitmw_concurrency_in_flight").values()) == {0.0}


def test_a_sync_endpoint_waits_for_a_slot_in_its_thread(registry) -> None:
    policy = EndpointConcurrencyPolicy(limit=1, max_wait=30, registry=registry)
    chain = compile_chain([policy], "endpoint", is_async=False)
    inside = threading.Event()
    release = threading.Event()
    results: list[str] = []

    def call() -> str:
        inside.set()
        release.wait(10)
        return "done"

    def invoke() -> None:
        exits: list[Any] = []
        ex = NeutralEndpointExchange("CALL", "charge")
        results.append(chain.run_sync(ex, call, exits))
        chain.finish_sync(ex, exits)

    threads = [threading.Thread(target=invoke) for _ in range(2)]
    threads[0].start()
    assert inside.wait(10)
    threads[1].start()
    while policy.limiters["charge"].waiting < 1:
        time.sleep(0.001)
    release.set()
    for t in threads:
        t.join(10)
    assert results == ["done", "done"]
    waits = samples(registry, "kitmw_concurrency_queue_wait_seconds_count")
    assert waits == {("endpoint", "charge"): 1.0}


# -- the ASGI driver, in process ------------------------------------------------------------------


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test"
    )


class Held:
    """A Starlette app whose /hold waits for the test, with a stream that waits mid-body."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.inside = asyncio.Event()

        async def hold(request: Any) -> PlainTextResponse:
            self.inside.set()
            await self.release.wait()
            return PlainTextResponse("held")

        async def fast(request: Any) -> PlainTextResponse:
            return PlainTextResponse("fast")

        async def boom(request: Any) -> PlainTextResponse:
            raise RuntimeError("boom")

        async def stream(request: Any) -> StreamingResponse:
            async def body() -> Any:
                yield b"head\n"
                self.inside.set()
                await self.release.wait()
                yield b"tail\n"

            return StreamingResponse(body())

        self.app = Starlette(
            routes=[Route("/hold", hold), Route("/fast", fast), Route("/boom", boom), Route("/stream", stream)]
        )


@pytest.mark.anyio
async def test_the_next_request_gets_503_json_with_retry_after_until_the_slot_is_free(registry) -> None:
    held = Held()
    app = kitmw.ConcurrencyLimit(held.app, limit=1, registry=registry)
    async with client(app) as c:
        first = asyncio.ensure_future(c.get("/hold"))
        await held.inside.wait()
        refused = await c.get("/fast")
        assert refused.status_code == 503
        assert refused.json() == {"error": "concurrency_limited"}
        assert refused.headers["retry-after"] == "1"
        held.release.set()
        assert (await first).text == "held"
        assert (await c.get("/fast")).status_code == 200


@pytest.mark.anyio
async def test_a_request_waits_for_a_slot_up_to_max_wait(registry) -> None:
    held = Held()
    app = kitmw.stack(held.app, concurrency={"limit": 1, "max_wait": 30, "registry": registry})
    async with client(app) as c:
        first = asyncio.ensure_future(c.get("/hold"))
        await held.inside.wait()
        second = asyncio.ensure_future(c.get("/fast"))
        await asyncio.sleep(0.01)
        assert not second.done()
        held.release.set()
        assert (await first).status_code == 200 and (await second).status_code == 200


@pytest.mark.anyio
async def test_a_streaming_response_holds_its_slot_until_its_last_byte(registry) -> None:
    held = Held()
    app = kitmw.stack(held.app, concurrency={"limit": 1, "registry": registry})
    async with client(app) as c:
        streaming = asyncio.ensure_future(c.get("/stream"))
        await held.inside.wait()
        assert (await c.get("/fast")).status_code == 503  # the body has not ended
        held.release.set()
        assert (await streaming).text == "head\ntail\n"
        assert (await c.get("/fast")).status_code == 200


@pytest.mark.anyio
async def test_an_error_and_a_deadline_free_their_slots(registry) -> None:
    held = Held()
    app = kitmw.stack(
        held.app,
        timeout={"seconds": 0.05, "registry": registry},
        concurrency={"adaptive": Recording(1, log := []), "registry": registry},
    )
    async with client(app) as c:
        assert (await c.get("/boom")).status_code == 500
        assert (await c.get("/hold")).status_code == 504  # cancelled at the deadline
        assert (await c.get("/fast")).status_code == 200
    assert samples(registry, "kitmw_concurrency_in_flight") == {("server", "<all>"): 0.0}
    assert [dropped for _, _, dropped in log] == [True, False]  # error: no sample; timeout: a drop


@pytest.mark.anyio
async def test_the_metrics_scrape_is_served_while_the_limit_is_full(registry) -> None:
    held = Held()
    app = kitmw.stack(held.app, metrics={"registry": registry}, concurrency={"limit": 1})
    async with client(app) as c:
        first = asyncio.ensure_future(c.get("/hold"))
        await held.inside.wait()
        scrape = await c.get("/metrics")
        assert scrape.status_code == 200
        assert 'kitmw_concurrency_in_flight{scope="<all>",side="server"} 1.0' in scrape.text
        assert (await c.get("/fast")).status_code == 503
        held.release.set()
        await first


# -- the WSGI driver under a real threaded server -------------------------------------------------


def flask_app(release: threading.Event, inside: threading.Event) -> Flask:
    app = Flask(__name__)

    @app.get("/hold")
    def hold() -> str:
        inside.set()
        release.wait(10)
        return "held"

    @app.get("/fast")
    def fast() -> str:
        return "fast"

    @app.get("/stream")
    def stream() -> Response:
        def body() -> Any:
            yield "head\n"
            inside.set()
            release.wait(10)
            yield "tail\n"

        return Response(body(), mimetype="text/plain")

    return app


@pytest.mark.e2e
def test_flask_threads_share_the_limit_and_free_slots_when_bodies_end(serve_wsgi: Any, registry) -> None:
    release, inside = threading.Event(), threading.Event()
    app = kitmw.wsgi.ConcurrencyLimit(flask_app(release, inside), limit=1, registry=registry)
    with serve_wsgi(app) as server, httpx.Client(base_url=server.url, timeout=10) as c:
        for path in ("/hold", "/stream"):
            inside.clear()
            release.clear()
            result: list[httpx.Response] = []
            t = threading.Thread(
                target=lambda p=path, into=result: into.append(httpx.get(server.url + p, timeout=10))
            )
            t.start()
            assert inside.wait(10)
            refused = c.get("/fast")
            assert refused.status_code == 503 and refused.json() == {"error": "concurrency_limited"}
            assert refused.headers["retry-after"] == "1"
            release.set()
            t.join(10)
            assert result[0].status_code == 200
            assert c.get("/fast").status_code == 200


@pytest.mark.e2e
def test_flask_requests_wait_in_their_threads(serve_wsgi: Any, registry) -> None:
    release, inside = threading.Event(), threading.Event()
    app = kitmw.stack(flask_app(release, inside), concurrency={"limit": 1, "max_wait": 10, "registry": registry})
    with serve_wsgi(app) as server:
        results: list[int] = []
        t = threading.Thread(target=lambda: results.append(httpx.get(server.url + "/hold", timeout=10).status_code))
        t.start()
        assert inside.wait(10)
        waiting = threading.Thread(
            target=lambda: results.append(httpx.get(server.url + "/fast", timeout=10).status_code)
        )
        waiting.start()
        limiter = app.policies[0].limiters["<all>"]
        deadline = time.monotonic() + 10
        while not limiter.waiting and time.monotonic() < deadline:
            time.sleep(0.005)
        assert limiter.waiting == 1
        release.set()
        t.join(10)
        waiting.join(10)
    assert sorted(results) == [200, 200]


@pytest.mark.e2e
def test_a_wsgi_wait_for_a_slot_never_outlasts_the_deadline(serve_wsgi: Any, registry) -> None:
    """WSGI cannot cut a wait: it must not start one longer than the request's budget
    (this waited for the slot, 30 s, before the wait was bounded by the deadline)."""
    release, inside = threading.Event(), threading.Event()
    app = kitmw.stack(
        flask_app(release, inside),
        timeout={"seconds": 0.05, "routes": {"/hold": 30.0}, "registry": registry},
        concurrency={"limit": 1, "max_wait": 30, "registry": registry},
    )
    with serve_wsgi(app) as server:
        holder = threading.Thread(target=lambda: httpx.get(server.url + "/hold", timeout=30))
        holder.start()
        assert inside.wait(10)
        answers: list[httpx.Response] = []
        waiter = threading.Thread(target=lambda: answers.append(httpx.get(server.url + "/fast", timeout=30)))
        waiter.start()
        waiter.join(10)
        alive = waiter.is_alive()
        release.set()  # only now is the slot free
        holder.join(10)
        waiter.join(10)
    assert not alive  # it was answered while /hold still held the slot
    assert answers[0].status_code == 503 and answers[0].json() == {"error": "concurrency_limited"}


# -- under real uvicorn: a client that goes away frees its slot ------------------------------------


@pytest.mark.e2e
def test_a_client_that_disconnects_frees_its_slot_and_tells_nothing(serve_asgi: Any, registry) -> None:
    api = FastAPI()
    streaming = threading.Event()

    @api.get("/events")
    async def events(request: Request) -> StreamingResponse:
        async def body() -> Any:
            yield b"event: hello\n\n"
            streaming.set()
            while True:
                await asyncio.sleep(0.01)
                yield b": keep-alive\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    @api.get("/fast")
    async def fast() -> dict[str, bool]:
        return {"ok": True}

    log: list[tuple[float, int, bool]] = []
    app = kitmw.stack(api, concurrency={"adaptive": Recording(1, log), "registry": registry})
    with serve_asgi(app) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /events HTTP/1.1\r\nHost: test\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
            assert streaming.wait(5)
            assert httpx.get(server.url + "/fast", timeout=5).status_code == 503
        deadline = time.monotonic() + 10
        while samples(registry, "kitmw_concurrency_in_flight")[("server", "<all>")] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert samples(registry, "kitmw_concurrency_in_flight") == {("server", "<all>"): 0.0}
        assert httpx.get(server.url + "/fast", timeout=5).status_code == 200
    assert [dropped for _, _, dropped in log] == [False]  # /fast only: the stream the client left says nothing
