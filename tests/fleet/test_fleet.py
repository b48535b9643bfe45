"""A fleet: three uvicorn processes of one ``kitmw.stack()`` app on one Redis, one metrics dir.

The processes (``tests/fleet/app.py``) start once for this module. What the fleet
must do, each checked from outside as a client and a scraper see it:

* a ``"100/minute"`` limit allows exactly 100 of 300 concurrent requests spread over
  the three processes, for every ``limits`` strategy;
* failures seen by one process open the breaker of all of them (within the documented
  refresh interval);
* one ``/metrics`` scrape, whichever process answers it, sums every process exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.fleet, pytest.mark.e2e, pytest.mark.redis]

HERE = Path(__file__).resolve().parent
STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")
PROCESSES = 3


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Worker:
    """One ``python -m uvicorn`` process serving ``app:app`` on a free loopback port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(HERE)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        with open(log, "wb") as out:  # a file, not a pipe nobody drains
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.pid: str | None = None

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.proc.returncode}: {self.log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(self.url + "/pid", timeout=1)
                if r.status_code == 200:
                    self.pid = r.text
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{self.url} not ready: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def fleet(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Worker]]:
    if redis_server.proc is None:  # a fault test elsewhere may have left it stopped
        redis_server.start()
    redis_server.flush()
    base = tmp_path_factory.mktemp("fleet")
    prom = base / "prom"
    prom.mkdir()
    env = dict(os.environ, KITMW_FLEET_REDIS=redis_server.url, PROMETHEUS_MULTIPROC_DIR=str(prom))
    env.pop("prometheus_multiproc_dir", None)
    workers: list[Worker] = []
    try:
        for i in range(PROCESSES):  # started together, then awaited: startups overlap
            workers.append(Worker(env, base / f"worker{i}.log"))
        deadline = time.monotonic() + 60
        for worker in workers:
            worker.wait_ready(deadline)
        assert len({w.pid for w in workers}) == PROCESSES
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def scrape(worker: Worker) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one ``/metrics`` answer, by (name, sorted labels)."""
    text = httpx.get(worker.url + "/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def spread(workers: list[Worker], path: str, n: int, headers: dict[str, str]) -> list[httpx.Response]:
    """``n`` requests, request i to worker i mod 3, at most 15 in flight (bounded)."""
    gate = asyncio.Semaphore(15)
    async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=15)) as client:

        async def one(i: int) -> httpx.Response:
            async with gate:
                return await client.get(workers[i % len(workers)].url + path, headers=headers)

        return list(await asyncio.gather(*(one(i) for i in range(n))))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_300_requests_over_three_processes_allow_exactly_100(fleet: list[Worker], strategy: str) -> None:
    run = uuid.uuid4().hex  # this run's own budget: strategies and reruns never share counters
    before = scrape(fleet[0])
    responses = asyncio.run(spread(fleet, f"/limited/{strategy}", 300, {"x-fleet-run": run}))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 100, strategy
    assert codes.count(429) == 200
    assert {r.text for r in responses if r.status_code == 200} == {w.pid for w in fleet}
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json() == {"error": "rate_limited"}
    assert int(refused.headers["retry-after"]) >= 1
    # The decisions are counted once each, whichever process took them.
    after = scrape(fleet[1])
    decisions = "kitmw_ratelimit_decisions_total"
    assert (
        sample(after, decisions, side="server", decision="allowed")
        - sample(before, decisions, side="server", decision="allowed")
        == 100
    )
    assert (
        sample(after, decisions, side="server", decision="limited")
        - sample(before, decisions, side="server", decision="limited")
        == 200
    )
    assert sample(after, decisions, side="server", decision="fail_open") == 0


def _breaker_keys(url: str) -> list[str]:
    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
    try:
        return [k for k in client.keys("kitmw:breaker:*") if ":probe:" not in k]
    finally:
        client.close()


def _shared_state(url: str, key: str) -> str | None:
    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
    try:
        return client.hget(key, "state")
    finally:
        client.close()


def test_breaker_opened_by_one_process_refuses_in_the_others(fleet: list[Worker], redis_server: Any) -> None:
    first, *others = fleet
    with httpx.Client(timeout=10) as http:
        assert [http.get(w.url + "/work").status_code for w in fleet] == [200] * PROCESSES
        assert [http.get(first.url + "/work?fail=1").status_code for _ in range(3)] == [500] * 3
        try:
            # The verdict is written after the response went out: wait (bounded) for it.
            deadline = time.monotonic() + 5
            while (
                not (keys := _breaker_keys(redis_server.url))
                or _shared_state(redis_server.url, keys[0]) != "open"
            ):
                assert time.monotonic() < deadline, "the third failure did not open the shared breaker"
                time.sleep(0.01)
            assert len(keys) == 1, keys  # three stacks in three processes: one shared breaker
            for worker in others:
                # The other processes re-read the shared state at most every refresh_interval
                # (0.1 s by default): within 1 s each answers 503 without a failure of its own.
                seen: list[int] = []
                deadline = time.monotonic() + 1.0
                while (r := http.get(worker.url + "/work")).status_code != 503:
                    seen.append(r.status_code)
                    assert time.monotonic() < deadline, f"{worker.url} still closed: {seen}"
                    time.sleep(0.02)
                assert set(seen) <= {200}
                assert r.json() == {"error": "circuit_open"}
                assert 1 <= int(r.headers["retry-after"]) <= 30
        finally:
            # Close it again for the other tests: a missing hash reads as closed.
            client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
            for key in _breaker_keys(redis_server.url):
                client.delete(key)
            client.close()
            for worker in fleet:
                deadline = time.monotonic() + 5
                while http.get(worker.url + "/work").status_code != 200:
                    assert time.monotonic() < deadline, "the breaker did not close again"
                    time.sleep(0.02)


def test_one_scrape_sums_every_process_exactly(fleet: list[Worker]) -> None:
    route = ("http_server_requests_total", (("method", "GET"), ("route", "/work"), ("status", "200")))
    before = [scrape(w).get(route, 0.0) for w in fleet]
    assert len(set(before)) == 1  # every process reports the same fleet-wide total
    per_worker = 17
    with httpx.Client(timeout=10) as http:
        for i in range(per_worker * PROCESSES):
            worker = fleet[i % PROCESSES]
            r = http.get(worker.url + "/work")
            assert r.status_code == 200 and r.text == worker.pid
    for worker in fleet:  # whichever process answers the scrape
        samples = scrape(worker)
        assert samples[route] == before[0] + per_worker * PROCESSES
        assert sample(samples, "http_server_requests_in_progress", method="GET") == 0
        count = "http_server_request_duration_seconds_count"
        assert sample(samples, count, method="GET", route="/work", status="200") == samples[route]
