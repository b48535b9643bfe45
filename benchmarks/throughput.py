"""Requests per second under a real uvicorn (httptools, one worker, 127.0.0.1) with wrk.

Each configuration gets a fresh server process; wrk runs for a fixed duration with a
fixed connection count, bounded by a timeout. Configurations are measured in
interleaved rounds and the median taken.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

CONFIGS = {
    "bare Starlette app": "bare",
    "kitmw stack() of 6": "kitmw_stack",
    "kitmw stack() of 6, tracing off": "kitmw_stack_no_tracing",
    "peer stack (all six peers)": "peer_stack",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"server on port {port} did not start")


def _token() -> str:
    from kitmw._bench import _hs256_token

    return _hs256_token()


def measure(factory: str, *, duration: int, connections: int, token: str) -> float:
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        f"benchmarks.apps:{factory}",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--http",
        "httptools",
        "--loop",
        "asyncio",
        "--no-access-log",
        "--log-level",
        "warning",
        "--workers",
        "1",
    ]
    server = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        _wait(port)
        wrk = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{duration}s",
                "-H",
                f"Authorization: Bearer {token}",
                f"http://127.0.0.1:{port}/items/42",
            ],
            capture_output=True,
            text=True,
            timeout=duration + 30,
            check=True,
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    match = re.search(r"Requests/sec:\s+([\d.]+)", wrk.stdout)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", wrk.stdout)
    if match is None:
        raise RuntimeError(f"could not read wrk output:\n{wrk.stdout}")
    if non2xx:
        raise RuntimeError(f"{factory}: {non2xx.group(1)} non-2xx responses")
    return float(match.group(1))


def run(*, rounds: int = 3, duration: int = 5, connections: int = 32) -> list[dict[str, Any]]:
    if shutil.which("wrk") is None:
        return [{"name": "throughput", "skipped": "wrk is not installed (apt-get install wrk)"}]
    token = _token()
    samples: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for r in range(rounds):
        for name, factory in CONFIGS.items():
            print(f"  throughput round {r + 1}/{rounds}: {name}", file=sys.stderr, flush=True)
            samples[name].append(measure(factory, duration=duration, connections=connections, token=token))
    bare = statistics.median(samples["bare Starlette app"])
    peer = statistics.median(samples["peer stack (all six peers)"])
    rows = []
    for name, values in samples.items():
        rps = statistics.median(values)
        rows.append(
            {
                "name": name,
                "rps": rps,
                "ratio_to_bare": rps / bare,
                "ratio_to_peer_stack": rps / peer,
                "samples": values,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| configuration | requests/s | ratio to bare | ratio to peer stack |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['name']} | skipped: {row['skipped']} | | |")
        else:
            lines.append(
                f"| {row['name']} | {row['rps']:.0f} | {row['ratio_to_bare']:.2f} | "
                f"{row['ratio_to_peer_stack']:.2f} |"
            )
    return "\n".join(lines)
