"""A real Prometheus scrapes a kitmw app served by uvicorn and sees what it served.

The ``prometheus`` binary comes from Debian's ``prometheus`` package (``.ci/run``
installs it); without it the tests are skipped. One Prometheus and one app serve the
module: Prometheus scrapes every second, the test drives a known number of requests and
polls the HTTP API (bounded) until the counts show up. The dashboard's queries are then
sent to the same Prometheus, so its real PromQL parser judges them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import UvicornServer, free_port, wait_for_port
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

import kitmw

pytestmark = pytest.mark.e2e

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "kitmw-dashboard.json"
REQUESTS = 7
TIMEOUT = 30.0


class Prometheus:
    """A ``prometheus`` process on a free loopback port, scraping ``targets`` every second."""

    def __init__(self, binary: str, targets: list[str], job: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kitmw-prometheus-"))
        self.port = free_port()
        config = {  # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
        }
        (self.dir / "prometheus.yml").write_text(json.dumps(config))
        self.log = (self.dir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        wait_for_port(self.port, timeout=TIMEOUT)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.output()}")
            try:
                if self.client.get("/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready after {TIMEOUT}s: {self.output()}")

    def query(self, promql: str) -> dict[str, Any]:
        """The JSON answer of ``/api/v1/query`` (status ``success`` or ``error``)."""
        response = self.client.get("/api/v1/query", params={"query": promql})
        result: dict[str, Any] = response.json()
        return result

    def value(self, promql: str) -> float | None:
        """The single value of an instant query, None while it has no result."""
        answer = self.query(promql)
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, promql: str, expected: float) -> float | None:
        """Poll until ``promql`` equals ``expected`` (bounded); the last value seen."""
        deadline = time.monotonic() + TIMEOUT
        seen = None
        while time.monotonic() < deadline:
            seen = self.value(promql)
            if seen == expected:
                return seen
            time.sleep(0.25)
        return seen

    def output(self) -> str:
        self.log.flush()
        return (self.dir / "prometheus.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def make_app(registry: CollectorRegistry) -> Any:
    api = FastAPI()

    @api.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    return kitmw.stack(
        api,
        metrics={"registry": registry},
        # /metrics goes through the rate limit like any path: the scraper's one is exempt.
        ratelimit={
            "limit": "5/minute",
            "namespace": f"prom-{uuid.uuid4().hex[:8]}",
            "exclude_paths": ["/metrics"],
        },
        breaker={"name": f"prom-{uuid.uuid4().hex[:8]}"},
    )


@pytest.fixture(scope="module")
def scraped() -> Iterator[tuple[Prometheus, str, str]]:
    """(prometheus, app url, job) with the app already known to be scraped."""
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            raise RuntimeError("prometheus is missing: .ci/run must install it")
        pytest.skip("the prometheus binary is not installed (apt-get install prometheus)")
    job = f"kitmw-{uuid.uuid4().hex[:8]}"
    with UvicornServer(make_app(CollectorRegistry())) as server:
        prometheus = Prometheus(binary, [f"127.0.0.1:{server.port}"], job)
        try:
            prometheus.wait_ready()
            up = prometheus.wait_for(f'up{{job="{job}"}}', 1.0)
            assert up == 1.0, f"target never up: {prometheus.output()}"
            yield prometheus, server.url, job
        finally:
            prometheus.stop()


def test_prometheus_sees_every_request_served(scraped: tuple[Prometheus, str, str]) -> None:
    prometheus, url, job = scraped
    with httpx.Client(base_url=url, timeout=10) as client:
        statuses = [client.get(f"/items/{i}").status_code for i in range(REQUESTS)]
    assert statuses == [200] * 5 + [429] * (REQUESTS - 5)
    total = prometheus.wait_for(f'sum(http_server_requests_total{{job="{job}"}})', REQUESTS)
    assert total == REQUESTS
    limited = prometheus.wait_for(
        f'sum(http_server_requests_total{{job="{job}", status="429"}})', REQUESTS - 5
    )
    assert limited == REQUESTS - 5
    decisions = prometheus.value(f'sum(kitmw_ratelimit_decisions_total{{job="{job}", decision="allowed"}})')
    assert decisions == 5


def test_prometheus_accepts_every_dashboard_query(scraped: tuple[Prometheus, str, str]) -> None:
    """Prometheus' own parser and engine run each panel query, variables filled in."""
    prometheus, _, job = scraped
    dashboard = json.loads(DASHBOARD.read_text())

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    exprs = [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]
    assert exprs
    errors = []
    for expr in exprs:
        promql = re.sub(r"\$__\w+|\$\{__\w+\}", "1m", expr).replace("$job", job).replace("$instance", ".*")
        answer = prometheus.query(promql)
        if answer["status"] != "success":
            errors.append(f"{promql}: {answer.get('error')}")
    assert not errors, "\n".join(errors)
