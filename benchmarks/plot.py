"""Overhead per configuration as a bar chart: ``python -m benchmarks.plot [results.json]``."""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_JSON = os.path.join(HERE, "results", "latest.json")
DEFAULT_PNG = os.path.join(os.path.dirname(HERE), "docs", "performance.png")


def plot(path: str = DEFAULT_JSON, out: str = DEFAULT_PNG) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        data = json.load(f)
    rows = [r for r in data["inprocess"] if not r.get("skipped") and r["group"] in ("kitmw", "peer")]
    rows.sort(key=lambda r: r["overhead_us"])
    names = [r["name"] for r in rows]
    values = [r["overhead_us"] for r in rows]
    colors = ["#2a7ab9" if r["group"] == "kitmw" else "#c8553d" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(rows) + 1.2))
    ax.barh(names, values, color=colors)
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.0f}", va="center", fontsize=8)
    ax.set_xlabel("overhead per request over the bare Starlette app (µs, median)")
    ax.set_title("kitmw (blue) vs peer packages (red), in-process")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(plot(*sys.argv[1:]))
