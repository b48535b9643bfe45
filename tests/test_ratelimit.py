"""Rate limit: the neutral Limiter and the RateLimitPolicy, on in-memory storage.

Redis-backed behaviour (sharing, outages, slow storage) is in tests/e2e/test_ratelimit_redis.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from decimal import Decimal
from fractions import Fraction

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import kitmw
from kitmw.errors import ConfigError, Rejection
from kitmw.exchange import Exchange
from kitmw.ratelimit import ClientAddress, Decision, Limiter, RateLimitPolicy
from kitmw.stack import build_policies
from kitmw.testing import NeutralExchange


def neutral(
    path: str = "/", *, method: str = "GET", client: str | None = "10.0.0.1", **options: object
) -> NeutralExchange:
    """A neutral exchange from ``client`` (``headers``, ``route``, ``principal``: as set by the test)."""
    return NeutralExchange(method, path, client=client, **options)  # type: ignore[arg-type]


def decisions(policy: RateLimitPolicy, n: int, **exchange: object) -> list[int]:
    """Statuses (200 or the rejection's) of ``n`` requests through ``policy.enter``."""
    out = []
    for _ in range(n):
        answer = policy.enter(neutral(**exchange))  # type: ignore[arg-type]
        out.append(200 if answer is None else answer.status)
    return out


def ns() -> str:
    """A fresh key namespace, so tests never share budgets."""
    return "t" + uuid.uuid4().hex[:12]


def counter(registry, decision: str, side: str = "server") -> float:
    for family in text_string_to_metric_families(kitmw_text(registry)):
        if family.name == "kitmw_ratelimit_decisions":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels == {"side": side, "decision": decision}:
                    return sample.value
    return 0.0


def kitmw_text(registry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def client_for(app, peer: tuple[str, int] = ("10.1.2.3", 1234)) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=peer)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


# -- the 429 answer and its headers ------------------------------------------------------


@pytest.mark.anyio
async def test_five_per_minute_allows_exactly_five_then_429(registry) -> None:
    app = kitmw.RateLimit(hello, limit="5/minute", registry=registry, namespace=ns())
    async with client_for(app) as c:
        statuses = [(await c.get("/")).status_code for _ in range(5)]
        refused = await c.get("/")
    assert statuses == [200] * 5
    assert refused.status_code == 429
    assert refused.json() == {"error": "rate_limited"}
    assert refused.headers["content-type"] == "application/json"
    retry = int(refused.headers["retry-after"])
    assert 1 <= retry <= 60
    assert refused.headers["ratelimit-policy"] == '"default";q=5;w=60'
    assert refused.headers["ratelimit"] == f'"default";r=0;t={retry}'


@pytest.mark.anyio
async def test_allowed_responses_carry_ietf_headers(registry) -> None:
    app = kitmw.RateLimit(hello, limit="3/minute", registry=registry, namespace=ns())
    async with client_for(app) as c:
        responses = [await c.get("/") for _ in range(3)]
    assert [r.headers["ratelimit"].split(";")[1] for r in responses] == ["r=2", "r=1", "r=0"]
    assert all(r.headers["ratelimit-policy"] == '"default";q=3;w=60' for r in responses)
    assert "retry-after" not in responses[0].headers


@pytest.mark.anyio
async def test_headers_false_keeps_allowed_responses_clean_but_not_429(registry) -> None:
    app = kitmw.RateLimit(hello, limit="1/minute", headers=False, registry=registry, namespace=ns())
    async with client_for(app) as c:
        ok = await c.get("/")
        refused = await c.get("/")
    assert "ratelimit" not in ok.headers and "ratelimit-policy" not in ok.headers
    assert refused.status_code == 429
    assert {"retry-after", "ratelimit", "ratelimit-policy"} <= set(refused.headers)


def test_decision_header_values() -> None:
    refused = Decision(False, 10, 0, 12.2, 12.2, False, '"default";q=10;w=60')
    assert refused.headers() == (
        ("Retry-After", "13"),
        ("RateLimit-Policy", '"default";q=10;w=60'),
        ("RateLimit", '"default";r=0;t=13'),
    )
    tiny = Decision(False, 10, 0, 0.01, 0.01, False, '"default";q=10;w=60')
    assert tiny.retry_after_header == "1"  # never "0": clients would hammer


# -- strategies and several limits -------------------------------------------------------


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
def test_each_strategy_allows_exactly_the_limit(strategy: str, registry) -> None:
    policy = RateLimitPolicy(limit="5/minute", strategy=strategy, registry=registry, namespace=ns())
    assert decisions(policy, 7) == [200] * 5 + [429, 429]


@pytest.mark.anyio
@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
async def test_each_strategy_on_the_async_path(strategy: str, registry) -> None:
    policy = RateLimitPolicy(limit="4/minute", strategy=strategy, registry=registry, namespace=ns())
    statuses = []
    for _ in range(6):
        answer = await policy.aenter(neutral())
        statuses.append(200 if answer is None else answer.status)
    assert statuses == [200] * 4 + [429, 429]


def test_several_limits_all_must_allow(registry) -> None:
    policy = RateLimitPolicy(limit="10/minute;3/hour", registry=registry, namespace=ns())
    assert decisions(policy, 5) == [200, 200, 200, 429, 429]
    answer = policy.enter(neutral())
    assert answer is not None
    headers = dict(answer.headers)
    assert headers["RateLimit"].startswith('"3/h";r=0;')
    assert headers["RateLimit-Policy"] == '"10/m";q=10;w=60,"3/h";q=3;w=3600'


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
def test_narrow_refusal_does_not_consume_the_wider_window(strategy: str, registry) -> None:
    limiter = Limiter(limit="2/minute;10/hour", strategy=strategy, registry=registry, namespace=ns())
    allowed = [limiter.hit("k").allowed for _ in range(6)]
    assert allowed == [True, True, False, False, False, False]
    hour = limiter._specs[1]
    stats = limiter._backend.strategy.get_window_stats(hour.item, "k")
    assert stats.remaining == 8  # only the two allowed hits were taken from the hour


def test_allowed_decision_reports_the_tightest_limit(registry) -> None:
    limiter = Limiter(limit="10/minute;3/hour", registry=registry, namespace=ns())
    decision = limiter.hit("k")
    assert (decision.name, decision.limit, decision.remaining) == ("3/h", 3, 2)


@pytest.mark.parametrize("limit", ["5/minute", "5/minute;10/hour"])
def test_hit_header_is_the_ratelimit_value_hit_would_give(limit: str, registry) -> None:
    # The policy's fast path: the allowed RateLimit value, encoded, with no Decision built.
    fast = Limiter(limit=limit, registry=registry, namespace=ns())
    slow = Limiter(limit=limit, registry=registry, namespace=ns())
    for _ in range(5):
        value = fast.hit_header("k")
        expected = slow.hit("k").ratelimit
        assert isinstance(value, bytes)
        # t= may differ by one if a second boundary passes between the two calls.
        assert value.decode().rsplit(";t=", 1)[0] == expected.rsplit(";t=", 1)[0]
        assert abs(int(value.decode().rsplit("=", 1)[1]) - int(expected.rsplit("=", 1)[1])) <= 1
    refused = fast.hit_header("k")
    assert isinstance(refused, Decision) and not refused.allowed and not refused.degraded


def test_hit_header_escapes_keys_like_hit(registry) -> None:
    limiter = Limiter(limit="1/minute", registry=registry, namespace=ns())
    assert isinstance(limiter.hit_header("a/b"), bytes)
    assert not limiter.hit("a/b").allowed  # one budget: both paths escape the same way
    assert limiter.hit("a%2Fb").allowed  # and it is not the escaped spelling's


def test_cost_weighs_requests(registry) -> None:
    policy = RateLimitPolicy(limit="5/minute", cost=lambda ex: 2, registry=registry, namespace=ns())
    assert decisions(policy, 3) == [200, 200, 429]


def test_zero_cost_is_not_limited(registry) -> None:
    policy = RateLimitPolicy(limit="1/minute", cost=lambda ex: 0, registry=registry, namespace=ns())
    assert decisions(policy, 3) == [200, 200, 200]


@pytest.mark.parametrize(
    ("cost", "expected"),
    [
        pytest.param(0.5, [200, 200, 429], id="half-costs-one"),
        pytest.param(0.01, [200, 200, 429], id="tiny-costs-one"),
        pytest.param(1.5, [200, 429, 429], id="one-and-a-half-costs-two"),
        pytest.param(Fraction(1, 3), [200, 200, 429], id="fraction"),
        pytest.param(Decimal("0.2"), [200, 200, 429], id="decimal"),
        pytest.param(-0.5, [200, 200, 200], id="negative-not-limited"),
    ],
)
def test_a_fractional_cost_is_rounded_up(registry, cost: object, expected: list[int]) -> None:
    """0.5 was truncated to 0 and never limited: a fraction of a request costs a whole one."""
    policy = RateLimitPolicy(limit="2/minute", cost=lambda ex: cost, registry=registry, namespace=ns())
    assert decisions(policy, 3) == expected


@pytest.mark.parametrize("cost", ["1", None, float("nan"), float("inf")], ids=["str", "none", "nan", "inf"])
def test_a_cost_that_is_not_a_finite_number_is_an_error_naming_the_option(registry, cost: object) -> None:
    policy = RateLimitPolicy(limit="2/minute", cost=lambda ex: cost, registry=registry, namespace=ns())
    with pytest.raises((TypeError, ValueError), match=r"^cost: "):
        policy.enter(neutral("/"))


def test_limiter_keys_cannot_reach_another_bucket(registry) -> None:
    limiter = Limiter(limit="1/minute", registry=registry, namespace=ns())
    assert limiter.hit("a/1").allowed
    assert limiter.hit("a%2F1").allowed  # the escaped spelling is a different key
    assert limiter.hit("x" * 5000).allowed  # a huge key is hashed, not stored as is
    assert not limiter.hit("x" * 5000).allowed


@pytest.mark.anyio
async def test_limiter_sync_and_async_paths_share_one_memory_budget(registry) -> None:
    limiter = Limiter(limit="2/minute", registry=registry, namespace=ns())
    assert limiter.hit("k").allowed
    assert (await limiter.ahit("k")).allowed
    assert not (await limiter.ahit("k")).allowed


# -- keys ----------------------------------------------------------------------------------


def test_header_key_gives_each_api_key_its_own_budget(registry) -> None:
    policy = RateLimitPolicy(limit="2/minute", key="header:X-API-Key", registry=registry, namespace=ns())
    assert decisions(policy, 3, headers={"x-api-key": "alpha"}) == [200, 200, 429]
    assert decisions(policy, 2, headers={"x-api-key": "beta"}) == [200, 200]
    # Without the header the request is limited by address.
    assert decisions(policy, 3) == [200, 200, 429]


def test_principal_key_and_its_placement_after_auth(registry) -> None:
    policy = RateLimitPolicy(limit="1/minute", key="principal", registry=registry, namespace=ns())
    assert policy.needs_principal is True
    assert decisions(policy, 2, principal="alice") == [200, 429]
    assert decisions(policy, 1, principal="bob") == [200]
    assert RateLimitPolicy(limit="1/minute", registry=registry).needs_principal is False


def test_principal_key_moves_after_auth_in_stack(registry) -> None:
    pytest.importorskip("kitmw.auth")
    from kitmw.auth import APIKey

    policies = build_policies(
        {
            "ratelimit": {"limit": "1/minute", "key": "principal", "registry": registry},
            "auth": APIKey(keys={"k": "a"}),
        }
    )
    assert [p.name for p in policies] == ["auth", "ratelimit"]


def test_route_key_is_one_budget_per_route_for_everybody(registry) -> None:
    policy = RateLimitPolicy(limit="2/minute", key="route", registry=registry, namespace=ns())
    assert decisions(policy, 1, route="/a", client="1.1.1.1") == [200]
    assert decisions(policy, 2, route="/a", client="2.2.2.2") == [200, 429]
    assert decisions(policy, 1, route="/b", client="2.2.2.2") == [200]


def test_callable_key_and_none_exempts(registry) -> None:
    def tenant(ex: Exchange) -> str | None:
        return ex.header("x-tenant")

    policy = RateLimitPolicy(limit="1/minute", key=tenant, registry=registry, namespace=ns())
    assert decisions(policy, 2, headers={"x-tenant": "acme"}) == [200, 429]
    assert decisions(policy, 3) == [200, 200, 200]  # None: exempt


# -- trusted proxies and client addresses --------------------------------------------------


def key_of(ex: NeutralExchange, **options) -> str:
    return ClientAddress(**options)(ex)


def test_spoofed_forwarding_headers_from_an_untrusted_peer_get_no_fresh_budget(registry) -> None:
    policy = RateLimitPolicy(
        limit="2/minute", trusted_proxies=["10.9.0.0/16"], registry=registry, namespace=ns()
    )
    statuses = []
    for i in range(4):
        spoof = {"x-forwarded-for": f"203.0.113.{i}", "forwarded": f"for=198.51.100.{i}"}
        answer = policy.enter(neutral(client="192.0.2.7", headers=spoof))
        statuses.append(200 if answer is None else answer.status)
    assert statuses == [200, 200, 429, 429]


def test_without_trusted_proxies_forwarding_headers_are_ignored() -> None:
    ex = neutral(client="192.0.2.7", headers={"x-forwarded-for": "203.0.113.9"})
    assert key_of(ex) == "192.0.2.7"


def test_trusted_proxy_chain_yields_the_right_most_untrusted_address() -> None:
    # client spoofs 6.6.6.6; real client 203.0.113.5; two trusted hops after it.
    ex = neutral(client="10.9.0.1", headers={"x-forwarded-for": ["6.6.6.6, 203.0.113.5", "10.9.3.3"]})
    assert key_of(ex, trusted_proxies=["10.9.0.0/16"]) == "203.0.113.5"


def test_trusted_proxy_with_rfc7239_forwarded() -> None:
    ex = neutral(
        client="10.9.0.1",
        headers={"forwarded": 'for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, for=10.9.3.3'},
    )
    assert key_of(ex, trusted_proxies=["10.9.0.0/16"]) == "2001:db8:cafe::/64"


def test_trusted_proxy_single_address_and_ports() -> None:
    ex = neutral(client="127.0.0.1", headers={"x-forwarded-for": "203.0.113.5:5555"})
    assert key_of(ex, trusted_proxies="127.0.0.1") == "203.0.113.5"


@pytest.mark.parametrize(
    "chain",
    [
        pytest.param("6.6.6.6, unknown", id="unknown-hop"),
        pytest.param("6.6.6.6, not-an-ip", id="garbage"),
        pytest.param("6.6.6.6, ", id="empty-entry"),
        pytest.param("6.6.6.6, [::1", id="broken-bracket"),
        pytest.param("6.6.6.6,\x00\xff", id="binary"),
    ],
)
def test_garbage_ends_the_walk_at_the_last_trusted_hop(chain: str) -> None:
    ex = neutral(client="10.9.0.1", headers={"x-forwarded-for": chain})
    assert key_of(ex, trusted_proxies=["10.9.0.0/16"]) == "10.9.0.1"


def test_an_all_trusted_chain_keys_the_left_most_hop() -> None:
    ex = neutral(client="10.9.0.1", headers={"x-forwarded-for": "10.9.0.7, 10.9.0.8"})
    assert key_of(ex, trusted_proxies=["10.9.0.0/16"]) == "10.9.0.7"


def test_huge_forwarding_chain_is_bounded() -> None:
    chain = ", ".join(["10.9.0.2"] * 10_000)
    ex = neutral(client="10.9.0.1", headers={"x-forwarded-for": "6.6.6.6, " + chain})
    assert key_of(ex, trusted_proxies=["10.9.0.0/16"]) == "10.9.0.2"


def test_disagreeing_forwarding_headers_key_the_peer() -> None:
    ex = neutral(
        client="10.9.0.1", headers={"x-forwarded-for": "203.0.113.5", "forwarded": "for=198.51.100.1"}
    )
    assert key_of(ex, trusted_proxies=["10.9.0.0/16"]) == "10.9.0.1"
    assert key_of(ex, trusted_proxies=["10.9.0.0/16"], proxy_header="forwarded") == "198.51.100.1"


def test_ipv6_clients_share_a_budget_per_64(registry) -> None:
    policy = RateLimitPolicy(limit="2/minute", registry=registry, namespace=ns())
    assert decisions(policy, 1, client="2001:db8:1:2::1") == [200]
    assert decisions(policy, 2, client="2001:db8:1:2:ffff::9") == [200, 429]
    assert decisions(policy, 1, client="2001:db8:1:3::1") == [200]


def test_ipv6_prefix_128_keys_each_address() -> None:
    assert key_of(neutral(client="2001:db8::1"), ipv6_prefix=128) == "2001:db8::1"
    assert key_of(neutral(client="2001:db8::1")) == "2001:db8::/64"
    assert key_of(neutral(client="::ffff:192.0.2.1")) == "192.0.2.1"
    assert key_of(neutral(client=None)) == "unknown"


# -- per-route limits, exemptions, exclusions ----------------------------------------------


def routed_app(**options) -> kitmw.asgi.Middleware:
    def ok(request):
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[
            Route("/login", ok, methods=["POST"]),
            Route("/items/{item_id}", ok),
            Route("/health", ok),
            Route("/other", ok),
        ]
    )
    return kitmw.RateLimit(app, **options)


@pytest.mark.anyio
async def test_per_route_limits_by_template_and_exempt_routes(registry) -> None:
    app = routed_app(
        limit="3/minute",
        routes={"/login": "1/minute", "/items/{item_id}": "2/minute", "/health": None},
        registry=registry,
        namespace=ns(),
    )
    async with client_for(app) as c:
        login = [(await c.post("/login")).status_code for _ in range(2)]
        items = [(await c.get(f"/items/{i}")).status_code for i in range(3)]  # one budget for the template
        health = [(await c.get("/health")).status_code for _ in range(5)]
        other = [(await c.get("/other")).status_code for _ in range(4)]
    assert login == [200, 429]
    assert items == [200, 200, 429]
    assert health == [200] * 5
    assert other == [200, 200, 200, 429]  # the default budget is not touched by the routes above


def fastapi_app(registry, *, included: bool):
    fastapi = pytest.importorskip("fastapi")
    api = fastapi.FastAPI()
    router = fastapi.APIRouter(prefix="/v1") if included else api.router
    prefix = "" if included else "/v1"

    @router.get(prefix + "/users/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    @api.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    if included:
        api.include_router(router)
    api.add_middleware(
        kitmw.RateLimit,
        limit="100/minute",
        routes={"/v1/users/{user_id}": "2/minute"},
        registry=registry,
        namespace=ns(),
    )
    return api


@pytest.mark.anyio
async def test_per_route_limits_with_fastapi(registry) -> None:
    api = fastapi_app(registry, included=False)
    async with client_for(api) as c:
        users = [(await c.get(f"/v1/users/{i}")).status_code for i in range(3)]
        pings = [(await c.get("/ping")).status_code for _ in range(3)]
    assert users == [200, 200, 429]
    assert pings == [200, 200, 200]


@pytest.mark.anyio
async def test_per_route_limits_with_fastapi_included_router(registry) -> None:
    api = fastapi_app(registry, included=True)
    async with client_for(api) as c:
        users = [(await c.get(f"/v1/users/{i}")).status_code for i in range(3)]
    assert users == [200, 200, 429]


def test_routes_by_path_prefix(registry) -> None:
    policy = RateLimitPolicy(
        limit="10/minute", routes={"/admin": "1/minute", "/static/*": None}, registry=registry, namespace=ns()
    )
    assert decisions(policy, 2, path="/admin/users") == [200, 429]
    assert decisions(policy, 1, path="/admin") == [429]
    assert decisions(policy, 1, path="/administrator") == [200]  # not below /admin
    assert decisions(policy, 20, path="/static/app.js") == [200] * 20


def test_only_routes_no_default(registry) -> None:
    policy = RateLimitPolicy(routes={"/login": "1/minute"}, registry=registry, namespace=ns())
    assert decisions(policy, 2, path="/login", route="/login") == [200, 429]
    assert decisions(policy, 5, path="/else") == [200] * 5


def test_excluded_paths_are_neither_limited_nor_counted(registry) -> None:
    policy = RateLimitPolicy(limit="2/minute", exclude_paths=["/health"], registry=registry, namespace=ns())
    assert decisions(policy, 5, path="/health") == [200] * 5
    assert decisions(policy, 3, path="/work") == [200, 200, 429]
    assert counter(registry, "allowed") == 2


def test_methods_limits_only_those(registry) -> None:
    policy = RateLimitPolicy(limit="1/minute", methods=["post"], registry=registry, namespace=ns())
    assert decisions(policy, 3, method="GET") == [200, 200, 200]
    assert decisions(policy, 2, method="POST") == [200, 429]


# -- metrics -------------------------------------------------------------------------------


def test_decisions_are_counted(registry) -> None:
    policy = RateLimitPolicy(limit="2/minute", registry=registry, namespace=ns())
    decisions(policy, 5)
    assert counter(registry, "allowed") == 2
    assert counter(registry, "limited") == 3


# -- storage failures without a server: a closed port ----------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}"


def test_fail_open_on_unreachable_storage_is_degraded_counted_and_logged_once(registry, caplog) -> None:
    limiter = Limiter(limit="1/minute", storage=dead_redis_url(), registry=registry, recovery_interval=0)
    with caplog.at_level(logging.ERROR, logger="kitmw.ratelimit"):
        results = [limiter.hit("k") for _ in range(3)]
    assert all(d.allowed and d.degraded for d in results)
    assert counter(registry, "fail_open") == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "failing open" in errors[0].getMessage()


@pytest.mark.anyio
async def test_fail_closed_answers_503_with_retry_after(registry) -> None:
    app = kitmw.RateLimit(
        hello, limit="5/minute", storage=dead_redis_url(), fail_open=False, registry=registry
    )
    async with client_for(app) as c:
        r = await c.get("/")
    assert r.status_code == 503
    assert r.json() == {"error": "unavailable"}
    assert int(r.headers["retry-after"]) >= 1
    assert counter(registry, "fail_closed") == 1


def test_credentials_never_reach_the_log(registry, caplog) -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}"
    limiter = Limiter(limit="1/minute", storage=url, registry=registry)
    with caplog.at_level(logging.ERROR, logger="kitmw.ratelimit"):
        limiter.hit("k")
    assert caplog.records and "s3cret" not in caplog.text


# -- configuration errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "option"),
    [
        pytest.param({"limit": "lots"}, "limit", id="bad-rate"),
        pytest.param({"limit": 5}, "limit", id="rate-not-str"),
        pytest.param({"limit": "0/minute"}, "limit", id="zero"),
        pytest.param({"limit": None}, "limit", id="missing"),
        pytest.param({"limit": "1/minute", "strategy": "token-bucket"}, "strategy", id="strategy"),
        pytest.param({"limit": "1/minute", "storage": "nosuch://x"}, "storage", id="scheme"),
        pytest.param({"limit": "1/minute", "storage": "localhost:6379"}, "storage", id="not-uri"),
        pytest.param({"limit": "1/minute", "trusted_proxies": ["10.0.0.0/33"]}, "trusted_proxies", id="cidr"),
        pytest.param({"limit": "1/minute", "trusted_proxies": ["nginx"]}, "trusted_proxies", id="name"),
        pytest.param({"limit": "1/minute", "key": "cookie:x"}, "key", id="key"),
        pytest.param({"limit": "1/minute", "ipv6_prefix": 129}, "ipv6_prefix", id="prefix"),
        pytest.param({"limit": "1/minute", "routes": {"login": "1/minute"}}, "routes", id="route-path"),
        pytest.param({"limit": "1/minute", "routes": {"/login": "often"}}, "routes", id="route-rate"),
        pytest.param({"limit": "1/minute", "methods": ["G E T"]}, "methods", id="methods"),
        pytest.param({"limit": "1/minute", "storage_timeout": 0}, "storage_timeout", id="timeout"),
        pytest.param({"limit": "1/minute", "cost": 3}, "cost", id="cost"),
        pytest.param({"limit": "1/minute", "exclude_paths": ["health"]}, "exclude_paths", id="exclude"),
    ],
)
def test_bad_options_raise_config_error_naming_the_option(options, option, registry) -> None:
    with pytest.raises(ConfigError, match=rf"^{option}"):
        RateLimitPolicy(registry=registry, **options)


def test_limiter_validates_at_construction(registry) -> None:
    with pytest.raises(ConfigError, match=r"^limit"):
        Limiter(limit="nope", registry=registry)
    with pytest.raises(ConfigError, match=r"^side"):
        Limiter(limit="1/minute", side="both", registry=registry)
    assert isinstance(ConfigError("x"), ValueError)


# -- concurrency and the fused stack ---------------------------------------------------------


@pytest.mark.anyio
async def test_200_concurrent_requests_allow_exactly_50(registry) -> None:
    app = kitmw.RateLimit(hello, limit="50/minute", registry=registry, namespace=ns())
    async with client_for(app) as c:
        responses = await asyncio.gather(*(c.get("/") for _ in range(200)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 50
    assert statuses.count(429) == 150


@pytest.mark.anyio
async def test_stack_with_a_rate_string(registry) -> None:
    app = kitmw.stack(hello, ratelimit={"limit": "1/minute", "registry": registry, "namespace": ns()})
    async with client_for(app) as c:
        assert (await c.get("/")).status_code == 200
        assert (await c.get("/")).status_code == 429


def test_policy_is_a_kitmw_policy(registry) -> None:
    policy = RateLimitPolicy(limit="1/minute", namespace=ns(), registry=registry)
    assert isinstance(policy, kitmw.Policy)
    assert policy.name == "ratelimit"
    assert set(RateLimitPolicy.shared_options) == {"exclude_paths", "registry"}
    assert isinstance(policy.enter(neutral()), type(None))
    assert isinstance(policy.enter(neutral()), Rejection)


# -- WSGI twin: the sync path, with Flask route templates before dispatch ------------------


def test_flask_per_route_limits_through_the_wsgi_twin(registry) -> None:
    flask = pytest.importorskip("flask")
    app = flask.Flask(__name__)

    @app.get("/users/<int:user_id>")
    def user(user_id: int) -> str:
        return str(user_id)

    @app.get("/health")
    def health() -> str:
        return "ok"

    wrapped = kitmw.wsgi.RateLimit(
        app,
        limit="100/minute",
        routes={"/users/<int:user_id>": "2/minute", "/health": None},
        registry=registry,
        namespace=ns(),
    )
    with httpx.Client(transport=httpx.WSGITransport(app=wrapped), base_url="http://test") as c:
        users = [c.get(f"/users/{i}") for i in range(3)]
        health = [c.get("/health").status_code for _ in range(3)]
    assert [r.status_code for r in users] == [200, 200, 429]
    assert users[2].json() == {"error": "rate_limited"}
    assert users[0].headers["ratelimit"].startswith('"default";r=1;')
    assert health == [200, 200, 200]


def test_storage_key_matches_limits_key_for(registry) -> None:
    limiter = Limiter(limit="5/10 minutes;7/hour", registry=registry, namespace="x")
    for spec in limiter._specs:
        assert spec.prefix + "10.0.0.1" + spec.suffix == spec.item.key_for("10.0.0.1")


def test_django_per_route_limits_through_the_wsgi_twin(registry) -> None:
    pytest.importorskip("django")
    import django_project

    with django_project.urls():
        from django.core.wsgi import get_wsgi_application

        wrapped = kitmw.wsgi.RateLimit(
            get_wsgi_application(),
            limit="100/minute",
            routes={"/items/<int:pk>": "2/minute"},
            registry=registry,
            namespace=ns(),
        )
        with httpx.Client(transport=httpx.WSGITransport(app=wrapped), base_url="http://test") as c:
            codes = [c.get(f"/items/{i}").status_code for i in range(3)]
    assert codes == [200, 200, 429]


def test_root_route_is_not_a_prefix_of_everything(registry) -> None:
    policy = RateLimitPolicy(limit="10/minute", routes={"/": "1/minute"}, registry=registry, namespace=ns())
    assert decisions(policy, 2, path="/", route="/") == [200, 429]
    assert decisions(policy, 2, path="/other", route="/other") == [200, 200]
