"""The benchmark harness runs every configuration of every suite and each one answers.

Tiny rounds only; no test looks at a time beyond "one was recorded". A configuration that
answered anything but ``200 ok`` is reported as skipped (warm-up) or raises (rounds), so
"not skipped, one sample per round" means it ran and answered correctly.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kitmw.bench import SUITES, Result, format_table, format_targets, run_suite, suite_targets, summarize
from kitmw.bench.harness import Target
from kitmw.cli import main as cli_main

ROUNDS = 2


def _check_all_ran(results: list[Result]) -> None:
    skipped = {r.name: r.skipped for r in results if r.skipped}
    assert skipped == {}
    for r in results:
        assert len(r.samples) == len(r.cpu_samples) == ROUNDS, r.name
        assert r.us_per_request > 0, r.name
        # plain calls (dependency floors, JWT verification) have no bare baseline
        assert r.baseline or r.group in ("floor", "jwt"), r.name


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_configuration_of_the_suite_runs_and_answers(suite: str) -> None:
    results = run_suite(suite, rounds=ROUNDS, requests_per_round=5)
    assert len(results) >= 10
    _check_all_ran(results)


def test_wsgi_suite_measures_each_kitmw_class_the_stack_and_the_otel_peer() -> None:
    names = {r.name for r in run_suite("wsgi", rounds=ROUNDS, requests_per_round=5)}
    assert {
        "bare Flask app",
        "kitmw.wsgi.AccessLog",
        "kitmw.wsgi.Metrics",
        "kitmw.wsgi.Tracing",
        "kitmw.wsgi.RateLimit (memory)",
        "kitmw.wsgi.Auth (HS256 JWT)",
        "kitmw.wsgi.CircuitBreaker",
        "kitmw stack() of 6",
        "OpenTelemetryMiddleware (WSGI)",
    } <= names


def test_wsgi_suite_runs_every_flask_peer_and_compares_each_with_kitmw() -> None:
    from kitmw.bench.wsgi import PAIRS, comparisons, format_comparisons

    results = run_suite("wsgi", rounds=ROUNDS, requests_per_round=5)
    _check_all_ran(results)
    rows = comparisons(results)
    assert [(r["kitmw"], r["peer"]) for r in rows] == list(PAIRS)  # every peer ran (none skipped)
    assert "peer stack (FlaskInstrumentor, flask-jwt-extended)" in format_comparisons(rows)


def test_gc_counted_mode_leaves_the_collector_running_during_the_round() -> None:
    import gc

    from kitmw.bench.harness import measure

    seen: list[bool] = []

    def prepare() -> Any:
        def drive(n: int) -> tuple[float, float]:
            seen.append(gc.isenabled())
            return 1.0, 1.0

        return drive

    enabled = gc.isenabled()
    measure([("bare", "bare", prepare)], rounds=2, requests_per_round=1)
    measure([("bare", "bare", prepare)], rounds=2, requests_per_round=1, gc_mode="counted")
    assert seen == [False, False, True, True]
    assert gc.isenabled() == enabled
    with pytest.raises(ValueError, match="gc_mode"):
        measure([("bare", "bare", prepare)], rounds=1, requests_per_round=1, gc_mode="off")


def test_httpx_suite_compares_sync_and_async_with_their_own_bare_transport() -> None:
    results = run_suite("httpx", rounds=ROUNDS, requests_per_round=5, only=lambda n: "all six" in n)
    baselines = {r.name: r.baseline for r in results}
    assert baselines == {
        "bare MockTransport (sync)": "bare MockTransport (sync)",
        "kitmw Transport, all six": "bare MockTransport (sync)",
        "bare MockTransport (async)": "bare MockTransport (async)",
        "kitmw AsyncTransport, all six": "bare MockTransport (async)",
    }


@pytest.mark.parametrize("suite", ["asgi", "httpx", "endpoint"])
def test_every_target_names_configurations_of_its_suite_and_is_read_from_a_run(suite: str) -> None:
    import importlib

    module = importlib.import_module(f"kitmw.bench.{suite}")
    names = {name for name, *_ in module.configurations()}
    assert module.TARGETS
    for target in module.TARGETS:
        assert {target.subject, target.reference} <= names, target.label
    wanted = {n for t in module.TARGETS for n in (t.subject, t.reference)}
    results = run_suite(suite, rounds=1, requests_per_round=3, only=lambda n: n in wanted)
    table = suite_targets(suite, results)
    for target in module.TARGETS:
        assert f"| {target.label} |" in table


def test_format_targets_reads_each_kind_of_target() -> None:
    bare = Result("bare", "bare", samples=[10.0], cpu_samples=[9.0])
    kitmw = Result("kitmw", "kitmw", samples=[13.0], cpu_samples=[11.0])
    peer = Result("peer", "peer", samples=[20.0], cpu_samples=[19.0])
    summarize([bare, kitmw, peer], bare)
    floor = Result("floor", "floor", samples=[2.0], cpu_samples=[2.0])
    summarize([floor])
    table = format_targets(
        [
            Target("ratio", "kitmw", "peer", 0.2),
            Target("us", "kitmw", "bare", 3.0, "us"),
            Target("share", "kitmw", "floor", 0.5, "share"),
            Target("direct", "floor", "kitmw", 1.1, "direct"),
            Target("absent", "kitmw", "nowhere", 1.0),
        ],
        [bare, kitmw, peer, floor],
    )
    assert "| ratio | 3.0 | 10.0 | 0.300 | 0.200 | 0.2 | yes |" in table
    assert "| us | 3.0 | 10.0 | 3.0 µs | 2.0 µs | 3 µs | yes |" in table
    assert "| share | 3.0 | 2.0 | 50 % | 0 % | 50 % | yes |" in table
    assert "| direct | 2.0 | 13.0 | 0.154 | 0.182 | 1.1 | yes |" in table
    assert "absent" not in table


def test_the_access_log_peer_writes_one_json_line_with_the_correlation_id() -> None:
    import asyncio
    import logging

    from kitmw.bench.asgi import _mw_access_log, _mw_correlation_id, _with_middleware, drive, request_scope
    from kitmw.bench.harness import Env

    env = Env()
    app = _with_middleware(_mw_correlation_id(env), _mw_access_log())
    lines: list[str] = []
    handler = logging.getLogger("kitmw.bench.peer.access").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.stream = type("Keep", (io.StringIO,), {"write": lambda self, s: lines.append(s) or len(s)})()
    asyncio.run(drive(app, request_scope(None), 2))
    records = [json.loads(line) for line in "".join(lines).splitlines()]
    assert len(records) == 2
    assert records[0]["message"] == "request" and records[0]["status"] == 200
    assert records[0]["request_id"] and records[0]["request_id"] != records[1]["request_id"]


def test_summarize_reports_median_and_interquartile_range() -> None:
    bare = Result("bare", "bare", samples=[10.0, 10.0, 10.0])
    other = Result("other", "kitmw", samples=[11.0, 12.0, 13.0, 14.0, 15.0])
    summarize([bare, other], bare)
    assert (other.us_per_request, other.iqr_us, other.overhead_us, other.ratio) == (13.0, 2.0, 3.0, 1.3)


def test_format_table_lists_a_skipped_configuration_with_its_reason() -> None:
    bare = Result("bare", "bare", samples=[10.0])
    summarize([bare], bare)
    table = format_table([bare, Result("peer", "peer", skipped="ImportError: no peer")])
    assert "| peer | skipped: ImportError: no peer |" in table


def test_format_table_leaves_out_configurations_whose_peer_is_not_installed() -> None:
    bare = Result("bare", "bare", samples=[10.0])
    summarize([bare], bare)
    peer = Result("peer", "peer")
    peer.skip(ModuleNotFoundError("No module named 'slowapi'", name="slowapi.middleware"))
    assert (peer.missing, peer.skipped) == ("slowapi", "slowapi is not installed")
    assert "peer" not in format_table([bare, peer])


#: A bench run on an install without the bench extra (its peers blocked from importing).
WITHOUT_BENCH_EXTRA = """
import sys
PEERS = {"asgi_correlation_id", "starlette_exporter", "prometheus_fastapi_instrumentator", "slowapi",
         "httpx_retries", "matplotlib", "pythonjsonlogger", "opentelemetry.instrumentation.asgi",
         "opentelemetry.instrumentation.httpx"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name in PEERS or name.split(".")[0] in PEERS:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from kitmw.cli import main
sys.exit(main(["bench", "--suite", "all", "--rounds", "1", "--requests", "2"]))
"""


def test_cli_bench_without_the_bench_extra_says_once_which_extra_to_install() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_BENCH_EXTRA], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "ModuleNotFoundError" not in out and "skipped" not in out, out
    assert out.count("kitmw[bench]") == 1, out
    assert "slowapi" in out and "asgi_correlation_id" in out
    assert "| kitmw stack() of 6 |" in out  # kitmw's own configurations still ran


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_one_updating_line_on_a_terminal() -> None:
    from kitmw.cli import Progress

    screen = _Terminal()
    progress = Progress(screen)
    for n in range(1, 4):
        progress(f"round {n}/3")
    progress.done()
    written = screen.getvalue()
    assert "\n" not in written and written.count("\r") == 5  # three updates, then cleared
    assert "[####################] round 3/3" in written
    assert written.endswith("\r") and written.split("\r")[-2].strip() == ""  # cleared at the end


def test_progress_is_plain_lines_when_not_a_terminal_and_nothing_when_quiet() -> None:
    from kitmw.cli import Progress

    log = io.StringIO()
    progress = Progress(log)
    for n in range(1, 4):
        progress(f"round {n}/3")
    progress.done()
    assert log.getvalue() == "  round 1/3\n  round 2/3\n  round 3/3\n"
    quiet = io.StringIO()
    Progress(quiet, quiet=True)("round 1/3")
    assert quiet.getvalue() == ""


def _help(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "kitmw", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_help_is_plain_text_and_every_bench_option_is_explained() -> None:
    top = _help("--help")
    assert "``" not in top and "demo" in top and "bench" in top
    bench = _help("bench", "--help")
    for option in ("--rounds", "--requests", "--only", "--suite", "--json", "--quiet"):
        after = bench.split(option, 1)[1].split("\n  -", 1)[0]
        assert len(after.split()) > 2, f"{option} has no help text: {after!r}"


def test_cli_version() -> None:
    import kitmw

    assert _help("--version").strip() == f"kitmw {kitmw.__version__}"


def test_cli_bench_suite_writes_the_figures_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "wsgi.json"
    code = cli_main(
        [
            "bench",
            "--suite",
            "wsgi",
            "--rounds",
            "1",
            "--requests",
            "3",
            "--only",
            "stack()",
            "--quiet",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == [
        "bare Flask app",
        "kitmw stack() of 6",
        "kitmw stack() of 6, tracing off",
    ]
    assert all(r["skipped"] is None and "iqr_us" in r for r in rows)
    assert "ratio to bare Flask app" in capsys.readouterr().out


def test_plot_draws_one_panel_per_suite_from_the_json(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from benchmarks.plot import plot

    data = {
        "machine": {"cpus": 2, "python": "3.11"},
        "commit": "0" * 40,
        "suites": {
            suite: [
                r.as_dict()
                for r in run_suite(suite, rounds=1, requests_per_round=2, only=lambda n: "stack" in n)
            ]
            for suite in ("asgi", "wsgi")
        },
        "throughput": [{"name": "bare Starlette app", "rps": 1000.0, "iqr_rps": 10.0}],
    }
    source = tmp_path / "latest.json"
    source.write_text(json.dumps(data))
    png = Path(plot(str(source), str(tmp_path / "performance.png")))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_throughput_serves_each_server_kind_and_counts_only_2xx() -> None:
    from benchmarks import throughput

    names = ["bare Starlette app", "Flask + kitmw stack() of 6 (gunicorn gthread)"]
    rows = throughput.run(rounds=1, duration=1, connections=4, only=names)
    assert [r["name"] for r in rows] == names
    assert all("skipped" not in r and r["rps"] > 0 for r in rows), rows


def test_report_prints_the_machine_a_table_per_suite_and_throughput() -> None:
    from benchmarks.report import report

    bare = Result("bare Flask app", "bare", samples=[100.0, 110.0])
    stack = Result("kitmw stack() of 6", "kitmw", samples=[300.0, 330.0])
    summarize([bare, stack], bare)
    data = {
        "machine": {"cpus": 2, "cpu_model": "AMD EPYC", "python": "3.11.7"},
        "commit": "abc",
        "settings": {"rounds": 2},
        "suites": {"wsgi": [bare.as_dict(), stack.as_dict()]},
        "throughput": [
            {
                "name": "bare Starlette app",
                "server": "uvicorn",
                "rps": 5000.0,
                "iqr_rps": 100.0,
                "ratio_to_bare": 1.0,
                "ratio_to_peer_stack": None,
                "server_cpu": 0.98,
                "wrk_cpu": 0.2,
            }
        ],
    }
    text = report(data)
    assert "2 CPUs (AMD EPYC)" in text
    assert "| kitmw stack() of 6 | 315.0 | 15.0 | 0.0 | 0.0 | +210.0 | 3.00 |" in text
    assert "| bare Starlette app | uvicorn | 5000 | 100 | 1.00 |  | 98 % |  | 20 % |  |" in text


@pytest.mark.e2e
def test_overload_runs_a_real_server_with_and_without_a_limit(tmp_path: Path) -> None:
    """A tiny overload run: no limit and a static one, each on its own uvicorn (no figures judged:
    only that the runs happened, the limit refused the excess and the plot was drawn)."""
    pytest.importorskip("matplotlib")
    from benchmarks import overload

    out, png = tmp_path / "overload.json", tmp_path / "overload.png"
    argv = ["--configs", "none", "static", "--workers", "2", "--service", "0.05", "--warm", "1.5"]
    argv += ["--overload", "2", "--steady", "1", "--client-timeout", "2", "--json", str(out), "--plot", str(png)]
    assert overload.main(argv) == 0
    data = json.loads(out.read_text())
    assert set(data["runs"]) == {"none", "static"}
    assert data["runs"]["none"]["overload"]["refused_share"] == 0
    assert data["runs"]["static"]["overload"]["refused_share"] > 0  # a limit of 20 before a 2-slot backend
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timeout_concurrency_cost_measures_every_configuration() -> None:
    from benchmarks.timeout_concurrency import measure

    found = measure(rounds=2, requests=5)
    assert "kitmw Timeout (seconds=5)" in found and "bare Starlette app" in found
    assert all(median > 0 for median, _ in found.values())
