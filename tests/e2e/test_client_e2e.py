"""End to end: a kitmw-stacked service calling another through the kitmw httpx transports.

A FastAPI gateway (``kitmw.stack`` with access log and tracing) calls an upstream
through ``kitmw.httpx.AsyncTransport`` / ``kitmw.httpx2.AsyncTransport``: the incoming
request id and the gateway's trace reach the upstream, the client records land in the
logs with that request id, and the upstream's second instance takes half the calls.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

import kitmw

pytestmark = pytest.mark.e2e

TIMEOUT = 5.0


def upstream_app(name: str) -> FastAPI:
    app = FastAPI()

    @app.get("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        return {"name": name, "headers": dict(request.headers)}

    return app


def gateway_app(lib: str, provider: Any, instances: list[str]) -> Any:
    client_lib = importlib.import_module(lib)
    kit = importlib.import_module(f"kitmw.{lib}")
    app = FastAPI()
    client = client_lib.AsyncClient(
        transport=kit.AsyncTransport(
            access_log=True,
            tracing={"tracer_provider": provider},
            retry=True,
            instances=instances,
        ),
        base_url=instances[0],
        timeout=TIMEOUT,
    )

    @app.get("/call")
    async def call() -> Any:
        response = await client.get("/echo")
        return response.json()

    return kitmw.stack(app, access_log=True, tracing={"tracer_provider": provider})


@pytest.mark.parametrize("lib", ["httpx", "httpx2"])
def test_request_id_and_trace_flow_through_the_client(
    lib: str, serve_asgi: Any, spans: Any, caplog: pytest.LogCaptureFixture
) -> None:
    provider, exporter = spans
    with serve_asgi(upstream_app("a")) as a, serve_asgi(upstream_app("b")) as b:
        gateway = gateway_app(lib, provider, [a.url, b.url])
        with serve_asgi(gateway) as g, caplog.at_level(logging.INFO, logger="kitmw"):
            answers = [
                httpx.get(f"{g.url}/call", headers={"X-Request-ID": f"e2e-{i}"}, timeout=TIMEOUT).json()
                for i in range(4)
            ]
    assert sorted(a["name"] for a in answers) == ["a", "a", "b", "b"]
    assert [a["headers"]["x-request-id"] for a in answers] == [f"e2e-{i}" for i in range(4)]
    finished = exporter.get_finished_spans()
    server_traces = {format(s.context.trace_id, "032x") for s in finished if s.kind.name == "SERVER"}
    client_spans = [s for s in finished if s.kind.name == "CLIENT"]
    assert len(client_spans) == 4
    for answer in answers:
        trace_id = answer["headers"]["traceparent"].split("-")[1]
        assert trace_id in server_traces  # the upstream joined the gateway's trace
    client_records = [r for r in caplog.records if r.name == "kitmw.client"]
    assert sorted(r.request_id for r in client_records) == [f"e2e-{i}" for i in range(4)]  # type: ignore[attr-defined]


def test_sync_transport_inside_a_wsgi_app(serve_wsgi: Any, serve_asgi: Any) -> None:
    flask = pytest.importorskip("flask")
    import kitmw.httpx

    with serve_asgi(upstream_app("a")) as up:
        client = httpx.Client(transport=kitmw.httpx.Transport(retry=True), base_url=up.url, timeout=TIMEOUT)
        app = flask.Flask("gateway")

        @app.get("/call")
        def call() -> Any:
            return client.get("/echo").json()

        with serve_wsgi(kitmw.stack(app, access_log=True)) as g:
            answer = httpx.get(f"{g.url}/call", headers={"X-Request-ID": "wsgi-1"}, timeout=TIMEOUT).json()
        client.close()
    assert answer["headers"]["x-request-id"] == "wsgi-1"


# -- a dead upstream: the caller sees the transport error, not the breaker it opened -----------


def dead_url() -> str:
    """A loopback port nothing listens on: connections are refused."""
    from conftest import free_port

    return f"http://127.0.0.1:{free_port()}"


def client_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "kitmw.client"]


@pytest.mark.parametrize("lib", ["httpx", "httpx2"])
def test_sync_call_whose_own_retries_open_the_breaker_raises_the_connect_error(
    lib: str, caplog: pytest.LogCaptureFixture
) -> None:
    client_lib = importlib.import_module(lib)
    kit = importlib.import_module(f"kitmw.{lib}")
    url = dead_url()
    sleeps: list[float] = []
    transport = kit.Transport(access_log=True, retry={"sleep": sleeps.append}, breaker={"fail_max": 2})
    with client_lib.Client(transport=transport, timeout=TIMEOUT) as client, caplog.at_level(logging.INFO):
        with pytest.raises(client_lib.ConnectError) as info:
            client.get(url + "/orders/1")
        assert not isinstance(info.value, kit.BreakerOpen)
        assert len(sleeps) == 1  # attempt 2 opened the breaker: no third attempt, no wait for it
        if hasattr(info.value, "__notes__"):
            assert info.value.__notes__ == [f"kitmw: not retried: circuit breaker 'client:{url}' is open"]
        # The next call is refused by the open breaker, without touching the network.
        with pytest.raises(kit.BreakerOpen):
            client.get(url + "/orders/1")
    first, second = client_records(caplog)
    assert (first.error, first.attempts) == ("ConnectError", 2)  # type: ignore[attr-defined]
    assert "ConnectError" in first.getMessage()
    assert second.error == "BreakerOpen"  # type: ignore[attr-defined]


@pytest.mark.anyio
@pytest.mark.parametrize("lib", ["httpx", "httpx2"])
async def test_async_call_whose_own_retries_open_the_breaker_raises_the_connect_error(
    lib: str, caplog: pytest.LogCaptureFixture
) -> None:
    client_lib = importlib.import_module(lib)
    kit = importlib.import_module(f"kitmw.{lib}")
    url = dead_url()
    sleeps: list[float] = []
    transport = kit.AsyncTransport(access_log=True, retry={"sleep": sleeps.append}, breaker={"fail_max": 2})
    async with client_lib.AsyncClient(transport=transport, timeout=TIMEOUT) as client:
        with caplog.at_level(logging.INFO), pytest.raises(client_lib.ConnectError) as info:
            await client.get(url + "/orders/1")
    assert not isinstance(info.value, kit.BreakerOpen)
    assert len(sleeps) == 1
    (record,) = client_records(caplog)
    assert (record.error, record.attempts) == ("ConnectError", 2)  # type: ignore[attr-defined]


@pytest.mark.parametrize("lib", ["httpx", "httpx2"])
def test_breaker_opened_by_another_call_between_attempts_still_raises_this_calls_error(lib: str) -> None:
    """The breaker opens while this call waits for its retry: it ends with its own ConnectError."""
    from prometheus_client import CollectorRegistry

    from kitmw.breaker import Breaker

    client_lib = importlib.import_module(lib)
    kit = importlib.import_module(f"kitmw.{lib}")
    shared = Breaker(name=f"dead-{lib}", fail_max=3, registry=CollectorRegistry())

    def sleep(seconds: float) -> None:  # meanwhile, other calls fail and open it
        for _ in range(2):
            shared.release(shared.acquire(), failed=True)

    transport = kit.Transport(retry={"sleep": sleep}, breaker=shared)
    with (
        client_lib.Client(transport=transport, timeout=TIMEOUT) as client,
        pytest.raises(client_lib.ConnectError),
    ):
        client.get(dead_url() + "/")
    assert shared.state == "open"


@pytest.mark.parametrize("lib", ["httpx", "httpx2"])
def test_balanced_call_to_dead_instances_raises_the_last_connect_error(lib: str) -> None:
    client_lib = importlib.import_module(lib)
    kit = importlib.import_module(f"kitmw.{lib}")
    a, b = dead_url(), dead_url()
    sleeps: list[float] = []
    transport = kit.Transport(
        retry={"sleep": sleeps.append, "attempts": 5}, breaker={"fail_max": 1}, instances=[a, b]
    )
    with client_lib.Client(transport=transport, base_url=a, timeout=TIMEOUT) as client:
        with pytest.raises(client_lib.ConnectError) as info:
            client.get("/")
        assert len(sleeps) == 1  # one instance each, then every breaker is open
        if hasattr(info.value, "__notes__"):
            note = "kitmw: not retried: the circuit breaker of every instance is open"
            assert info.value.__notes__ == [note]
        with pytest.raises(kit.BreakerOpen):
            client.get("/")


@pytest.mark.parametrize("lib", ["httpx", "httpx2"])
def test_5xx_retries_that_open_the_breaker_return_the_upstreams_answer(lib: str) -> None:
    client_lib = importlib.import_module(lib)
    kit = importlib.import_module(f"kitmw.{lib}")
    calls: list[int] = []

    def handler(request: Any) -> Any:
        calls.append(1)
        return client_lib.Response(503, text="overloaded")

    sleeps: list[float] = []
    transport = kit.Transport(
        transport=client_lib.MockTransport(handler), retry={"sleep": sleeps.append}, breaker={"fail_max": 2}
    )
    with client_lib.Client(transport=transport) as client:
        r = client.get("http://svc.test/")
        assert (r.status_code, r.text) == (503, "overloaded")  # not BreakerOpen
        assert len(calls) == 2 and len(sleeps) == 1
        with pytest.raises(kit.BreakerOpen):
            client.get("http://svc.test/")
