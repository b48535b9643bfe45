"""``python -m benchmarks``: in-process overhead, then throughput under uvicorn, as tables.

Options: ``--rounds N`` (in-process), ``--no-server``, ``--json FILE`` (default
benchmarks/results/latest.json), ``--plot`` (docs/performance.png from the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

from kitmw._bench import format_table, run

from . import throughput

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--no-server", action="store_true", help="skip the uvicorn + wrk part")
    parser.add_argument("--server-rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per measurement")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "latest.json"))
    parser.add_argument("--plot", action="store_true", help="write docs/performance.png")
    args = parser.parse_args()

    print("in-process overhead per request (median of interleaved rounds)", file=sys.stderr)
    results = run(
        rounds=args.rounds,
        requests_per_round=args.requests,
        progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True),
    )
    print(format_table(results))
    data: dict[str, object] = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "inprocess": [r.as_dict() for r in results],
    }
    if not args.no_server:
        rows = throughput.run(rounds=args.server_rounds, duration=args.duration)
        print()
        print(throughput.format_table(rows))
        data["throughput"] = rows
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(data, f, indent=2)
    print(f"\nfigures written to {args.json}", file=sys.stderr)
    if args.plot:
        from .plot import plot

        print(f"plot written to {plot(args.json)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
