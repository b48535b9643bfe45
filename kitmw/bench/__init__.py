"""In-process overhead suites behind ``kitmw bench`` (and ``python -m benchmarks``).

One suite per kind of driver, each a module of this package with a ``run()``:
:mod:`~kitmw.bench.asgi` (ASGI middlewares over a Starlette app, the default),
:mod:`~kitmw.bench.wsgi` (WSGI middlewares over a Flask app) and :mod:`~kitmw.bench.httpx`
(httpx transports over a mock transport). :mod:`~kitmw.bench.harness` holds what they
share: the interleaved rounds, the results and their tables. A suite is imported only
when it runs, so ``kitmw bench`` needs nothing beyond kitmw and Starlette for the ASGI
suite; the peer packages it compares with come with the ``bench`` extra.
"""

from __future__ import annotations

from typing import Any

from .harness import Result, format_table, missing_note, summarize

__all__ = ["SUITES", "Result", "format_table", "missing_note", "run_suite", "summarize"]

#: The suites, in the order ``--suite all`` runs them.
SUITES = ("asgi", "wsgi", "httpx")


def run_suite(suite: str, **kwargs: Any) -> list[Result]:
    """Run one suite (``asgi``, ``wsgi``, ``httpx``) with its ``run()``'s keyword arguments
    (``rounds``, ``requests_per_round``, ``only``, ``progress``)."""
    if suite == "asgi":
        from .asgi import run
    elif suite == "wsgi":
        from .wsgi import run
    elif suite == "httpx":
        from .httpx import run
    else:
        raise ValueError(f"suite: expected one of {', '.join(SUITES)}, got {suite!r}")
    return run(**kwargs)
