"""What the suites share: the result of a configuration, the interleaved rounds, the tables,
and the options and dependencies every kitmw configuration is built with.

Rounds are interleaved across configurations so drift in machine speed hits every
configuration alike; each figure is the median over rounds of the mean µs per request
within a round, with the interquartile range over rounds as the spread. Both wall time
and the benchmark thread's CPU time are read: on a shared machine the CPU figure does
not count the time other processes held the core. Overhead is the configuration's (wall)
figure minus its baseline's (the bare app of the same run).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import io
import logging
import statistics
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "GC_MODES",
    "JWT_SECRET",
    "SIX",
    "Configuration",
    "Env",
    "Prepare",
    "Result",
    "Suite",
    "Target",
    "clock",
    "concern_options",
    "counting_processor",
    "format_table",
    "format_targets",
    "hs256_token",
    "interleave",
    "kitmw_options",
    "measure",
    "missing_note",
    "null_stream",
    "per_request",
    "registry",
    "summarize",
]

JWT_SECRET = "kitmw-bench-secret-0123456789abcdef"
#: The six server concerns in canonical order (``stack()`` of 6).
SIX = ("tracing", "access_log", "metrics", "ratelimit", "auth", "breaker")
#: How rounds treat the cyclic garbage collector (see :func:`interleave`).
GC_MODES = ("paused", "counted")


@dataclass
class Result:
    name: str
    group: str
    us_per_request: float = 0.0
    overhead_us: float = 0.0
    ratio: float = 0.0
    #: interquartile range of the per-round figures (µs): how much rounds disagree
    iqr_us: float = 0.0
    #: CPU time of the benchmark thread per request (median, µs) and its IQR: unlike
    #: wall time it does not count the time other processes held the core
    cpu_us_per_request: float = 0.0
    cpu_iqr_us: float = 0.0
    #: the CPU figure minus its baseline's
    cpu_overhead_us: float = 0.0
    #: the configuration this one's overhead and ratio are measured against
    baseline: str = ""
    #: per round: wall µs per request, and CPU µs per request
    samples: list[float] = field(default_factory=list)
    cpu_samples: list[float] = field(default_factory=list)
    skipped: str | None = None
    #: the top-level module a skipped configuration could not import (a peer package)
    missing: str | None = None

    def skip(self, exc: Exception) -> None:
        """Record why this configuration cannot run (a missing peer package, or another failure)."""
        if isinstance(exc, ImportError) and exc.name:
            self.missing = exc.name.split(".")[0]
            self.skipped = f"{self.missing} is not installed"
        else:
            self.skipped = f"{type(exc).__name__}: {exc}"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["samples"] = [round(v, 2) for v in self.samples]
        data["cpu_samples"] = [round(v, 2) for v in self.cpu_samples]
        return data


# -- what every kitmw configuration is built with --------------------------------------------


def null_stream() -> io.StringIO:
    """A text stream that keeps nothing: log lines are formatted and written, then dropped."""

    class Null(io.StringIO):
        def write(self, s: str) -> int:
            return len(s)

    return Null()


def counting_processor() -> Any:
    """A span processor that counts ended spans and keeps none: every span goes through the
    SDK's span objects, with no exporter cost on top (the second tracing configuration)."""
    from opentelemetry.sdk.trace import SpanProcessor

    class CountingProcessor(SpanProcessor):
        def __init__(self) -> None:
            self.ended = 0

        def on_end(self, span: Any) -> None:
            self.ended += 1

    return CountingProcessor()


class Env:
    """Shared dependencies built once: tracer providers (a ``SimpleSpanProcessor`` with a
    no-op exporter, and a counting processor), a log handler."""

    def __init__(self) -> None:
        self._provider: Any = None
        self._counting_provider: Any = None
        self._log_ready = False

    @property
    def counting_provider(self) -> Any:
        """A tracer provider whose only processor counts ended spans (see :func:`counting_processor`)."""
        if self._counting_provider is None:
            from opentelemetry.sdk.trace import TracerProvider

            provider = TracerProvider()
            provider.add_span_processor(counting_processor())
            self._counting_provider = provider
        return self._counting_provider

    @property
    def provider(self) -> Any:
        if self._provider is None:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

            class NoopExporter(SpanExporter):
                def export(self, spans: Any) -> SpanExportResult:
                    return SpanExportResult.SUCCESS

            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(NoopExporter()))
            self._provider = provider
        return self._provider

    def access_logger(self) -> logging.Logger:
        """The access logger with a real handler (JSON formatter) writing to a null stream."""
        logger = logging.getLogger("kitmw.bench.access")
        if not self._log_ready:
            from ..logging import configure

            configure(format="json", logger=logger, stream=null_stream(), level=logging.INFO)
            logger.propagate = False
            self._log_ready = True
        return logger


def registry() -> Any:
    """A fresh prometheus-client registry (each configuration writes its own series)."""
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


def hs256_token() -> str:
    """A valid HS256 token for :data:`JWT_SECRET`, good for a day."""
    import jwt

    return jwt.encode(
        {"sub": "bench-user", "scope": "read write", "exp": int(time.time()) + 86400},
        JWT_SECRET,
        algorithm="HS256",
    )


def kitmw_options(env: Env, concern: str, *, counting: bool = False) -> dict[str, Any]:
    """Options of one kitmw server concern as the targets in issue #6 fix them
    (``counting``: tracing through :attr:`Env.counting_provider`)."""
    if concern == "tracing":
        return {"tracer_provider": env.counting_provider if counting else env.provider}
    if concern == "access_log":
        return {"logger": env.access_logger()}
    if concern == "metrics":
        return {"registry": registry()}
    if concern == "ratelimit":
        return {"limit": "1000000/minute"}
    if concern == "auth":
        from ..auth import JWT

        return {"backend": JWT(key=JWT_SECRET, algorithms=["HS256"])}
    if concern == "breaker":
        return {"name": f"bench-{time.monotonic_ns()}"}
    raise ValueError(concern)


def concern_options(env: Env, concerns: Iterable[str], *, counting: bool = False) -> dict[str, Any]:
    """``stack()`` keyword arguments for ``concerns`` (concern names)."""
    return {c: kitmw_options(env, c, counting=counting) for c in concerns}


# -- rounds and figures --------------------------------------------------------------------


# -- a suite ---------------------------------------------------------------------------------

#: (name, group, build, detail): ``build(env)`` makes what is measured; ``detail`` is the
#: suite's own (whether it needs a token, whether it is async). The group "bare" is the
#: baseline, always kept.
Configuration = tuple[str, str, Callable[[Env], Any], Any]
#: ``ready(make, detail, token)``: make what is measured (``make()``, as often as it needs),
#: check and warm it up, and return its ``drive(n)`` (or an awaitable of it); ``token()``
#: gives a valid bearer token.
Ready = Callable[[Callable[[], Any], Any, Callable[[], str]], Any]


class Suite:
    """One in-process suite: its configurations, and how one is made ready to drive.

    :param configurations: returns the :data:`Configuration` list.
    :param ready: see :data:`Ready`.
    :param baseline: maps a configuration's ``detail`` to the baseline it is compared
        with (the httpx suite compares sync and async configurations with the bare
        transport of their kind); default one baseline for all.
    """

    def __init__(
        self,
        configurations: Callable[[], list[Configuration]],
        ready: Ready,
        *,
        baseline: Callable[[Any], Hashable] = lambda detail: None,
        targets: Iterable[Target] = (),
    ) -> None:
        self.configurations = configurations
        self._ready = ready
        self._baseline = baseline
        #: the targets read from a run of this suite (:func:`format_targets`)
        self.targets = list(targets)

    def run(
        self,
        *,
        rounds: int = 15,
        requests_per_round: int = 300,
        only: Callable[[str], bool] | None = None,
        progress: Callable[[str], None] | None = None,
        gc_mode: str = "paused",
    ) -> list[Result]:
        """Run every configuration ``only`` keeps (the bare ones always), interleaved;
        each figure is the median of ``rounds`` rounds of ``requests_per_round`` requests,
        with overhead and ratio to its baseline. ``gc_mode``: see :func:`interleave`."""
        env = Env()
        token = functools.cache(hs256_token)
        ready = self._ready

        def prepare(build: Callable[[Env], Any], detail: Any) -> Prepare:
            return lambda: ready(lambda: build(env), detail, token)

        found = self.configurations()
        sides = {name: self._baseline(detail) for name, _, _, detail in found}
        configs = [(name, group, prepare(build, detail)) for name, group, build, detail in found]
        results = measure(
            configs,
            rounds=rounds,
            requests_per_round=requests_per_round,
            only=only,
            progress=progress,
            gc_mode=gc_mode,
        )
        for side in dict.fromkeys(sides.values()):
            summarize([r for r in results if sides[r.name] == side])
        return results


def clock() -> tuple[int, int]:
    """(wall ns, CPU ns of this thread): the two clocks every driver reads."""
    return time.perf_counter_ns(), time.thread_time_ns()


def per_request(start: tuple[int, int], n: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per request since ``start`` (from :func:`clock`)."""
    wall, cpu = clock()
    return (wall - start[0]) / n / 1000.0, (cpu - start[1]) / n / 1000.0


#: Prepares one configuration: builds it, checks that it answers, warms it up, and returns
#: its ``drive(n)`` (or an awaitable of it); raises if it cannot run.
Prepare = Callable[[], Any]


def measure(
    configs: Iterable[tuple[str, str, Prepare]],
    *,
    rounds: int,
    requests_per_round: int,
    only: Callable[[str], bool] | None = None,
    progress: Callable[[str], None] | None = None,
    gc_mode: str = "paused",
) -> list[Result]:
    """Prepare every configuration (name, group, prepare) that ``only`` keeps (the bare
    ones always), then drive them in interleaved rounds on one event loop. A configuration
    whose preparation fails is a skipped result. Summarizing is left to the suite (it
    knows its baselines)."""
    results: list[Result] = []

    async def main() -> None:
        prepared: list[tuple[Result, Callable[[int], Any]]] = []
        for name, group, prepare in configs:
            if only is not None and group != "bare" and not only(name):
                continue
            result = Result(name=name, group=group)
            results.append(result)
            try:
                drive = prepare()
                if inspect.isawaitable(drive):
                    drive = await drive
            except Exception as exc:  # a missing peer package or a broken configuration
                result.skip(exc)
                continue
            prepared.append((result, drive))
        await interleave(prepared, rounds, requests_per_round, progress, gc_mode)

    asyncio.run(main())
    return results


async def interleave(
    prepared: list[tuple[Result, Callable[[int], Any]]],
    rounds: int,
    requests_per_round: int,
    progress: Callable[[str], None] | None = None,
    gc_mode: str = "paused",
) -> None:
    """Drive every prepared configuration once per round, in turn.

    ``drive(n)`` returns (wall µs, CPU µs) per request over ``n`` requests (see
    :func:`per_request`), or an awaitable of it (the sync and async configurations of one
    suite share the rounds and the event loop).

    ``gc_mode``: ``"paused"`` (default): the cyclic collector is off during a round, so its
    cost is left out; ``"counted"``: it runs during the round as in a server (its automatic
    collections, triggered by allocations, are timed with the requests), so a configuration
    that allocates more, or leaves cyclic garbage, pays for collecting it. Either way a
    full collection before each round starts every configuration from the same heap.
    """
    if gc_mode not in GC_MODES:
        raise ValueError(f"gc_mode: expected one of {', '.join(GC_MODES)}, got {gc_mode!r}")
    counted = gc_mode == "counted"
    for r in range(rounds):
        if progress:
            progress(f"round {r + 1}/{rounds}")
        for result, drive in prepared:
            gc.collect()
            if not counted:
                gc.disable()
            try:
                value = drive(requests_per_round)
                if asyncio.iscoroutine(value):
                    value = await value
                wall, cpu = value
                result.samples.append(wall)
                result.cpu_samples.append(cpu)
            finally:
                gc.enable()


def summarize(results: list[Result], bare: Result | None = None) -> None:
    """Median and interquartile range of each result's rounds; overhead and ratio to ``bare``
    (default: the first bare configuration that ran)."""
    if bare is None:
        bare = next((r for r in results if r.group == "bare" and not r.skipped), None)
    for result in results:
        if result.skipped or not result.samples:
            continue
        result.us_per_request = statistics.median(result.samples)
        result.iqr_us = _iqr(result.samples)
        if result.cpu_samples:
            result.cpu_us_per_request = statistics.median(result.cpu_samples)
            result.cpu_iqr_us = _iqr(result.cpu_samples)
    if bare is not None and bare.samples:
        for result in results:
            if result.samples:
                result.baseline = bare.name
                result.overhead_us = result.us_per_request - bare.us_per_request
                result.cpu_overhead_us = result.cpu_us_per_request - bare.cpu_us_per_request
                result.ratio = result.us_per_request / bare.us_per_request


def _iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


def format_table(results: list[Result]) -> str:
    """Markdown tables, one per baseline (the httpx suite has a sync and an async one);
    skipped configurations close the last table."""
    baselines = list(dict.fromkeys(r.baseline for r in results if not r.skipped)) or [""]
    tables: list[list[str]] = []
    for baseline in baselines:
        last = f"ratio to {baseline}" if baseline else "(plain calls: no baseline)"
        lines = [
            f"| configuration | µs/request | IQR µs | CPU µs/request | CPU IQR µs | overhead µs | {last} |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        lines.extend(
            f"| {r.name} | {r.us_per_request:.1f} | {r.iqr_us:.1f} | {r.cpu_us_per_request:.1f} "
            f"| {r.cpu_iqr_us:.1f} | "
            + (f"{r.overhead_us:+.1f} | {r.ratio:.2f} |" if baseline else "| |")
            for r in results
            if not r.skipped and r.baseline == baseline
        )
        tables.append(lines)
    tables[-1].extend(
        f"| {r.name} | skipped: {r.skipped} | | | | | |" for r in results if r.skipped and not r.missing
    )
    return "\n\n".join("\n".join(t) for t in tables)


def missing_note(modules: set[str]) -> str:
    """One line naming the peer packages that were not installed, and the extra that brings them."""
    if not modules:
        return ""
    names = ", ".join(sorted(modules))
    return (
        f"Not measured, not installed: {names}. "
        "The peers come with the bench extra: python -m pip install 'kitmw[bench]'"
    )


# -- targets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One target of a suite, read from the results of one run.

    ``kind``:

    * ``"ratio"``: overhead of ``subject`` / overhead of ``reference`` (both over their
      baseline) must be <= ``limit``;
    * ``"us"``: overhead of ``subject`` over ``reference`` (µs) must be <= ``limit``;
    * ``"share"``: kitmw's own share, (overhead of ``subject`` - ``reference``'s µs per
      call) / ``reference``'s µs per call, must be <= ``limit`` (``reference`` is a
      dependency floor, a direct call);
    * ``"direct"``: ``subject``'s µs per call / ``reference``'s µs per call (two direct
      calls, no baseline) must be <= ``limit``.
    """

    label: str
    subject: str
    reference: str
    limit: float
    kind: str = "ratio"


def _target_figures(
    target: Target, by_name: dict[str, Result], cpu: bool = False
) -> tuple[float, float, float] | None:
    subject, reference = by_name.get(target.subject), by_name.get(target.reference)
    if subject is None or reference is None or subject.skipped or reference.skipped:
        return None
    if not subject.samples or not reference.samples:
        return None
    if cpu:
        s_total, r_total = subject.cpu_us_per_request, reference.cpu_us_per_request
        s_over, r_over = subject.cpu_overhead_us, reference.cpu_overhead_us
    else:
        s_total, r_total = subject.us_per_request, reference.us_per_request
        s_over, r_over = subject.overhead_us, reference.overhead_us
    if target.kind == "ratio":
        return s_over, r_over, (s_over / r_over if r_over else float("inf"))
    if target.kind == "us":
        return s_total - r_total, r_total, s_total - r_total
    if target.kind == "share":
        return s_over, r_total, ((s_over - r_total) / r_total if r_total else float("inf"))
    if target.kind == "direct":
        return s_total, r_total, (s_total / r_total if r_total else float("inf"))
    raise ValueError(f"kind: {target.kind!r}")


def _shown(target: Target, value: float) -> str:
    if target.kind == "us":
        return f"{value:.1f} µs"
    if target.kind == "share":
        return f"{value * 100:.0f} %"
    return f"{value:.3f}"


def format_targets(targets: Iterable[Target], results: list[Result]) -> str:
    """A markdown table of ``targets`` against ``results``: the two (wall) figures in µs,
    the measured value from wall time and from the benchmark thread's CPU time, the
    limit, and whether the CPU figure meets it (it leaves out the time other processes
    held the core: on a shared machine the wall figure of one round can be twice
    another's); a target one of whose configurations did not run is left out."""
    by_name = {r.name: r for r in results}
    lines = [
        "| target | kitmw µs | reference µs | measured | measured (CPU) | limit | met (CPU) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for target in targets:
        figures = _target_figures(target, by_name)
        cpu = _target_figures(target, by_name, cpu=True)
        if figures is None or cpu is None:
            continue
        a, b, value = figures
        limit = target.limit
        shown_limit = f"{limit:g} µs" if target.kind == "us" else f"{limit * 100:.0f} %" if target.kind == "share" else f"{limit:g}"
        met = "yes" if cpu[2] <= limit else "no"
        lines.append(
            f"| {target.label} | {a:.1f} | {b:.1f} | {_shown(target, value)} | {_shown(target, cpu[2])} "
            f"| {shown_limit} | {met} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""
