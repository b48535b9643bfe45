"""The tables of ``docs/performance.md`` from a results file:
``python -m benchmarks.report [results.json]`` (default benchmarks/results/latest.json).

Prints the machine, the commit and the settings, then one Markdown table per suite (and
the table of its targets) and the throughput table, so a rerun's figures can be pasted into the page as they are.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from kitmw.bench import SUITES, Result, format_table, suite_targets

from . import throughput
from .plot import DEFAULT_JSON

__all__ = ["report"]

HEADINGS = {
    "asgi": "ASGI middlewares, in-process (Starlette app)",
    "wsgi": "WSGI middlewares, in-process (Flask app)",
    "httpx": "httpx transports, in-process (over httpx.MockTransport)",
    "endpoint": "kitmw.endpoint, in-process (a function that returns at once)",
}


def report(data: dict[str, Any]) -> str:
    machine = data.get("machine", {})
    settings = data.get("settings", {})
    parts = [
        f"Machine: {machine.get('cpus')} CPUs ({machine.get('cpu_model')}), "
        f"{machine.get('implementation', 'CPython')} {machine.get('python')}, {machine.get('platform')}.",
        f"Commit: {data.get('commit')}; started {data.get('started')}; load average at start "
        f"{_load(data.get('load_average_at_start'))}, at end {_load(data.get('load_average_at_end'))}.",
        "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + ".",
    ]
    for suite, rows in data.get("suites", {}).items():
        results = [Result(**row) for row in rows]
        parts.append(f"### {HEADINGS.get(suite, suite)}\n\n{format_table(results)}")
        targets = suite_targets(suite, results) if suite in SUITES else ""
        if targets:
            parts.append(f"Targets ({suite}):\n\n{targets}")
        if suite == "wsgi" and data.get("wsgi_comparisons"):
            from kitmw.bench.wsgi import format_comparisons

            parts.append(f"kitmw next to its WSGI peers (same run):\n\n{format_comparisons(data['wsgi_comparisons'])}")
    if data.get("garbage"):
        from kitmw.bench import garbage

        parts.append(f"### Cyclic garbage per request\n\n{garbage.format_table(data['garbage'])}")
    if data.get("throughput"):
        parts.append(f"### Throughput\n\n{throughput.format_table(data['throughput'])}")
    return "\n\n".join(parts)


def _load(values: list[float] | None) -> str:
    return "?" if not values else " / ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_JSON) as f:
        print(report(json.load(f)))
