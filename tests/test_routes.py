"""Route templates from the frameworks' routers, never the raw path."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import kitmw

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _routes_seen(app, paths: list[str]) -> str:
    registry = CollectorRegistry()
    wrapped = kitmw.Metrics(app, registry=registry)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="http://t") as c:
        for path in paths:
            await c.get(path)
    return generate_latest(registry).decode()


async def test_fastapi_nested_include_router_keeps_every_prefix() -> None:
    api = FastAPI()
    inner = APIRouter()

    @inner.get("/deep/{x}")
    async def deep(x: int) -> dict[str, int]:
        return {"x": x}

    middle = APIRouter()
    middle.include_router(inner, prefix="/in")
    api.include_router(middle, prefix="/api/v1")
    text = await _routes_seen(api, ["/api/v1/in/deep/3", "/api/v1/in/deep/4"])
    assert 'route="/api/v1/in/deep/{x}",status="200"} 2.0' in text


async def test_starlette_mount_with_a_parameter_in_its_prefix_is_templated() -> None:
    async def item(request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Mount("/tenants/{tenant}", routes=[Route("/items/{item_id}", item)])])
    text = await _routes_seen(app, ["/tenants/a/items/1", "/tenants/b/items/2"])
    assert 'route="/tenants/{tenant}/items/{item_id}",status="200"} 2.0' in text
    assert "/tenants/a" not in text


async def test_method_mismatch_still_names_the_route() -> None:
    async def item(request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/items/{item_id}", item, methods=["POST"])])
    text = await _routes_seen(app, ["/items/1"])
    assert 'route="/items/{item_id}",status="405"} 1.0' in text


async def test_litestar_route_template_and_keyword_app() -> None:
    from litestar import Litestar, get
    from litestar.middleware import DefineMiddleware

    @get("/items/{item_id:int}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    registry = CollectorRegistry()
    # Litestar builds middlewares with app= as a keyword.
    app = Litestar([item], middleware=[DefineMiddleware(kitmw.Metrics, registry=registry)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/items/3")).status_code == 200
    assert 'route="/items/{item_id}",status="200"} 1.0' in generate_latest(registry).decode()


async def test_quart_url_rule() -> None:
    from quart import Quart

    quart = Quart(__name__)

    @quart.route("/items/<int:item_id>")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    registry = CollectorRegistry()
    quart.asgi_app = kitmw.stack(quart.asgi_app, metrics={"registry": registry})  # type: ignore[method-assign]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=quart), base_url="http://t") as c:
        assert (await c.get("/items/3")).status_code == 200
        assert (await c.get("/nope")).status_code == 404
    text = generate_latest(registry).decode()
    assert 'route="/items/<int:item_id>",status="200"} 1.0' in text
    assert 'route="<unmatched>",status="404"} 1.0' in text
