"""Rate limit on a real redis-server: shared budgets, concurrency, outages, slow storage."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import httpx
import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kitmw
from kitmw.ratelimit import Limiter

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def ns() -> str:
    return "t" + uuid.uuid4().hex[:12]


def count(registry, metric: str, **labels: str) -> float:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name == metric:
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels == labels:
                    return sample.value
    return 0.0


async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def client_for(app) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 1234))
    return httpx.AsyncClient(transport=transport, base_url="http://test", timeout=10)


async def statuses(c: httpx.AsyncClient, n: int) -> list[int]:
    return [(await c.get("/")).status_code for _ in range(n)]


async def until_limiting(c: httpx.AsyncClient, deadline: float = 10.0) -> httpx.Response:
    """Poll (bounded) until a response carries RateLimit headers again: the storage answers."""
    end = time.monotonic() + deadline
    while True:
        r = await c.get("/")
        if "ratelimit" in r.headers:
            return r
        if time.monotonic() > end:
            raise TimeoutError("rate limiting did not resume")
        await asyncio.sleep(0.05)


# -- exact counts on Redis -------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
async def test_each_strategy_on_async_redis(strategy: str, redis_url: str, registry) -> None:
    app = kitmw.RateLimit(
        hello, limit="5/minute", strategy=strategy, storage=redis_url, registry=registry, namespace=ns()
    )
    async with client_for(app) as c:
        assert await statuses(c, 7) == [200] * 5 + [429, 429]


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
def test_each_strategy_on_sync_redis(strategy: str, redis_url: str, registry) -> None:
    limiter = Limiter(
        limit="5/minute;10/hour", strategy=strategy, storage=redis_url, registry=registry, namespace=ns()
    )
    assert [limiter.hit("k").allowed for _ in range(7)] == [True] * 5 + [False, False]
    # Refusals by the minute window did not consume the hour window.
    hour = limiter._specs[1]
    assert limiter._backend.strategy.get_window_stats(hour.item, "k").remaining == 5


@pytest.mark.anyio
async def test_200_concurrent_requests_allow_exactly_50_on_redis(redis_url: str, registry) -> None:
    app = kitmw.RateLimit(
        hello, limit="50/minute", storage=redis_url, storage_timeout=10, registry=registry, namespace=ns()
    )
    async with client_for(app) as c:
        responses = await asyncio.gather(*(c.get("/") for _ in range(200)))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 50
    assert codes.count(429) == 150
    assert count(registry, "kitmw_ratelimit_decisions", side="server", decision="fail_open") == 0


@pytest.mark.anyio
async def test_two_separately_built_apps_share_one_budget(redis_url: str, registry) -> None:
    shared = ns()
    app1 = kitmw.RateLimit(hello, limit="5/minute", storage=redis_url, registry=registry, namespace=shared)
    app2 = kitmw.RateLimit(hello, limit="5/minute", storage=redis_url, registry=registry, namespace=shared)
    async with client_for(app1) as c1, client_for(app2) as c2:
        codes = [(await (c1 if i % 2 else c2).get("/")).status_code for i in range(10)]
    assert codes.count(200) == 5
    assert codes[5:] == [429] * 5


@pytest.mark.fleet
def test_two_uvicorn_servers_on_one_redis_share_the_budget(serve_asgi, redis_url: str) -> None:
    from prometheus_client import CollectorRegistry

    shared = ns()

    def build():
        return kitmw.RateLimit(
            hello, limit="5/minute", storage=redis_url, registry=CollectorRegistry(), namespace=shared
        )

    with serve_asgi(build()) as s1, serve_asgi(build()) as s2, httpx.Client(timeout=10) as client:
        codes = [client.get((s1 if i % 2 else s2).url + "/").status_code for i in range(10)]
        last = client.get(s1.url + "/")
    assert codes.count(200) == 5
    assert codes[5:] == [429] * 5
    assert last.json() == {"error": "rate_limited"}
    assert int(last.headers["retry-after"]) >= 1


# -- outages ----------------------------------------------------------------------------------


@pytest.mark.faults
@pytest.mark.anyio
async def test_redis_outage_fails_open_counted_logged_once_and_recovers(
    redis_server, redis_url: str, registry, caplog
) -> None:
    app = kitmw.RateLimit(
        hello, limit="3/minute", storage=redis_url, registry=registry, namespace=ns(), recovery_interval=0.1
    )
    caplog.set_level(logging.INFO, logger="kitmw.ratelimit")
    async with client_for(app) as c:
        assert await statuses(c, 4) == [200, 200, 200, 429]
        redis_server.stop()
        try:
            during = [await c.get("/") for _ in range(6)]
        finally:
            redis_server.start()
        assert [r.status_code for r in during] == [200] * 6
        assert all("ratelimit" not in r.headers for r in during)  # nothing known, nothing claimed
        assert count(registry, "kitmw_ratelimit_decisions", side="server", decision="fail_open") == 6
        assert count(registry, "kitmw_storage_errors", component="ratelimit") == 6
        errors = [r for r in caplog.records if r.name == "kitmw.ratelimit" and r.levelno == logging.ERROR]
        assert len(errors) == 1 and "failing open" in errors[0].getMessage()

        # Redis is back (empty): limiting resumes by itself.
        await until_limiting(c)
        assert await statuses(c, 3) == [200, 200, 429]
    assert any("recovered" in r.getMessage() for r in caplog.records if r.name == "kitmw.ratelimit")
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


@pytest.mark.faults
@pytest.mark.anyio
async def test_redis_outage_fails_closed_with_503_and_recovers(
    redis_server, redis_url: str, registry
) -> None:
    app = kitmw.RateLimit(
        hello,
        limit="3/minute",
        storage=redis_url,
        fail_open=False,
        registry=registry,
        namespace=ns(),
        recovery_interval=0.1,
    )
    async with client_for(app) as c:
        assert (await c.get("/")).status_code == 200
        redis_server.stop()
        try:
            during = [await c.get("/") for _ in range(3)]
        finally:
            redis_server.start()
        assert [r.status_code for r in during] == [503] * 3
        assert all(r.json() == {"error": "unavailable"} for r in during)
        assert all(int(r.headers["retry-after"]) >= 1 for r in during)
        assert count(registry, "kitmw_ratelimit_decisions", side="server", decision="fail_closed") == 3

        end = time.monotonic() + 10
        while (r := await c.get("/")).status_code == 503:
            assert time.monotonic() < end, "limiting did not resume"
            await asyncio.sleep(0.05)
        assert r.status_code == 200 and "ratelimit" in r.headers


@pytest.mark.faults
def test_sync_path_outage_fails_open_and_recovers(redis_server, redis_url: str, registry) -> None:
    limiter = Limiter(
        limit="2/minute", storage=redis_url, registry=registry, namespace=ns(), recovery_interval=0.1
    )
    assert limiter.hit("k").allowed
    redis_server.stop()
    try:
        down = limiter.hit("k")
    finally:
        redis_server.start()
    assert down.allowed and down.degraded
    end = time.monotonic() + 10
    while (d := limiter.hit("k")).degraded:
        assert time.monotonic() < end, "limiting did not resume"
        time.sleep(0.05)
    assert d.allowed and d.remaining == 1
    assert limiter.hit("k").allowed
    refused = limiter.hit("k")
    assert not refused.allowed and not refused.degraded


@pytest.mark.faults
@pytest.mark.anyio
async def test_slow_storage_does_not_hold_the_request(redis_url: str, registry) -> None:
    app = kitmw.RateLimit(
        hello, limit="3/minute", storage=redis_url, storage_timeout=0.2, registry=registry, namespace=ns()
    )
    admin = redis.Redis.from_url(redis_url, socket_timeout=5)
    async with client_for(app) as c:
        assert "ratelimit" in (await c.get("/")).headers  # connected and working
        admin.execute_command("CLIENT", "PAUSE", "1000", "ALL")  # Redis answers nobody for 1 s
        try:
            r = await c.get("/")
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")  # returns once the pause is over
            admin.close()
    # The decision was taken without Redis's answer (it only came after the pause).
    assert r.status_code == 200 and "ratelimit" not in r.headers
    assert count(registry, "kitmw_ratelimit_decisions", side="server", decision="fail_open") == 1


@pytest.mark.faults
def test_slow_storage_does_not_hold_a_sync_caller(redis_url: str, registry) -> None:
    limiter = Limiter(
        limit="3/minute", storage=redis_url, storage_timeout=0.2, registry=registry, namespace=ns()
    )
    assert not limiter.hit("k").degraded
    admin = redis.Redis.from_url(redis_url, socket_timeout=5)
    admin.execute_command("CLIENT", "PAUSE", "1000", "ALL")
    try:
        decision = limiter.hit("k")
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")  # returns once the pause is over
        admin.close()
    assert decision.allowed and decision.degraded
