"""kitmw tracing on a real FastAPI app with a *global* tracer provider: one server span.

FastAPI (0.165+) traces natively as soon as a global tracer provider is set. kitmw must
still give exactly one SERVER span per request, whether it wraps the app from outside
(``kitmw.Tracing(app)``, ``kitmw.stack(app, tracing=True)``) or is added inside with
``app.add_middleware``. The global provider can be set once per process and would leak
into every other test, so the scenarios run in a subprocess: this file executed as a
script sets the provider, runs every scenario (in process through ``httpx.ASGITransport``
and over real uvicorn servers) and prints one JSON document; the tests below assert on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]


# -- the subprocess side ------------------------------------------------------------------------


def _scenarios() -> dict[str, Any]:
    import anyio
    import httpx
    from fastapi import FastAPI
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    import kitmw
    import kitmw.fastapi
    from kitmw.exchange import Exchange, Policy
    from kitmw.tracing import TracingPolicy

    sys.path.insert(0, str(HERE.parents[1]))
    from conftest import UvicornServer

    class IdRecorder(Policy):
        name = "ids"

        def __init__(self) -> None:
            self.trace_ids: list[str | None] = []

        def enter(self, ex: Exchange) -> None:
            self.trace_ids.append(ex.trace_id)

    def make_api() -> FastAPI:
        api = FastAPI()

        @api.get("/items/{item_id}")
        async def read_item(item_id: int) -> dict[str, int]:
            return {"item_id": item_id}

        @api.get("/fail")
        async def fail() -> None:
            raise RuntimeError("boom")

        @api.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        return api

    # Built before the global provider exists: kitmw must look it up at the first request.
    early = kitmw.Tracing(make_api())

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    def describe(spans: Any) -> dict[str, Any]:
        server = [s for s in spans if s.kind is SpanKind.SERVER]
        return {
            "server_spans": len(server),
            "names": [s.name for s in server],
            "scopes": [s.instrumentation_scope.name for s in server],
            "routes": [s.attributes.get("http.route") for s in server],
            "status": [s.status.status_code.name for s in server],
            "events": [[e.name for e in s.events] for s in server],
            "trace_ids": [format(s.context.trace_id, "032x") for s in server],
            "client_address": [s.attributes.get("client.address") for s in server],
            "all_spans": sorted(s.name for s in spans),
            "spans": sorted(f"{s.instrumentation_scope.name} {s.kind.name} {s.name}" for s in spans),
            "one_trace": len({s.context.trace_id for s in spans}) <= 1,
            "parents_known": all(
                s.parent is None or s.parent.span_id in {o.context.span_id for o in spans} for s in spans
            ),
        }

    async def in_process(app: Any, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        exporter.clear()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.get(path, headers=headers)
        result = describe(exporter.get_finished_spans())
        result["status_code"] = r.status_code
        return result

    def over_uvicorn(app: Any, n: int) -> list[dict[str, Any]]:
        """``n`` requests with distinct traceparents; spans grouped per trace after shutdown."""
        exporter.clear()
        sent = []
        with UvicornServer(app, lifespan="off") as server:
            for i in range(n):
                trace_id = f"{i + 1:032x}"
                tp = f"00-{trace_id}-{'b7ad6b7169203331'}-01"
                r = httpx.get(server.url + f"/items/{i}", headers={"traceparent": tp}, timeout=10)
                sent.append((trace_id, r.status_code))
        spans = exporter.get_finished_spans()  # the server has stopped: every span has ended
        return [
            {"status_code": code, **describe([s for s in spans if format(s.context.trace_id, "032x") == tid])}
            for tid, code in sent
        ]

    out: dict[str, Any] = {}

    async def run_in_process() -> None:
        out["baseline"] = await in_process(make_api(), "/items/1")
        out["outside"] = await in_process(kitmw.Tracing(make_api()), "/items/2")
        out["outside_early"] = await in_process(early, "/items/3")
        out["stack"] = await in_process(kitmw.stack(make_api(), tracing=True), "/items/4")
        out["outside_fail"] = await in_process(kitmw.Tracing(make_api()), "/fail")
        out["outside_excluded"] = await in_process(
            kitmw.Tracing(make_api(), exclude_paths=["/health"]), "/health"
        )
        api = make_api()
        recorder = IdRecorder()
        api.add_middleware(kitmw.asgi.Middleware, TracingPolicy(), recorder)
        out["inside"] = await in_process(api, "/items/5")
        out["inside"]["seen_trace_ids"] = recorder.trace_ids
        api = make_api()
        api.add_middleware(kitmw.Tracing)
        out["inside_fail"] = await in_process(api, "/fail")
        both = make_api()
        both.add_middleware(kitmw.Tracing)
        out["both"] = await in_process(kitmw.Tracing(both), "/items/6")
        # the fused layer added inside: kitmw.Stack, kitmw.fastapi.instrument
        api = make_api()
        api.add_middleware(kitmw.Stack, tracing=True, access_log=True)
        out["stack_class"] = await in_process(api, "/items/12")
        api = kitmw.fastapi.instrument(make_api(), tracing=True, access_log=True, breaker=True)
        out["instrument"] = await in_process(api, "/items/13")
        out["instrument_fail"] = await in_process(api, "/fail")

        # kitmw with contrib's ASGI middleware, either side of it
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        out["contrib_outside"] = await in_process(OpenTelemetryMiddleware(kitmw.Tracing(make_api())), "/items/7")
        out["contrib_inside"] = await in_process(kitmw.stack(OpenTelemetryMiddleware(make_api()), tracing=True), "/items/8")
        # OTEL_PYTHON_EXCLUDED_URLS, read when the middleware is built
        os.environ["OTEL_PYTHON_EXCLUDED_URLS"] = "/health"
        try:
            excluded_outside = kitmw.stack(make_api(), tracing=True)
            api = make_api()
            api.add_middleware(kitmw.Tracing)
            api.middleware_stack = api.build_middleware_stack()  # kitmw.Tracing built now
            excluded_inside = api
        finally:
            del os.environ["OTEL_PYTHON_EXCLUDED_URLS"]
        out["env_excluded_outside"] = await in_process(excluded_outside, "/health")
        out["env_excluded_inside"] = await in_process(excluded_inside, "/health")
        # FastAPIInstrumentor (opentelemetry-instrumentation-fastapi), when installed
        try:
            from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        except ImportError:
            out["fastapi_instrumentor"] = False
            return
        out["fastapi_instrumentor"] = True
        api = make_api()
        FastAPIInstrumentor.instrument_app(api)
        out["fi_outside"] = await in_process(kitmw.stack(api, tracing=True), "/items/9")
        api = make_api()
        FastAPIInstrumentor.instrument_app(api)
        recorder = IdRecorder()
        api.add_middleware(kitmw.asgi.Middleware, TracingPolicy(), recorder)
        out["fi_inside"] = await in_process(api, "/items/10")
        out["fi_inside"]["seen_trace_ids"] = recorder.trace_ids
        api = make_api()
        FastAPIInstrumentor.instrument_app(api, exclude_spans=["receive", "send"])
        api.add_middleware(kitmw.Tracing)
        out["fi_inside_quiet"] = await in_process(api, "/items/11")

    anyio.run(run_in_process)

    out["uvicorn_outside"] = over_uvicorn(kitmw.stack(make_api(), tracing=True), 3)
    api = make_api()
    api.add_middleware(kitmw.Tracing)
    out["uvicorn_inside"] = over_uvicorn(api, 3)
    out["uvicorn_instrument"] = over_uvicorn(kitmw.fastapi.instrument(make_api(), tracing=True, metrics=False), 3)
    return out


# -- the pytest side ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("OTEL_SEMCONV_STABILITY_OPT_IN", None)
    proc = subprocess.run(
        [sys.executable, str(HERE)], capture_output=True, text=True, timeout=120, env=env, cwd=str(ROOT)
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_fastapi_traces_natively_with_a_global_provider(results: dict[str, Any]) -> None:
    # The baseline that makes the other counts meaningful: without kitmw, FastAPI's span.
    base = results["baseline"]
    assert base["server_spans"] == 1
    assert base["scopes"] == ["fastapi"]


def test_outside_wrap_gives_one_kitmw_server_span(results: dict[str, Any]) -> None:
    r = results["outside"]
    assert r["status_code"] == 200
    assert r["server_spans"] == 1
    assert r["scopes"] == ["kitmw"]
    assert r["names"] == ["GET /items/{item_id}"]
    assert r["routes"] == ["/items/{item_id}"]


def test_outside_wrap_built_before_the_provider_uses_it(results: dict[str, Any]) -> None:
    r = results["outside_early"]
    assert r["server_spans"] == 1
    assert r["scopes"] == ["kitmw"]


def test_stack_gives_one_server_span(results: dict[str, Any]) -> None:
    r = results["stack"]
    assert r["server_spans"] == 1
    assert r["scopes"] == ["kitmw"]


def test_outside_wrap_app_exception(results: dict[str, Any]) -> None:
    r = results["outside_fail"]
    assert r["status_code"] == 500
    assert r["server_spans"] == 1
    assert r["status"] == ["ERROR"]
    assert "exception" in r["events"][0]


def test_outside_excluded_path_gets_no_span_at_all(results: dict[str, Any]) -> None:
    r = results["outside_excluded"]
    assert r["status_code"] == 200
    assert r["server_spans"] == 0  # FastAPI's native layer steps aside too


def test_add_middleware_adopts_fastapi_span(results: dict[str, Any]) -> None:
    r = results["inside"]
    assert r["status_code"] == 200
    assert r["server_spans"] == 1
    assert r["scopes"] == ["fastapi"]
    assert r["names"] == ["GET /items/{item_id}"]
    assert r["seen_trace_ids"] == r["trace_ids"]  # ex.trace_id is FastAPI's span's
    assert r["client_address"] == ["127.0.0.1"]  # added by kitmw


def test_add_middleware_app_exception_recorded_on_fastapi_span(results: dict[str, Any]) -> None:
    r = results["inside_fail"]
    assert r["status_code"] == 500
    assert r["server_spans"] == 1
    assert r["status"] == ["ERROR"]
    assert r["events"][0].count("exception") == 1


def test_outside_and_inside_together_one_span(results: dict[str, Any]) -> None:
    r = results["both"]
    assert r["server_spans"] == 1
    assert r["scopes"] == ["kitmw"]


def test_contrib_middleware_outside_kitmw_is_the_only_server_span(results: dict[str, Any]) -> None:
    # kitmw adopts contrib's span and makes FastAPI's native layer step aside (it was a
    # second SERVER span before).
    r = results["contrib_outside"]
    assert r["server_spans"] == 1
    assert r["scopes"] == ["opentelemetry.instrumentation.asgi"]
    assert r["names"] == ["GET /items/{item_id}"]
    assert r["one_trace"] and r["parents_known"]


def test_kitmw_outside_contrib_middleware_owns_the_server_span(results: dict[str, Any]) -> None:
    # contrib's middleware under a current span records its request as an INTERNAL child,
    # plus its own per-message spans; kitmw creates none of those.
    r = results["contrib_inside"]
    assert r["server_spans"] == 1 and r["scopes"] == ["kitmw"]
    assert "opentelemetry.instrumentation.asgi INTERNAL GET /items/8" in r["spans"]
    assert [s for s in r["spans"] if s.startswith("kitmw ")] == ["kitmw SERVER GET /items/{item_id}"]
    assert r["one_trace"] and r["parents_known"]


def test_otel_excluded_urls_outside_fastapi_no_span_at_all(results: dict[str, Any]) -> None:
    r = results["env_excluded_outside"]
    assert r["status_code"] == 200
    assert r["spans"] == []  # neither kitmw's nor FastAPI's native one


def test_otel_excluded_urls_inside_fastapi_leave_fastapis_span(results: dict[str, Any]) -> None:
    # Added inside FastAPI, kitmw cannot take FastAPI's own span away (as for exclude_paths).
    r = results["env_excluded_inside"]
    assert r["status_code"] == 200
    assert r["server_spans"] == 1 and r["scopes"] == ["fastapi"]


def _needs_instrumentor(results: dict[str, Any]) -> None:
    if not results["fastapi_instrumentor"]:
        pytest.skip("opentelemetry-instrumentation-fastapi is not installed")


def test_kitmw_outside_fastapi_instrumentor_one_server_span(results: dict[str, Any]) -> None:
    _needs_instrumentor(results)
    r = results["fi_outside"]
    assert r["status_code"] == 200
    assert r["server_spans"] == 1 and r["scopes"] == ["kitmw"]
    assert r["names"] == ["GET /items/{item_id}"]
    # contrib's request span is an INTERNAL child in the same trace, its send spans under it
    assert "opentelemetry.instrumentation.fastapi INTERNAL GET /items/{item_id}" in r["spans"]
    assert [s for s in r["spans"] if s.startswith("kitmw ")] == ["kitmw SERVER GET /items/{item_id}"]
    assert r["one_trace"] and r["parents_known"]


def test_kitmw_inside_fastapi_instrumentor_adopts_its_span(results: dict[str, Any]) -> None:
    _needs_instrumentor(results)
    r = results["fi_inside"]
    assert r["server_spans"] == 1
    assert r["scopes"] == ["opentelemetry.instrumentation.fastapi"]
    assert r["seen_trace_ids"] == r["trace_ids"]
    assert [s for s in r["spans"] if s.startswith("kitmw ")] == []


def test_kitmw_inside_quiet_fastapi_instrumentor_one_span_in_all(results: dict[str, Any]) -> None:
    _needs_instrumentor(results)
    r = results["fi_inside_quiet"]
    assert r["spans"] == ["opentelemetry.instrumentation.fastapi SERVER GET /items/{item_id}"]


@pytest.mark.parametrize("scenario", ["stack_class", "instrument"])
def test_fused_layer_inside_adopts_fastapis_span(results: dict[str, Any], scenario: str) -> None:
    # kitmw.Stack / kitmw.fastapi.instrument add the layer inside FastAPI: its span is kept.
    r = results[scenario]
    assert r["status_code"] == 200
    assert r["server_spans"] == 1
    assert r["scopes"] == ["fastapi"]
    assert r["names"] == ["GET /items/{item_id}"]
    assert r["client_address"] == ["127.0.0.1"]  # added by kitmw


def test_instrument_app_exception_recorded_on_fastapi_span(results: dict[str, Any]) -> None:
    r = results["instrument_fail"]
    assert r["status_code"] == 500
    assert r["server_spans"] == 1
    assert r["status"] == ["ERROR"]
    assert r["events"][0].count("exception") == 1


@pytest.mark.parametrize("placement", ["uvicorn_outside", "uvicorn_inside", "uvicorn_instrument"])
def test_real_server_one_span_per_request_in_the_callers_trace(
    results: dict[str, Any], placement: str
) -> None:
    for i, r in enumerate(results[placement]):
        assert r["status_code"] == 200
        assert r["server_spans"] == 1
        assert r["trace_ids"] == [f"{i + 1:032x}"]
        assert r["names"] == ["GET /items/{item_id}"]


if __name__ == "__main__":
    print(json.dumps(_scenarios()))
