"""The deadline of the code that runs now, read the way Go code reads ``ctx.Deadline()``."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from time import monotonic

from ..errors import ConfigError
from ..exchange import current_deadline, current_remaining, reset_deadline, set_deadline

__all__ = ["deadline", "remaining", "within"]


def deadline() -> float | None:
    """The deadline (``time.monotonic()`` seconds) of the request, call or block the
    calling code runs inside, or None when there is none."""
    return current_deadline()


def remaining() -> float | None:
    """Seconds left before :func:`deadline` (0.0 once it passed), or None without one.

    Code running inside a request with a deadline (a handler, a function it calls, a
    ``kitmw.endpoint``) reads it to size its own work: a database statement timeout,
    a loop that stops early. ``kitmw.httpx`` transports cap their timeouts to it.
    """
    return current_remaining()


@contextlib.contextmanager
def within(seconds: float) -> Iterator[float]:
    """Run a block under a deadline ``seconds`` from now (never later than the one
    already current), as a request with a timeout does: :func:`remaining` and the
    ``kitmw.httpx`` transports called inside see it. Yields the deadline.

    Nothing is cancelled: use it around background work and scripts that call
    services, so that their outgoing calls share one budget.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise ConfigError(f"seconds: expected a finite number of seconds, got {seconds!r}")
    wanted = monotonic() + max(0.0, float(seconds))
    outer = current_deadline()
    token = set_deadline(wanted)
    try:
        yield wanted if outer is None or outer > wanted else outer
    finally:
        reset_deadline(token)
