"""examples/django_native, a Django project that adopted kitmw in its settings only
(``MIDDLEWARE`` and ``KITMW``; its wsgi.py and asgi.py are Django's own), served as it is
deployed: gunicorn (gthread workers, WSGI) and uvicorn (ASGI), each a real process on
loopback. Every concern is checked from the outside: headers, answers, /metrics, the
JSON log lines the server prints and the spans it finished (the server runs under
tests/e2e/otel_boot.py, which installs a global OpenTelemetry SDK tracer provider the
way ``opentelemetry-instrument`` does and writes each finished span to a file).

Each server runs the example twice: as it is, and with its settings changed in
``MIDDLEWARE`` and ``KITMW`` only (without the optional ``"kitmw.django"`` app and
``LOGGING``; the server's logging configuration prints the lines, as in a deployment).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port, wait_for_port
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BOOT = Path(__file__).resolve().parent / "otel_boot.py"
EXAMPLE = ROOT / "examples" / "django_native"
OPS = {"X-API-Key": "e2e-ops-key"}
READER = {"X-API-Key": "e2e-reader-key"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"

SERVERS = {
    "gunicorn": ["gunicorn", "--worker-class", "gthread", "--threads", "8", "--workers", "1",
                 "--no-control-socket", "--bind", "127.0.0.1:{port}", "mysite.wsgi:application"],
    "uvicorn": ["uvicorn", "--host", "127.0.0.1", "--port", "{port}", "--lifespan", "off",
                "mysite.asgi:application"],
}  # fmt: skip
#: The project's settings before kitmw but MIDDLEWARE and KITMW: the example's settings
#: without its optional kitmw lines ("kitmw.django" in INSTALLED_APPS, LOGGING). The log
#: lines then come from the server's own logging configuration (docs/operations.md: The
#: server's own lines as JSON), as a deployment sets it outside the project.
MINIMAL_SETTINGS = """\
from mysite.settings import *  # noqa: F403

INSTALLED_APPS.remove("kitmw.django")  # noqa: F405
del LOGGING  # noqa: F821
"""
UVICORN_LOG_CONFIG = ROOT / "docs" / "snippets" / "uvicorn-logging.json"
GUNICORN_CONF = f"""\
import json

logconfig_dict = json.loads(open({str(UVICORN_LOG_CONFIG)!r}).read())
logconfig_dict["loggers"] = {{
    "gunicorn.error": {{"level": "INFO", "handlers": ["json"], "propagate": False}},
    "gunicorn.access": {{"level": "INFO", "handlers": [], "propagate": False}},
}}
"""
#: The server's arguments of the minimal variant: its logging configuration.
MINIMAL_ARGS = {
    "gunicorn": ["--config", "{tmp}/gunicorn.conf.py"],
    "uvicorn": ["--log-config", str(UVICORN_LOG_CONFIG)],
}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(EXAMPLE), env.get("PYTHONPATH", "")])
    env["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
    env.update(
        CATALOG_OPS_KEY=OPS["X-API-Key"],
        CATALOG_READER_KEY=READER["X-API-Key"],
        KITMW_TIMEOUT="1",
        KITMW_RATELIMIT="60/minute",
        KITMW_CONCURRENCY="2",
        KITMW_BREAKER_FAILURES="2",
        PYTHONWARNINGS="ignore",
    )
    env.update(extra)
    return env


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    spans_file: Path
    #: The server's stdout and stderr: a file, not a pipe, which fills up (64 KiB) before
    #: the test reads it and then blocks the server in the middle of a request.
    log_file: Path
    output: str = ""
    lines: list[dict[str, Any]] = field(default_factory=list)

    def spans(self) -> list[dict[str, Any]]:
        text = self.spans_file.read_text() if self.spans_file.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)
        self.output = self.log_file.read_text()
        for line in self.output.splitlines():
            if line.startswith("{"):
                self.lines.append(json.loads(line))


@pytest.fixture(params=[*SERVERS, *(f"{name}-minimal" for name in SERVERS)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """The example under one server: as it is (``gunicorn``, ``uvicorn``), or with its
    settings changed in MIDDLEWARE and KITMW only (``-minimal``)."""
    name, _, variant = request.param.partition("-")
    port = free_port()
    spans = tmp_path / "spans.jsonl"
    args = [arg.format(port=port) for arg in SERVERS[name]]
    env = _env(SPANS_FILE=str(spans))
    if variant == "minimal":
        (tmp_path / "minimal_settings.py").write_text(MINIMAL_SETTINGS)
        (tmp_path / "gunicorn.conf.py").write_text(GUNICORN_CONF)
        args[-1:-1] = [arg.format(tmp=tmp_path) for arg in MINIMAL_ARGS[name]]
        env["DJANGO_SETTINGS_MODULE"] = "minimal_settings"
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    argv = [sys.executable, str(BOOT), *args]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=EXAMPLE, env=env, stdout=out, stderr=subprocess.STDOUT)
    running = Server(f"http://127.0.0.1:{port}", proc, spans, log)
    try:
        wait_for_port(port, timeout=30)
        yield running
    finally:
        if proc.poll() is None:
            running.stop()
        print(running.output[-6000:])  # shown when the test fails


def _sample(exposition: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_every_concern_from_settings_only(server: Server, request: pytest.FixtureRequest) -> None:
    asgi = "uvicorn" in request.node.name
    c = httpx.Client(base_url=server.url, timeout=15)

    # access log + request id; tracing: the incoming trace continues
    item = c.get(
        "/items/7",
        headers={"X-Request-ID": "e2e-item", "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
    )
    assert item.json() == {"id": 7} and item.headers["x-request-id"] == "e2e-item"
    generated = c.get("/items/8").headers["x-request-id"]  # none sent: kitmw makes one
    assert len(generated) >= 16
    # rate limit headers on an allowed answer
    assert item.headers["ratelimit-policy"] == '"default";q=60;w=60'

    # auth: the catalogue is public, orders need a key granting orders:read
    anonymous = c.get("/orders")
    assert anonymous.status_code == 401 and anonymous.json() == {"error": "unauthorized"}
    assert anonymous.headers["www-authenticate"].startswith("APIKey")
    assert c.get("/orders", headers=READER).json() == {"error": "forbidden"}
    assert c.get("/orders", headers=OPS).json() == {"orders": [], "for": "ops"}

    # breaker: the failing route opens after 2 failures; the others keep serving
    assert [c.get("/inventory").status_code for _ in range(2)] == [500, 500]
    refused = c.get("/inventory")
    assert refused.json() == {"error": "circuit_open"} and refused.headers["retry-after"]
    assert c.get("/items/1").status_code == 200

    # timeout: ASGI cuts the view at its 1 s deadline; WSGI cannot, and counts it
    slow = c.get("/report", params={"seconds": "1.5"})
    assert slow.status_code == (504 if asgi else 200)

    # concurrency: two reports hold both slots, the next request gets a 503
    with ThreadPoolExecutor(2) as pool:
        holders = [pool.submit(c.get, "/report", params={"seconds": "0.8"}) for _ in range(2)]
        _until(lambda: _sample(c.get("/metrics").text, "kitmw_concurrency_in_flight") == 2)
        busy = httpx.get(server.url + "/items/2", timeout=15)
        assert [h.result().status_code for h in holders] == [200, 200]
    assert busy.status_code == 503 and busy.json() == {"error": "concurrency_limited"}

    # streaming passes through
    assert c.get("/events").text == "".join(f"data: {i}\n\n" for i in range(3))

    # rate limit: 60 a minute, then 429
    statuses = [c.get("/items/3").status_code for _ in range(70)]
    assert 429 in statuses
    limited = c.get("/items/3")
    assert limited.status_code == 429 and limited.json() == {"error": "rate_limited"}
    assert int(limited.headers["retry-after"]) > 0
    assert limited.headers["ratelimit-policy"] == '"default";q=60;w=60'
    assert limited.headers["ratelimit"].startswith('"default";r=0;t=')

    # metrics: labelled by the URL pattern; the concerns' own instruments
    metrics = c.get("/metrics").text
    assert _sample(metrics, "http_server_requests_total", route="/items/<int:pk>", status="200") >= 2
    assert _sample(metrics, "http_server_requests_total", route="/orders", status="401") == 1
    assert _sample(metrics, "http_server_requests_total", route="/inventory", status="503") == 1
    assert any(
        s.labels.get("state") == "open" and s.labels["breaker"].endswith(":/inventory") and s.value == 1
        for f in text_string_to_metric_families(metrics)
        for s in f.samples
        if s.name == "kitmw_breaker_state"
    )
    assert _sample(metrics, "kitmw_concurrency_rejections_total") == 1
    assert _sample(metrics, "kitmw_ratelimit_decisions_total", decision="limited") >= 1
    assert _sample(metrics, "kitmw_timeouts_total") == 1
    assert _sample(metrics, "http_server_requests_total", route="/metrics") == 0  # excluded
    openmetrics = c.get("/metrics", headers={"Accept": "application/openmetrics-text"}).text
    # exemplars: each duration bucket keeps the trace of its latest request (a span of the server's)
    exemplars = {
        s.exemplar.labels["trace_id"]
        for f in openmetrics_families(openmetrics)
        for s in f.samples
        if s.exemplar is not None and s.labels.get("route") == "/items/<int:pk>"
    }
    assert exemplars
    c.close()

    server.stop()
    access = [line for line in server.lines if line.get("logger") == "kitmw.access"]
    mine = [line for line in server.lines if line.get("request_id") == "e2e-item"]
    # the view's own record and the access record, with the request id and the trace id
    assert sorted(line["logger"] for line in mine) == ["catalog.views", "kitmw.access"], server.output[-3000:]
    assert all(line.get("trace_id") == TRACE_ID for line in mine)
    principals = {line.get("principal") for line in access if line["path"] == "/orders"}
    assert principals == {None, "reader", "ops"}
    failing = [line for line in access if line["path"] == "/inventory" and line["status"] == 500]
    assert [line["error"] for line in failing] == ["ConnectionError", "ConnectionError"]
    generated_line = [line for line in access if line.get("request_id") == generated]
    assert [line["path"] for line in generated_line] == ["/items/8"]

    # tracing: one server span per request, named by the URL pattern Django matched, the
    # traced request's a child of the caller's span
    spans = server.spans()
    assert exemplars <= {s["trace_id"] for s in spans if s["route"] == "/items/<int:pk>"}
    (traced,) = [s for s in spans if s["trace_id"] == TRACE_ID]
    assert traced["name"] == "GET /items/<int:pk>" and traced["kind"] == "SERVER"
    assert traced["parent_id"] == "00f067aa0ba902b7" and traced["route"] == "/items/<int:pk>"
    assert traced["status"] == 200
    broken = [s for s in spans if s["name"] == "GET /inventory" and s["status"] == 500]
    assert [(s["status_code"], s["exceptions"]) for s in broken] == [("ERROR", ["ConnectionError"])] * 2
    assert {s["name"] for s in spans} >= {"GET /orders", "GET /report", "GET /events"}
    assert all(s["kind"] == "SERVER" for s in spans)
    assert not [s for s in spans if s["route"] == "/metrics"]  # excluded


def test_the_entry_points_are_djangos_own() -> None:
    """Adopting kitmw changed the settings only: wsgi.py and asgi.py do not mention it."""
    for name in ("wsgi.py", "asgi.py"):
        assert "kitmw" not in (EXAMPLE / "mysite" / name).read_text()


def test_manage_py_check_validates_kitmw() -> None:
    ok = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=EXAMPLE, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=EXAMPLE,
        env=_env(KITMW_RATELIMIT="100/minnute"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert "(kitmw.E001) settings.KITMW: ratelimit: limit:" in bad.stderr, bad.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('KITMW["ratelimt"] = KITMW.pop("ratelimit")', "unknown concern(s): ratelimt; did you mean 'ratelimit'?"),
        ('KITMW["breaker"] = {"fail_mx": 3}', "breaker: unknown option 'fail_mx'; did you mean 'fail_max'?"),
        ('KITMW["protocol"] = "asgi"', "protocol: not a Django option"),
        ('MIDDLEWARE.remove("kitmw.django.Middleware")', None),
    ],
)
def test_manage_py_check_names_the_misconfigured_option(tmp_path: Path, change: str, message: str | None) -> None:
    """The example's settings with one mistake (a settings module importing them), checked
    by Django's own command: the error names the concern and the option."""
    (tmp_path / "broken_settings.py").write_text(f"from mysite.settings import *  # noqa: F403\n{change}\n")
    env = _env(DJANGO_SETTINGS_MODULE="broken_settings")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=60
    )
    if message is None:  # KITMW set, the middleware left out: a warning, the check passes
        assert done.returncode == 0 and "(kitmw.W001)" in done.stderr, done.stderr
        return
    assert done.returncode == 1, done.stderr
    assert f"(kitmw.E001) settings.KITMW: {message}" in done.stderr, done.stderr
