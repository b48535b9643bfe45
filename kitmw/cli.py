"""``kitmw`` command line: ``kitmw demo`` (the guided tour) and ``kitmw bench``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _bench(args: argparse.Namespace) -> int:
    from ._bench import SUITES, format_table, run_suite

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"  {message}", file=sys.stderr, flush=True)

    only = None
    if args.only:
        needle = args.only.lower()

        def only(name: str) -> bool:
            return needle in name.lower()

    suites = list(SUITES) if args.suite == "all" else [args.suite]
    figures: dict[str, object] = {}
    for suite in suites:
        if len(suites) > 1:
            print(f"\n{suite}:" if figures else f"{suite}:")
        results = run_suite(
            suite, rounds=args.rounds, requests_per_round=args.requests, only=only, progress=progress
        )
        print(format_table(results))
        figures[suite] = [r.as_dict() for r in results]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures[suites[0]] if len(suites) == 1 else figures, f, indent=2)
        print(f"\nfigures written to {args.json}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(serve=args.serve, redis=args.redis, port=args.port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kitmw", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the guided tour of every concern (exits by itself)")
    demo.add_argument("--serve", action="store_true", help="keep the demo service running")
    demo.add_argument("--redis", metavar="URL", help="keep rate limits and breaker state in Redis")
    demo.add_argument(
        "--port",
        type=int,
        default=0,
        help="port to serve on, on 127.0.0.1; the tour also uses the next one (default: a free port)",
    )
    demo.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="measure per-request overhead in-process")
    bench.add_argument("--rounds", type=int, default=15)
    bench.add_argument("--requests", type=int, default=300, help="requests per round")
    bench.add_argument("--only", help="only configurations whose name contains this")
    bench.add_argument(
        "--suite",
        choices=["asgi", "wsgi", "httpx", "all"],
        default="asgi",
        help="ASGI middlewares (default), WSGI middlewares, httpx transports, or all three",
    )
    bench.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bench.add_argument("--quiet", action="store_true")
    bench.set_defaults(func=_bench)

    args = parser.parse_args(argv)
    return int(args.func(args))
