"""The circuit breaker: the neutral primitive, and the policy through the ASGI/WSGI drivers."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from typing import Any

import httpx
import pybreaker
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import kitmw
from kitmw.breaker import Breaker, BreakerPolicy, BreakerRegistry, Permit, default_name
from kitmw.errors import BreakerOpen, ConfigError
from kitmw.testing import FakeClock

_names = itertools.count()


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{next(_names)}"


class Backend:
    """A Starlette app as users write one, with a switch the test flips, and a call log."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

        async def ok(request: Any) -> PlainTextResponse:
            self.calls.append("ok")
            return PlainTextResponse("ok")

        async def fail(request: Any) -> JSONResponse:
            self.calls.append("fail")
            return JSONResponse({"detail": "down"}, status_code=502)

        async def boom(request: Any) -> PlainTextResponse:
            self.calls.append("boom")
            raise RuntimeError("boom")

        async def missing(request: Any) -> PlainTextResponse:
            self.calls.append("missing")
            raise HTTPException(404)

        async def teapot(request: Any) -> PlainTextResponse:
            self.calls.append("teapot")
            return PlainTextResponse("no", status_code=418)

        async def slow(request: Any) -> PlainTextResponse:
            self.calls.append("slow")
            self.entered.set()
            await self.release.wait()
            return PlainTextResponse("slow")

        async def health(request: Any) -> PlainTextResponse:
            self.calls.append("health")
            return PlainTextResponse("sick", status_code=500)

        self.app = Starlette(
            routes=[
                Route("/ok", ok),
                Route("/fail", fail),
                Route("/boom", boom),
                Route("/missing", missing),
                Route("/teapot", teapot),
                Route("/slow", slow),
                Route("/health", health),
            ]
        )


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test"
    )


def guarded(backend: Backend, clock: FakeClock, registry: CollectorRegistry, **options: Any) -> Any:
    """The state-machine tests fail one route and probe another: one breaker for the service."""
    options.setdefault("name", unique())
    options.setdefault("per_route", False)
    return kitmw.CircuitBreaker(backend.app, clock=clock, registry=registry, **options)


def samples(registry: CollectorRegistry, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = generate_latest(registry).decode()
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def open_it(c: httpx.AsyncClient, n: int, path: str = "/fail") -> None:
    for _ in range(n):
        await c.get(path)


# -- the policy through the ASGI driver --------------------------------------------------------


@pytest.mark.anyio
async def test_opens_after_fail_max_5xx_and_answers_503_without_calling_the_app(registry) -> None:
    backend, clock = Backend(), FakeClock()
    app = guarded(backend, clock, registry, fail_max=3, reset_timeout=30)
    async with client(app) as c:
        statuses = [(await c.get("/fail")).status_code for _ in range(3)]
        backend.calls.clear()
        r = await c.get("/ok")
    assert statuses == [502, 502, 502]
    assert r.status_code == 503
    assert r.json() == {"error": "circuit_open"}
    assert r.headers["content-type"] == "application/json"
    assert r.headers["retry-after"] == "30"
    assert backend.calls == []


@pytest.mark.anyio
async def test_exceptions_count_as_failures(registry) -> None:
    backend, clock = Backend(), FakeClock()
    app = guarded(backend, clock, registry, fail_max=2)
    async with client(app) as c:
        first = await c.get("/boom")
        await c.get("/boom")
        r = await c.get("/ok")
    assert first.status_code == 500
    assert r.status_code == 503


@pytest.mark.anyio
async def test_4xx_never_counts(registry) -> None:
    backend, clock = Backend(), FakeClock()
    app = guarded(backend, clock, registry, fail_max=2)
    async with client(app) as c:
        for _ in range(5):
            assert (await c.get("/missing")).status_code == 404
            assert (await c.get("/teapot")).status_code == 418
        r = await c.get("/ok")
    assert r.status_code == 200
    assert app.policies[0].breaker.state == "closed"


@pytest.mark.anyio
async def test_a_success_resets_the_consecutive_failure_count(registry) -> None:
    backend, clock = Backend(), FakeClock()
    app = guarded(backend, clock, registry, fail_max=3)
    async with client(app) as c:
        for _ in range(4):
            await c.get("/fail")
            await c.get("/fail")
            await c.get("/ok")
        assert (await c.get("/ok")).status_code == 200


@pytest.mark.anyio
async def test_retry_after_counts_down_with_the_clock(registry) -> None:
    backend, clock = Backend(), FakeClock()
    app = guarded(backend, clock, registry, fail_max=1, reset_timeout=30)
    async with client(app) as c:
        await c.get("/fail")
        clock.advance(20.5)
        r = await c.get("/ok")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "10"  # ceil(9.5)


@pytest.mark.anyio
async def test_after_reset_timeout_one_trial_success_closes(registry) -> None:
    backend, clock = Backend(), FakeClock()
    app = guarded(backend, clock, registry, fail_max=1, reset_timeout=10)
    breaker = app.policies[0].breaker
    async with client(app) as c:
        await c.get("/fail")
        assert breaker.state == "open"
        clock.advance(10)
        backend.calls.clear()
        r = await c.get("/ok")
        assert r.status_code == 200
        assert backend.calls == ["ok"]
        assert breaker.state == "closed"
        assert (await c.get("/ok")).status_code == 200


@pytest.mark.anyio
async def test_success_threshold_successful_trials_close_it(registry) -> None:
    backend, clock = Backend(), FakeClock()
    app = guarded(backend, clock, registry, fail_max=1, reset_timeout=10, success_threshold=3)
    breaker = app.policies[0].breaker
    async with client(app) as c:
        await c.get("/fail")
        clock.advance(10)
        states = []
        for _ in range(3):
            assert (await c.get("/ok")).status_code == 200
            states.append(breaker.state)
    assert states == ["half-open", "half-open", "closed"]


@pytest.mark.anyio
async def test_a_failed_trial_reopens_for_a_full_reset_timeout(registry) -> None:
    backend, clock = Backend(), FakeClock()
    app = guarded(backend, clock, registry, fail_max=1, reset_timeout=10)
    breaker = app.policies[0].breaker
    async with client(app) as c:
        await c.get("/fail")
        clock.advance(10)
        assert (await c.get("/fail")).status_code == 502  # the trial reached the app and failed
        assert breaker.state == "open"
        r = await c.get("/ok")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "10"


@pytest.mark.anyio
async def test_50_concurrent_requests_into_half_open_let_exactly_one_through(registry) -> None:
    backend, clock = Backend(), FakeClock()
    app = guarded(backend, clock, registry, fail_max=1, reset_timeout=5)
    async with client(app) as c:
        await c.get("/fail")
        clock.advance(5)
        backend.calls.clear()
        tasks = [asyncio.create_task(c.get("/slow")) for _ in range(50)]
        for _ in range(2000):  # bounded: until 49 answered and the trial is inside the app
            if backend.entered.is_set() and sum(t.done() for t in tasks) >= 49:
                break
            await asyncio.sleep(0.001)
        backend.release.set()
        responses = await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] + [503] * 49
    assert backend.calls == ["slow"]
    assert all(r.json() == {"error": "circuit_open"} for r in responses if r.status_code == 503)


@pytest.mark.anyio
async def test_a_cancelled_trial_frees_its_slot_and_is_not_counted(registry) -> None:
    backend, clock = Backend(), FakeClock()
    app = guarded(backend, clock, registry, fail_max=1, reset_timeout=5)
    breaker = app.policies[0].breaker
    async with client(app) as c:
        await c.get("/fail")
        clock.advance(5)
        task = asyncio.create_task(c.get("/slow"))
        await asyncio.wait_for(backend.entered.wait(), timeout=5)
        assert breaker.state == "half-open"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert breaker.state == "half-open"  # neither re-opened nor closed
        r = await c.get("/ok")  # the slot is free: this is the next trial
    assert r.status_code == 200
    assert breaker.state == "closed"


@pytest.mark.anyio
async def test_excluded_paths_are_neither_refused_nor_counted(registry) -> None:
    backend, clock = Backend(), FakeClock()
    app = guarded(backend, clock, registry, fail_max=2, exclude_paths=["/health"])
    async with client(app) as c:
        for _ in range(5):
            assert (await c.get("/health")).status_code == 500
        assert app.policies[0].breaker.state == "closed"
        await open_it(c, 2)
        assert (await c.get("/ok")).status_code == 503
        assert (await c.get("/health")).status_code == 500  # still reaches the app


@pytest.mark.anyio
async def test_excluded_exceptions_are_not_failures(registry) -> None:
    class BusinessError(Exception):
        pass

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise BusinessError("no such customer")

    mw = kitmw.CircuitBreaker(app, name=unique(), fail_max=1, exclude=[BusinessError], registry=registry)
    async with client(mw) as c:
        for _ in range(3):
            assert (await c.get("/")).status_code == 500
    assert mw.policies[0].breaker_for(None).state == "closed"  # a raw app: no route is known


@pytest.mark.anyio
async def test_excluded_exception_with_a_metaclass_is_still_only_a_type(registry) -> None:
    import abc

    class Abstract(Exception, metaclass=abc.ABCMeta):
        pass

    b = Breaker(name=unique(), fail_max=1, exclude=[Abstract], registry=registry)
    await b.arelease(await b.aacquire(), failed=True, error=RuntimeError("counts"))
    assert b.state == "open"


@pytest.mark.anyio
async def test_is_failure_decides_what_counts(registry) -> None:
    backend, clock = Backend(), FakeClock()
    app = guarded(backend, clock, registry, fail_max=2, is_failure=lambda ex: ex.status == 418)
    async with client(app) as c:
        await open_it(c, 3, "/fail")  # 502 does not count here
        assert (await c.get("/ok")).status_code == 200
        await open_it(c, 2, "/teapot")
        assert (await c.get("/ok")).status_code == 503


@pytest.mark.anyio
async def test_transitions_are_logged_on_kitmw_breaker(registry, caplog) -> None:
    backend, clock = Backend(), FakeClock()
    name = unique()
    app = guarded(backend, clock, registry, name=name, fail_max=1, reset_timeout=5)
    with caplog.at_level(logging.INFO, logger="kitmw.breaker"):
        async with client(app) as c:
            await c.get("/fail")
            clock.advance(5)
            await c.get("/ok")
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "kitmw.breaker"]
    assert records == [
        ("WARNING", f"circuit breaker {name}: closed -> open"),
        ("INFO", f"circuit breaker {name}: open -> half-open"),
        ("INFO", f"circuit breaker {name}: half-open -> closed"),
    ]


@pytest.mark.anyio
async def test_metrics_state_gauge_transitions_and_rejections(registry) -> None:
    backend, clock = Backend(), FakeClock()
    name = unique()
    app = guarded(backend, clock, registry, name=name, fail_max=1, reset_timeout=5)
    async with client(app) as c:
        await c.get("/fail")
        await c.get("/ok")
        await c.get("/ok")
        state = samples(registry, "kitmw_breaker_state")
        assert state[(("breaker", name), ("state", "open"))] == 1
        assert state[(("breaker", name), ("state", "closed"))] == 0
        assert state[(("breaker", name), ("state", "half-open"))] == 0
        assert samples(registry, "kitmw_breaker_rejections_total") == {(("breaker", name),): 2}
        clock.advance(5)
        await c.get("/ok")
    state = samples(registry, "kitmw_breaker_state")
    assert state[(("breaker", name), ("state", "closed"))] == 1
    assert state[(("breaker", name), ("state", "open"))] == 0
    transitions = {
        (dict(k)["from_state"], dict(k)["to_state"]): v
        for k, v in samples(registry, "kitmw_breaker_transitions_total").items()
    }
    assert transitions == {("closed", "open"): 1, ("open", "half-open"): 1, ("half-open", "closed"): 1}


@pytest.mark.anyio
async def test_fused_stack_takes_the_breaker_and_the_stack_exclusions(registry) -> None:
    backend = Backend()
    app = kitmw.stack(
        backend.app,
        breaker={"fail_max": 1, "name": unique(), "registry": registry, "per_route": False},
        exclude_paths=["/health"],
    )
    async with client(app) as c:
        await c.get("/health")
        assert (await c.get("/ok")).status_code == 200
        await c.get("/fail")
        assert (await c.get("/ok")).status_code == 503


@pytest.mark.anyio
async def test_add_middleware_on_a_starlette_app(registry) -> None:
    backend = Backend()
    backend.app.add_middleware(
        kitmw.CircuitBreaker, fail_max=2, name=unique(), registry=registry, per_route=False
    )
    async with client(backend.app) as c:
        await open_it(c, 2, "/boom")
        r = await c.get("/ok")
    assert r.status_code == 503
    assert r.json() == {"error": "circuit_open"}


def test_wsgi_flask_app_uses_the_sync_side(registry) -> None:
    flask = pytest.importorskip("flask")
    app = flask.Flask(__name__)
    calls = []

    @app.get("/fail")
    def fail() -> Any:
        calls.append("fail")
        return "down", 503

    @app.get("/ok")
    def ok() -> Any:
        calls.append("ok")
        return "ok"

    wrapped = kitmw.wsgi.CircuitBreaker(app, fail_max=2, name=unique(), registry=registry, per_route=False)
    with httpx.Client(transport=httpx.WSGITransport(app=wrapped), base_url="http://test") as c:
        c.get("/fail")
        c.get("/fail")
        r = c.get("/ok")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "30"
    assert calls == ["fail", "fail"]


# -- one breaker per route (the policy on neutral exchanges) -----------------------------------


def request(policy: BreakerPolicy, route: str | None, status: int = 200, path: str = "/x") -> int:
    """One request through the policy: the status the caller gets (503 if refused)."""
    from kitmw.testing import make_exchange

    ex = make_exchange("GET", path, route=route)
    answer = policy.enter(ex)
    if answer is not None:
        return answer.status
    ex.status = status
    policy.exit(ex)
    return status


def test_per_route_names_are_the_options_name_and_the_template(registry) -> None:
    a = BreakerPolicy(fail_max=3, registry=registry)
    b = BreakerPolicy(fail_max=3, registry=registry)
    assert a.per_route and a.breaker_name == b.breaker_name == a.breaker_for(None).name.split(":")[0]
    assert a.breaker_for("/items/{item_id}").name == b.breaker_for("/items/{item_id}").name
    assert BreakerPolicy(registry=registry).breaker_for("/items/{item_id}").name == "server:/items/{item_id}"
    named = BreakerPolicy(name="orders", registry=registry)
    assert named.breaker_for("/items/{item_id}").name == "orders:/items/{item_id}"
    assert named.breaker_for(None).name == "orders:<unmatched>"
    assert BreakerPolicy(per_route=False, registry=registry).breaker.name == "server"


def test_one_failing_route_opens_only_its_own_breaker(registry) -> None:
    policy = BreakerPolicy(fail_max=2, registry=registry)
    assert [request(policy, "/boom", 500) for _ in range(3)] == [500, 500, 503]
    assert request(policy, "/items/{item_id}") == 200
    assert request(policy, None) == 200
    assert policy.breakers["/boom"].state == "open"


def test_unmatched_and_unknown_routes_share_one_breaker(registry) -> None:
    policy = BreakerPolicy(fail_max=2, registry=registry)
    request(policy, None, 500, path="/scan/1")
    request(policy, "", 500, path="/scan/2")  # an empty template names no route either
    assert request(policy, None, path="/scan/3") == 503
    assert request(policy, "/ok") == 200
    assert set(policy.breakers) == {"<unmatched>", "/ok"}


def test_excluded_paths_are_never_counted_and_get_no_breaker(registry) -> None:
    policy = BreakerPolicy(fail_max=1, exclude_paths=["/health"], registry=registry)
    for _ in range(3):
        assert request(policy, "/health", 500, path="/health") == 500
    assert set(policy.breakers) == {"<unmatched>"}
    assert policy.breakers["<unmatched>"].fail_counter == 0


def test_max_routes_bounds_the_breakers_and_the_metric_series(registry, caplog) -> None:
    policy = BreakerPolicy(name="api", fail_max=1, max_routes=3, registry=registry)
    with caplog.at_level(logging.WARNING, logger="kitmw.breaker"):
        for i in range(50):
            request(policy, f"/r{i}")
    assert set(policy.breakers) == {"<unmatched>", "/r0", "/r1", "/r2", "<other>"}
    assert [r.getMessage() for r in caplog.records].count(
        "circuit breaker api: more than max_routes=3 routes; further routes share api:<other>"
    ) == 1
    # The routes beyond the bound share one breaker: one fails, all of them are refused.
    request(policy, "/r10", 500)
    assert request(policy, "/r20") == 503
    assert request(policy, "/r1") == 200
    labels = {dict(k)["breaker"] for k in samples(registry, "kitmw_breaker_state")}
    assert labels == {"api:<unmatched>", "api:/r0", "api:/r1", "api:/r2", "api:<other>"}


def test_the_breaker_attribute_of_a_per_route_policy_says_what_to_use(registry) -> None:
    policy = BreakerPolicy(registry=registry)
    with pytest.raises(AttributeError, match="breaker_for"):
        policy.breaker  # noqa: B018
    given = Breaker(name=unique(), registry=registry)
    assert BreakerPolicy(breaker=given).breaker is given  # a ready breaker guards the service
    assert not BreakerPolicy(breaker=given).per_route


# -- a request whose client went away (499) ------------------------------------------------------


def test_499_is_kitmw_asgi_client_closed() -> None:
    from kitmw.asgi import CLIENT_CLOSED
    from kitmw.breaker._policy import _CLIENT_CLOSED

    assert _CLIENT_CLOSED == CLIENT_CLOSED == 499


@pytest.mark.parametrize("is_failure", [None, lambda ex: ex.status >= 400], ids=["default", "custom"])
def test_a_trial_whose_client_left_frees_its_slot_uncounted(registry, is_failure: Any) -> None:
    """What a driver records for a client that left mid-response (ASGI and WSGI alike)."""
    clock = FakeClock()
    policy = BreakerPolicy(
        fail_max=1, reset_timeout=10, clock=clock, registry=registry, is_failure=is_failure
    )
    request(policy, "/stream", 500)
    clock.advance(10)
    assert request(policy, "/stream", 499) == 499  # the trial; its client is gone
    breaker = policy.breakers["/stream"]
    assert breaker.state == "half-open"  # neither closed (a success) nor re-opened (a failure)
    assert request(policy, "/stream") == 200  # the slot was freed: this is the next trial
    assert breaker.state == "closed"


def test_a_499_while_closed_neither_counts_nor_resets(registry) -> None:
    policy = BreakerPolicy(fail_max=2, registry=registry)
    request(policy, "/x", 500)
    request(policy, "/x", 499)
    assert policy.breakers["/x"].fail_counter == 1
    request(policy, "/x", 500)
    assert policy.breakers["/x"].state == "open"


# -- the primitive ------------------------------------------------------------------------------


def test_acquire_and_release_drive_pybreaker_states(registry) -> None:
    clock = FakeClock()
    b = Breaker(name=unique(), fail_max=2, reset_timeout=10, clock=clock, registry=registry)
    for _ in range(2):
        b.release(b.acquire(), failed=True, error=ConnectionError("refused"))
    assert b.state == "open" and b.pybreaker.current_state == "open"
    with pytest.raises(BreakerOpen) as info:
        b.acquire()
    assert info.value.retry_after == 10 and info.value.name == b.name
    clock.advance(10)
    permit = b.acquire()
    assert permit.trial and b.state == "half-open"
    b.release(permit, failed=False)
    assert b.state == "closed" and b.retry_after == 0


def test_release_with_failed_none_is_not_counted(registry) -> None:
    b = Breaker(name=unique(), fail_max=1, registry=registry)
    for _ in range(3):
        b.release(b.acquire(), failed=None)
    assert b.state == "closed" and b.fail_counter == 0


def test_half_open_max_bounds_concurrent_trials(registry) -> None:
    clock = FakeClock()
    b = Breaker(name=unique(), fail_max=1, reset_timeout=1, half_open_max=2, clock=clock, registry=registry)
    b.release(b.acquire(), failed=True)
    clock.advance(1)
    first, second = b.acquire(), b.acquire()
    with pytest.raises(BreakerOpen):
        b.acquire()
    b.release(first, failed=None)
    third = b.acquire()  # the freed slot
    b.release(third, failed=None)
    b.release(third, failed=None)  # a second release of one permit frees nothing more
    b.release(second, failed=None)
    assert isinstance(b.acquire(), Permit)


@pytest.mark.anyio
async def test_async_cancelled_trial_primitive(registry) -> None:
    clock = FakeClock()
    b = Breaker(name=unique(), fail_max=1, reset_timeout=1, clock=clock, registry=registry)
    await b.arelease(await b.aacquire(), failed=True)
    clock.advance(1)

    async def trial() -> None:
        permit = await b.aacquire()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await b.arelease(permit, failed=None)
            raise

    task = asyncio.create_task(trial())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state == "half-open"
    permit = await b.aacquire()
    await b.arelease(permit, failed=False)
    assert b.state == "closed"


def test_sync_side_from_8_threads_counts_every_failure(registry) -> None:
    per_thread, threads = 50, 8
    b = Breaker(name=unique(), fail_max=per_thread * threads + 1, registry=registry)
    barrier = threading.Barrier(threads)

    def work() -> None:
        barrier.wait(timeout=10)
        for _ in range(per_thread):
            b.release(b.acquire(), failed=True)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=30)
    assert b.fail_counter == per_thread * threads and b.state == "closed"
    b.release(b.acquire(), failed=True)
    assert b.state == "open"


def test_sync_side_from_8_threads_never_exceeds_half_open_max(registry) -> None:
    clock = FakeClock()
    b = Breaker(name=unique(), fail_max=1, reset_timeout=1, half_open_max=2, clock=clock, registry=registry)
    b.release(b.acquire(), failed=True)
    clock.advance(1)
    lock = threading.Lock()
    inside = peak = admitted = 0
    barrier = threading.Barrier(8)

    def work() -> None:
        nonlocal inside, peak, admitted
        barrier.wait(timeout=10)
        for _ in range(200):
            try:
                permit = b.acquire()
            except BreakerOpen:
                continue
            with lock:
                inside += 1
                admitted += 1
                peak = max(peak, inside)
            with lock:
                inside -= 1
            b.release(permit, failed=None)  # unknown verdicts keep it half-open

    pool = [threading.Thread(target=work) for _ in range(8)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=30)
    assert 1 <= peak <= 2
    assert admitted >= 1
    assert b.state == "half-open"
    b.release(b.acquire(), failed=False)
    assert b.state == "closed"


def test_listeners_hear_calls_failures_successes_and_transitions(registry) -> None:
    events: list[Any] = []

    class Recorder(pybreaker.CircuitBreakerListener):
        def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
            events.append("before")

        def failure(self, cb: Any, exc: BaseException) -> None:
            events.append(("failure", type(exc).__name__))

        def success(self, cb: Any) -> None:
            events.append("success")

        def state_change(self, cb: Any, old: Any, new: Any) -> None:
            events.append(("state", old.name, new.name, cb.current_state, cb.name))

    clock = FakeClock()
    name = unique()
    b = Breaker(
        name=name, fail_max=1, reset_timeout=1, listeners=[Recorder()], clock=clock, registry=registry
    )
    b.release(b.acquire(), failed=False)
    b.release(b.acquire(), failed=True, error=TimeoutError())
    with pytest.raises(BreakerOpen):
        b.acquire()  # refused: no before_call, as in pybreaker
    clock.advance(1)
    b.release(b.acquire(), failed=False)
    assert events == [
        "before",
        "success",
        "before",
        ("failure", "TimeoutError"),
        ("state", "closed", "open", "open", name),
        ("state", "open", "half-open", "half-open", name),  # as pybreaker: half-open, then the call
        "before",
        ("state", "half-open", "closed", "closed", name),  # pybreaker closes, then tells success
        "success",
    ]


@pytest.mark.parametrize(
    ("options", "option"),
    [
        pytest.param({"fail_max": 0}, "fail_max", id="fail_max-zero"),
        pytest.param({"fail_max": 2.5}, "fail_max", id="fail_max-float"),
        pytest.param({"reset_timeout": 0}, "reset_timeout", id="reset_timeout-zero"),
        pytest.param({"reset_timeout": -1}, "reset_timeout", id="reset_timeout-negative"),
        pytest.param({"success_threshold": 0}, "success_threshold", id="success_threshold"),
        pytest.param({"half_open_max": 0}, "half_open_max", id="half_open_max"),
        pytest.param({"storage": "memcached://localhost"}, "storage", id="storage-scheme"),
        pytest.param({"storage": "localhost:6379"}, "storage", id="storage-no-scheme"),
        pytest.param({"exclude": ["ValueError"]}, "exclude", id="exclude"),
        pytest.param({"listeners": [object()]}, "listeners", id="listeners"),
        pytest.param({"is_failure": 5}, "is_failure", id="is_failure"),
        pytest.param({"exclude_paths": ["health"]}, "exclude_paths", id="exclude_paths"),
        pytest.param({"name": ""}, "name", id="name"),
        pytest.param({"per_route": "yes"}, "per_route", id="per_route"),
        pytest.param({"max_routes": 0}, "max_routes", id="max_routes"),
        pytest.param(
            {"per_route": True, "breaker": Breaker(name="given", registry=CollectorRegistry())},
            "per_route",
            id="per_route-with-breaker",
        ),
    ],
)
def test_bad_options_raise_config_error_naming_the_option(options: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError, match=option) as info:
        BreakerPolicy(**options)
    assert isinstance(info.value, ValueError)


def test_identically_configured_policies_get_the_same_default_name(registry) -> None:
    a = BreakerPolicy(fail_max=3, exclude_paths=["/health"], registry=registry)
    b = BreakerPolicy(fail_max=3, exclude_paths=["/health"], registry=registry)
    c = BreakerPolicy(fail_max=4, exclude_paths=["/health"], registry=registry)
    assert a.breaker_name == b.breaker_name != c.breaker_name
    assert BreakerPolicy(registry=registry).breaker_name == "server"
    assert BreakerPolicy.name == "breaker"
    assert a.breaker_name == default_name(
        fail_max=3,
        reset_timeout=30,
        success_threshold=1,
        half_open_max=1,
        exclude=(),
        exclude_paths=["/health"],
        is_failure=None,
    )


def test_breaker_registry_shares_one_breaker_per_name(registry) -> None:
    breakers = BreakerRegistry()
    a = breakers.get("upstream", fail_max=3, registry=registry)
    assert breakers.get("upstream", fail_max=3, registry=registry) is a
    with pytest.raises(ConfigError, match="name"):
        breakers.get("upstream", fail_max=4, registry=registry)


def test_closed_overhead_is_small(registry) -> None:
    """Not a timing assertion: it only checks the closed path allocates no permit."""
    b = Breaker(name=unique(), registry=registry)
    assert b.acquire() is b.acquire()
