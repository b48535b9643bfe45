"""JWKS: a real identity-provider stand-in on loopback (uvicorn), keys rotated and taken down.

Time is a fake clock given to the backend, so TTL and cooldown are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import kitmw
from kitmw.auth import JWT, AuthPolicy
from kitmw.testing import FakeClock, NeutralExchange

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

KEYS = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in ("k1", "k2")}


def jwk(kid: str, **extra: Any) -> dict[str, Any]:
    data = jwt.algorithms.RSAAlgorithm.to_jwk(KEYS[kid].public_key(), as_dict=True)
    data.update({"kid": kid, "alg": "RS256", "use": "sig"}, **extra)
    return data


class IdentityProvider:
    """The JWKS endpoint: serves ``keys``, counts requests, answers 503 while ``down``."""

    def __init__(self, *kids: str) -> None:
        self.documents: list[dict[str, Any]] = [jwk(k) for k in kids]
        self.down = False
        self.delay = 0.0
        self.requests = 0
        self.app = Starlette(routes=[Route("/.well-known/jwks.json", self.jwks)])

    async def jwks(self, request: Any) -> Response:
        self.requests += 1
        documents, down = self.documents, self.down  # what the provider serves when asked
        if self.delay:
            await asyncio.sleep(self.delay)
        if down:
            return JSONResponse({"error": "maintenance"}, status_code=503)
        return JSONResponse({"keys": documents})

    def rotate(self, *kids: str) -> None:
        self.documents = [jwk(k) for k in kids]


@pytest.fixture
def idp(serve_asgi: Any) -> Iterator[tuple[IdentityProvider, str]]:
    provider = IdentityProvider("k1")
    with serve_asgi(provider.app) as server:
        yield provider, server.url + "/.well-known/jwks.json"


def token(kid: str | None = "k1", signer: str = "k1", **claims: Any) -> str:
    payload = {"sub": "alice", "exp": int(time.time()) + 3600, **claims}
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, KEYS[signer], algorithm="RS256", headers=headers)


def make_app(url: str, clock: FakeClock, registry: CollectorRegistry | None = None, **options: Any) -> Any:
    app = FastAPI()

    @app.get("/me")
    async def me(request: Request) -> dict[str, str]:
        return {"id": request.user.identity}

    backend = JWT(jwks_url=url, algorithms=["RS256"], clock=clock, **options)
    app.add_middleware(kitmw.Auth, backend=backend, registry=registry)
    return app


async def status(app: Any, tok: str) -> int:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        r = await c.get("/me", headers={"Authorization": f"Bearer {tok}"}, timeout=10)
        return r.status_code


def jwks_errors(registry: CollectorRegistry) -> float:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == "kitmw_storage_errors_total" and sample.labels.get("component") == "jwks":
                return sample.value
    return 0.0


@pytest.mark.anyio
async def test_keys_are_fetched_once_and_cached(idp: tuple[IdentityProvider, str]) -> None:
    provider, url = idp
    app = make_app(url, FakeClock(time.time()))
    for i in range(5):
        assert await status(app, token(jti=str(i))) == 200
    assert provider.requests == 1


@pytest.mark.anyio
async def test_keys_are_fetched_again_after_the_ttl(idp: tuple[IdentityProvider, str]) -> None:
    provider, url = idp
    clock = FakeClock(time.time())
    app = make_app(url, clock, jwks_cache_ttl=300)
    assert await status(app, token(jti="a")) == 200
    clock.now += 301
    assert await status(app, token(jti="b")) == 200
    assert provider.requests == 2


@pytest.mark.anyio
async def test_unknown_kid_refetches_and_finds_a_rotated_key(idp: tuple[IdentityProvider, str]) -> None:
    provider, url = idp
    clock = FakeClock(time.time())
    app = make_app(url, clock, jwks_refresh_cooldown=30)
    assert await status(app, token("k1")) == 200
    provider.rotate("k1", "k2")
    clock.now += 31
    assert await status(app, token("k2", signer="k2")) == 200
    assert provider.requests == 2


@pytest.mark.anyio
async def test_unknown_kid_within_the_cooldown_does_not_refetch(idp: tuple[IdentityProvider, str]) -> None:
    provider, url = idp
    clock = FakeClock(time.time())
    app = make_app(url, clock, jwks_refresh_cooldown=30)
    assert await status(app, token("k1")) == 200
    provider.rotate("k1", "k2")
    clock.now += 10
    assert await status(app, token("k2", signer="k2")) == 401
    assert provider.requests == 1


@pytest.mark.anyio
async def test_flood_of_random_kids_fetches_at_most_once_per_cooldown(
    idp: tuple[IdentityProvider, str],
) -> None:
    provider, url = idp
    clock = FakeClock(time.time())
    app = make_app(url, clock, jwks_refresh_cooldown=30)
    assert await status(app, token("k1")) == 200
    for _ in range(3):  # three cooldown periods
        clock.now += 31
        for _ in range(25):
            assert await status(app, token(uuid.uuid4().hex)) == 401
    assert provider.requests == 1 + 3


@pytest.mark.anyio
async def test_concurrent_first_requests_share_one_fetch(idp: tuple[IdentityProvider, str]) -> None:
    provider, url = idp
    app = make_app(url, FakeClock(time.time()))
    results = await asyncio.gather(*(status(app, token(jti=str(i))) for i in range(20)))
    assert results == [200] * 20
    assert provider.requests == 1


@pytest.mark.anyio
async def test_a_cancelled_request_does_not_abort_the_fetch(idp: tuple[IdentityProvider, str]) -> None:
    provider, url = idp
    provider.delay = 0.3
    backend = JWT(jwks_url=url, algorithms=["RS256"], clock=FakeClock(time.time()))
    app = FastAPI()
    app.add_middleware(kitmw.Auth, backend=backend)
    first = asyncio.ensure_future(status(app, token(jti="a")))
    await asyncio.sleep(0.05)
    first.cancel()  # the client went away while the key set was being fetched
    deadline = time.monotonic() + 5
    while backend.jwks is not None and backend.jwks.keys is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert backend.jwks is not None and backend.jwks.keys is not None
    assert await status(app, token(jti="b")) == 404  # authenticated; the app has no /me
    assert provider.requests == 1


@pytest.mark.anyio
async def test_failed_refresh_keeps_the_last_good_keys(idp: tuple[IdentityProvider, str]) -> None:
    provider, url = idp
    clock = FakeClock(time.time())
    registry = CollectorRegistry()
    app = make_app(url, clock, registry, jwks_cache_ttl=300)
    assert await status(app, token(jti="a")) == 200
    provider.down = True
    clock.now += 301  # the set is stale: a refresh is attempted and fails
    assert await status(app, token(jti="b")) == 200
    assert provider.requests == 2
    assert jwks_errors(registry) == 1


@pytest.mark.anyio
async def test_failed_refresh_is_retried_only_after_the_cooldown(idp: tuple[IdentityProvider, str]) -> None:
    provider, url = idp
    clock = FakeClock(time.time())
    app = make_app(url, clock, jwks_cache_ttl=300, jwks_refresh_cooldown=30)
    assert await status(app, token(jti="a")) == 200
    provider.down = True
    clock.now += 301
    for i in range(10):
        assert await status(app, token(jti=f"b{i}")) == 200
    assert provider.requests == 2
    clock.now += 31
    assert await status(app, token(jti="c")) == 200
    assert provider.requests == 3


@pytest.mark.anyio
async def test_jwks_down_at_start_is_401_counted_then_recovers(idp: tuple[IdentityProvider, str]) -> None:
    provider, url = idp
    provider.down = True
    clock = FakeClock(time.time())
    registry = CollectorRegistry()
    app = make_app(url, clock, registry, jwks_refresh_cooldown=30)
    assert await status(app, token(jti="a")) == 401
    assert await status(app, token(jti="b")) == 401  # within the cooldown: no second fetch
    assert provider.requests == 1
    assert jwks_errors(registry) == 1
    provider.down = False
    clock.now += 31
    assert await status(app, token(jti="c")) == 200
    assert provider.requests == 2


@pytest.mark.anyio
async def test_unreachable_jwks_url_is_401() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/jwks"  # nothing listens there
    registry = CollectorRegistry()
    app = make_app(url, FakeClock(time.time()), registry, jwks_timeout=2.0)
    assert await status(app, token()) == 401
    assert jwks_errors(registry) == 1


@pytest.mark.anyio
async def test_token_without_kid_uses_the_only_key(idp: tuple[IdentityProvider, str]) -> None:
    _, url = idp
    assert await status(make_app(url, FakeClock(time.time())), token(kid=None)) == 200


@pytest.mark.anyio
async def test_token_without_kid_is_refused_when_several_keys(idp: tuple[IdentityProvider, str]) -> None:
    provider, url = idp
    provider.rotate("k1", "k2")
    assert await status(make_app(url, FakeClock(time.time())), token(kid=None)) == 401


@pytest.mark.anyio
async def test_token_signed_by_another_key_under_a_known_kid_is_401(
    idp: tuple[IdentityProvider, str],
) -> None:
    _, url = idp
    assert await status(make_app(url, FakeClock(time.time())), token("k1", signer="k2")) == 401


@pytest.mark.anyio
async def test_unusable_keys_in_the_document_are_ignored(idp: tuple[IdentityProvider, str]) -> None:
    provider, url = idp
    ec_jwk = jwt.algorithms.ECAlgorithm.to_jwk(
        ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True
    )
    provider.documents = [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "shared", "alg": "HS256"},  # a secret: never
        {**ec_jwk, "kid": "ec", "alg": "ES256"},  # not an accepted algorithm
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        jwk("k2", use="enc"),  # not a signing key
        jwk("k1"),
    ]
    app = make_app(url, FakeClock(time.time()))
    assert await status(app, token("k1")) == 200
    assert await status(app, token("k2", signer="k2")) == 401


@pytest.mark.anyio
async def test_alg_none_token_never_triggers_a_fetch(idp: tuple[IdentityProvider, str]) -> None:
    provider, url = idp
    unsigned = jwt.encode({"sub": "x"}, None, algorithm="none", headers={"kid": "zzz"})
    assert await status(make_app(url, FakeClock(time.time())), unsigned) == 401
    assert provider.requests == 0


def test_sync_side_fetches_with_urllib(idp: tuple[IdentityProvider, str]) -> None:
    provider, url = idp
    policy = AuthPolicy(backend=JWT(jwks_url=url, algorithms=["RS256"], clock=FakeClock(time.time())))
    ex = NeutralExchange("GET", "/me", headers={"authorization": "Bearer " + token()})
    assert policy.enter(ex) is None  # what the WSGI driver calls
    assert ex.principal == "alice"
    assert provider.requests == 1


def test_sync_side_keeps_keys_when_down(idp: tuple[IdentityProvider, str]) -> None:
    provider, url = idp
    clock = FakeClock(time.time())
    backend = JWT(jwks_url=url, algorithms=["RS256"], clock=clock, jwks_cache_ttl=60)
    policy = AuthPolicy(backend=backend)
    request = NeutralExchange("GET", "/me", headers={"authorization": "Bearer " + token(jti="a")})
    assert policy.enter(request) is None
    provider.down = True
    clock.now += 61
    request = NeutralExchange("GET", "/me", headers={"authorization": "Bearer " + token(jti="b")})
    assert policy.enter(request) is None
    assert backend.jwks is not None
    assert (backend.jwks.fetches, backend.jwks.failures) == (2, 1)


# -- rotation cannot be held back by unknown kids; the fetch rate stays bounded ---------------

COOLDOWN = 5.0  # JWT's default jwks_refresh_cooldown: the bound docs/auth.md states
MAX_BACKOFF = 60.0  # JWT's default jwks_max_backoff


def random_kid() -> str:
    return token(uuid.uuid4().hex)


@pytest.mark.anyio
async def test_a_random_kid_just_before_a_rotation_delays_the_new_kid_at_most_the_cooldown(
    idp: tuple[IdentityProvider, str],
) -> None:
    provider, url = idp
    clock = FakeClock(time.time())
    app = make_app(url, clock)  # the defaults
    assert await status(app, token("k1")) == 200
    clock.now += 100
    assert await status(app, random_kid()) == 401  # the attacker's fetch, just before...
    provider.rotate("k1", "k2")  # ...the identity provider starts signing with k2
    attacked_at = clock.now
    new_kid = token("k2", signer="k2")
    while await status(app, new_kid) != 200:
        clock.now += 0.5
        assert clock.now - attacked_at <= COOLDOWN, "the new kid is still refused after the stated bound"
    assert provider.requests == 3


def test_the_sync_side_picks_up_a_rotation_within_the_cooldown(idp: tuple[IdentityProvider, str]) -> None:
    provider, url = idp
    clock = FakeClock(time.time())
    policy = AuthPolicy(backend=JWT(jwks_url=url, algorithms=["RS256"], clock=clock))

    def enter(tok: str) -> Any:
        return policy.enter(NeutralExchange("GET", "/me", headers={"authorization": "Bearer " + tok}))

    assert enter(token("k1")) is None
    clock.now += 100
    assert enter(random_kid()) is not None
    provider.rotate("k1", "k2")
    clock.now += COOLDOWN
    assert enter(token("k2", signer="k2")) is None
    assert provider.requests == 3


@pytest.mark.anyio
async def test_a_steady_stream_of_random_kids_neither_holds_a_rotation_back_nor_floods_the_provider(
    idp: tuple[IdentityProvider, str],
) -> None:
    provider, url = idp
    clock = FakeClock(time.time())
    app = make_app(url, clock)
    assert await status(app, token("k1")) == 200
    start, rotated_at, accepted_at = clock.now, clock.now + 20.25, None
    while clock.now < start + 120:  # two minutes, two random kids a second
        clock.now += 0.5
        assert await status(app, random_kid()) == 401
        if rotated_at <= clock.now and not any(d["kid"] == "k2" for d in provider.documents):
            provider.rotate("k1", "k2")
        new_kid = token("k2", signer="k2", jti=str(clock.now))
        if accepted_at is None and clock.now >= rotated_at and await status(app, new_kid) == 200:
            accepted_at = clock.now
    assert accepted_at is not None and accepted_at - rotated_at <= COOLDOWN
    assert provider.requests <= 1 + 120 / COOLDOWN  # the first fetch, then one per cooldown


@pytest.mark.anyio
async def test_a_fetch_that_started_before_the_rotation_does_not_hold_back_its_waiters(
    idp: tuple[IdentityProvider, str],
) -> None:
    provider, url = idp
    clock = FakeClock(time.time())
    app = make_app(url, clock)
    assert await status(app, token("k1")) == 200
    clock.now += 100
    provider.delay = 0.3  # a slow answer: still k1 only when asked
    attacker = asyncio.ensure_future(status(app, random_kid()))
    deadline = time.monotonic() + 5
    while provider.requests < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert provider.requests == 2
    provider.rotate("k1", "k2")
    provider.delay = 0
    clock.now += COOLDOWN + 1  # the fetch in flight started more than a cooldown ago
    assert await status(app, token("k2", signer="k2")) == 200  # waited, then fetched again
    assert await attacker == 401
    assert provider.requests == 3


@pytest.mark.anyio
async def test_failed_fetches_back_off_to_the_maximum_and_recover(idp: tuple[IdentityProvider, str]) -> None:
    provider, url = idp
    clock = FakeClock(time.time())
    registry = CollectorRegistry()
    backend = JWT(jwks_url=url, algorithms=["RS256"], clock=clock)
    app = FastAPI()
    app.add_middleware(kitmw.Auth, backend=backend, registry=registry)
    assert await status(app, token("k1")) == 404  # authenticated; this app has no /me
    provider.down = True
    provider.rotate("k1", "k2")
    attempts: list[float] = []
    start = clock.now
    while clock.now < start + 300:
        before = provider.requests
        assert await status(app, token("k2", signer="k2", jti=str(clock.now))) == 401
        assert await status(app, token("k1", jti=str(clock.now))) == 404  # the cached key still verifies
        if provider.requests > before:
            attempts.append(clock.now - start)
        clock.now += 1
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[:4] == [COOLDOWN, 2 * COOLDOWN, 4 * COOLDOWN, 8 * COOLDOWN]
    assert all(gap == MAX_BACKOFF for gap in gaps[4:]) and len(gaps) > 4
    jwks = backend.jwks
    assert jwks is not None and (jwks.fetches, jwks.failures) == (1 + len(attempts), len(attempts))
    assert jwks_errors(registry) == len(attempts)
    provider.down = False  # back up: picked up within one maximal backoff
    recovered_at = clock.now
    while await status(app, token("k2", signer="k2", jti=str(clock.now))) != 404:
        clock.now += 1
    assert clock.now - recovered_at <= MAX_BACKOFF
    assert jwks.next_fetch_after == COOLDOWN  # a success resets the backoff


def test_concurrent_misses_on_the_sync_side_share_one_fetch(idp: tuple[IdentityProvider, str]) -> None:
    import threading

    provider, url = idp
    clock = FakeClock(time.time())
    policy = AuthPolicy(backend=JWT(jwks_url=url, algorithms=["RS256"], clock=clock))
    request = NeutralExchange("GET", "/me", headers={"authorization": "Bearer " + token("k1")})
    assert policy.enter(request) is None
    provider.rotate("k1", "k2")
    provider.delay = 0.3  # keeps the one fetch in flight while the other threads arrive
    clock.now += 31
    results: list[Any] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        fresh = token("k2", signer="k2", jti=str(i))
        request = NeutralExchange("GET", "/me", headers={"authorization": "Bearer " + fresh})
        ex = request
        barrier.wait(timeout=10)
        results.append(policy.enter(ex))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert results == [None] * 8
    assert provider.requests == 2


def test_a_caller_right_after_the_fetch_decision_waits_for_that_fetch(idp: tuple[IdentityProvider, str]) -> None:
    """The decision to fetch and the fetch being visible to others are one step: a second
    caller arriving in between waits for the fetch instead of finding neither a key nor a
    fetch to wait for (under load, a thread landed in that gap and got a 401)."""
    _, url = idp
    cache = JWT(jwks_url=url, algorithms=["RS256"]).jwks
    assert cache is not None
    _, first, inflight = cache._plan("k1")  # the decision, before any fetch ran
    _, second, waits_on = cache._plan("k1")
    assert (first, second) == (1, 2)  # this one fetches, the next one waits for it
    assert waits_on is inflight
