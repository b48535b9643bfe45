"""kitmw.testing: the helpers users test their own policies and apps with."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

import kitmw
from kitmw.breaker import BreakerPolicy
from kitmw.ratelimit import RateLimitPolicy
from kitmw.testing import FakeClock, asgi_scope, capture_logs, make_exchange, wsgi_environ


def test_breaker_policy_without_a_server() -> None:
    clock = FakeClock()
    policy = BreakerPolicy(
        fail_max=1, reset_timeout=10, clock=clock, name="testing-doc", registry=CollectorRegistry()
    )
    ex = make_exchange("GET", "/orders")
    assert policy.enter(ex) is None
    ex.status = 500
    policy.exit(ex)
    answer = policy.enter(make_exchange("GET", "/orders"))
    assert answer is not None and answer.status == 503 and answer.code == "circuit_open"
    clock.advance(10)
    trial = make_exchange("GET", "/orders")
    assert policy.enter(trial) is None  # half-open: one trial goes through
    trial.status = 200
    policy.exit(trial)


def test_neutral_exchange_feeds_key_functions() -> None:
    policy = RateLimitPolicy(limit="1/minute", key="header:X-API-Key", registry=CollectorRegistry())
    first = make_exchange("GET", "/", headers={"X-API-Key": "k1"})
    assert policy.enter(first) is None
    assert policy.enter(make_exchange("GET", "/", headers={"X-API-Key": "k1"})).status == 429  # type: ignore[union-attr]
    assert policy.enter(make_exchange("GET", "/", headers={"X-API-Key": "k2"})) is None


@pytest.mark.anyio
async def test_asgi_scope_drives_an_app_directly() -> None:
    sent: list[dict] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    with capture_logs() as records:
        await kitmw.AccessLog(app)(
            asgi_scope("GET", "/x", headers={"X-Request-ID": "abc-123"}), receive, send
        )
    assert sent[0]["status"] == 204
    assert (b"x-request-id", b"abc-123") in sent[0]["headers"]
    assert [r.request_id for r in records] == ["abc-123"]


def test_wsgi_environ_drives_a_wsgi_app() -> None:
    def app(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["HTTP_X_REQUEST_ID"].encode()]

    seen: list[str] = []
    body = kitmw.wsgi.AccessLog(app)(
        wsgi_environ("GET", "/y", headers={"X-Request-ID": "r-1"}),
        lambda status, headers: seen.append(status),
    )
    assert b"".join(body) == b"r-1" and seen == ["200 OK"]


def test_capture_logs_restores_the_logger_level() -> None:
    import logging

    logger = logging.getLogger("kitmw.testing.probe")
    logger.setLevel(logging.WARNING)
    with capture_logs("kitmw.testing.probe") as records:
        logger.info("seen")
    assert [r.getMessage() for r in records] == ["seen"] and logger.level == logging.WARNING


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the neutral exchanges of each side ------------------------------------------------------------


def test_neutral_exchange_takes_what_a_driver_would_fill_in() -> None:
    from kitmw.testing import NeutralExchange

    ex = NeutralExchange(
        "GET",
        "/api/items/1",
        headers={"X-Forwarded-For": ["203.0.113.5", "10.0.0.2"], "Host": "shop.example"},
        route="/items/{id}",
        mount_prefix="/api",
        principal="alice",
        scopes=["read"],
        status=503,
        response_headers={"Retry-After": "7"},
        duration=0.25,
    )
    assert ex.header_all("x-forwarded-for") == ["203.0.113.5", "10.0.0.2"]
    assert (ex.host, ex.route, ex.mount_prefix) == ("shop.example", "/items/{id}", "/api")
    assert (ex.principal, ex.scopes) == ("alice", frozenset({"read"}))
    assert (ex.status, ex.response_header("retry-after"), ex.duration) == (503, "7", 0.25)
    assert (ex.side, ex.protocol) == ("server", "neutral")


def test_a_neutral_client_exchange_reads_its_url_as_the_httpx_driver_does() -> None:
    import httpx

    import kitmw.httpx

    url = "https://user:pw@api.example/v1/items?id=3"
    neutral = make_exchange("GET", url, side="client")
    real = kitmw.httpx.ClientExchange(httpx.Request("GET", url))
    for attr in ("side", "method", "path", "query", "scheme", "host", "url"):
        assert getattr(neutral, attr) == getattr(real, attr), attr
    neutral.set_request_header("traceparent", "00-abc")
    assert neutral.header("traceparent") == "00-abc" and neutral.sent_headers == {"traceparent": "00-abc"}


def test_a_neutral_endpoint_exchange_is_named_like_the_endpoint_drivers() -> None:
    import kitmw.endpoint

    seen = []

    class Spy(kitmw.Policy):
        def enter(self, ex):  # type: ignore[no-untyped-def]
            seen.append(ex)

    kitmw.endpoint("charge_card", policies=[Spy()])(lambda cents: cents)(5)
    neutral = make_exchange("CALL", "charge_card", side="endpoint", arguments={"cents": 5})
    for attr in ("side", "method", "path", "route", "endpoint", "arguments", "outcome"):
        assert getattr(neutral, attr) == getattr(seen[0], attr), attr


def test_make_exchange_names_a_wrong_side() -> None:
    with pytest.raises(kitmw.ConfigError, match=r"^side: expected one of server, client, endpoint"):
        make_exchange(side="browser")


def test_scope_and_environ_take_a_mount_prefix() -> None:
    from kitmw.asgi import AsgiExchange
    from kitmw.wsgi import WsgiExchange

    scope = asgi_scope("GET", "/api/items", root_path="/api")
    environ = wsgi_environ("GET", "/items", script_name="/api")
    assert AsgiExchange(scope, None, 0).mount_prefix == WsgiExchange(environ).mount_prefix == "/api"
    assert WsgiExchange(environ).path == "/api/items"
