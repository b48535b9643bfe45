"""The ``kitmw`` command: ``kitmw demo`` (the guided tour) and ``kitmw bench``."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from typing import TextIO

__all__ = ["main"]

DESCRIPTION = """\
Go kit's cross-cutting concerns for any Python web stack: the guided tour and the
overhead benchmark. "kitmw COMMAND --help" lists the options of a command.
"""


class Progress:
    """Where a long run is: one line that updates on a terminal, plain lines otherwise.

    A log file or CI output gets "round 3/15" lines it can keep; a terminal gets one
    bar that is rewritten in place and cleared when the run ends.
    """

    def __init__(self, stream: TextIO, *, quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self.live = not quiet and stream.isatty()
        self._shown = 0  # width of the line on screen (terminal only)

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        if not self.live:
            print(f"  {message}", file=self.stream, flush=True)
            return
        line = f"  {_bar(message)} {message}"
        width = shutil.get_terminal_size((80, 24)).columns - 1
        line = line[:width]
        self.stream.write("\r" + line.ljust(self._shown))
        self.stream.flush()
        self._shown = len(line)

    def done(self) -> None:
        """Clear the live line so the table starts on a clean screen."""
        if self.live and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0


def _bar(message: str, width: int = 20) -> str:
    """``[#####...............]`` for a message that starts with "round n/total"."""
    try:
        done, total = (int(n) for n in message.split()[1].split("/"))
    except (IndexError, ValueError):
        return ""
    filled = round(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _bench(args: argparse.Namespace) -> int:
    from .bench import SUITES, format_table, missing_note, run_suite, suite_targets

    progress = Progress(sys.stderr, quiet=args.quiet)
    only = None
    if args.only:
        needle = args.only.lower()

        def only(name: str) -> bool:
            return needle in name.lower()

    suites = list(SUITES) if args.suite == "all" else [args.suite]
    figures: dict[str, object] = {}
    missing: set[str] = set()
    for suite in suites:
        try:
            results = run_suite(
                suite,
                rounds=args.rounds,
                requests_per_round=args.requests,
                only=only,
                progress=progress,
                gc_mode=args.gc,
            )
        finally:
            progress.done()
        if len(suites) > 1:
            print(f"\n{suite}:" if figures else f"{suite}:")
        print(format_table(results))
        if suite == "wsgi":
            from .bench.wsgi import comparisons, format_comparisons

            rows = comparisons(results)
            if rows:
                print("\nkitmw's overhead next to its peer's (same run):\n")
                print(format_comparisons(rows))
        targets = suite_targets(suite, results)
        if targets:
            print(f"\ntargets:\n\n{targets}")
        missing.update(r.missing for r in results if r.missing)
        figures[suite] = [r.as_dict() for r in results]
    note = missing_note(missing)
    if note:
        print(f"\n{note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures[suites[0]] if len(suites) == 1 else figures, f, indent=2)
        print(f"\nfigures written to {args.json}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(serve=args.serve, redis=args.redis, port=args.port)


def main(argv: Sequence[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="kitmw", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"kitmw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench}")

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

    bench = sub.add_parser(
        "bench",
        help="measure per-request overhead in-process",
        description=(
            "Per-request overhead of kitmw's middlewares and transports next to the bare app "
            "and the peer packages, driven in-process (no server, no sockets). Peers come with "
            "the bench extra: python -m pip install 'kitmw[bench]'."
        ),
    )
    bench.add_argument(
        "--rounds",
        type=int,
        default=15,
        help="rounds over every configuration; each figure is the median over rounds (default: 15)",
    )
    bench.add_argument("--requests", type=int, default=300, help="requests per round (default: 300)")
    bench.add_argument("--only", help="only configurations whose name contains this (the bare app is kept)")
    bench.add_argument(
        "--suite",
        choices=["asgi", "wsgi", "httpx", "endpoint", "all"],
        default="asgi",
        help="ASGI middlewares (default), WSGI middlewares, httpx transports, kitmw.endpoint, or all four",
    )
    bench.add_argument(
        "--gc",
        choices=["paused", "counted"],
        default="paused",
        help="paused (default): the cyclic garbage collector is off during a round; counted: it runs "
        "during the round, as in a server, and its collections are timed with the requests",
    )
    bench.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bench.add_argument("--quiet", action="store_true", help="no progress on stderr, only the tables")
    bench.set_defaults(func=_bench)

    args = parser.parse_args(argv)
    return int(args.func(args))
