"""Overload: a real server offered twice the load it can serve, with and without a
concurrency limit (issue 16's "Overload" target).

The server is uvicorn (one worker, httptools) running a Starlette app whose ``/work``
holds one of ``--workers`` slots of a simulated backend (an ``asyncio.Semaphore``: a
database pool, a downstream service) for ``--service`` seconds. Its capacity is
``workers / service`` requests per second, whatever the CPU does, so the figures hold on
a busy shared machine; excess requests queue at the semaphore, as they queue at a pool
in a real service.

The load generator is open-loop (requests go out on a fixed schedule, whether or not
earlier ones were answered, as independent clients do) on loopback: one new connection
per request, a client timeout per request (``--client-timeout``, counted as a timeout,
not as an answer), at most ``--max-outstanding`` requests open at once (beyond, the
request is counted as not sent). Each run: ``--warm`` seconds at half the capacity,
then ``--overload`` seconds at ``--factor`` times the capacity, then the answers still
open are awaited (bounded by the client timeout). Per second of send time: the p99
latency of the *admitted* requests (not refused with 503; a timeout counts as the
client timeout), goodput (200s answered, per second of answer time), refusals, timeouts,
and the server's concurrency limit (scraped from ``/metrics``). The unloaded p99 of a
configuration is the p99 of its own warm-up (its first second left out); the overload
figures are over the last ``--steady`` seconds of overload.

Configurations: ``none`` (no limit), ``static`` (a fixed limit), ``gradient``
(``adaptive="gradient"``), ``aimd`` (``adaptive="aimd"`` with its ``timeout`` at 1.5 x
the service time). Each run takes about 50 s.

    python -m benchmarks.overload                  # every configuration, ~3.5 minutes
    python -m benchmarks.overload --configs none gradient --plot docs/overload.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from .servers import free_port, uvicorn_command, wait_until_serving

__all__ = ["CONFIGS", "app", "main", "run"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ENV = "KITMW_OVERLOAD"

#: name -> (concurrency option, or None for no limit; what it is).
CONFIGS: dict[str, tuple[Any, str]] = {
    "none": (None, "no limit"),
    "static": ({"limit": 20}, "static limit of 20 (twice the backend's slots)"),
    "gradient": ({"adaptive": "gradient"}, 'adaptive="gradient" (defaults: start at 20)'),
    "aimd": ({"adaptive": "aimd-tuned"}, 'adaptive="aimd", its timeout at 1.5 x the service time'),
    "gradient-1.5": ({"adaptive": {"rtt_tolerance": 1.5}}, "Gradient2 with Netflix's rtt_tolerance of 1.5"),
}
#: What ``python -m benchmarks.overload`` runs without ``--configs``.
DEFAULT_CONFIGS = ("none", "static", "gradient", "aimd")


# -- the server side (imported by uvicorn in its own process) ---------------------------------


def app() -> Any:
    """The ASGI app of one run (uvicorn ``--factory``); its settings come from the env."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    import kitmw
    from kitmw.concurrency import AIMDLimit, WindowedLimit

    settings = json.loads(os.environ[_ENV])
    service = float(settings["service"])
    pool = asyncio.Semaphore(int(settings["workers"]))

    async def work(request: Any) -> PlainTextResponse:
        async with pool:  # the backend: `workers` requests at a time, `service` seconds each
            await asyncio.sleep(service)
        return PlainTextResponse("done")

    api = Starlette(routes=[Route("/work", work)])
    option = settings["concurrency"]
    if option is not None and isinstance(option.get("adaptive"), dict):  # GradientLimit's parameters
        from kitmw.concurrency import GradientLimit

        option = {"adaptive": WindowedLimit(GradientLimit(**option["adaptive"]))}
    if option is not None and option.get("adaptive") == "aimd-tuned":
        option = {"adaptive": WindowedLimit(AIMDLimit(timeout=1.5 * service), min_window=0.1, max_window=1.0, min_samples=1)}
    from prometheus_client import CollectorRegistry

    return kitmw.stack(api, metrics={"registry": CollectorRegistry()}, concurrency=option)


# -- the load generator ------------------------------------------------------------------------


@dataclass
class Outcome:
    sent: float  # seconds since the load started (the schedule, not when it got out)
    latency: float  # seconds; the client timeout for a timeout
    status: int  # 0: timed out, -1: connection failed, -2: not sent (too many open)
    done: float  # seconds since the load started


@dataclass
class Run:
    name: str
    description: str
    outcomes: list[Outcome] = field(default_factory=list)
    limits: list[tuple[float, float, float]] = field(default_factory=list)  # (t, limit, in flight)
    duration: float = 0.0


_REQUEST = b"GET /work HTTP/1.1\r\nHost: overload\r\nConnection: close\r\n\r\n"
_STATUS = re.compile(rb"^HTTP/1\.[01] (\d{3})")


async def _get(port: int, payload: bytes = _REQUEST) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        data = await reader.read()  # Connection: close: the answer ends with the connection
    finally:
        writer.close()
    m = _STATUS.match(data)
    return (int(m.group(1)) if m else -1), data


async def _one(port: int, start: float, sent: float, timeout: float, out: list[Outcome]) -> None:
    loop = asyncio.get_running_loop()
    try:
        status, _ = await asyncio.wait_for(_get(port), timeout)
    except (asyncio.TimeoutError, TimeoutError):
        status = 0
    except OSError:
        status = -1
    now = loop.time() - start
    out.append(Outcome(sent, timeout if status == 0 else now - sent, status, now))


async def _scrape(port: int, start: float, run: Run, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    payload = b"GET /metrics HTTP/1.1\r\nHost: overload\r\nConnection: close\r\n\r\n"
    pattern = re.compile(rb"^kitmw_concurrency_(limit|in_flight)\{[^}]*\} (\S+)$", re.M)
    while not stop.is_set():
        try:
            _, data = await asyncio.wait_for(_get(port, payload), 2.0)
            values = {m.group(1): float(m.group(2)) for m in pattern.finditer(data)}
            if values:
                run.limits.append((loop.time() - start, values[b"limit"], values.get(b"in_flight", 0.0)))
        except (OSError, asyncio.TimeoutError, TimeoutError):
            pass
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except (asyncio.TimeoutError, TimeoutError):
            pass


async def _load(port: int, phases: list[tuple[float, float]], args: argparse.Namespace, run: Run) -> None:
    """Open-loop load: ``phases`` of (seconds, requests per second)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    stop = asyncio.Event()
    scraper = asyncio.ensure_future(_scrape(port, start, run, stop))
    tasks: set[asyncio.Task[None]] = set()
    at = 0.0
    for seconds, rate in phases:
        end = at + seconds
        step = 1.0 / rate
        while at < end:
            delay = start + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= args.max_outstanding:
                run.outcomes.append(Outcome(at, 0.0, -2, at))
            else:
                task = asyncio.ensure_future(_one(port, start, at, args.client_timeout, run.outcomes))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            at += step
    if tasks:
        await asyncio.wait(tasks, timeout=args.client_timeout + 5)
    stop.set()
    await scraper
    run.duration = at


# -- one run: a fresh server, the load, the figures --------------------------------------------


def _serve(concurrency: Any, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        _ENV: json.dumps({"concurrency": concurrency, "workers": args.workers, "service": args.service}),
    }
    command = uvicorn_command("benchmarks.overload:app", port, "--backlog", "4096")
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until_serving(port, server)
    except BaseException:
        server.kill()
        raise
    return server, port


def run(name: str, concurrency: Any, phases: list[tuple[float, float]], args: argparse.Namespace) -> Run:
    """One configuration on a fresh server."""
    result = Run(name, CONFIGS[name][1] if name in CONFIGS else name)
    server, port = _serve(concurrency, args)
    try:
        asyncio.run(_load(port, phases, args, result))
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    return result


# -- figures -----------------------------------------------------------------------------------


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def per_second(result: Run) -> list[dict[str, Any]]:
    """One row per second of the run, the wait for the last answers included (send time
    for latency, answer time for goodput)."""
    seconds = math.ceil(max([result.duration, *(o.done for o in result.outcomes)]))
    rows = []
    for t in range(seconds):
        sent = [o for o in result.outcomes if t <= o.sent < t + 1]
        admitted = [o.latency for o in sent if o.status in (0, 200)]
        limits = [lim for at, lim, _ in result.limits if t <= at < t + 1]
        rows.append(
            {
                "t": t,
                "offered": len(sent),
                "admitted_p99": _p99(admitted),
                "goodput": sum(1 for o in result.outcomes if o.status == 200 and t <= o.done < t + 1),
                "refused": sum(1 for o in sent if o.status == 503),
                "timeouts": sum(1 for o in sent if o.status == 0),
                "errors": sum(1 for o in sent if o.status not in (0, 200, 503)),
                "limit": limits[-1] if limits else None,
            }
        )
    return rows


def summary(result: Run, start: float, end: float) -> dict[str, Any]:
    """Figures over the send window [start, end) seconds."""
    sent = [o for o in result.outcomes if start <= o.sent < end]
    admitted = [o.latency for o in sent if o.status in (0, 200)]
    answered = [o for o in result.outcomes if o.status == 200 and start <= o.done < end]
    return {
        "offered_per_s": len(sent) / (end - start),
        "admitted_p99": _p99(admitted),
        "admitted_p50": sorted(admitted)[len(admitted) // 2] if admitted else None,
        "goodput_per_s": len(answered) / (end - start),
        "refused_share": sum(1 for o in sent if o.status == 503) / max(1, len(sent)),
        "timeouts": sum(1 for o in sent if o.status == 0),
        "errors": sum(1 for o in sent if o.status not in (0, 200, 503)),
    }


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = results["settings"]
    capacity = settings["capacity"]
    unloaded = sorted(r["unloaded"]["admitted_p99"] for r in results["runs"].values())
    unloaded = unloaded[len(unloaded) // 2]
    fig, (lat, good, lim) = plt.subplots(3, 1, figsize=(9, 9.5), sharex=True)
    for name, data in results["runs"].items():
        rows = data["per_second"]
        t = [r["t"] for r in rows]
        color = f"C{list(CONFIGS).index(name) if name in CONFIGS else 9}"
        lat.plot(t, [r["admitted_p99"] for r in rows], color=color, label=f"{name}: {data['description']}")
        good.plot(t, [r["goodput"] for r in rows], color=color)
        if any(r["limit"] is not None for r in rows):
            lim.plot(t, [r["limit"] for r in rows], color=color)
    warm = settings["warm"]
    for ax in (lat, good, lim):
        ax.axvspan(0, warm, color="0.92", zorder=0)
        ax.grid(True, alpha=0.3)
    lat.axhline(2 * unloaded, color="0.4", ls="--", lw=1)
    lat.text(0.2, 2 * unloaded * 1.08, "2 x unloaded p99", fontsize=8, color="0.3")
    lat.set_yscale("log")
    lat.set_ylabel("admitted p99 (s, log)")
    lat.legend(fontsize=8, loc="upper left")
    good.axhline(capacity, color="0.4", ls="--", lw=1)
    good.axhline(0.9 * capacity, color="0.4", ls=":", lw=1)
    good.text(0.2, capacity * 1.03, "capacity", fontsize=8, color="0.3")
    good.set_ylabel("goodput (200/s)")
    lim.set_ylabel("concurrency limit")
    lim.set_xlabel(
        f"seconds (shaded: {warm:g} s at half capacity, then {settings['factor']:g} x capacity offered)"
    )
    fig.suptitle(
        f"Overload: uvicorn, backend of {settings['workers']} slots x {settings['service'] * 1000:g} ms"
        f" (capacity {capacity:g}/s)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def format_table(results: dict[str, Any]) -> str:
    settings = results["settings"]
    capacity = settings["capacity"]
    lines = [
        f"capacity {capacity:g}/s ({settings['workers']} slots x {settings['service'] * 1000:g} ms);"
        f" {settings['warm']:g} s at half capacity (unloaded p99), then {settings['factor']:g} x capacity"
        f" for {settings['overload']:g} s; figures over its last {settings['steady']:g} s",
        "",
        f"{'configuration':<12} {'unloaded p99':>13} {'admitted p99':>13} {'ratio':>6} {'goodput/s':>10}"
        f" {'x capacity':>11} {'refused':>8} {'timeouts':>9}",
    ]
    for name, data in results["runs"].items():
        s, unloaded = data["steady"], data["unloaded"]["admitted_p99"]
        p99 = s["admitted_p99"]
        lines.append(
            f"{name:<12} {unloaded * 1000:>10.1f} ms {(p99 or math.nan) * 1000:>10.1f} ms"
            f" {(p99 or math.nan) / unloaded:>6.2f} {s['goodput_per_s']:>10.1f}"
            f" {s['goodput_per_s'] / capacity:>11.2f} {s['refused_share']:>8.0%} {s['timeouts']:>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(DEFAULT_CONFIGS))
    parser.add_argument("--workers", type=int, default=10, help="slots of the simulated backend")
    parser.add_argument("--service", type=float, default=0.1, help="seconds a request holds a slot")
    parser.add_argument("--factor", type=float, default=2.0, help="offered load / capacity")
    parser.add_argument(
        "--warm", type=float, default=12.0, help="seconds at half capacity first (the gradient learns its baseline)"
    )
    parser.add_argument("--overload", type=float, default=25.0, help="seconds of overload")
    parser.add_argument("--steady", type=float, default=15.0, help="last seconds of overload summarised")
    parser.add_argument("--client-timeout", type=float, default=10.0)
    parser.add_argument("--max-outstanding", type=int, default=3000)
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "overload.json"))
    parser.add_argument("--plot", default=None, help="draw the figure to this PNG (matplotlib)")
    args = parser.parse_args(argv)
    capacity = args.workers / args.service
    settings = {
        "workers": args.workers,
        "service": args.service,
        "capacity": capacity,
        "factor": args.factor,
        "warm": args.warm,
        "overload": args.overload,
        "steady": args.steady,
        "client_timeout": args.client_timeout,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    results: dict[str, Any] = {"settings": settings, "runs": {}}
    phases = [(args.warm, capacity / 2), (args.overload, capacity * args.factor)]
    end = args.warm + args.overload
    for name in args.configs:
        print(f"{name}: {CONFIGS[name][1]}", flush=True)
        result = run(name, CONFIGS[name][0], phases, args)
        results["runs"][name] = {
            "description": CONFIGS[name][1],
            "unloaded": summary(result, 1.0, args.warm),
            "steady": summary(result, end - args.steady, end),
            "overload": summary(result, args.warm, end),
            "per_second": per_second(result),
        }
    print(format_table(results))
    if args.json:
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
