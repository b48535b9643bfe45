"""``kitmw.logging.configure("json", servers=True)`` in the application, under real servers:
uvicorn's (and, under gunicorn, the worker's) own lines come out as kitmw's JSON lines,
once each, with the request context inside a request.

The ``--log-config`` file and ``logconfig_dict`` of docs/operations.md, which also cover
what a server logs before it imports the application, run in tests/test_docs.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port, wait_for_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

APP = """
import logging

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import kitmw
import kitmw.logging

kitmw.logging.configure("json", servers=True)


async def hello(request):
    logging.getLogger("app").info("hello from the app")
    return PlainTextResponse("hello")


async def boom(request):
    raise RuntimeError("kaput")


app = kitmw.stack(Starlette(routes=[Route("/", hello), Route("/boom", boom)]), access_log=True)
"""

#: A line of gunicorn's own format: ``[time] [pid] [LEVEL] message``.
GUNICORN_LINE = re.compile(r"^\[[^\]]+\] \[\d+\] \[[A-Z]+\] ")


def serve(cmd: list[str], cwd: Path, port: int) -> tuple[str, str]:
    """Run the server, send the requests, stop it; its (stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, timeout=30)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/", headers={"X-Request-ID": "servers-1"}, timeout=10).text == "hello"
        assert httpx.get(url + "/boom", headers={"X-Request-ID": "servers-2"}, timeout=10).status_code == 500
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=5)
    return out.decode(errors="replace"), err.decode(errors="replace")


def split(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(the JSON lines, parsed; the other lines)."""
    records, others = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            others.append(line)
    return records, others


def check_request_lines(records: list[dict[str, Any]]) -> None:
    (crash,) = [r for r in records if r["message"].startswith("Exception in ASGI application")]
    assert crash["logger"] == "uvicorn.error" and crash["level"] == "error"
    assert "RuntimeError: kaput" in crash["exc_info"]  # the traceback inside the JSON line
    # uvicorn logs it once kitmw's layer is done: the access record is what names the request
    assert "request_id" not in crash
    (hello,) = [r for r in records if r["logger"] == "app"]
    assert hello["request_id"] == "servers-1"
    assert [(r["request_id"], r["status"]) for r in records if r["logger"] == "kitmw.access"] == [
        ("servers-1", 200),
        ("servers-2", 500),
    ]
    assert not [r for r in records if r["logger"] == "uvicorn.access"]  # kitmw's access log replaces it
    messages = [(r["logger"], r["message"]) for r in records]
    assert len(messages) == len(set(messages)), messages  # nothing written twice


def test_uvicorn_writes_its_own_lines_as_kitmw_json(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(APP)
    port = free_port()
    out, err = serve(
        [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)], tmp_path, port
    )
    records, others = split(err)
    assert others == []  # every line uvicorn wrote is kitmw's: it imports the app first
    assert out == ""  # uvicorn's access lines (stdout) are off
    uvicorn_lines = [r["message"] for r in records if r["logger"] == "uvicorn.error"]
    for start in ("Started server process", "Application startup complete", "Uvicorn running on", "Shutting down"):
        assert any(m.startswith(start) for m in uvicorn_lines), (start, uvicorn_lines)
    check_request_lines(records)


def test_gunicorn_worker_writes_uvicorns_lines_as_kitmw_json_the_master_keeps_its_own(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(APP)
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "--worker-class", "uvicorn_worker.UvicornWorker", "--workers", "1"]
    cmd += ["--bind", f"127.0.0.1:{port}", "--chdir", str(tmp_path), "--no-control-socket", "main:app"]
    out, err = serve(cmd, tmp_path, port)
    assert out == ""
    records, others = split(err)
    # What the worker logs after importing the application: kitmw's JSON.
    worker = [r["message"] for r in records if r["logger"] == "uvicorn.error"]
    for start in ("Started server process", "Application startup complete"):
        assert any(m.startswith(start) for m in worker), (start, worker)
    check_request_lines(records)
    # The master (and the worker before the import) never imports the application: gunicorn's
    # own format, written once; the documented logconfig_dict covers those lines.
    assert any("Starting gunicorn" in line for line in others), others
    assert all(GUNICORN_LINE.match(line) for line in others), others
    assert not any("Application startup complete" in line or "Exception in ASGI" in line for line in others)
