"""The server breaker is per route template: one failing route does not take the service down.

Real apps as users write them (Starlette, FastAPI with include_router, Flask, Django), the
route template predicted before the app runs, the service-wide option, and the
Redis-shared variant.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

import kitmw
from kitmw.testing import FakeClock

pytestmark = pytest.mark.e2e


def policy_of(app: Any) -> Any:
    return app.policies[0]


# -- Starlette / FastAPI (ASGI) -----------------------------------------------------------------


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def boom(request: Any) -> PlainTextResponse:
        return PlainTextResponse("down", status_code=500)

    async def item(request: Any) -> PlainTextResponse:
        return PlainTextResponse(f"item {request.path_params['item_id']}")

    return Starlette(routes=[Route("/boom", boom), Route("/items/{item_id}", item)])


def fastapi_app() -> Any:
    from fastapi import APIRouter, FastAPI
    from fastapi.responses import PlainTextResponse

    router = APIRouter(prefix="/api")

    @router.get("/boom")
    async def boom() -> PlainTextResponse:
        return PlainTextResponse("down", status_code=500)

    @router.get("/items/{item_id}")
    async def item(item_id: int) -> PlainTextResponse:
        return PlainTextResponse(f"item {item_id}")

    app = FastAPI()
    app.include_router(router)
    return app


def asgi_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test"
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("build", "prefix"),
    [pytest.param(starlette_app, "", id="starlette"), pytest.param(fastapi_app, "/api", id="fastapi")],
)
async def test_six_500s_from_one_route_leave_the_others_serving(build: Any, prefix: str) -> None:
    app = kitmw.stack(build(), breaker={"registry": CollectorRegistry()})
    async with asgi_client(app) as c:
        for _ in range(6):
            await c.get(f"{prefix}/boom")
        item = await c.get(f"{prefix}/items/1")
        other = await c.get(f"{prefix}/items/2")
        boom = await c.get(f"{prefix}/boom")
    assert (item.status_code, item.text) == (200, "item 1")
    assert other.status_code == 200
    assert boom.status_code == 503
    assert boom.json() == {"error": "circuit_open"}
    breakers = policy_of(app).breakers
    assert breakers[f"{prefix}/boom"].state == "open"
    assert breakers[f"{prefix}/items/{{item_id}}"].state == "closed"  # the template, not /items/1
    assert breakers[f"{prefix}/boom"].name == f"server:{prefix}/boom"


@pytest.mark.anyio
async def test_add_middleware_is_per_route_too() -> None:
    app = fastapi_app()
    app.add_middleware(kitmw.CircuitBreaker, registry=CollectorRegistry())
    async with asgi_client(app) as c:
        for _ in range(5):
            await c.get("/api/boom")
        assert (await c.get("/api/items/1")).status_code == 200
        assert (await c.get("/api/boom")).status_code == 503


@pytest.mark.anyio
async def test_per_route_false_is_one_breaker_for_the_whole_service() -> None:
    app = kitmw.CircuitBreaker(starlette_app(), per_route=False, registry=CollectorRegistry())
    async with asgi_client(app) as c:
        for _ in range(5):
            await c.get("/boom")
        r = await c.get("/items/1")
    assert r.status_code == 503
    assert policy_of(app).breaker.name == "server"


# -- Flask and Django (WSGI; Django on ASGI too) -------------------------------------------------


def flask_app() -> Any:
    flask = pytest.importorskip("flask")
    app = flask.Flask(__name__)

    @app.get("/boom")
    def boom() -> Any:
        return "down", 500

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> Any:
        return f"item {item_id}"

    return app


def test_flask_one_failing_route_leaves_the_others_serving() -> None:
    app = kitmw.stack(flask_app(), breaker={"registry": CollectorRegistry()})
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as c:
        for _ in range(6):
            c.get("/boom")
        item = c.get("/items/1")
        boom = c.get("/boom")
    assert (item.status_code, item.text) == (200, "item 1")
    assert boom.status_code == 503
    assert set(policy_of(app).breakers) == {"<unmatched>", "/boom", "/items/<int:item_id>"}


def test_flask_per_route_false_trips_globally() -> None:
    app = kitmw.wsgi.CircuitBreaker(flask_app(), per_route=False, registry=CollectorRegistry())
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as c:
        for _ in range(5):
            c.get("/boom")
        assert c.get("/items/1").status_code == 503


def test_flask_wsgi_app_attribute_wrapped_is_per_route_too() -> None:
    """``app.wsgi_app = kitmw.wsgi.CircuitBreaker(app.wsgi_app)``, Flask's documented way."""
    app = flask_app()
    guarded = kitmw.wsgi.CircuitBreaker(app.wsgi_app, registry=CollectorRegistry())
    app.wsgi_app = guarded  # type: ignore[method-assign]
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as c:
        for _ in range(5):
            c.get("/boom")
        assert c.get("/items/1").status_code == 200
        assert c.get("/boom").status_code == 503


@pytest.fixture
def django_urls() -> Iterator[None]:
    django_project = pytest.importorskip("django_project")
    with django_project.urls():
        yield


def test_django_wsgi_one_failing_route_leaves_the_others_serving(django_urls: None) -> None:
    from django.core.wsgi import get_wsgi_application

    app = kitmw.wsgi.CircuitBreaker(get_wsgi_application(), registry=CollectorRegistry())
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as c:
        for _ in range(5):
            assert c.get("/boom").status_code == 500
        item = c.get("/items/1")
        boom = c.get("/boom")
    assert (item.status_code, item.text) == (200, "item 1")
    assert boom.status_code == 503
    assert {"/boom", "/items/<int:pk>"} <= set(policy_of(app).breakers)


@pytest.mark.anyio
async def test_django_asgi_one_failing_route_leaves_the_others_serving(django_urls: None) -> None:
    from django.core.asgi import get_asgi_application

    app = kitmw.CircuitBreaker(get_asgi_application(), registry=CollectorRegistry())
    async with asgi_client(app) as c:
        for _ in range(5):
            await c.get("/boom")
        item = await c.get("/items/1")
        boom = await c.get("/boom")
    assert item.status_code == 200
    assert boom.status_code == 503
    assert {"/boom", "/items/<int:pk>"} <= set(policy_of(app).breakers)


# -- unmatched requests and the bound ---------------------------------------------------------


@pytest.mark.anyio
async def test_a_scan_of_random_paths_shares_one_breaker() -> None:
    registry = CollectorRegistry()
    app = kitmw.CircuitBreaker(starlette_app(), registry=registry)
    async with asgi_client(app) as c:
        for i in range(300):
            assert (await c.get(f"/scan/{i}")).status_code == 404
    assert set(policy_of(app).breakers) == {"<unmatched>"}
    names = {
        s.labels["breaker"]
        for family in registry.collect()
        if family.name == "kitmw_breaker_state"
        for s in family.samples
    }
    assert names == {"server:<unmatched>"}


# -- shared through Redis ----------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.anyio
async def test_replicas_share_per_route_state_through_redis(redis_url: str) -> None:
    """Two replicas, same options, no name: the same per-route names, one state per route."""
    a = kitmw.CircuitBreaker(
        starlette_app(), storage=redis_url, refresh_interval=0, registry=CollectorRegistry()
    )
    b = kitmw.CircuitBreaker(
        starlette_app(), storage=redis_url, refresh_interval=0, registry=CollectorRegistry()
    )
    try:
        async with asgi_client(a) as ca, asgi_client(b) as cb:
            for _ in range(5):
                await ca.get("/boom")
            assert (await cb.get("/boom")).status_code == 503  # opened by the other replica
            assert (await cb.get("/items/1")).status_code == 200
            assert (await ca.get("/items/1")).status_code == 200
        assert policy_of(b).breakers["/boom"].name == policy_of(a).breakers["/boom"].name == "server:/boom"
        # Every per-route breaker of a replica uses one Redis client.
        clients = {id(br._shared.clients) for br in policy_of(a).breakers.values()}
        assert len(clients) == 1
    finally:
        await policy_of(a).aclose()
        await policy_of(b).aclose()


# -- a half-open trial whose client leaves -------------------------------------------------------


def test_an_abandoned_trial_is_not_counted_and_frees_its_slot(serve_asgi: Any) -> None:
    """The trial's client leaves mid-stream under uvicorn (499): still half-open, next trial admitted."""
    import threading

    import anyio
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    failing = [True]

    async def stream(request: Any) -> Any:
        if failing[0]:
            return PlainTextResponse("down", status_code=500)

        async def body() -> Any:
            yield b"first chunk\n"
            if request.query_params.get("hang"):
                await anyio.sleep(30)  # cancelled by Starlette when the client leaves
            yield b"last chunk\n"

        return StreamingResponse(body(), media_type="text/plain")

    clock = FakeClock()
    guarded = kitmw.CircuitBreaker(
        Starlette(routes=[Route("/stream", stream)]),
        fail_max=1,
        reset_timeout=10,
        clock=clock,
        registry=CollectorRegistry(),
    )
    finished = threading.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await guarded(scope, receive, send)
        finally:
            if scope["type"] == "http":
                finished.set()  # kitmw's exits (the breaker's verdict) have run

    with serve_asgi(app) as server, httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get("/stream").status_code == 500
        breaker = policy_of(guarded).breakers["/stream"]
        assert breaker.state == "open"
        failing[0] = False
        clock.now += 10
        finished.clear()
        with c.stream("GET", "/stream?hang=1") as r:  # the trial
            assert r.status_code == 200
            assert next(r.iter_raw()) == b"first chunk\n"
            assert breaker.state == "half-open"
        # leaving the block closes the connection mid-stream: the client is gone
        assert finished.wait(10)
        assert breaker.state == "half-open"  # neither closed (a success) nor re-opened
        r = c.get("/stream")  # the slot is free: this one is the next trial
        assert (r.status_code, r.text) == (200, "first chunk\nlast chunk\n")
        assert breaker.state == "closed"
