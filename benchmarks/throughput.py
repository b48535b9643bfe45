"""Requests per second under a real server on 127.0.0.1, with wrk as the load generator.

ASGI configurations run under uvicorn (httptools, asyncio loop, one worker); WSGI ones
under gunicorn (one ``gthread`` worker, 4 threads). Each server's configurations are
compared with its peer stack (:data:`PEER_STACKS`): the ASGI one of
:func:`kitmw.bench.asgi.peer_stack`, the Flask one of :func:`kitmw.bench.wsgi.peer_stack`. Each measurement gets a fresh server
process; wrk runs for a fixed duration with a fixed connection count (one thread, keep-
alive), bounded by a timeout. Configurations are measured in interleaved rounds and the
median taken, with the interquartile range over rounds.

The CPU time the server process (gunicorn: master and worker) and wrk used during the run
is recorded, as a share of one core and per request. wrk's CPU per request gives the rate
it could sustain on one whole core (``wrk_max_rps``): far above every measured rate, so
the load generator is not what limits the figures. The server's CPU µs per request does
not count time other processes held the core, so it is the steadier figure on a shared
machine. The raw ASGI row is the ceiling of the setup.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

from .servers import free_port, uvicorn_command, wait_until_serving

__all__ = ["CONFIGS", "format_table", "measure", "run"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: name -> (server, factory in benchmarks.apps, baseline name)
CONFIGS: dict[str, tuple[str, str, str]] = {
    "bare raw ASGI app": ("uvicorn", "raw_factory", "bare Starlette app"),
    "bare Starlette app": ("uvicorn", "bare", "bare Starlette app"),
    "kitmw stack() of 6": ("uvicorn", "kitmw_stack", "bare Starlette app"),
    "kitmw stack() of 6, tracing off": ("uvicorn", "kitmw_stack_no_tracing", "bare Starlette app"),
    "peer stack (all six peers)": ("uvicorn", "peer_stack", "bare Starlette app"),
    "bare Flask app (gunicorn gthread)": ("gunicorn", "flask_bare", "bare Flask app (gunicorn gthread)"),
    "Flask + kitmw stack() of 6 (gunicorn gthread)": (
        "gunicorn",
        "flask_kitmw_stack",
        "bare Flask app (gunicorn gthread)",
    ),
    "Flask peer stack (gunicorn gthread)": ("gunicorn", "flask_peer_stack", "bare Flask app (gunicorn gthread)"),
}
PEER_STACK = "peer stack (all six peers)"
#: the peer stack each server's configurations are compared with
PEER_STACKS = {"uvicorn": PEER_STACK, "gunicorn": "Flask peer stack (gunicorn gthread)"}


def _token() -> str:
    from kitmw.bench.harness import hs256_token

    return hs256_token()


def _command(server: str, factory: str, port: int) -> list[str]:
    if server == "uvicorn":
        return uvicorn_command(f"benchmarks.apps:{factory}", port, "--workers", "1")
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--worker-class",
        "gthread",
        "--threads",
        "4",
        "--log-level",
        "warning",
        f"benchmarks.apps:{factory}()",
    ]


def _cpu_seconds(pid: int) -> float | None:
    """CPU time of ``pid`` and its children (gunicorn's worker), or None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        proc = psutil.Process(pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            times = p.cpu_times()
            total += times.user + times.system
        return total
    except psutil.Error:
        return None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    factory: str, *, duration: int, connections: int, token: str, server: str = "uvicorn"
) -> dict[str, float | None]:
    """One run: ``rps``; ``server_cpu`` / ``wrk_cpu`` as shares of one core (1.0 = 100 %);
    ``server_us`` (server CPU µs per request) and ``wrk_max_rps`` (requests wrk could send
    per second of a whole core, at the CPU cost per request it had in this run)."""
    port = free_port()
    proc = subprocess.Popen(
        _command(server, factory, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        wait_until_serving(port, proc)
        # a few requests first, so that lazy imports and first-request work are not timed
        subprocess.run(
            [
                "wrk",
                "-t1",
                "-c1",
                "-d1s",
                "-H",
                f"Authorization: Bearer {token}",
                f"http://127.0.0.1:{port}/items/42",
            ],
            capture_output=True,
            timeout=30,
            check=True,
        )
        server_before = _cpu_seconds(proc.pid)
        wrk_before = _children_cpu()
        started = time.monotonic()
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
        elapsed = time.monotonic() - started
        wrk_seconds = _children_cpu() - wrk_before
        server_after = _cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
    match = re.search(r"Requests/sec:\s+([\d.]+)", wrk.stdout)
    total = re.search(r"(\d+) requests in", wrk.stdout)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", wrk.stdout)
    errors = re.search(r"Socket errors:.*", wrk.stdout)
    if match is None or total is None:
        raise RuntimeError(f"could not read wrk output:\n{wrk.stdout}")
    if non2xx:
        raise RuntimeError(f"{factory}: {non2xx.group(1)} non-2xx responses")
    if errors and re.search(r"(read|write|timeout) [1-9]", errors.group(0)):
        raise RuntimeError(f"{factory}: {errors.group(0)}")
    requests = max(int(total.group(1)), 1)
    server_cpu = server_us = None
    if server_before is not None and server_after is not None:
        server_cpu = (server_after - server_before) / elapsed
        server_us = (server_after - server_before) / requests * 1e6
    return {
        "rps": float(match.group(1)),
        "server_cpu": server_cpu,
        "server_us": server_us,
        "wrk_cpu": wrk_seconds / elapsed,
        "wrk_max_rps": requests / wrk_seconds if wrk_seconds > 0 else None,
    }


def _iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def run(
    *, rounds: int = 3, duration: int = 5, connections: int = 32, only: list[str] | None = None
) -> list[dict[str, Any]]:
    """Every configuration in :data:`CONFIGS` (or ``only`` those), interleaved over ``rounds``."""
    if shutil.which("wrk") is None:
        return [{"name": "throughput", "skipped": "wrk is not installed (apt-get install wrk)"}]
    token = _token()
    names = [n for n in CONFIGS if only is None or n in only]
    runs: dict[str, list[dict[str, float | None]]] = {name: [] for name in names}
    skipped: dict[str, str] = {}
    for r in range(rounds):
        for name in names:
            if name in skipped:
                continue
            server, factory, _ = CONFIGS[name]
            print(f"  throughput round {r + 1}/{rounds}: {name}", file=sys.stderr, flush=True)
            try:
                runs[name].append(
                    measure(factory, duration=duration, connections=connections, token=token, server=server)
                )
            except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
                skipped[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
    medians = {
        name: statistics.median([float(m["rps"] or 0.0) for m in values])
        for name, values in runs.items()
        if values and name not in skipped
    }
    rows: list[dict[str, Any]] = []
    for name in names:
        if name in skipped:
            rows.append({"name": name, "skipped": skipped[name]})
            continue
        values = [float(m["rps"] or 0.0) for m in runs[name]]
        server, _, baseline = CONFIGS[name]
        rps = medians[name]
        row: dict[str, Any] = {
            "name": name,
            "server": server,
            "rps": rps,
            "iqr_rps": _iqr(values),
            "baseline": baseline,
            "ratio_to_bare": rps / medians[baseline] if baseline in medians else None,
            "ratio_to_peer_stack": (
                rps / medians[PEER_STACKS[server]] if PEER_STACKS.get(server) in medians else None
            ),
            "server_cpu": _median([m["server_cpu"] for m in runs[name]]),
            "server_us_per_request": _median([m["server_us"] for m in runs[name]]),
            "wrk_cpu": _median([m["wrk_cpu"] for m in runs[name]]),
            "wrk_max_rps": _median([m["wrk_max_rps"] for m in runs[name]]),
            "samples": values,
        }
        rows.append(row)
    return rows


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.0f} %"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| configuration | server | requests/s | IQR | ratio to bare | ratio to peer stack "
        "| server CPU | server CPU µs/request | wrk CPU | wrk max requests/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['name']} | | skipped: {row['skipped']} | | | | | | | |")
        else:
            lines.append(
                f"| {row['name']} | {row['server']} | {row['rps']:.0f} | {row['iqr_rps']:.0f} "
                f"| {_ratio(row['ratio_to_bare'])} | {_ratio(row.get('ratio_to_peer_stack'))} "
                f"| {_pct(row.get('server_cpu'))} | {_num(row.get('server_us_per_request'))} "
                f"| {_pct(row.get('wrk_cpu'))} | {_num(row.get('wrk_max_rps'))} |"
            )
    return "\n".join(lines)
