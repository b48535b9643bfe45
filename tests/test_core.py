"""The core: policies driven by the ASGI driver through one wrapped send."""

from __future__ import annotations

import httpx
import pytest

import kitmw
from kitmw.errors import ConfigError, Rejection
from kitmw.exchange import UNMATCHED, Exchange, Policy
from kitmw.stack import build_policies


class Recorder(Policy):
    name = "recorder"

    def __init__(self, label: str, log: list[str], *, reject: Rejection | None = None) -> None:
        self.label = label
        self.log = log
        self.reject = reject

    def enter(self, ex: Exchange) -> Rejection | None:
        self.log.append(f"enter {self.label}")
        ex.add_response_header(f"x-{self.label}", "1")
        return self.reject

    def exit(self, ex: Exchange) -> None:
        err = type(ex.error).__name__ if ex.error else None
        self.log.append(f"exit {self.label} {ex.status} {ex.bytes_out} {err}")


async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello", "more_body": True})
    await send({"type": "http.response.body", "body": b" world"})


async def boom(scope, receive, send):
    raise RuntimeError("boom")


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test"
    )


@pytest.mark.anyio
async def test_policies_enter_in_order_and_exit_in_reverse() -> None:
    log: list[str] = []
    app = kitmw.asgi.Middleware(hello, Recorder("a", log), Recorder("b", log))
    async with client(app) as c:
        r = await c.get("/x")
    assert r.text == "hello world"
    assert r.headers["x-a"] == "1" and r.headers["x-b"] == "1"
    assert log == ["enter a", "enter b", "exit b 200 11 None", "exit a 200 11 None"]


@pytest.mark.anyio
async def test_rejection_stops_inner_policies_and_app() -> None:
    log: list[str] = []
    called = []

    async def app(scope, receive, send):
        called.append(1)
        await hello(scope, receive, send)

    deny = Rejection(429, headers=(("Retry-After", "3"),))
    mw = kitmw.asgi.Middleware(app, Recorder("a", log), Recorder("b", log, reject=deny), Recorder("c", log))
    async with client(mw) as c:
        r = await c.get("/")
    assert r.status_code == 429
    assert r.json() == {"error": "rate_limited"}
    assert r.headers["retry-after"] == "3"
    assert r.headers["x-a"] == "1"  # headers added by outer policies ride on the answer
    assert not called
    assert log[-2:] == ["exit b 429 24 None", "exit a 429 24 None"]  # the JSON body
    assert "enter c" not in log


@pytest.mark.anyio
async def test_app_exception_is_recorded_answered_and_reraised() -> None:
    log: list[str] = []
    mw = kitmw.asgi.Middleware(boom, Recorder("a", log))
    transport = httpx.ASGITransport(app=mw, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        with pytest.raises(RuntimeError, match="boom"):
            await c.get("/")
    assert log[-1] == "exit a 500 0 RuntimeError"


@pytest.mark.anyio
async def test_app_exception_answer_carries_added_headers() -> None:
    log: list[str] = []
    mw = kitmw.asgi.Middleware(boom, Recorder("a", log))
    async with client(mw) as c:
        r = await c.get("/")
    assert r.status_code == 500
    assert r.json() == {"error": "internal_error"}
    assert r.headers["x-a"] == "1"


@pytest.mark.anyio
async def test_lifespan_and_unknown_scopes_pass_through() -> None:
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    log: list[str] = []
    mw = kitmw.asgi.Middleware(app, Recorder("a", log))
    await mw({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await mw({"type": "websocket", "path": "/"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]
    assert log == []


def test_unmatched_route_label() -> None:
    assert Exchange("GET", "/nope").route_label() == UNMATCHED


def test_stack_rejects_unknown_values() -> None:
    with pytest.raises(ConfigError, match="metrics"):
        kitmw.stack(hello, metrics="yes")
    with pytest.raises(ConfigError, match="unknown concern"):
        build_policies({"caching": True})


def test_middleware_rejects_non_policies() -> None:
    with pytest.raises(TypeError, match="policies"):
        kitmw.asgi.Middleware(hello, object())  # type: ignore[arg-type]


def test_path_matcher_is_anchored() -> None:
    from kitmw._paths import PathMatcher

    m = PathMatcher(["/health", "/static/*"])
    assert m("/health") and m("/health/")
    assert not m("/healthz-admin") and not m("/api/health")
    assert m("/static") and m("/static/app.js") and not m("/staticky")
    with pytest.raises(ConfigError, match="exclude_paths"):
        PathMatcher(["health"])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_nested_layers_share_one_exchange() -> None:
    seen: list[Exchange] = []

    class Seer(Policy):
        name = "seer"

        def enter(self, ex: Exchange) -> Rejection | None:
            seen.append(ex)
            return None

    class Outer(Seer):
        name = "outer"

        def enter(self, ex: Exchange) -> Rejection | None:
            ex.principal = "from-outer"
            ex.add_response_header("x-outer", "1")
            return super().enter(ex)

    app = kitmw.asgi.Middleware(kitmw.asgi.Middleware(hello, Seer()), Outer())
    async with client(app) as c:
        r = await c.get("/")
    assert seen[0] is seen[1] and seen[1].principal == "from-outer"
    assert r.headers.get_list("x-outer") == ["1"]  # the outer layer's send wrapper adds it once


@pytest.mark.anyio
async def test_every_layer_runs_its_own_policy_of_a_concern() -> None:
    log: list[str] = []
    inner = kitmw.asgi.Middleware(hello, Recorder("inner", log))
    app = kitmw.asgi.Middleware(inner, Recorder("outer", log))  # both named "recorder"
    async with client(app) as c:
        r = await c.get("/")
    assert r.status_code == 200
    assert log == ["enter outer", "enter inner", "exit inner 200 11 None", "exit outer 200 11 None"]


@pytest.mark.anyio
async def test_the_same_policy_in_two_layers_runs_once() -> None:
    log: list[str] = []
    policy = Recorder("shared", log)
    app = kitmw.asgi.Middleware(kitmw.asgi.Middleware(hello, policy), policy)
    async with client(app) as c:
        r = await c.get("/")
    assert r.status_code == 200
    assert log == ["enter shared", "exit shared 200 11 None"]
