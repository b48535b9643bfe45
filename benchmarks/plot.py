"""The figures as bar charts: ``python -m benchmarks.plot [results.json [out.png]]``.

One panel per in-process suite (overhead per request over that suite's bare baseline,
median of wall time and, paler, of CPU time, with the interquartile range over rounds as
an error bar; kitmw blue, peers red, references grey; the bare apps of other frameworks
left out) and one for throughput (requests per second under a real server).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

__all__ = ["plot"]

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_JSON = os.path.join(HERE, "results", "latest.json")
DEFAULT_PNG = os.path.join(os.path.dirname(HERE), "docs", "performance.png")
COLORS = {"kitmw": "#2a7ab9", "peer": "#c8553d", "reference": "#999999", "bare": "#555555"}
TITLES = {
    "asgi": "ASGI (Starlette app), in-process",
    "wsgi": "WSGI (Flask app), in-process",
    "httpx": "httpx transports over MockTransport, in-process",
}


def _suite_panel(ax: Any, suite: str, rows: list[dict[str, Any]]) -> None:
    # the bare apps of other frameworks (raw ASGI/WSGI, FastAPI) would only stretch the axis
    rows = [
        r
        for r in rows
        if not r.get("skipped")
        and r["group"] in ("kitmw", "peer", "reference")
        and not r["name"].startswith("bare ")
    ]
    ys = list(range(len(rows)))
    values = [r["overhead_us"] for r in rows]
    errors = [r.get("iqr_us", 0.0) / 2 for r in rows]
    colors = [COLORS[r["group"]] for r in rows]
    ax.barh(
        [y - 0.2 for y in ys],
        values,
        height=0.4,
        xerr=errors,
        color=colors,
        error_kw={"elinewidth": 0.8, "ecolor": "#333"},
    )
    cpu = [r.get("cpu_overhead_us") for r in rows]
    if all(v is not None for v in cpu):
        ax.barh(
            [y + 0.2 for y in ys],
            cpu,
            height=0.4,
            xerr=[r.get("cpu_iqr_us", 0.0) / 2 for r in rows],
            color=colors,
            alpha=0.45,
            error_kw={"elinewidth": 0.8, "ecolor": "#666"},
        )
        for y, v in zip(ys, cpu, strict=True):
            ax.text(max(v or 0, 0), y + 0.2, f" {v:.0f}", va="center", fontsize=6, color="#555")
    for y, v in zip(ys, values, strict=True):
        ax.text(max(v, 0), y - 0.2, f" {v:.0f}", va="center", fontsize=7)
    ax.set_yticks(ys, [r["name"] for r in rows])
    ax.invert_yaxis()
    ax.axvline(0, color="#333", linewidth=0.6)
    ax.tick_params(axis="y", labelsize=7)
    baselines = sorted({r.get("baseline", "") for r in rows if r.get("baseline")})
    over = baselines[0] if len(baselines) == 1 else "the bare one of each kind"
    ax.set_xlabel(
        f"overhead per request over {over} (µs, median ± IQR/2; solid: wall time, pale: CPU time)",
        fontsize=8,
    )
    ax.set_title(TITLES.get(suite, suite), fontsize=10)


def _with_cpu_overhead(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``cpu_overhead_us`` (CPU µs over the row's baseline) where the JSON has CPU figures."""
    cpu = {r["name"]: r.get("cpu_us_per_request") for r in rows if not r.get("skipped")}
    out = []
    for r in rows:
        base = cpu.get(r.get("baseline", ""))
        own = r.get("cpu_us_per_request")
        extra = own - base if own and base else None
        out.append({**r, "cpu_overhead_us": extra})
    return out


def _throughput_panel(ax: Any, rows: list[dict[str, Any]]) -> None:
    rows = [r for r in rows if "skipped" not in r]
    names = [r["name"] for r in rows]
    values = [r["rps"] for r in rows]
    errors = [r.get("iqr_rps", 0.0) / 2 for r in rows]
    colors = [
        COLORS["kitmw"] if "kitmw" in r["name"] else COLORS["peer"] if "peer" in r["name"] else COLORS["bare"]
        for r in rows
    ]
    ax.barh(names, values, xerr=errors, color=colors, error_kw={"elinewidth": 0.8, "ecolor": "#333"})
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.0f}", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("requests per second, one worker, wrk on loopback (median ± IQR/2)", fontsize=8)
    ax.set_title("Throughput under uvicorn / gunicorn", fontsize=10)


def plot(path: str = DEFAULT_JSON, out: str = DEFAULT_PNG) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        data = json.load(f)
    suites: dict[str, list[dict[str, Any]]] = data.get("suites") or {"asgi": data.get("inprocess", [])}
    panels: list[tuple[str, list[dict[str, Any]]]] = [(s, rows) for s, rows in suites.items() if rows]
    throughput = [r for r in data.get("throughput", []) if "skipped" not in r]
    heights = [max(len(rows), 3) for _, rows in panels]
    if throughput:
        heights.append(max(len(throughput), 3))
    fig, axes = plt.subplots(
        len(heights), 1, figsize=(9, 0.26 * sum(heights) + 1.3 * len(heights)), height_ratios=heights
    )
    if len(heights) == 1:
        axes = [axes]
    for ax, (suite, rows) in zip(axes, panels, strict=False):
        _suite_panel(ax, suite, _with_cpu_overhead(rows))
    if throughput:
        _throughput_panel(axes[-1], throughput)
    machine = data.get("machine", {})
    commit = (data.get("commit") or "")[:12]
    fig.suptitle(
        f"kitmw (blue) vs peers (red) — {machine.get('cpus', '?')} CPUs, "
        f"Python {machine.get('python', '?')}, commit {commit}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(plot(*sys.argv[1:]))
