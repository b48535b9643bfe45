"""Starting the real servers the throughput and overload benchmarks measure."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

__all__ = ["free_port", "uvicorn_command", "wait_until_serving"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uvicorn_command(factory: str, port: int, *extra: str) -> list[str]:
    """uvicorn serving the app ``factory`` (``module:function``) makes, on 127.0.0.1, with
    httptools and asyncio, no access log."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        factory,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--http",
        "httptools",
        "--loop",
        "asyncio",
        "--no-access-log",
        "--log-level",
        "warning",
        *extra,
    ]


def wait_until_serving(port: int, server: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Return once ``server`` accepts connections on ``port``; raise if it exits first
    (with the end of its stderr) or is not serving after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            err = server.stderr.read().decode(errors="replace") if server.stderr else ""
            raise RuntimeError(f"the server exited with {server.returncode}:\n{err[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"the server on port {port} did not start")
