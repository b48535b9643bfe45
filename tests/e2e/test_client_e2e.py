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
