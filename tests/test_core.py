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


class RaisingEnter(Recorder):
    def enter(self, ex: Exchange) -> Rejection | None:
        super().enter(ex)
        raise RuntimeError("policy broke")


@pytest.mark.anyio
async def test_a_policy_raising_in_enter_still_lets_every_entered_policy_exit() -> None:
    log: list[str] = []
    called = []

    async def app(scope, receive, send):
        called.append(1)
        await hello(scope, receive, send)

    mw = kitmw.asgi.Middleware(app, Recorder("a", log), RaisingEnter("b", log), Recorder("c", log))
    async with client(mw) as c:
        r = await c.get("/")
    assert r.status_code == 500 and not called
    assert "enter c" not in log
    assert log[-2:] == ["exit b 500 0 RuntimeError", "exit a 500 0 RuntimeError"]


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


# -- configuration errors name the concern, the option and the right one (issue 12, item 18) --


def wsgi_hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def test_auth_true_in_stack_names_the_missing_backend() -> None:
    with pytest.raises(ConfigError) as caught:
        kitmw.stack(hello, auth=True)
    message = str(caught.value)
    assert message.startswith("auth: option 'backend' is required")
    assert "kitmw.auth.JWT(" in message  # what to write instead


@pytest.mark.parametrize(
    ("build", "concern", "wrong", "right"),
    [
        pytest.param(lambda: kitmw.stack(hello, metrics={"bukets": [0.1]}), "metrics", "bukets", "buckets", id="stack-asgi"),
        pytest.param(
            lambda: kitmw.stack(wsgi_hello, breaker={"failmax": 3}), "breaker", "failmax", "fail_max", id="stack-wsgi"
        ),
        pytest.param(
            lambda: kitmw.stack(hello, ratelimit={"limt": "5/minute"}), "ratelimit", "limt", "limit", id="stack-rl"
        ),
        pytest.param(lambda: kitmw.Metrics(hello, bukets=[0.1]), "metrics", "bukets", "buckets", id="Metrics"),
        pytest.param(
            lambda: kitmw.wsgi.Metrics(wsgi_hello, bukets=[0.1]), "metrics", "bukets", "buckets", id="wsgi.Metrics"
        ),
        pytest.param(
            lambda: kitmw.Tracing(hello, exclude_path=["/health"]), "tracing", "exclude_path", "exclude_paths", id="Tracing"
        ),
        pytest.param(
            lambda: kitmw.wsgi.AccessLog(wsgi_hello, request_id_headr="X-Id"),
            "access_log",
            "request_id_headr",
            "request_id_header",
            id="wsgi.AccessLog",
        ),
        pytest.param(
            lambda: kitmw.httpx.Transport(breaker={"failmax": 2}), "breaker", "failmax", "fail_max", id="httpx-breaker"
        ),
        pytest.param(
            lambda: kitmw.httpx.AsyncTransport(ratelimit={"limit": "1/second", "mod": "error"}),
            "ratelimit",
            "mod",
            "mode",
            id="httpx-ratelimit",
        ),
        pytest.param(
            lambda: kitmw.httpx.Transport(metrics={"bukets": [1.0]}), "metrics", "bukets", "buckets", id="httpx-metrics"
        ),
        pytest.param(
            lambda: kitmw.httpx.Transport(retry={"attempt": 2}), "retry", "attempt", "attempts", id="httpx-retry"
        ),
    ],
)
def test_a_misspelled_option_names_the_concern_and_the_closest_option(build, concern, wrong, right) -> None:
    with pytest.raises(ConfigError) as caught:
        build()
    assert str(caught.value).startswith(f"{concern}: unknown option {wrong!r}; did you mean {right!r}?")


def test_an_error_raised_by_a_policy_names_its_concern() -> None:
    with pytest.raises(ConfigError, match=r"^ratelimit: limit: "):
        kitmw.stack(hello, ratelimit={"limit": "lots"})


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("mem://", r"^ratelimit: storage: unknown scheme 'mem://'; did you mean 'memory://'\? \(schemes of the installed limits: .*redis"),
        ("memcache://127.0.0.1", r"did you mean 'memcached://'\?"),
        ("rdis://127.0.0.1:6379", r"did you mean 'redis://'\?"),
        ("async+foo://x", r"^ratelimit: storage: unknown scheme 'foo://' \(schemes"),
    ],
)
def test_a_bad_storage_url_names_the_option_and_lists_the_schemes(storage: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        kitmw.RateLimit(hello, limit="5/minute", storage=storage)
    assert "unknown storage scheme" not in str(caught.value)  # not limits' own text
    with pytest.raises(ConfigError, match=expected):
        kitmw.stack(wsgi_hello, ratelimit={"limit": "5/minute", "storage": storage})


def test_a_storage_url_with_credentials_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        kitmw.stack(hello, ratelimit={"limit": "5/minute", "storage": "reddis://:s3cret@cache:6379"})
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("app", [None, "app", 42])
def test_stack_without_an_app_says_so(app) -> None:
    with pytest.raises(ConfigError, match=r"^app: expected the ASGI or WSGI application to wrap"):
        kitmw.stack(app, metrics=True)


def test_an_unknown_concern_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"unknown concern\(s\): acces_log; did you mean 'access_log'\?"):
        build_policies({"acces_log": True})
