"""Breaker state shared through a real redis-server: replicas, joiners, leased probes, outages."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import kitmw
from kitmw.breaker import Breaker
from kitmw.errors import BreakerOpen
from kitmw.testing import FakeClock

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def service(lifespan: Any = None) -> Starlette:
    """One replica of a service as users write it."""

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def fail(request: Any) -> PlainTextResponse:
        return PlainTextResponse("down", status_code=500)

    return Starlette(routes=[Route("/ok", ok), Route("/fail", fail)], lifespan=lifespan)


def replica(redis_url: str, clock: Any = None, **options: Any) -> Any:
    """A replica: the same configuration each time, no name given (default name shared).

    Its lifespan closes the breaker's Redis clients, as a user's would (on a real server).
    """
    options.setdefault("fail_max", 3)
    options.setdefault("reset_timeout", 30)
    # These tests fail /fail and probe /ok: one breaker for the service (per route: test_breaker_e2e).
    options.setdefault("per_route", False)
    built: list[Breaker] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        await built[0].aclose()

    app = kitmw.CircuitBreaker(
        service(lifespan),
        storage=redis_url,
        clock=clock,
        registry=options.pop("registry", None) or CollectorRegistry(),
        refresh_interval=0,  # see every change at once; the default caches for 100 ms
        **options,
    )
    built.append(breaker_of(app))
    return app


@contextlib.asynccontextmanager
async def closing(*items: Any) -> AsyncIterator[None]:
    """Close the breakers' Redis clients on this test's loop (in-process apps have no lifespan)."""
    try:
        yield
    finally:
        for item in items:
            await (item if isinstance(item, Breaker) else breaker_of(item)).aclose()


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test"
    )


def shared_hash(redis_url: str, name: str) -> dict[str, str]:
    r = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2)
    try:
        return r.hgetall(f"kitmw:breaker:{{{name}}}")  # type: ignore[return-value]
    finally:
        r.close()


def breaker_of(app: Any) -> Breaker:
    return app.policies[0].breaker  # type: ignore[no-any-return]


@pytest.mark.anyio
async def test_failures_in_one_replica_open_the_other(redis_url: str) -> None:
    clock = FakeClock(1_700_000_000.0)
    a, b = replica(redis_url, clock), replica(redis_url, clock)
    assert breaker_of(a).name == breaker_of(b).name
    async with closing(a, b), client(a) as ca, client(b) as cb:
        assert (await cb.get("/ok")).status_code == 200
        for _ in range(3):
            await ca.get("/fail")
        clock.advance(7)
        r = await cb.get("/ok")
    assert r.status_code == 503
    assert r.json() == {"error": "circuit_open"}
    assert r.headers["retry-after"] == "23"  # the open timestamp is shared, not per process
    assert shared_hash(redis_url, breaker_of(a).name)["state"] == "open"


@pytest.mark.anyio
async def test_failures_are_counted_across_replicas(redis_url: str) -> None:
    clock = FakeClock(1_700_000_000.0)
    a, b = replica(redis_url, clock), replica(redis_url, clock)
    async with closing(a, b), client(a) as ca, client(b) as cb:
        await ca.get("/fail")
        await cb.get("/fail")
        await ca.get("/fail")  # the third consecutive failure of the fleet
        assert (await cb.get("/ok")).status_code == 503


@pytest.mark.anyio
async def test_a_new_replica_joining_does_not_reset_the_open_state(redis_url: str) -> None:
    clock = FakeClock(1_700_000_000.0)
    a = replica(redis_url, clock)
    async with closing(a), client(a) as ca:
        for _ in range(3):
            await ca.get("/fail")
    name = breaker_of(a).name
    before = shared_hash(redis_url, name)
    joiner = replica(redis_url, clock)
    assert shared_hash(redis_url, name) == before  # building writes nothing
    async with closing(joiner), client(joiner) as cj:
        r = await cj.get("/ok")
    assert r.status_code == 503
    assert breaker_of(joiner).state == "open"
    assert shared_hash(redis_url, name) == before


@pytest.mark.anyio
async def test_missing_keys_read_as_a_closed_breaker(redis_url: str, redis_server: Any) -> None:
    clock = FakeClock(1_700_000_000.0)
    a = replica(redis_url, clock)
    async with closing(a), client(a) as ca:
        for _ in range(3):
            await ca.get("/fail")
        redis_server.flush()  # keys gone (eviction, a flush, a new Redis)
        r = await ca.get("/ok")
    assert r.status_code == 200
    assert breaker_of(a).state == "closed"


@pytest.mark.anyio
async def test_one_leased_probe_across_replicas(redis_url: str) -> None:
    clock = FakeClock(1_700_000_000.0)
    a = Breaker(
        name="probe", fail_max=1, reset_timeout=10, storage=redis_url, clock=clock, refresh_interval=0
    )
    b = Breaker(
        name="probe", fail_max=1, reset_timeout=10, storage=redis_url, clock=clock, refresh_interval=0
    )
    await a.arelease(await a.aacquire(), failed=True)
    clock.advance(10)
    trial = await a.aacquire()
    assert trial.trial and a.state == "half-open"
    with pytest.raises(BreakerOpen):
        await b.aacquire()  # b's own slot is free, but the fleet's only lease is taken
    await a.arelease(trial, failed=False)
    assert shared_hash(redis_url, "probe")["state"] == "closed"
    permit = await b.aacquire()
    assert not permit.trial and b.state == "closed"
    await a.aclose()
    await b.aclose()


@pytest.mark.anyio
async def test_a_failed_trial_reopens_the_fleet(redis_url: str) -> None:
    clock = FakeClock(1_700_000_000.0)
    a = Breaker(
        name="reopen", fail_max=1, reset_timeout=10, storage=redis_url, clock=clock, refresh_interval=0
    )
    b = Breaker(
        name="reopen", fail_max=1, reset_timeout=10, storage=redis_url, clock=clock, refresh_interval=0
    )
    await a.arelease(await a.aacquire(), failed=True)
    clock.advance(10)
    trial = await a.aacquire()
    clock.advance(2)
    await a.arelease(trial, failed=True, error=TimeoutError())
    with pytest.raises(BreakerOpen) as info:
        await b.aacquire()
    assert info.value.retry_after == 10  # opened again at the trial's failure
    await a.aclose()
    await b.aclose()


@pytest.mark.anyio
async def test_a_cancelled_trial_gives_its_lease_back(redis_url: str) -> None:
    clock = FakeClock(1_700_000_000.0)
    a = Breaker(
        name="cancel", fail_max=1, reset_timeout=10, storage=redis_url, clock=clock, refresh_interval=0
    )
    b = Breaker(
        name="cancel", fail_max=1, reset_timeout=10, storage=redis_url, clock=clock, refresh_interval=0
    )
    await a.arelease(await a.aacquire(), failed=True)
    clock.advance(10)
    trial = await a.aacquire()
    await a.arelease(trial, failed=None)
    assert shared_hash(redis_url, "cancel")["state"] == "half-open"  # not re-opened, not closed
    trial_b = await b.aacquire()
    assert trial_b.trial
    await b.arelease(trial_b, failed=False)
    assert shared_hash(redis_url, "cancel")["state"] == "closed"
    await a.aclose()
    await b.aclose()


def test_sync_side_shares_state_too(redis_url: str) -> None:
    clock = FakeClock(1_700_000_000.0)
    a = Breaker(name="sync", fail_max=2, reset_timeout=10, storage=redis_url, clock=clock, refresh_interval=0)
    b = Breaker(name="sync", fail_max=2, reset_timeout=10, storage=redis_url, clock=clock, refresh_interval=0)
    a.release(a.acquire(), failed=True)
    b.release(b.acquire(), failed=True)
    with pytest.raises(BreakerOpen):
        a.acquire()
    clock.advance(10)
    trial = b.acquire()
    with pytest.raises(BreakerOpen):
        a.acquire()
    b.release(trial, failed=False)
    assert not a.acquire().trial
    a.close()
    b.close()


def _storage_errors(registry: CollectorRegistry) -> float:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == "kitmw_storage_errors_total" and sample.labels == {"component": "breaker"}:
                return sample.value
    return 0.0


@pytest.mark.anyio
@pytest.mark.faults
async def test_redis_down_falls_back_to_local_state_logs_once_and_recovers(
    redis_url: str, redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(1_700_000_000.0)
    registry = CollectorRegistry()
    a = replica(redis_url, clock, registry=registry, storage_retry=0)
    name = breaker_of(a).name
    with caplog.at_level(logging.INFO, logger="kitmw.breaker"):
        async with closing(a), client(a) as ca:
            assert (await ca.get("/ok")).status_code == 200
            redis_server.stop()
            try:
                statuses = [(await ca.get("/ok")).status_code for _ in range(3)]
                for _ in range(3):
                    await ca.get("/fail")
                refused = await ca.get("/ok")  # opened on local state alone
            finally:
                redis_server.start()
            after = await ca.get("/ok")  # Redis is back: this process tells the fleet it opened
    assert statuses == [200, 200, 200]
    assert refused.status_code == 503
    assert after.status_code == 503
    assert shared_hash(redis_url, name)["state"] == "open"
    outage = [r for r in caplog.records if r.name == "kitmw.breaker" and "Redis" in r.getMessage()]
    assert [r.levelname for r in outage] == ["ERROR", "INFO"]
    assert _storage_errors(registry) >= 1


@pytest.mark.e2e
@pytest.mark.fleet
def test_two_uvicorn_servers_share_one_breaker(redis_url: str, serve_asgi: Any) -> None:
    one = replica(redis_url)  # real clocks: wall time shared through Redis
    two = replica(redis_url)
    with serve_asgi(one) as s1, serve_asgi(two) as s2, httpx.Client(timeout=10) as http:
        assert http.get(s2.url + "/ok").status_code == 200
        assert [http.get(s1.url + "/fail").status_code for _ in range(3)] == [500, 500, 500]
        # The server records its verdict after the response went out: wait for the write.
        name = breaker_of(one).name
        deadline = time.monotonic() + 5
        while shared_hash(redis_url, name).get("state") != "open" and time.monotonic() < deadline:
            time.sleep(0.01)
        r = http.get(s2.url + "/ok")
    assert r.status_code == 503
    assert r.json() == {"error": "circuit_open"}
    assert 1 <= int(r.headers["retry-after"]) <= 30
