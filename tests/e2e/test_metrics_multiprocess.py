"""Multiprocess metrics: several uvicorn workers, one PROMETHEUS_MULTIPROC_DIR, exact totals."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

APP = textwrap.dedent(
    """
    import os

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    import kitmw


    async def item(request):
        return PlainTextResponse(str(os.getpid()))


    app = kitmw.Metrics(Starlette(routes=[Route("/items/{item_id}", item)]))
    """
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/metrics", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s")


class Uvicorn:
    """A uvicorn process serving the test app on a free loopback port."""

    def __init__(self, app_dir: Path, multiproc_dir: Path, workers: int = 1) -> None:
        self.port = _free_port()
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir))
        cmd = [sys.executable, "-m", "uvicorn", "mp_app:app", "--app-dir", str(app_dir)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        if workers > 1:
            cmd += ["--workers", str(workers)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            _wait_ready(self.url, self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "mp_app.py").write_text(APP)
    return tmp_path


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> Path:
    path = tmp_path / "prom"
    path.mkdir()
    return path


@pytest.fixture
def servers(app_dir: Path, multiproc_dir: Path) -> Iterator[list[Uvicorn]]:
    started: list[Uvicorn] = []
    try:
        started.append(Uvicorn(app_dir, multiproc_dir))
        started.append(Uvicorn(app_dir, multiproc_dir))
        yield started
    finally:
        for server in started:
            server.stop()


def _requests_total(url: str) -> dict[tuple[str, str], float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "http_server_requests_total":
                key = (s.labels["route"], s.labels["status"])
                out[key] = out.get(key, 0) + s.value
            elif s.name == "http_server_requests_in_progress":
                out[("in_progress", s.labels["method"])] = s.value
    return out


def _drive(url: str, count: int) -> set[str]:
    pids = set()
    with httpx.Client(base_url=url, timeout=10) as c:
        for i in range(count):
            r = c.get(f"/items/{i}")
            assert r.status_code == 200
            pids.add(r.text)
    return pids


def test_two_processes_sum_into_one_exposition(servers: list[Uvicorn]) -> None:
    first, second = servers
    pids = _drive(first.url, 7) | _drive(second.url, 5)
    assert len(pids) == 2  # two processes really served
    for server in servers:  # whichever process a scrape hits, it reports every worker
        found = _requests_total(server.url)
        assert found[("/items/{item_id}", "200")] == 12
        assert found[("in_progress", "GET")] == 0  # livesum of both processes


def test_counts_of_a_stopped_worker_remain(servers: list[Uvicorn], multiproc_dir: Path) -> None:
    import kitmw.metrics

    first, second = servers
    _drive(first.url, 3)
    _drive(second.url, 4)
    second.stop()
    kitmw.metrics.mark_process_dead(second.proc.pid, str(multiproc_dir))
    assert not list(multiproc_dir.glob(f"gauge_live*_{second.proc.pid}.db"))
    assert _requests_total(first.url)[("/items/{item_id}", "200")] == 7


def test_uvicorn_workers_share_one_total(app_dir: Path, multiproc_dir: Path) -> None:
    server = Uvicorn(app_dir, multiproc_dir, workers=2)
    try:
        total = 20
        for i in range(total):  # a new connection each time, so both workers may serve
            assert httpx.get(f"{server.url}/items/{i}", timeout=10).status_code == 200
        for _ in range(3):  # every scrape, whichever worker answers it, sees the same total
            assert _requests_total(server.url)[("/items/{item_id}", "200")] == total
    finally:
        server.stop()


# -- the separate metrics port (issue 12, item 3) ---------------------------------------------


def test_a_metrics_process_beside_the_workers_shows_their_total(
    servers: list[Uvicorn], multiproc_dir: Path
) -> None:
    first, second = servers
    _drive(first.url, 4)
    _drive(second.url, 6)
    port = _free_port()
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir))
    cmd = [sys.executable, "-m", "kitmw.metrics", "--port", str(port), "--host", "127.0.0.1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            with contextlib.suppress(httpx.HTTPError):
                found = _requests_total(f"http://127.0.0.1:{port}")
                break
            assert time.monotonic() < deadline, "python -m kitmw.metrics did not start"
            time.sleep(0.05)
        assert found[("/items/{item_id}", "200")] == 10
        assert found[("in_progress", "GET")] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        if proc.stderr is not None:
            proc.stderr.close()


def test_the_metrics_process_refuses_to_start_outside_multiprocess_mode() -> None:
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    done = subprocess.run(
        [sys.executable, "-m", "kitmw.metrics", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "PROMETHEUS_MULTIPROC_DIR" in done.stderr and len(done.stderr.strip().splitlines()) == 1
