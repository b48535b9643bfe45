"""``python -m benchmarks.endpoint``: the ``endpoint`` suite alone (see :mod:`kitmw.bench.endpoint`).

``python -m benchmarks`` runs it with the others; this entry point prints its table and
its target for a quick look.
"""

from __future__ import annotations

import argparse

from kitmw.bench import format_table, run_suite, suite_targets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    results = run_suite("endpoint", rounds=args.rounds, requests_per_round=args.calls)
    print(format_table(results))
    print()
    print(suite_targets("endpoint", results))


if __name__ == "__main__":
    main()
