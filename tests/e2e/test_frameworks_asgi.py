"""FastAPI, Starlette and Django ASGI apps as users write them, each wrapped both ways
(``kitmw.stack()`` around the app, and the per-concern classes the framework's way),
in-process and under a real uvicorn."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import kitmw

pytestmark = pytest.mark.e2e

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Boom(Exception):
    pass


def fastapi_app() -> Any:
    from fastapi import APIRouter, FastAPI

    app = FastAPI()
    users = APIRouter(prefix="/users")

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.get("/boom")
    async def boom() -> None:
        raise Boom("boom")

    @users.get("/{uid}")
    def user(uid: str) -> dict[str, str]:  # a sync handler, run in the thread pool
        logging.getLogger("app").info("user %s", uid)
        return {"uid": uid}

    app.include_router(users, prefix="/api")
    return app


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route, Router

    async def item(request: Any) -> JSONResponse:
        return JSONResponse({"item_id": request.path_params["item_id"]})

    async def user(request: Any) -> JSONResponse:
        logging.getLogger("app").info("user %s", request.path_params["uid"])
        return JSONResponse({"uid": request.path_params["uid"]})

    async def boom(request: Any) -> JSONResponse:
        raise Boom("boom")

    users = Router(routes=[Route("/users/{uid}", user)])
    return Starlette(routes=[Route("/items/{item_id}", item), Route("/boom", boom), Mount("/api", app=users)])


def django_app() -> Any:
    import django_project

    django_project.setup()
    from django.core.handlers.asgi import ASGIHandler

    return ASGIHandler()


FRAMEWORKS: dict[str, tuple[Callable[[], Any], dict[str, str]]] = {
    "fastapi": (fastapi_app, {"/items/7": "/items/{item_id}", "/api/users/ann": "/api/users/{uid}"}),
    "starlette": (starlette_app, {"/items/7": "/items/{item_id}", "/api/users/ann": "/api/users/{uid}"}),
    "django": (django_app, {"/items/7": "/items/<int:pk>", "/api/v1/items/8": "/api/v1/items/<int:pk>"}),
}


def wrap(framework: str, how: str, app: Any, options: dict[str, dict[str, Any]]) -> Any:
    if how == "stack":
        return kitmw.stack(app, **options)
    classes = [(kitmw.Tracing, "tracing"), (kitmw.AccessLog, "access_log"), (kitmw.Metrics, "metrics")]
    if framework in ("fastapi", "starlette"):
        for cls, name in reversed(classes):  # add_middleware: the last added is outermost
            app.add_middleware(cls, **options[name])
        return app
    for cls, name in reversed(classes):
        app = cls(app, **options[name])
    return app


@pytest.fixture
def access_records() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(kitmw.logging.ContextFilter())
    for name in ("kitmw.access", "app"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield records
    for name in ("kitmw.access", "app"):
        logging.getLogger(name).removeHandler(handler)


@pytest.fixture(params=["fastapi", "starlette", "django"])
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["stack", "classes"])
def how(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def built(
    framework: str, how: str, spans: Any
) -> Iterator[tuple[Any, CollectorRegistry, Any, dict[str, str]]]:
    provider, exporter = spans
    registry = CollectorRegistry()
    factory, templates = FRAMEWORKS[framework]
    options = {
        "tracing": {"tracer_provider": provider},
        "access_log": {},
        "metrics": {"registry": registry},
    }
    if framework == "django":
        import django_project

        with django_project.urls():
            yield wrap(framework, how, factory(), options), registry, exporter, templates
    else:
        yield wrap(framework, how, factory(), options), registry, exporter, templates


def counts(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    from prometheus_client import generate_latest

    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name == "http_server_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    found[(sample.labels["route"], sample.labels["status"])] = sample.value
    return found


def check_exchange(
    response: httpx.Response, route: str, registry: CollectorRegistry, exporter: Any, records: list[Any]
) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-0001"
    assert counts(registry).get((route, "200")) == 1.0, counts(registry)
    servers = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
    assert [s.name for s in servers] == [f"GET {route}"]
    assert format(servers[0].context.trace_id, "032x") == TRACEPARENT.split("-")[1]
    access = [r for r in records if r.name == "kitmw.access"]
    assert len(access) == 1
    assert access[0].route == route and access[0].request_id == "req-0001"
    assert access[0].trace_id == TRACEPARENT.split("-")[1]


@pytest.mark.anyio
async def test_in_process(built: Any, access_records: list[Any], anyio_backend: str) -> None:
    app, registry, exporter, templates = built
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path, route in templates.items():
            exporter.clear()
            access_records.clear()
            response = await client.get(
                path, headers={"x-request-id": "req-0001", "traceparent": TRACEPARENT}
            )
            check_exchange(response, route, registry, exporter, access_records)
            app_records = [r for r in access_records if r.name == "app"]
            assert all(r.request_id == "req-0001" for r in app_records)


def test_under_uvicorn(built: Any, access_records: list[Any], serve_asgi: Any) -> None:
    app, registry, exporter, templates = built
    with serve_asgi(app, lifespan="off") as server:
        for path, route in templates.items():
            exporter.clear()
            access_records.clear()
            response = httpx.get(
                server.url + path,
                headers={"x-request-id": "req-0001", "traceparent": TRACEPARENT},
                timeout=10,
            )
            # The server finishes the exchange (exits run) just after the last byte is sent.
            deadline = time.monotonic() + 5
            while not any(r.name == "kitmw.access" for r in access_records) and time.monotonic() < deadline:
                time.sleep(0.01)
            check_exchange(response, route, registry, exporter, access_records)


@pytest.mark.anyio
async def test_exception_is_counted_traced_and_propagates(
    framework: str, built: Any, access_records: list[Any], anyio_backend: str
) -> None:
    app, registry, exporter, _ = built
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        if framework == "django":
            response = await client.get("/boom")  # Django renders its own 500
            assert response.status_code == 500
        else:
            with pytest.raises(Boom):
                await client.get("/boom")
    assert counts(registry)[("/boom", "500")] == 1.0
    (span,) = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
    assert span.status.status_code.name == "ERROR"
    (record,) = [r for r in access_records if r.name == "kitmw.access"]
    assert record.levelno == logging.ERROR and record.status == 500


BAD_REQUESTS = [
    pytest.param({"x-request-id": "evil\r\nX-Forged: 1"}, "/items/7", id="crlf-request-id"),
    pytest.param({"x-request-id": "x" * 10_000}, "/items/7", id="10kB-request-id"),
    pytest.param(
        {"traceparent": "00-zz-garbage-01", "tracestate": "=,=,="}, "/items/7", id="garbage-traceparent"
    ),
    pytest.param({}, "/" + "a" * 10_000, id="10kB-path"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("headers", "path"), BAD_REQUESTS)
async def test_bad_input_gets_a_clean_answer(
    built: Any, headers: dict[str, str], path: str, anyio_backend: str
) -> None:
    app, registry, _, _ = built
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.get(path, headers=headers)
    assert response.status_code in (200, 404)
    request_id = response.headers["x-request-id"]
    assert request_id != headers.get("x-request-id") and len(request_id) <= 128
    assert "\r" not in request_id and "\n" not in request_id
    assert all(len(route) < 100 for route, _ in counts(registry))  # never the raw 10 kB path


@pytest.mark.anyio
async def test_non_utf8_header_bytes(built: Any, anyio_backend: str) -> None:
    app, _, _, templates = built
    path = next(iter(templates))
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"t"),
            (b"x-request-id", b"\xff\xfe\x00bad"),
            (b"user-agent", b"\xc3\x28\x80"),
            (b"traceparent", b"\xff" * 55),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }

    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.sleep(30)  # as a server does: nothing more until the client disconnects
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 200
    echoed = dict(sent[0]["headers"])[b"x-request-id"]
    assert echoed != b"\xff\xfe\x00bad" and echoed.isascii()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- an unhandled exception in FastAPI under stack() (issue 12, item 17) ------------------------


def test_fastapi_renders_its_own_500_under_stack_and_kitmw_adds_the_request_id(
    access_records: list[Any], serve_asgi: Any
) -> None:
    """FastAPI's ServerErrorMiddleware is inside kitmw: its text/plain 500 (or the app's own
    handler for Exception) is what the client gets; kitmw adds X-Request-ID, records the
    error and re-raises it to the server."""
    from fastapi.responses import JSONResponse

    registry = CollectorRegistry()
    plain = fastapi_app()
    handled = fastapi_app()

    @handled.exception_handler(Exception)
    async def on_error(request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "our own 500"}, status_code=500)

    for app, body, content_type in (
        (plain, "Internal Server Error", "text/plain; charset=utf-8"),
        (handled, '{"detail":"our own 500"}', "application/json"),
    ):
        access_records.clear()
        stacked = kitmw.stack(app, access_log=True, metrics={"registry": registry})
        with serve_asgi(stacked, lifespan="off") as server:
            r = httpx.get(server.url + "/boom", timeout=10)
            deadline = time.monotonic() + 5
            while not any(r.name == "kitmw.access" for r in access_records) and time.monotonic() < deadline:
                time.sleep(0.01)
        assert (r.status_code, r.text, r.headers["content-type"]) == (500, body, content_type)
        (record,) = [rec for rec in access_records if rec.name == "kitmw.access"]
        assert r.headers["x-request-id"] == record.request_id
        assert (record.status, record.error, record.levelno) == (500, "Boom", logging.ERROR)
    assert counts(registry)[("/boom", "500")] == 2.0
