"""``python -m benchmarks``: every in-process suite, then throughput under real servers.

The in-process suites (``asgi``, ``wsgi``, ``httpx``; see :mod:`kitmw.bench`) print one
table each; the throughput part (uvicorn / gunicorn + wrk) prints another. Figures, the
machine, the commit and the settings go to ``--json`` (default
benchmarks/results/latest.json); ``--plot`` also draws docs/performance.png from it
(or run ``python -m benchmarks.plot`` later). ``docs/performance.md`` reads the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

from kitmw.bench import SUITES, format_table, missing_note, run_suite, suite_targets
from kitmw.cli import Progress

from . import throughput

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _cpu_model() -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return None


def _commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=ROOT, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "kitmw"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=ROOT,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    files = ", ".join(line[3:] for line in dirty.splitlines() if line.strip())
    if not files:
        return head
    return f"{head} (uncommitted changes in {files})"


def _machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--rounds", type=int, default=21, help="interleaved in-process rounds")
    parser.add_argument("--requests", type=int, default=400, help="requests per configuration per round")
    parser.add_argument(
        "--suite", choices=[*SUITES, "all"], default="all", help="in-process suite(s) to run (default all)"
    )
    parser.add_argument(
        "--gc",
        choices=["paused", "counted"],
        default="paused",
        help="paused: the cyclic GC is off during a round; counted: it runs during the round, timed with it",
    )
    parser.add_argument("--no-server", action="store_true", help="skip the throughput part")
    parser.add_argument("--server-rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per measurement")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "latest.json"))
    parser.add_argument("--plot", action="store_true", help="write docs/performance.png")
    args = parser.parse_args(argv)

    progress = Progress(sys.stderr)
    missing: set[str] = set()

    data: dict[str, Any] = {
        "machine": _machine(),
        "commit": _commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_at_start": list(os.getloadavg()),
        "settings": {
            "rounds": args.rounds,
            "requests_per_round": args.requests,
            "server_rounds": args.server_rounds,
            "duration_s": args.duration,
            "connections": args.connections,
            "gc": args.gc,
        },
        "suites": {},
    }
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    for suite in suites:
        print(f"{suite}: in-process overhead per request (median of interleaved rounds)", file=sys.stderr)
        try:
            results = run_suite(
                suite, rounds=args.rounds, requests_per_round=args.requests, progress=progress, gc_mode=args.gc
            )
        finally:
            progress.done()
        print(f"\n{suite}:\n")
        print(format_table(results))
        targets = suite_targets(suite, results)
        if targets:
            print(f"\n{suite} targets (issue 16):\n")
            print(targets)
        missing.update(r.missing for r in results if r.missing)
        data["suites"][suite] = [r.as_dict() for r in results]
        if suite == "wsgi":
            from kitmw.bench.wsgi import comparisons, format_comparisons

            data["wsgi_comparisons"] = comparisons(results)
            print("\nkitmw's overhead next to its peer's (same run):\n")
            print(format_comparisons(data["wsgi_comparisons"]))
    if missing:
        print(f"\n{missing_note(missing)}")
    from kitmw.bench import garbage

    rows = garbage.run()
    print("\ncyclic garbage per request:\n")
    print(garbage.format_table(rows))
    data["garbage"] = rows
    if not args.no_server:
        rows = throughput.run(rounds=args.server_rounds, duration=args.duration, connections=args.connections)
        print("\nthroughput:\n")
        print(throughput.format_table(rows))
        data["throughput"] = rows
    data["load_average_at_end"] = list(os.getloadavg())
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(data, f, indent=2)
    print(f"\nfigures written to {args.json}", file=sys.stderr)
    if args.plot:
        from .plot import plot

        print(f"plot written to {plot(args.json)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
