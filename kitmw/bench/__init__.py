"""In-process overhead suites behind ``kitmw bench`` (and ``python -m benchmarks``).

One suite per kind of driver, each a module of this package with a ``run()``:
:mod:`~kitmw.bench.asgi` (ASGI middlewares over a Starlette app, the default),
:mod:`~kitmw.bench.wsgi` (WSGI middlewares over a Flask app), :mod:`~kitmw.bench.httpx`
(httpx transports over a mock transport) and :mod:`~kitmw.bench.endpoint`
(``kitmw.endpoint`` against the decorator stack a user writes). Each has its ``SUITE``
and the targets read from a run. :mod:`~kitmw.bench.harness` holds what they share: the interleaved rounds, the results and their tables. A suite is imported only
when it runs, so ``kitmw bench`` needs nothing beyond kitmw and Starlette for the ASGI
suite; the peer packages it compares with come with the ``bench`` extra.
"""

from __future__ import annotations

from typing import Any

from .harness import Result, Suite, format_table, format_targets, missing_note, summarize

__all__ = [
    "SUITES",
    "Result",
    "format_table",
    "format_targets",
    "missing_note",
    "run_suite",
    "suite_targets",
    "summarize",
]

#: The suites, in the order ``--suite all`` runs them.
SUITES = ("asgi", "wsgi", "httpx", "endpoint")


def _suite(suite: str) -> Suite:
    # Imported here, one by one (not by name): a suite loads its peers only when it runs.
    if suite == "asgi":
        from .asgi import SUITE
    elif suite == "wsgi":
        from .wsgi import SUITE
    elif suite == "httpx":
        from .httpx import SUITE
    elif suite == "endpoint":
        from .endpoint import SUITE
    else:
        raise ValueError(f"suite: expected one of {', '.join(SUITES)}, got {suite!r}")
    return SUITE


def run_suite(suite: str, **kwargs: Any) -> list[Result]:
    """Run one suite (``asgi``, ``wsgi``, ``httpx``, ``endpoint``) with its ``run()``'s
    keyword arguments (``rounds``, ``requests_per_round``, ``only``, ``progress``)."""
    return _suite(suite).run(**kwargs)


def suite_targets(suite: str, results: list[Result]) -> str:
    """The table of ``suite``'s targets read from ``results`` (empty when it has none)."""
    return format_targets(_suite(suite).targets, results)
