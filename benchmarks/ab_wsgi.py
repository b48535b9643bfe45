"""WSGI A/B: two kitmw trees in one process, interleaved rounds (Flask app driven through PEP 3333).

usage: python -m benchmarks.ab_wsgi BEFORE_DIR AFTER_DIR [rounds] [requests] [paused|counted]

Each DIR holds a ``kitmw`` package (``git worktree add /tmp/before <commit>`` makes one);
BEFORE is copied and imported as ``kitmw_before``, AFTER as ``kitmw``. Both build the same
Flask app wrapped in ``stack()`` of six and in each concern alone; every configuration of
both trees runs once per round, in turn, with the GC paused; each figure is the median over
rounds of the benchmark thread's CPU µs per request, minus the bare Flask app's.
"""

from __future__ import annotations

import gc
import os
import shutil
import statistics
import sys
import tempfile
from typing import Any


def main(argv: list[str]) -> None:
    before_dir, after_dir = argv[0], argv[1]
    rounds = int(argv[2]) if len(argv) > 2 else 15
    requests = int(argv[3]) if len(argv) > 3 else 300
    counted = len(argv) > 4 and argv[4] == "counted"
    tmp = tempfile.mkdtemp(prefix="kitmw_ab_")
    shutil.copytree(
        os.path.join(before_dir, "kitmw"),
        os.path.join(tmp, "kitmw_before"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    sys.path.insert(0, tmp)
    sys.path.insert(0, os.path.abspath(after_dir))
    for name in [m for m in sys.modules if m == "kitmw" or m.startswith("kitmw.")]:
        del sys.modules[name]
    import kitmw_before  # type: ignore[import-not-found]
    from prometheus_client import CollectorRegistry

    import kitmw
    from kitmw.bench import wsgi as bench
    from kitmw.bench.harness import JWT_SECRET, SIX, Env, hs256_token, kitmw_options

    env = Env()
    token = hs256_token()

    def options(pkg: Any, concern: str) -> dict[str, Any]:
        found = dict(kitmw_options(env, concern))
        if concern == "auth":
            found = {"backend": pkg.auth.JWT(key=JWT_SECRET, algorithms=["HS256"])}
        if concern in ("ratelimit", "auth", "breaker", "metrics"):
            found["registry"] = CollectorRegistry()  # both trees register the same names
        return found

    def build(pkg: Any, concerns: tuple[str, ...]) -> Any:
        app = bench.flask_app()
        app.wsgi_app = pkg.stack(app.wsgi_app, **{c: options(pkg, c) for c in concerns})
        return app

    sets = {"six": SIX, **{c: (c,) for c in SIX}}
    runs: list[tuple[str, Any, list[float]]] = []
    base = bench.environ(token)
    bare = bench._driver(bench.flask_app(), base)
    bare(50)
    runs.append(("bare", bare, []))
    for label, concerns in sets.items():
        for tag, pkg in (("before", kitmw_before), ("after", kitmw)):
            drive = bench._driver(build(pkg, concerns), base)
            drive(50)
            runs.append((f"{label} {tag}", drive, []))
    for _ in range(rounds):
        for _, drive, samples in runs:
            gc.collect()
            if not counted:
                gc.disable()
            try:
                samples.append(drive(requests)[1])
            finally:
                gc.enable()
    medians = {name: statistics.median(samples) for name, _, samples in runs}
    floor = medians["bare"]
    mode = "GC counted" if counted else "GC paused"
    print(f"CPU µs/request over bare Flask ({floor:.1f}), median of {rounds} rounds x {requests}, {mode}")
    for label in sets:
        old, new = medians[f"{label} before"] - floor, medians[f"{label} after"] - floor
        print(f"{label:12s} before {old:7.1f}  after {new:7.1f}  ({(new - old) / old * 100:+.0f} %)")


if __name__ == "__main__":
    main(sys.argv[1:])
