"""`kitmw demo --serve`: a free port by default, one line naming the port when it is busy."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

pytestmark = pytest.mark.e2e

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@contextlib.contextmanager
def _listening(port: int = 0) -> Iterator[int | None]:
    """A socket listening on 127.0.0.1:``port`` for the duration; ``None`` if it cannot be bound."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            yield None  # someone else holds it: busy either way
            return
        sock.listen(1)
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def _read_until(proc: subprocess.Popen[str], pattern: str, timeout: float) -> re.Match[str]:
    """The first match of ``pattern`` in a line the process prints, within ``timeout`` seconds."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:  # readline() blocks: a thread, so the wait has a deadline
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put("")  # the process closed its output

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no {pattern!r} in the demo's output: {''.join(seen)[-2000:]}")


def test_serve_uses_a_free_port_by_default() -> None:
    # Hold 8000 (the old default) when we can: the demo must serve anyway, elsewhere.
    with _listening(8000):
        proc = subprocess.Popen(
            [sys.executable, "-m", "kitmw", "demo", "--serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        try:
            match = _read_until(proc, r"serving on (http://127\.0\.0\.1:(\d+))", timeout=60)
            assert int(match.group(2)) != 8000
            response = httpx.post(match.group(1) + "/sum", json={"a": 1, "b": 1}, timeout=10)
            assert response.status_code == 401  # the service behind kitmw answers
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:  # pragma: no cover - never leave it behind
                proc.kill()
                proc.wait(timeout=10)


@pytest.mark.parametrize("serve", [True, False], ids=["serve", "tour"])
def test_a_busy_port_is_one_line_naming_it(serve: bool) -> None:
    with _listening() as port:
        assert port is not None
        args = [sys.executable, "-m", "kitmw", "demo", "--port", str(port)] + (["--serve"] if serve else [])
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"kitmw demo: cannot serve on 127.0.0.1:{port}: Address already in use; "
        "choose another with --port, or leave --port out for a free port"
    ]
    assert "Traceback" not in done.stdout + done.stderr
