"""How a concurrency limit moves: the limit algorithms, apart from the limiter that
enforces them (Netflix concurrency-limits' ``Limit``, re-implemented).

Each finished exchange that holds a slot is one *sample*: its round-trip time (from
getting the slot to its end), the number in flight when it started, and whether it
was *dropped* (timed out, or overloaded downstream). :meth:`LimitAlgorithm.update`
turns a sample into the next limit. The limiter calls it under its lock, so an
algorithm object is never updated concurrently; each limiter has its own (per route:
:meth:`LimitAlgorithm.fresh`).

* :class:`FixedLimit`: the limit never moves.
* :class:`AIMDLimit`: loss based; additive increase while the limit is in use,
  multiplicative decrease on a drop or a sample slower than ``timeout``.
* :class:`GradientLimit`: latency based (Netflix's Gradient2); the limit follows the
  ratio of a long-term average round trip to the current one, so it lowers when
  latency rises because requests queue.
* :class:`WindowedLimit`: feeds another algorithm one aggregate sample per window
  (average round trip, most in flight, any drop), as Gradient2 is meant to be run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError

__all__ = ["AIMDLimit", "FixedLimit", "GradientLimit", "LimitAlgorithm", "WindowedLimit", "algorithm"]


def _int(value: Any, option: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{option}: expected an integer >= {minimum}, got {value!r}")
    return value


def _number(value: Any, option: str, low: float, high: float, *, open_high: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value < low or value > high or (open_high and value == high)):
        ok = False
    if not ok:
        upper = f"{high})" if open_high else f"{high}]"
        raise ConfigError(f"{option}: expected a number in [{low}, {upper}, got {value!r}")
    return float(value)


def _bounds(initial: int, low: int, high: int) -> tuple[int, int, int]:
    initial = _int(initial, "initial_limit")
    low = _int(low, "min_limit")
    high = _int(high, "max_limit")
    if low > high:
        raise ConfigError(f"min_limit: {low} is above max_limit {high}")
    if not low <= initial <= high:
        raise ConfigError(f"initial_limit: {initial} is outside [min_limit {low}, max_limit {high}]")
    return initial, low, high


def _within(limit: int, algorithm: Any) -> int:
    return int(min(max(limit, algorithm.min_limit), algorithm.max_limit))


class LimitAlgorithm:
    """Base of the limit algorithms: :attr:`limit` now, :meth:`update` per sample."""

    __slots__ = ("limit",)

    #: False for a limit that never moves: the limiter then takes no samples.
    adaptive: bool = True

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def update(self, rtt: float, inflight: int, dropped: bool, now: float) -> int:
        """The limit after one sample: ``rtt`` seconds from slot to end, ``inflight``
        exchanges holding a slot when it started (itself included), ``dropped`` if it
        timed out or was refused downstream, ``now`` the monotonic time it ended."""
        raise NotImplementedError

    def fresh(self, initial_limit: int | None = None) -> LimitAlgorithm:
        """A new algorithm with the same configuration, at its initial limit (or at
        ``initial_limit``, kept within its bounds)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(limit={self.limit})"


class FixedLimit(LimitAlgorithm):
    """A static limit."""

    __slots__ = ()

    adaptive = False

    def __init__(self, limit: int) -> None:
        super().__init__(_int(limit, "limit"))

    def update(self, rtt: float, inflight: int, dropped: bool, now: float) -> int:
        return self.limit

    def fresh(self, initial_limit: int | None = None) -> FixedLimit:
        return FixedLimit(self.limit if initial_limit is None else initial_limit)


class AIMDLimit(LimitAlgorithm):
    """Additive increase, multiplicative decrease (TCP's congestion window).

    A drop, or a sample slower than ``timeout``, multiplies the limit by
    ``backoff_ratio``; any other sample adds one while at least half the limit is in
    use (a limit nobody reaches is not raised). Loss based: rising latency lowers it
    only past ``timeout``, so set that to the round trip you accept, or let the
    ``timeout`` concern's deadlines provide the drops.

    :param initial_limit: the limit to start from.
    :param min_limit: never below this.
    :param max_limit: never above this.
    :param backoff_ratio: the factor of a decrease, in [0.5, 1).
    :param timeout: seconds; a slower sample counts as a drop.
    """

    __slots__ = ("_initial", "backoff_ratio", "max_limit", "min_limit", "timeout")

    def __init__(
        self,
        *,
        initial_limit: int = 20,
        min_limit: int = 1,
        max_limit: int = 1000,
        backoff_ratio: float = 0.9,
        timeout: float = 5.0,
    ) -> None:
        initial_limit, self.min_limit, self.max_limit = _bounds(initial_limit, min_limit, max_limit)
        super().__init__(initial_limit)
        self._initial = initial_limit
        self.backoff_ratio = _number(backoff_ratio, "backoff_ratio", 0.5, 1.0, open_high=True)
        self.timeout = _number(timeout, "timeout", 0.0, math.inf, open_high=True)
        if self.timeout == 0:
            raise ConfigError(f"timeout: expected a positive number of seconds, got {timeout!r}")

    def update(self, rtt: float, inflight: int, dropped: bool, now: float) -> int:
        limit = self.limit
        if dropped or rtt > self.timeout:
            limit = int(limit * self.backoff_ratio)
        elif inflight * 2 >= limit:
            limit += 1
        limit = min(self.max_limit, max(self.min_limit, limit))
        self.limit = limit
        return limit

    def fresh(self, initial_limit: int | None = None) -> AIMDLimit:
        return AIMDLimit(
            initial_limit=_within(self._initial if initial_limit is None else initial_limit, self),
            min_limit=self.min_limit,
            max_limit=self.max_limit,
            backoff_ratio=self.backoff_ratio,
            timeout=self.timeout,
        )


class GradientLimit(LimitAlgorithm):
    """Netflix's Gradient2: the limit follows how far the current round trip has
    drifted from a long-term average.

    Per sample (per window, under :class:`WindowedLimit`)::

        long     = exponential average of the round trips (over long_window samples)
        gradient = clamp(rtt_tolerance * long / rtt, 0.5, 1.0)
        new      = limit * gradient + queue_size
        limit    = clamp(limit * (1 - smoothing) + new * smoothing, min_limit, max_limit)

    While latency holds, ``gradient`` is 1 and the limit grows by ``queue_size *
    smoothing`` per sample; when requests queue and the round trip passes
    ``rtt_tolerance`` times the long-term one, the limit shrinks, by at most half a
    step. A limit less than half used is not raised. When the round trip falls far
    below the long-term average (load went away), that average is pulled down faster.

    :param initial_limit: the limit to start from.
    :param min_limit: never below this.
    :param max_limit: never above this.
    :param smoothing: how much of each new estimate is taken, in (0, 1].
    :param queue_size: how far the limit may grow per estimate while latency holds
        (an int, or ``callable(limit) -> int``).
    :param long_window: samples of the long-term average (the first 10 are averaged plainly).
    :param rtt_tolerance: how much the round trip may grow before the limit lowers (>= 1).
        Netflix's default is 1.5; kitmw's 1.25 admits less queueing (see ``docs/concurrency.md``).
    """

    __slots__ = (
        "_count",
        "_estimate",
        "_initial",
        "_long",
        "_queue",
        "_sum",
        "long_window",
        "max_limit",
        "min_limit",
        "rtt_tolerance",
        "smoothing",
    )

    _WARMUP = 10

    def __init__(
        self,
        *,
        initial_limit: int = 20,
        min_limit: int = 1,
        max_limit: int = 1000,
        smoothing: float = 0.2,
        queue_size: int | Callable[[int], int] = 4,
        long_window: int = 600,
        rtt_tolerance: float = 1.25,
    ) -> None:
        initial_limit, self.min_limit, self.max_limit = _bounds(initial_limit, min_limit, max_limit)
        super().__init__(initial_limit)
        self._initial = initial_limit
        self.smoothing = _number(smoothing, "smoothing", 0.0, 1.0)
        if self.smoothing == 0:
            raise ConfigError(f"smoothing: expected a number in (0, 1], got {smoothing!r}")
        if not callable(queue_size):
            _int(queue_size, "queue_size", 0)
        self._queue = queue_size
        self.long_window = _int(long_window, "long_window")
        self.rtt_tolerance = _number(rtt_tolerance, "rtt_tolerance", 1.0, math.inf, open_high=True)
        self._estimate = float(initial_limit)
        self._long = 0.0
        self._sum = 0.0
        self._count = 0

    @property
    def long_rtt(self) -> float:
        """The long-term average round trip (seconds) the current one is compared with."""
        return self._long

    def _average(self, rtt: float) -> float:
        if self._count < self._WARMUP:
            self._count += 1
            self._sum += rtt
            self._long = self._sum / self._count
        else:
            factor = 2.0 / (self.long_window + 1)
            self._long = self._long * (1 - factor) + rtt * factor
        return self._long

    def update(self, rtt: float, inflight: int, dropped: bool, now: float) -> int:
        estimate = self._estimate
        queue = self._queue
        queue_size = queue(int(estimate)) if callable(queue) else queue
        short = max(rtt, 1e-9)
        long = self._average(short)
        if long / short > 2:
            self._long = long * 0.95  # load went away: let the baseline catch up
        if inflight < estimate / 2:
            return self.limit  # not limited by us: nothing learnt about the limit
        gradient = max(0.5, min(1.0, self.rtt_tolerance * long / short))
        new = estimate * gradient + queue_size
        new = estimate * (1 - self.smoothing) + new * self.smoothing
        new = max(float(self.min_limit), min(float(self.max_limit), new))
        self._estimate = new
        self.limit = int(new)
        return self.limit

    def fresh(self, initial_limit: int | None = None) -> GradientLimit:
        return GradientLimit(
            initial_limit=_within(self._initial if initial_limit is None else initial_limit, self),
            min_limit=self.min_limit,
            max_limit=self.max_limit,
            smoothing=self.smoothing,
            queue_size=self._queue,
            long_window=self.long_window,
            rtt_tolerance=self.rtt_tolerance,
        )


class WindowedLimit(LimitAlgorithm):
    """Feed ``delegate`` one aggregate sample per window instead of every sample.

    A window lasts twice its fastest round trip, within [``min_window``,
    ``max_window``] seconds, and counts only if it holds ``min_samples`` samples; its
    sample is the average round trip, the most in flight and whether any was dropped.
    Round trips under ``min_rtt`` (cached answers, errors before any work) are left out.

    :param delegate: the algorithm that moves the limit.
    :param min_window: shortest window, seconds (>= 0.01).
    :param max_window: longest window, seconds.
    :param min_samples: samples a window needs to count.
    :param min_rtt: seconds; faster samples are not taken.
    """

    __slots__ = (
        "_dropped",
        "_fastest",
        "_most",
        "_n",
        "_next",
        "_total",
        "delegate",
        "max_window",
        "min_rtt",
        "min_samples",
        "min_window",
    )

    def __init__(
        self,
        delegate: LimitAlgorithm,
        *,
        min_window: float = 1.0,
        max_window: float = 1.0,
        min_samples: int = 10,
        min_rtt: float = 100e-6,
    ) -> None:
        if not isinstance(delegate, LimitAlgorithm):
            raise ConfigError(f"delegate: expected a kitmw.concurrency limit algorithm, got {delegate!r}")
        super().__init__(delegate.limit)
        self.delegate = delegate
        self.min_window = _number(min_window, "min_window", 0.01, math.inf, open_high=True)
        self.max_window = _number(max_window, "max_window", 0.01, math.inf, open_high=True)
        if self.max_window < self.min_window:
            raise ConfigError(f"max_window: {max_window!r} is below min_window {min_window!r}")
        self.min_samples = _int(min_samples, "min_samples")
        self.min_rtt = _number(min_rtt, "min_rtt", 0.0, math.inf, open_high=True)
        self._next = -math.inf
        self._reset()

    def _reset(self) -> None:
        self._fastest = math.inf
        self._total = 0.0
        self._most = 0
        self._n = 0
        self._dropped = False

    def update(self, rtt: float, inflight: int, dropped: bool, now: float) -> int:
        if rtt < self.min_rtt:
            return self.limit
        self._fastest = min(self._fastest, rtt)
        self._total += rtt
        self._most = max(self._most, inflight)
        self._n += 1
        self._dropped = self._dropped or dropped
        if now > self._next:
            fastest, n = self._fastest, self._n
            self._next = now + min(max(fastest * 2, self.min_window), self.max_window)
            if n >= self.min_samples:
                self.limit = self.delegate.update(self._total / n, self._most, self._dropped, now)
            self._reset()
        return self.limit

    def fresh(self, initial_limit: int | None = None) -> WindowedLimit:
        return WindowedLimit(
            self.delegate.fresh(initial_limit),
            min_window=self.min_window,
            max_window=self.max_window,
            min_samples=self.min_samples,
            min_rtt=self.min_rtt,
        )


def algorithm(adaptive: Any, limit: int | None, option: str = "adaptive") -> LimitAlgorithm:
    """The algorithm an ``adaptive`` option names: None/False (static ``limit``),
    ``"aimd"`` (windows of about a round trip), ``"gradient"`` or True (Gradient2, 1 s
    windows; ``limit`` is the initial limit of both), or an algorithm object (used as
    its configuration; ``limit`` must then be left out)."""
    if adaptive is None or adaptive is False:
        if limit is None:
            raise ConfigError("limit: the number of exchanges allowed in flight is required, such as 64")
        return FixedLimit(_int(limit, "limit"))
    if isinstance(adaptive, LimitAlgorithm):
        if limit is not None:
            raise ConfigError(
                f"limit: {option}={adaptive!r} sets its own initial_limit; leave limit out"
            )
        return adaptive
    initial = 20 if limit is None else _int(limit, "limit")
    bounds = {"initial_limit": initial, "max_limit": max(1000, initial)}
    if adaptive == "aimd":
        # One decision per window of about a round trip, as TCP backs off once per round
        # trip: per sample, a burst of slow answers would cut the limit 0.9**n times.
        # A drop is a drop however few samples its window holds: min_samples=1.
        return WindowedLimit(AIMDLimit(**bounds), min_window=0.1, max_window=1.0, min_samples=1)
    if adaptive == "gradient" or adaptive is True:
        return WindowedLimit(GradientLimit(**bounds))
    raise ConfigError(
        f"{option}: expected None, 'aimd', 'gradient' or a kitmw.concurrency algorithm"
        f" (AIMDLimit, GradientLimit, WindowedLimit), got {adaptive!r}"
    )
