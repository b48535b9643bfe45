"""``python -m kitmw.metrics``: a process serving every worker's metrics on its own port.

For servers without a master hook (``uvicorn --workers``): run it beside the service with
the same ``PROMETHEUS_MULTIPROC_DIR``; it shows the workers' values, never its own.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from ._exposition import multiprocess_dir, start_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kitmw.metrics",
        description="Serve every worker's metrics (PROMETHEUS_MULTIPROC_DIR) on a port of their own.",
    )
    parser.add_argument("--port", type=int, default=9464, help="port to serve on (default 9464)")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    args = parser.parse_args(argv)
    if multiprocess_dir() is None:
        print(
            "kitmw.metrics: PROMETHEUS_MULTIPROC_DIR is not set: this process would show only its own"
            " (empty) metrics; set it to the directory your workers write",
            file=sys.stderr,
        )
        return 2
    try:
        server = start_server(args.port, host=args.host)
    except OSError as exc:
        print(
            f"kitmw.metrics: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr
        )
        return 3
    print(f"kitmw.metrics: serving {server.url}", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
