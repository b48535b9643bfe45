"""The httpx client driver against real servers, over httpx and httpx2, sync and async.

Every test runs four times (``lib`` x ``mode``). The sync client runs in a worker
thread so one async test body drives both; the servers are real uvicorn apps on
loopback (and a raw asyncio server for a response cut mid-body). Sleeps are injected
and recorded, never waited for (except where a real rate limit window must pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from email.utils import formatdate
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from kitmw import Policy, Rejection
from kitmw.errors import BreakerOpen as KitmwBreakerOpen
from kitmw.errors import ConcurrencyLimited, ConfigError, DeadlineExceeded
from kitmw.errors import RateLimited as KitmwRateLimited
from kitmw.exchange import reset_deadline, set_deadline
from kitmw.retry import Retry, RetryBudget, parse_retry_after
from kitmw.testing import FakeClock

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _has(module: str, attr: str) -> bool:
    try:
        return hasattr(importlib.import_module(module), attr)
    except ImportError:
        return False


needs_breaker = pytest.mark.skipif(not _has("kitmw.breaker", "Breaker"), reason="kitmw.breaker not landed")
needs_limiter = pytest.mark.skipif(
    not _has("kitmw.ratelimit", "Limiter"), reason="kitmw.ratelimit not landed"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the upstream app ---------------------------------------------------------------------


class Upstream:
    """A Starlette app as users write them, with counters tests read back."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/ok", self.ok, methods=["GET", "POST", "PUT"]),
                Route("/flaky/{key}", self.flaky, methods=["GET", "POST", "PUT"]),
                Route("/status/{code:int}", self.status, methods=["GET", "POST"]),
                Route("/sleep", self.sleep),
                Route("/headers", self.headers),
                Route("/where", self.where),
                Route("/retry-after/{key}", self.retry_after),
            ]
        )

    def hit(self, key: str) -> int:
        with self.lock:
            self.hits[key] += 1
            return self.hits[key]

    async def ok(self, request: Request) -> Response:
        self.hit(request.query_params.get("key", "ok"))
        return PlainTextResponse(f"ok from {self.name}")

    async def flaky(self, request: Request) -> Response:
        """Fail ``fail`` times with ``status`` for this key, then succeed."""
        key = request.path_params["key"]
        await request.body()
        n = self.hit(key)
        if n <= int(request.query_params.get("fail", "1")):
            return PlainTextResponse("try again", status_code=int(request.query_params.get("status", "503")))
        return PlainTextResponse(f"ok after {n}")

    async def status(self, request: Request) -> Response:
        self.hit(request.query_params.get("key", "status"))
        return PlainTextResponse("status", status_code=request.path_params["code"])

    async def sleep(self, request: Request) -> Response:
        self.hit(request.query_params.get("key", "sleep"))
        await asyncio.sleep(min(float(request.query_params.get("s", "0.1")), 2.0))
        return PlainTextResponse("slept")

    async def headers(self, request: Request) -> Response:
        return JSONResponse(dict(request.headers))

    async def where(self, request: Request) -> Response:
        self.hit(request.query_params.get("key", "where"))
        return JSONResponse({"name": self.name, "path": request.url.path, "query": request.url.query})

    async def retry_after(self, request: Request) -> Response:
        """A 503 with the given ``Retry-After`` value the first time, then 200."""
        key = request.path_params["key"]
        if self.hit(key) == 1:
            return PlainTextResponse(
                "busy", status_code=503, headers={"Retry-After": request.query_params["v"]}
            )
        return PlainTextResponse("ok")


@pytest.fixture(scope="module")
def upstreams() -> Any:
    """Two real uvicorn instances of the upstream service, shared by the module."""
    from conftest import UvicornServer

    a, b = Upstream("a"), Upstream("b")
    with UvicornServer(a.app) as sa, UvicornServer(b.app) as sb:
        a.url, b.url = sa.url, sb.url  # type: ignore[attr-defined]
        yield a, b


@pytest.fixture
def up(upstreams: Any) -> Any:
    return upstreams[0]


@pytest.fixture
def key() -> str:
    return uuid.uuid4().hex


# -- the harness: one test body over httpx/httpx2 x sync/async ------------------------------


class Counting:
    """A real transport that counts the attempts reaching it (sync and async)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.urls: list[str] = []

    def handle_request(self, request: Any) -> Any:
        self.urls.append(str(request.url))
        return self.inner.handle_request(request)

    async def handle_async_request(self, request: Any) -> Any:
        self.urls.append(str(request.url))
        return await self.inner.handle_async_request(request)

    def close(self) -> None:
        self.inner.close()

    async def aclose(self) -> None:
        await self.inner.aclose()


class Client:
    """One client API for both modes: the sync client is driven from a worker thread."""

    def __init__(self, h: Harness, client: Any) -> None:
        self.h = h
        self.c = client

    async def request(self, method: str, url: str, **kw: Any) -> Any:
        if self.h.is_async:
            return await self.c.request(method, url, **kw)
        return await anyio.to_thread.run_sync(lambda: self.c.request(method, url, **kw))

    async def get(self, url: str, **kw: Any) -> Any:
        return await self.request("GET", url, **kw)

    async def post(self, url: str, **kw: Any) -> Any:
        return await self.request("POST", url, **kw)

    async def open_stream(self, method: str, url: str) -> Any:
        """Send and return the response with its body unread (``client.send(stream=True)``)."""
        req = self.c.build_request(method, url)
        if self.h.is_async:
            return await self.c.send(req, stream=True)
        return await anyio.to_thread.run_sync(lambda: self.c.send(req, stream=True))

    async def read(self, response: Any) -> bytes:
        if self.h.is_async:
            return await response.aread()  # type: ignore[no-any-return]
        return await anyio.to_thread.run_sync(response.read)  # type: ignore[no-any-return]

    async def close_response(self, response: Any) -> None:
        if self.h.is_async:
            await response.aclose()
        else:
            await anyio.to_thread.run_sync(response.close)

    async def aclose(self) -> None:
        if self.h.is_async:
            await self.c.aclose()
        else:
            self.c.close()


class Harness:
    def __init__(self, lib: str, mode: str) -> None:
        self.name = lib
        self.lib = importlib.import_module(lib)
        self.kit = importlib.import_module(f"kitmw.{lib}")
        self.is_async = mode == "async"
        self.sleeps: list[float] = []
        self.clients: list[Client] = []

    def sleep(self, seconds: float) -> None:
        """Injected sleep: record the wait, don't take it."""
        self.sleeps.append(seconds)

    def inner(self) -> Any:
        return self.lib.AsyncHTTPTransport() if self.is_async else self.lib.HTTPTransport()

    def counting(self) -> Counting:
        return Counting(self.inner())

    def transport(self, **options: Any) -> Any:
        cls = self.kit.AsyncTransport if self.is_async else self.kit.Transport
        return cls(**options)

    def retry(self, **options: Any) -> Retry:
        options.setdefault("sleep", self.sleep)
        return Retry(**options)

    def client(self, transport: Any = None, **kw: Any) -> Client:
        kw.setdefault("timeout", TIMEOUT)
        cls = self.lib.AsyncClient if self.is_async else self.lib.Client
        client = Client(self, cls(transport=transport, **kw))
        self.clients.append(client)
        return client

    def kitmw_client(self, **options: Any) -> Client:
        return self.client(self.transport(**options))


@pytest.fixture(params=["httpx", "httpx2"])
def lib(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["sync", "async"])
async def h(request: pytest.FixtureRequest, lib: str) -> Any:
    harness = Harness(lib, request.param)
    yield harness
    for client in harness.clients:
        await client.aclose()


def sample(registry: Any, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(
        __import__("prometheus_client").generate_latest(registry).decode()
    ):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


# -- retry -------------------------------------------------------------------------------------


async def test_retry_makes_a_flaky_get_succeed(h: Harness, up: Upstream, key: str) -> None:
    c = h.kitmw_client(retry=h.retry(attempts=3))
    r = await c.get(f"{up.url}/flaky/{key}?fail=2")
    assert r.status_code == 200 and r.text == "ok after 3"
    assert up.hits[key] == 3
    assert len(h.sleeps) == 2


async def test_retry_leaves_a_post_alone(h: Harness, up: Upstream, key: str) -> None:
    c = h.kitmw_client(retry=h.retry(attempts=3))
    r = await c.post(f"{up.url}/flaky/{key}?fail=2", content=b"payload")
    assert r.status_code == 503
    assert up.hits[key] == 1 and h.sleeps == []


async def test_retry_sends_a_replayable_body_again(h: Harness, up: Upstream, key: str) -> None:
    c = h.kitmw_client(retry=h.retry(attempts=3))
    r = await c.request("PUT", f"{up.url}/flaky/{key}?fail=1", content=b"payload")
    assert r.status_code == 200 and up.hits[key] == 2


async def test_retry_leaves_a_streamed_body_alone(h: Harness, up: Upstream, key: str) -> None:
    if h.is_async:

        async def chunks() -> Any:
            yield b"pay"
            yield b"load"

        content: Any = chunks()
    else:
        content = iter([b"pay", b"load"])
    c = h.kitmw_client(retry=h.retry(attempts=3))
    r = await c.request("PUT", f"{up.url}/flaky/{key}?fail=1", content=content)
    assert r.status_code == 503 and up.hits[key] == 1


async def test_retry_after_seconds_is_honoured(h: Harness, up: Upstream, key: str) -> None:
    c = h.kitmw_client(retry=h.retry(attempts=2))
    r = await c.get(f"{up.url}/retry-after/{key}?v=1")
    assert r.status_code == 200 and up.hits[key] == 2
    assert h.sleeps == [1.0]


async def test_retry_after_http_date_is_honoured(h: Harness, up: Upstream, key: str) -> None:
    c = h.kitmw_client(retry=h.retry(attempts=2))
    when = formatdate(time.time() + 3, usegmt=True)
    r = await c.get(f"{up.url}/retry-after/{key}?v={when}")
    assert r.status_code == 200
    assert len(h.sleeps) == 1 and 0 < h.sleeps[0] <= 4


async def test_malformed_retry_after_falls_back_to_backoff(h: Harness, up: Upstream, key: str) -> None:
    c = h.kitmw_client(retry=h.retry(attempts=2, backoff_base=0.2, random=lambda: 0.5))
    r = await c.get(f"{up.url}/retry-after/{key}?v=soon-ish")
    assert r.status_code == 200
    assert h.sleeps == [pytest.approx(0.1)]


async def test_huge_retry_after_ends_the_retries(h: Harness, up: Upstream, key: str) -> None:
    c = h.kitmw_client(retry=h.retry(attempts=3, retry_after_max=30))
    r = await c.get(f"{up.url}/retry-after/{key}?v=99999999999999999999")
    assert r.status_code == 503 and r.headers["retry-after"].startswith("9999")
    assert up.hits[key] == 1 and h.sleeps == []


async def test_backoff_is_exponential_with_full_jitter(h: Harness, up: Upstream, key: str) -> None:
    c = h.kitmw_client(retry=h.retry(attempts=4, backoff_base=0.1, backoff_max=0.3, random=lambda: 1.0))
    r = await c.get(f"{up.url}/flaky/{key}?fail=3&status=502")
    assert r.status_code == 200
    assert h.sleeps == [pytest.approx(0.1), pytest.approx(0.2), pytest.approx(0.3)]


async def test_connection_errors_are_retried_then_raised(h: Harness) -> None:
    counting = h.counting()
    c = h.kitmw_client(transport=counting, retry=h.retry(attempts=3))
    with pytest.raises(h.lib.ConnectError):
        await c.get(f"http://127.0.0.1:{free_port()}/ok")
    assert len(counting.urls) == 3 and len(h.sleeps) == 2


async def test_retry_budget_stops_retries_in_a_sustained_outage(h: Harness, up: Upstream, key: str) -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, window=60)
    c = h.kitmw_client(retry=h.retry(attempts=3, budget=budget))
    for _ in range(20):
        r = await c.get(f"{up.url}/status/503?key={key}")
        assert r.status_code == 503
    # without a budget: 60 attempts; with it, at most 20 % more than the 20 calls
    assert 20 < up.hits[key] <= 24


async def test_deadline_bounds_all_attempts(h: Harness, up: Upstream, key: str) -> None:
    c = h.kitmw_client(retry=h.retry(attempts=5, deadline=0.3))
    with pytest.raises(h.lib.TimeoutException):
        await c.get(f"{up.url}/sleep?s=1&key={key}")
    assert up.hits[key] == 1  # the deadline is spent: no second attempt


async def test_retries_are_counted(h: Harness, up: Upstream, key: str, registry: Any) -> None:
    c = h.kitmw_client(metrics={"registry": registry}, retry=h.retry(attempts=3))
    await c.get(f"{up.url}/flaky/{key}?fail=2")
    host = up.url.removeprefix("http://")
    assert sample(registry, "http_client_retries_total", method="GET", host=host) == 2
    assert sample(registry, "http_client_requests_total", method="GET", host=host, status="200") == 1


# -- breaker -----------------------------------------------------------------------------------


@needs_breaker
async def test_breaker_opens_and_then_fails_fast(h: Harness, key: str) -> None:
    counting = h.counting()
    c = h.kitmw_client(transport=counting, breaker={"fail_max": 3, "reset_timeout": 60, "name": key})
    url = f"http://127.0.0.1:{free_port()}/ok"
    for _ in range(3):
        with pytest.raises(h.lib.ConnectError):
            await c.get(url)
    with pytest.raises(h.kit.BreakerOpen) as info:
        await c.get(url)
    assert isinstance(info.value, h.lib.TransportError) and isinstance(info.value, KitmwBreakerOpen)
    assert len(counting.urls) == 3  # no connection attempt while open


@needs_breaker
async def test_breaker_counts_5xx(h: Harness, up: Upstream, key: str) -> None:
    c = h.kitmw_client(breaker={"fail_max": 2, "reset_timeout": 60, "name": key})
    for _ in range(2):
        assert (await c.get(f"{up.url}/status/500?key={key}")).status_code == 500
    with pytest.raises(h.kit.BreakerOpen):
        await c.get(f"{up.url}/status/500?key={key}")
    assert up.hits[key] == 2


@needs_breaker
async def test_breaker_ignores_4xx(h: Harness, up: Upstream, key: str) -> None:
    c = h.kitmw_client(breaker={"fail_max": 2, "reset_timeout": 60, "name": key})
    for _ in range(4):
        assert (await c.get(f"{up.url}/status/404?key={key}")).status_code == 404
    assert up.hits[key] == 4


@needs_breaker
async def test_breakers_are_per_origin(h: Harness, up: Upstream, key: str) -> None:
    c = h.kitmw_client(breaker={"fail_max": 1, "reset_timeout": 60, "name": key})
    down = f"http://127.0.0.1:{free_port()}/ok"
    with pytest.raises(h.lib.ConnectError):
        await c.get(down)
    with pytest.raises(h.kit.BreakerOpen):
        await c.get(down)
    assert (await c.get(f"{up.url}/ok")).status_code == 200


@needs_breaker
async def test_a_body_cut_mid_response_counts_against_the_breaker(h: Harness, key: str) -> None:
    with truncating_server() as url:
        c = h.kitmw_client(breaker={"fail_max": 1, "reset_timeout": 60, "name": key})
        with pytest.raises(h.lib.TransportError):
            await c.get(url)
        with pytest.raises(h.kit.BreakerOpen):
            await c.get(url)


# -- rate limit --------------------------------------------------------------------------------


@needs_limiter
async def test_rate_limit_error_mode_raises_without_sending(h: Harness, up: Upstream, key: str) -> None:
    c = h.kitmw_client(ratelimit={"limit": "1/minute", "mode": "error", "namespace": key})
    assert (await c.get(f"{up.url}/ok?key={key}")).status_code == 200
    with pytest.raises(h.kit.RateLimited) as info:
        await c.get(f"{up.url}/ok?key={key}")
    assert isinstance(info.value, h.lib.TransportError) and isinstance(info.value, KitmwRateLimited)
    assert info.value.retry_after > 0
    assert up.hits[key] == 1


@needs_limiter
async def test_rate_limit_is_per_origin(h: Harness, upstreams: Any, key: str) -> None:
    a, b = upstreams
    c = h.kitmw_client(ratelimit={"limit": "1/minute", "mode": "error", "namespace": key})
    assert (await c.get(f"{a.url}/ok")).status_code == 200
    assert (await c.get(f"{b.url}/ok")).status_code == 200
    with pytest.raises(h.kit.RateLimited):
        await c.get(f"{a.url}/ok")


@needs_limiter
async def test_rate_limit_delay_mode_waits_for_the_slot(h: Harness, up: Upstream, key: str) -> None:
    waits: list[float] = []

    def sleep(seconds: float) -> Any:
        waits.append(seconds)
        return anyio.sleep(seconds) if h.is_async else time.sleep(seconds)

    c = h.kitmw_client(ratelimit={"limit": "1/second", "namespace": key, "sleep": sleep, "max_wait": 5})
    for _ in range(2):
        assert (await c.get(f"{up.url}/ok?key={key}")).status_code == 200
    assert waits and 0 < sum(waits) <= 5
    assert up.hits[key] == 2


@needs_limiter
async def test_rate_limit_delay_mode_gives_up_after_max_wait(h: Harness, up: Upstream, key: str) -> None:
    c = h.kitmw_client(ratelimit={"limit": "1/minute", "namespace": key, "max_wait": 1, "sleep": h.sleep})
    await c.get(f"{up.url}/ok?key={key}")
    with pytest.raises(h.kit.RateLimited):
        await c.get(f"{up.url}/ok?key={key}")
    assert up.hits[key] == 1 and h.sleeps == []  # the wait (~60 s) is longer than max_wait


# -- balancing ---------------------------------------------------------------------------------


async def test_round_robin_spreads_calls_over_both_instances(h: Harness, upstreams: Any, key: str) -> None:
    a, b = upstreams
    c = h.kitmw_client(instances=[a.url, b.url])
    names = [(await c.get(f"{a.url}/where?key={key}")).json()["name"] for _ in range(6)]
    assert Counter(names) == {"a": 3, "b": 3}


async def test_random_balancing_reaches_both_instances(h: Harness, upstreams: Any, key: str) -> None:
    a, b = upstreams
    c = h.kitmw_client(instances=[a.url, b.url], balance="random")
    names = {(await c.get(f"{b.url}/where?key={key}")).json()["name"] for _ in range(40)}
    assert names == {"a", "b"}


async def test_balancing_keeps_path_and_query(h: Harness, upstreams: Any) -> None:
    a, b = upstreams
    c = h.kitmw_client(instances=[a.url, b.url])
    seen = {}
    for _ in range(2):
        body = (await c.get(f"{a.url}/where?x=1&y=%C3%A9")).json()
        seen[body["name"]] = (body["path"], body["query"])
    assert seen == {"a": ("/where", "x=1&y=%C3%A9"), "b": ("/where", "x=1&y=%C3%A9")}


async def test_relative_urls_on_a_listed_base_url_are_balanced(h: Harness, upstreams: Any) -> None:
    a, b = upstreams
    c = h.client(h.transport(instances=[a.url, b.url]), base_url=a.url)
    names = {(await c.get("/where")).json()["name"] for _ in range(4)}
    assert names == {"a", "b"}


async def test_other_origins_are_not_balanced(h: Harness, upstreams: Any) -> None:
    _, b = upstreams
    c = h.kitmw_client(instances=[f"http://127.0.0.1:{free_port()}"])
    assert {(await c.get(f"{b.url}/where")).json()["name"] for _ in range(3)} == {"b"}


async def test_a_retry_moves_to_the_next_instance(h: Harness, up: Upstream) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    c = h.kitmw_client(instances=[down, up.url], retry=h.retry(attempts=2))
    for _ in range(4):
        assert (await c.get(f"{down}/where")).json()["name"] == "a"


@needs_breaker
async def test_balancing_stops_sending_to_an_instance_that_is_down(
    h: Harness, up: Upstream, key: str
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    counting = h.counting()
    c = h.kitmw_client(
        transport=counting,
        instances=[up.url, down],
        retry=h.retry(attempts=2),
        breaker={"fail_max": 1, "reset_timeout": 60, "name": key},
    )
    for _ in range(8):
        assert (await c.get(f"{up.url}/where?key={key}")).status_code == 200
    assert sum(u.startswith(down) for u in counting.urls) == 1
    assert up.hits[key] == 8


# -- propagation and observability --------------------------------------------------------------


async def test_traceparent_and_request_id_reach_the_server(h: Harness, up: Upstream, spans: Any) -> None:
    from kitmw.logging import bind_context

    provider, exporter = spans
    c = h.kitmw_client(tracing={"tracer_provider": provider})
    with bind_context(request_id="req-42"):
        headers = (await c.get(f"{up.url}/headers")).json()
    assert headers["x-request-id"] == "req-42"
    (span,) = exporter.get_finished_spans()
    assert headers["traceparent"].split("-")[1] == format(span.context.trace_id, "032x")


async def test_an_explicit_request_id_header_is_kept(h: Harness, up: Upstream) -> None:
    from kitmw.logging import bind_context

    c = h.kitmw_client()
    with bind_context(request_id="req-42"):
        headers = (await c.get(f"{up.url}/headers", headers={"X-Request-ID": "mine"})).json()
    assert headers["x-request-id"] == "mine"


async def test_one_log_record_per_call_with_attempts(
    h: Harness, up: Upstream, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    c = h.kitmw_client(access_log=True, retry=h.retry(attempts=3))
    with caplog.at_level(logging.INFO, logger="kitmw.client"):
        await c.get(f"{up.url}/flaky/{key}?fail=2&secret=x")
    records = [r for r in caplog.records if r.name == "kitmw.client"]
    assert len(records) == 1
    assert records[0].attempts == 3  # type: ignore[attr-defined]
    assert "secret" not in records[0].getMessage()


async def test_the_exchange_ends_when_the_body_is_closed(h: Harness, up: Upstream, spans: Any) -> None:
    provider, exporter = spans
    c = h.kitmw_client(tracing={"tracer_provider": provider})
    response = await c.open_stream("GET", f"{up.url}/ok")
    assert exporter.get_finished_spans() == ()
    assert await c.read(response) == b"ok from a"
    await c.close_response(response)
    assert len(exporter.get_finished_spans()) == 1


async def test_a_body_cut_mid_response_is_logged_as_an_error(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    with truncating_server() as url:
        c = h.kitmw_client(access_log=True)
        with caplog.at_level(logging.INFO, logger="kitmw.client"), pytest.raises(h.lib.TransportError):
            await c.get(url)
    (record,) = [r for r in caplog.records if r.name == "kitmw.client"]
    assert record.levelno == logging.ERROR and record.error  # type: ignore[attr-defined]


async def test_connection_errors_are_counted_by_class(h: Harness, registry: Any) -> None:
    c = h.kitmw_client(metrics={"registry": registry})
    port = free_port()
    with pytest.raises(h.lib.ConnectError):
        await c.get(f"http://127.0.0.1:{port}/ok")
    assert (
        sample(registry, "http_client_requests_total", host=f"127.0.0.1:{port}", status="ConnectError") == 1
    )


# -- the driver runs the registry's client policies (issue 14) ------------------------------------


class Refuse(Policy):
    """A client policy of a user's: refuses every call with ``rejection``."""

    name = "refuse"

    def __init__(self, rejection: Rejection) -> None:
        self.rejection = rejection

    def enter(self, ex: Any) -> Rejection:
        return self.rejection


@pytest.mark.parametrize(
    ("rejection", "cls", "kitmw_cls", "lib_base"),
    [
        pytest.param(Rejection(503, "circuit_open"), "BreakerOpen", KitmwBreakerOpen, "TransportError", id="breaker"),
        pytest.param(Rejection(429, "rate_limited"), "RateLimited", KitmwRateLimited, "TransportError", id="ratelimit"),
        pytest.param(
            Rejection(503, "concurrency_limited"),
            "ConcurrencyLimited",
            ConcurrencyLimited,
            "TransportError",
            id="concurrency",
        ),
        pytest.param(Rejection(504, "timeout"), "DeadlineExceeded", DeadlineExceeded, "TimeoutException", id="timeout"),
    ],
)
async def test_refusals_are_raised_as_the_librarys_errors(
    h: Harness, rejection: Rejection, cls: str, kitmw_cls: type, lib_base: str
) -> None:
    counting = h.counting()
    c = h.kitmw_client(transport=counting, policies=[Refuse(rejection)])
    with pytest.raises(getattr(h.kit, cls)) as info:
        await c.get("http://svc.test/")
    assert isinstance(info.value, kitmw_cls) and isinstance(info.value, getattr(h.lib, lib_base))
    assert info.value.rejection is rejection
    assert counting.urls == []  # no request was sent


@pytest.mark.parametrize(
    ("rejection", "label"),
    [(Rejection(503, "concurrency_limited"), "ConcurrencyLimited"), (Rejection(504, "timeout"), "DeadlineExceeded")],
    ids=["concurrency", "timeout"],
)
async def test_refusals_are_counted_by_class(h: Harness, registry: Any, rejection: Rejection, label: str) -> None:
    c = h.kitmw_client(transport=h.counting(), metrics={"registry": registry}, policies=[Refuse(rejection)])
    with pytest.raises(h.lib.TransportError):
        await c.get("http://svc.test/")
    assert sample(registry, "http_client_requests_total", host="svc.test:80", status=label) == 1


async def test_a_deadline_caps_the_timeouts_of_every_attempt(h: Harness) -> None:
    seen: list[dict[str, float]] = []

    def handler(request: Any) -> Any:
        seen.append(dict(request.extensions["timeout"]))
        return h.lib.Response(503 if len(seen) == 1 else 200)

    c = h.kitmw_client(transport=h.lib.MockTransport(handler), retry=h.retry(attempts=2))
    token = set_deadline(time.monotonic() + 2.0)  # a request being served, with 2 s left
    try:
        assert (await c.get("http://svc.test/")).status_code == 200
    finally:
        reset_deadline(token)
    assert len(seen) == 2
    for timeouts in seen:
        assert set(timeouts) == {"connect", "read", "write", "pool"}
        assert all(0 < t <= 2.0 for t in timeouts.values()), timeouts
    await c.get("http://svc.test/")  # outside the deadline: the client's own timeouts
    assert seen[-1] == dict.fromkeys(("connect", "read", "write", "pool"), TIMEOUT)


async def test_a_call_made_inside_a_deadline_ends_with_it(h: Harness, up: Upstream, key: str) -> None:
    c = h.kitmw_client()
    token = set_deadline(time.monotonic() + 0.3)
    try:
        with pytest.raises(h.lib.TimeoutException):
            await c.get(f"{up.url}/sleep?s=1&key={key}")
    finally:
        reset_deadline(token)
    assert up.hits[key] == 1


async def test_an_unknown_option_names_the_closest(h: Harness) -> None:
    with pytest.raises(ConfigError, match=r"unknown option 'retyr'; did you mean 'retry'\?"):
        h.transport(retyr=True)
    with pytest.raises(ConfigError, match=r"breaker: unknown option 'fail_maxx'; did you mean 'fail_max'\?"):
        h.transport(breaker={"fail_maxx": 3})


@pytest.mark.parametrize("off", [{"request_id_header": None}, {"request_id": False}], ids=["header-none", "off"])
async def test_request_id_forwarding_can_be_turned_off(h: Harness, up: Upstream, off: dict[str, Any]) -> None:
    from kitmw.logging import bind_context

    c = h.kitmw_client(**off)
    with bind_context(request_id="req-42"):
        headers = (await c.get(f"{up.url}/headers")).json()
    assert "x-request-id" not in headers


async def test_request_id_header_can_be_renamed(h: Harness, up: Upstream) -> None:
    from kitmw.logging import bind_context

    c = h.kitmw_client(request_id="X-Correlation-ID")
    with bind_context(request_id="req-42"):
        headers = (await c.get(f"{up.url}/headers")).json()
    assert headers["x-correlation-id"] == "req-42" and "x-request-id" not in headers


class Stamp(Policy):
    """The client policy of a concern added to the registry by a test."""

    name = "stamp"

    def __init__(self, *, value: str = "on") -> None:
        self.value = value

    def enter(self, ex: Any) -> None:
        ex.set_request_header("X-Stamp", self.value)


async def test_a_new_client_concern_is_a_transport_option_without_a_driver_edit(
    h: Harness, up: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kitmw import concerns

    entry = concerns.Concern("stamp", __name__, {"client": "Stamp"}, shorthand="value", shorthand_types=(str,))
    monkeypatch.setattr(concerns, "CONCERNS", (*concerns.CONCERNS, entry))
    monkeypatch.setitem(concerns._BY_NAME, "stamp", entry)
    for value, expected in ((True, "on"), ({"value": "dict"}, "dict"), ("bare", "bare")):
        c = h.kitmw_client(stamp=value)
        assert (await c.get(f"{up.url}/headers")).json()["x-stamp"] == expected
    with pytest.raises(ConfigError, match="did you mean 'stamp'"):
        h.transport(stamq=True)


def test_client_policies_run_in_the_canonical_order(lib: str) -> None:
    kit = importlib.import_module(f"kitmw.{lib}")
    transport = kit.Transport(
        breaker=True,
        instances=["http://a:1", "http://b:1"],
        retry=True,
        ratelimit="5/second",
        metrics=True,
        access_log=True,
        tracing=True,
    )
    names = [p.name for p in transport.policies]
    assert names == [
        "tracing",
        "access_log",
        "request_id",
        "metrics",
        "ratelimit",
        "retry",
        "instances",
        "breaker",
    ]


@needs_breaker
async def test_a_refusal_further_in_never_counts_against_the_breaker(h: Harness, key: str) -> None:
    refuse = Refuse(Rejection(503, "concurrency_limited"))
    transport = h.transport(
        transport=h.counting(), retry=h.retry(attempts=2), breaker={"fail_max": 1, "name": key}, policies=[refuse]
    )
    c = h.client(transport)
    for _ in range(3):
        with pytest.raises(h.kit.ConcurrencyLimited):
            await c.get("http://svc.test/")
    (breaker,) = (p for p in transport.policies if p.name == "breaker")
    assert [b.state for b in breaker.breakers.values()] == ["closed"]


@needs_breaker
async def test_a_redis_breaker_opened_by_this_calls_5xx_returns_that_answer(
    h: Harness, redis_url: str, key: str
) -> None:
    calls: list[int] = []

    def handler(request: Any) -> Any:
        calls.append(1)
        return h.lib.Response(503, text="overloaded")

    c = h.kitmw_client(
        transport=h.lib.MockTransport(handler),
        retry=h.retry(attempts=3),
        breaker={"fail_max": 2, "storage": redis_url, "name": key},
    )
    r = await c.get("http://svc.test/")
    assert (r.status_code, r.text) == (503, "overloaded")
    assert len(calls) == 2 and len(h.sleeps) == 1  # attempt 2 opened it: no wait to be refused
    with pytest.raises(h.kit.BreakerOpen):
        await c.get("http://svc.test/")


# -- wrapped transports ---------------------------------------------------------------------------


async def test_mock_transport_as_the_inner_transport(h: Harness, registry: Any) -> None:
    calls: list[str] = []

    def handler(request: Any) -> Any:
        calls.append(request.url.path)
        return h.lib.Response(503 if len(calls) == 1 else 200, text="mocked")

    c = h.kitmw_client(
        transport=h.lib.MockTransport(handler), retry=h.retry(attempts=2), metrics={"registry": registry}
    )
    r = await c.get("http://svc.test/x")
    assert r.status_code == 200 and r.text == "mocked" and calls == ["/x", "/x"]
    assert sample(registry, "http_client_requests_total", host="svc.test:80", status="200") == 1


async def test_mounted_on_one_origin(h: Harness, upstreams: Any, key: str) -> None:
    a, b = upstreams
    counting = h.counting()
    c = h.client(mounts={a.url: h.transport(transport=counting)})
    await c.get(f"{a.url}/ok")
    await c.get(f"{b.url}/ok")
    assert counting.urls == [f"{a.url}/ok"]


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "option"),
    [
        pytest.param({"retry": {"attempts": 0}}, "attempts", id="retry-attempts"),
        pytest.param({"retry": {"backoff_base": -1}}, "backoff_base", id="retry-backoff"),
        pytest.param({"retry": "yes"}, "retry", id="retry-type"),
        pytest.param({"instances": "http://a"}, "instances", id="instances-str"),
        pytest.param({"instances": ["ftp://a"]}, "instances", id="instances-scheme"),
        pytest.param({"instances": ["http://a/x"]}, "instances", id="instances-path"),
        pytest.param({"instances": ["http://a", "http://a:80"]}, "instances", id="instances-dup"),
        pytest.param({"balance": "least"}, "balance", id="balance"),
        pytest.param({"transport": object()}, "transport", id="transport"),
        pytest.param({"breaker": "on"}, "breaker", id="breaker-type"),
        pytest.param({"breaker": {"bogus": 1}}, "breaker", id="breaker-option"),
        pytest.param({"ratelimit": 5}, "ratelimit", id="ratelimit-type"),
        pytest.param({"ratelimit": {"limit": "1/s", "mode": "queue"}}, "mode", id="ratelimit-mode"),
        pytest.param({"metrics": "yes"}, "metrics", id="metrics-type"),
        pytest.param({"request_id_header": ""}, "request_id_header", id="request-id-header"),
    ],
)
def test_bad_options_fail_at_construction(lib: str, options: dict[str, Any], option: str) -> None:
    kit = importlib.import_module(f"kitmw.{lib}")
    for cls in (kit.Transport, kit.AsyncTransport):
        with pytest.raises(ConfigError, match=option):
            cls(**options)


def test_options_are_keyword_only(lib: str) -> None:
    kit = importlib.import_module(f"kitmw.{lib}")
    with pytest.raises(TypeError):
        kit.Transport(importlib.import_module(lib).HTTPTransport())


def test_importing_kitmw_imports_neither_library() -> None:
    code = "import sys, kitmw, kitmw.stack; assert not {'httpx', 'httpx2'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_each_library_has_its_own_error_classes() -> None:
    import httpx
    import httpx2

    import kitmw.httpx
    import kitmw.httpx2

    assert issubclass(kitmw.httpx.BreakerOpen, httpx.TransportError)
    assert not issubclass(kitmw.httpx.BreakerOpen, httpx2.TransportError)
    assert issubclass(kitmw.httpx2.RateLimited, httpx2.TransportError)
    assert issubclass(kitmw.httpx2.RateLimited, kitmw.RateLimited)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("120", 120.0),
        ("  7 ", 7.0),
        ("-1", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
    ],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_retry_budget_allows_the_ratio_plus_the_floor() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=0.5, min_per_second=0.1, window=10, clock=clock)
    for _ in range(10):
        budget.deposit()
    assert sum(budget.withdraw() for _ in range(20)) == 6  # 0.5 * 10 + 0.1 * 10
    clock.now = 11.0  # the window has passed: the budget refills from new requests only
    assert sum(budget.withdraw() for _ in range(5)) == 1


# -- a server that cuts the body short ------------------------------------------------------------


@contextlib.contextmanager
def truncating_server() -> Any:
    """A raw asyncio server announcing 100 bytes, sending 3, then closing."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        state["port"] = server.sockets[0].getsockname()[1]
        state["stop"] = asyncio.Event()
        started.set()
        async with server:
            await state["stop"].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(TIMEOUT)
    try:
        yield f"http://127.0.0.1:{state['port']}/cut"
    finally:
        loop.call_soon_threadsafe(state["stop"].set)
        thread.join(TIMEOUT)
        loop.close()
