"""Route templates from the frameworks' routers, never the raw path."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, FastAPI, WebSocket
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


# -- mounts, sub-apps and include_router (issue 12, item 13) ----------------------------------


def _counts(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """(route, status) -> count of http_server_requests_total, read with prometheus' parser."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == "http_server_requests_total":
                key = (sample.labels["route"], sample.labels["status"])
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts


async def _get_all(app, paths: list[str]) -> list[int]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return [(await c.get(path)).status_code for path in paths]


async def _item(request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def _raw_app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"raw"})


def _static_dir(tmp_path) -> str:
    (tmp_path / "app.css").write_text("body {}")
    return str(tmp_path)


async def test_kitmw_added_to_a_mounted_starlette_sub_app_labels_the_full_template() -> None:
    registry = CollectorRegistry()
    sub = Starlette(routes=[Route("/items/{item_id}", _item)])
    sub.add_middleware(kitmw.Metrics, registry=registry)
    app = Starlette(routes=[Mount("/api", app=sub)])
    assert await _get_all(app, ["/api/items/1", "/api/items/2", "/api/nope"]) == [200, 200, 404]
    assert _counts(registry) == {("/api/items/{item_id}", "200"): 2.0, ("<unmatched>", "404"): 1.0}


async def test_kitmw_added_to_a_fastapi_sub_app_under_a_templated_mount() -> None:
    registry = CollectorRegistry()
    sub = FastAPI()

    @sub.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    sub.add_middleware(kitmw.Metrics, registry=registry)
    app = FastAPI()
    app.mount("/tenants/{tenant}", sub)
    assert await _get_all(app, ["/tenants/a/items/1", "/tenants/b/items/2"]) == [200, 200]
    # the mount's parameter is templated too: the tenant names never reach a label
    assert _counts(registry) == {("/tenants/{tenant}/items/{item_id}", "200"): 2.0}


async def test_kitmw_in_a_sub_app_mounted_by_a_foreign_dispatcher_labels_relative_templates() -> None:
    # No Starlette router outside: the mount prefix is only a root_path, never a label.
    registry = CollectorRegistry()
    sub = Starlette(routes=[Route("/items/{item_id}", _item)])
    sub.add_middleware(kitmw.Metrics, registry=registry)

    async def dispatcher(scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/legacy/"):
            scope = dict(scope, root_path=scope.get("root_path", "") + "/legacy")
        await sub(scope, receive, send)

    assert await _get_all(dispatcher, ["/legacy/items/7"]) == [200]
    assert _counts(registry) == {("/items/{item_id}", "200"): 1.0}


async def test_route_is_predicted_before_dispatch_under_a_proxy_root_path() -> None:
    # A proxy prefix (uvicorn --root-path) keeps the label free of it, before dispatch too.
    seen: list[str | None] = []

    class Probe(kitmw.exchange.Policy):
        name = "probe"

        def enter(self, ex: kitmw.exchange.Exchange) -> None:
            seen.append(ex.route)

    app = kitmw.asgi.Middleware(Starlette(routes=[Route("/items/{item_id}", _item)]), Probe())
    transport = httpx.ASGITransport(app=app, root_path="/prefix")
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/prefix/items/1")).status_code == 200
    assert seen == ["/items/{item_id}"]


@pytest.mark.filterwarnings("ignore:starlette.middleware.wsgi is deprecated")
async def test_mounted_apps_without_routes_are_labelled_by_their_mount_path(tmp_path) -> None:
    from starlette.middleware.wsgi import WSGIMiddleware
    from starlette.staticfiles import StaticFiles

    def wsgi_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"wsgi"]

    app = Starlette(
        routes=[
            Route("/items/{item_id}", _item),
            Mount("/static", app=StaticFiles(directory=_static_dir(tmp_path))),
            Mount("/raw", app=_raw_app),
            Mount("/legacy", app=WSGIMiddleware(wsgi_app)),
        ]
    )
    registry = CollectorRegistry()
    paths = ["/static/app.css", "/raw/a/b", "/legacy/x?y=1", "/static/missing.css", "/nope"]
    assert await _get_all(kitmw.Metrics(app, registry=registry), paths) == [200, 200, 200, 404, 404]
    assert _counts(registry) == {
        ("/static", "200"): 1.0,
        ("/raw", "200"): 1.0,
        ("/legacy", "200"): 1.0,
        ("/static", "404"): 1.0,
        ("<unmatched>", "404"): 1.0,
    }


async def test_mount_labels_match_starlette_exporter(tmp_path) -> None:
    from starlette.staticfiles import StaticFiles
    from starlette_exporter.middleware import get_matching_route_path

    app = Starlette(
        routes=[
            Mount("/static", app=StaticFiles(directory=_static_dir(tmp_path))),
            Mount("/raw", app=_raw_app),
            Mount("/tenants/{tenant}", routes=[Route("/items/{item_id}", _item)]),
        ]
    )
    for path in ["/static/app.css", "/raw/x", "/tenants/a/items/1"]:
        scope = {"type": "http", "path": path, "root_path": "", "method": "GET", "headers": []}
        assert kitmw.routes.starlette_route(dict(scope), app) == get_matching_route_path(
            dict(scope), app.routes
        )


async def test_mount_appended_to_an_included_api_router_is_labelled(tmp_path) -> None:
    from starlette.staticfiles import StaticFiles

    api = FastAPI()
    router = APIRouter()

    @router.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    router.routes.append(Mount("/files", app=StaticFiles(directory=_static_dir(tmp_path))))
    router.routes.append(Mount("/sub", routes=[Route("/x/{y}", _item)]))
    api.include_router(router, prefix="/v1")
    registry = CollectorRegistry()
    statuses = await _get_all(
        kitmw.Metrics(api, registry=registry), ["/v1/items/1", "/v1/files/app.css", "/v1/sub/x/2"]
    )
    assert statuses == [200, 200, 200]
    assert _counts(registry) == {
        ("/v1/items/{item_id}", "200"): 1.0,
        ("/v1/files", "200"): 1.0,
        ("/v1/sub/x/{y}", "200"): 1.0,
    }


def test_websocket_route_under_include_router_is_named_before_and_after_dispatch() -> None:
    from starlette.testclient import TestClient

    class Seen(kitmw.exchange.Policy):
        name = "seen"
        handles_websocket = True

        def __init__(self) -> None:
            self.routes: list[tuple[str, str | None]] = []

        def enter(self, ex: kitmw.exchange.Exchange) -> None:
            self.routes.append(("enter", ex.route))  # before dispatch: predicted by the walk

        def exit(self, ex: kitmw.exchange.Exchange) -> None:
            ex._route = False  # resolve again, now from what the router recorded
            self.routes.append(("exit", ex.route))

    api = FastAPI()
    router = APIRouter()

    @router.websocket("/ws/{room}")
    async def ws(websocket: WebSocket, room: str) -> None:
        await websocket.accept()
        await websocket.send_text(room)
        await websocket.close()

    api.include_router(router, prefix="/chat")
    seen = Seen()
    with TestClient(kitmw.asgi.Middleware(api, seen)) as client, client.websocket_connect("/chat/ws/a") as w:
        assert w.receive_text() == "a"
    assert seen.routes == [("enter", "/chat/ws/{room}"), ("exit", "/chat/ws/{room}")]


async def test_a_scan_under_mounts_keeps_the_route_cache_and_the_series_bounded(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    from starlette.staticfiles import StaticFiles

    from kitmw import routes
    from kitmw._cache import LRUCache

    monkeypatch.setattr(routes, "_walks", LRUCache(64))
    app = Starlette(
        routes=[
            Mount("/static", app=StaticFiles(directory=_static_dir(tmp_path))),
            Mount("/api", routes=[Route("/items/{item_id}", _item)]),
        ]
    )
    registry = CollectorRegistry()
    rng = random.Random(12)
    paths = [f"/{rng.choice(['static', 'api', 'x'])}/{rng.getrandbits(64):x}" for _ in range(300)]
    await _get_all(kitmw.Metrics(app, registry=registry), paths)
    assert len(routes._walks) <= 64
    assert set(_counts(registry)) <= {("/static", "404"), ("<unmatched>", "404")}


def test_a_cached_walk_is_never_reused_for_another_router() -> None:
    # An entry left by a freed router whose id a new router got is recomputed, not served.
    import weakref

    from kitmw import routes

    app = Starlette(routes=[Route("/items/{item_id}", _item)])

    class Gone:
        pass

    dead = weakref.ref(Gone())  # a reference whose object is gone
    scope = {"type": "http", "path": "/items/1", "root_path": "", "method": "GET", "headers": []}
    routes._walks.put((id(app), "http", "GET", "", "/items/1"), (dead, "/stale/{x}"))
    assert routes.starlette_route(dict(scope), app) == "/items/{item_id}"
