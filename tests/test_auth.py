"""Auth: JWT (HS256, RS256), Basic, API keys, scopes, 401/403 semantics, hostile tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request, WebSocket
from starlette.middleware.cors import CORSMiddleware

import kitmw
from kitmw.auth import JWT, APIKey, AuthError, AuthPolicy, Backend, Basic, Principal
from kitmw.errors import ConfigError, Rejection
from kitmw.exchange import Exchange, Policy
from kitmw.testing import FakeClock, NeutralExchange

SECRET = "kitmw-test-secret-0123456789abcdef"
AUD = "orders-api"
ISS = "https://issuer.example"


# One RSA key pair for the module (generating one takes a while).
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def claims(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "alice", "exp": int(time.time()) + 3600, "aud": AUD, "iss": ISS}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def hs256(**extra: Any) -> str:
    return jwt.encode(claims(**extra), SECRET, algorithm="HS256")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any] | str, payload: Any, key: bytes | None) -> str:
    """A token built by hand (what an attacker sends), HMAC-signed with ``key`` if given."""
    head = b64url((header if isinstance(header, str) else json.dumps(header)).encode())
    body = b64url((payload if isinstance(payload, str) else json.dumps(payload)).encode())
    signing_input = f"{head}.{body}".encode()
    sig = b64url(hmac.new(key, signing_input, hashlib.sha256).digest()) if key is not None else ""
    return f"{head}.{body}.{sig}"


def make_app(**auth: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/me")
    async def me(request: Request) -> dict[str, Any]:
        user = request.user
        return {
            "identity": user.identity if user.is_authenticated else None,
            "display_name": user.display_name,
            "authenticated": user.is_authenticated,
            "scopes": sorted(request.auth.scopes),
        }

    @app.get("/admin/{name}")
    async def admin(name: str, request: Request) -> dict[str, str]:
        return {"admin": request.user.identity}

    @app.get("/administrator")
    async def administrator(request: Request) -> dict[str, str]:
        return {"who": request.user.identity}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/healthz-admin")
    async def healthz_admin() -> dict[str, str]:
        return {"status": "secret"}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(websocket.user.identity)
        await websocket.close()

    app.add_middleware(kitmw.Auth, **auth)
    return app


def hs_backend(**options: Any) -> JWT:
    options.setdefault("audience", AUD)
    options.setdefault("issuer", ISS)
    return JWT(key=SECRET, algorithms=["HS256"], **options)


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test"
    )


def _flip_signature(token: str) -> str:
    """Change a character in the middle of the signature (the last one may carry only padding bits)."""
    head, _, sig = token.rpartition(".")
    c = sig[10]
    return f"{head}.{sig[:10]}{'B' if c == 'A' else 'A'}{sig[11:]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get(app: Any, path: str = "/me", headers: dict[str, str] | None = None, method: str = "GET") -> Any:
    async with client(app) as c:
        return await c.request(method, path, headers=headers)


# -- JWT: the happy paths ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_hs256_token_sets_request_user_and_scopes() -> None:
    app = make_app(backend=hs_backend())
    r = await get(app, headers=bearer(hs256(scope="orders:read orders:write")))
    assert r.status_code == 200
    assert r.json() == {
        "identity": "alice",
        "display_name": "alice",
        "authenticated": True,
        "scopes": ["orders:read", "orders:write"],
    }


@pytest.mark.anyio
async def test_rs256_token_with_public_pem() -> None:
    app = make_app(backend=JWT(key=PUBLIC_PEM, algorithms=["RS256"], audience=AUD, issuer=ISS))
    token = jwt.encode(claims(sub="bob"), RSA_KEY, algorithm="RS256")
    r = await get(app, headers=bearer(token))
    assert r.status_code == 200
    assert r.json()["identity"] == "bob"


@pytest.mark.anyio
async def test_rs256_with_jwk_dict_key() -> None:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
    app = make_app(backend=JWT(key=jwk, algorithms=["RS256"], audience=AUD, issuer=ISS))
    r = await get(app, headers=bearer(jwt.encode(claims(), RSA_KEY, algorithm="RS256")))
    assert r.status_code == 200


@pytest.mark.anyio
async def test_bearer_scheme_is_case_insensitive() -> None:
    app = make_app(backend=hs_backend())
    r = await get(app, headers={"Authorization": f"bearer {hs256()}"})
    assert r.status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param({"scope": "a b"}, ["a", "b"], id="scope-string"),
        pytest.param({"scp": ["a", "b"]}, ["a", "b"], id="scp-list"),
        pytest.param({"scp": "a b"}, ["a", "b"], id="scp-string"),
        pytest.param({"scope": "a", "scp": ["b"]}, ["a", "b"], id="both"),
        pytest.param({"scope": 42, "scp": [1, "b"]}, ["b"], id="junk-types-ignored"),
    ],
)
async def test_scopes_from_scope_and_scp_claims(extra: dict[str, Any], expected: list[str]) -> None:
    app = make_app(backend=hs_backend())
    r = await get(app, headers=bearer(hs256(**extra)))
    assert r.json()["scopes"] == expected


@pytest.mark.anyio
async def test_principal_claim_option() -> None:
    app = make_app(backend=hs_backend(principal_claim="email"))
    r = await get(app, headers=bearer(hs256(email="alice@example.com")))
    assert r.json()["identity"] == "alice@example.com"


# -- JWT: 401 on every missing, bad or hostile token ----------------------------------------


def _hostile() -> list[Any]:
    now = int(time.time())
    good = claims()
    return [
        pytest.param(
            {"Authorization": "Bearer " + raw_token({"alg": "none", "typ": "JWT"}, good, None)}, id="alg-none"
        ),
        pytest.param(
            {"Authorization": "Bearer " + raw_token({"alg": "NONE", "typ": "JWT"}, good, None)}, id="alg-NONE"
        ),
        pytest.param(
            {"Authorization": "Bearer " + raw_token({"alg": "HS256", "typ": "JWT"}, good, PUBLIC_PEM)},
            id="hs256-signed-with-rs-public-pem",
        ),
        pytest.param(bearer(hs256(exp=now - 10)), id="expired"),
        pytest.param(bearer(hs256(nbf=now + 3600)), id="not-yet-valid-nbf"),
        pytest.param(bearer(hs256(iat=now + 3600)), id="issued-in-the-future"),
        pytest.param(bearer(hs256(aud="someone-else")), id="wrong-audience"),
        pytest.param(bearer(hs256(aud=None)), id="missing-audience"),
        pytest.param(bearer(hs256(iss="https://evil.example")), id="wrong-issuer"),
        pytest.param(bearer(hs256(exp=None)), id="missing-exp"),
        pytest.param(bearer(hs256(exp="tomorrow")), id="exp-not-a-number"),
        pytest.param(bearer(hs256(exp=float("inf"))), id="exp-infinity"),
        pytest.param(bearer(hs256(sub=None)), id="missing-sub"),
        pytest.param(bearer(hs256(sub=123)), id="sub-not-a-string"),
        pytest.param(
            bearer(
                _flip_signature(jwt.encode(good, SECRET, algorithm="HS256", headers={"kid": "who-knows"}))
            ),
            id="bad-signature",
        ),
        pytest.param(
            bearer(jwt.encode(good, "another-secret-0123456789abcdef!", algorithm="HS256")), id="other-key"
        ),
        pytest.param(bearer(hs256()[:-12]), id="truncated"),
        pytest.param(bearer(hs256().rsplit(".", 1)[0]), id="two-segments"),
        pytest.param(bearer("a" * 50_000 + "." + "b" * 50_000 + ".c"), id="100kB-token"),
        pytest.param(bearer("!!!.@@@.###"), id="non-base64-garbage"),
        pytest.param(bearer("x" * 40), id="one-segment"),
        pytest.param(bearer(raw_token("[" * 5000, good, SECRET.encode())), id="deeply-nested-header"),
        pytest.param(
            bearer(raw_token({"alg": "HS256"}, "[" * 5000, SECRET.encode())), id="deeply-nested-payload"
        ),
        pytest.param(
            bearer(raw_token({"alg": "HS256"}, [1, 2], SECRET.encode())), id="payload-not-an-object"
        ),
        pytest.param(
            bearer(raw_token({"alg": "HS256", "kid": 7}, good, SECRET.encode())), id="kid-not-a-string"
        ),
        pytest.param(bearer(raw_token({"alg": "RS256"}, good, SECRET.encode())), id="alg-not-allowed"),
        pytest.param({"Authorization": hs256()}, id="missing-bearer-prefix"),
        pytest.param({"Authorization": "Bearer "}, id="empty-bearer"),
        pytest.param({"Authorization": "Bearer"}, id="bearer-alone"),
        pytest.param({"Authorization": ""}, id="empty-header"),
        pytest.param({"Authorization": "Token " + hs256()}, id="other-scheme"),
        pytest.param({}, id="no-header"),
    ]


@pytest.mark.anyio
@pytest.mark.faults
@pytest.mark.parametrize("headers", _hostile())
async def test_hostile_tokens_get_401_never_500(headers: dict[str, str]) -> None:
    app = make_app(backend=hs_backend())
    r = await get(app, headers=headers)
    assert r.status_code == 401
    assert r.json() == {"error": "unauthorized"}
    assert r.headers["www-authenticate"].startswith('Bearer realm="kitmw"')


@pytest.mark.anyio
async def test_hs256_token_refused_by_rs256_backend_signed_with_public_pem() -> None:
    # The classic HS/RS confusion: the attacker signs with HMAC keyed by the public key.
    app = make_app(backend=JWT(key=PUBLIC_PEM, algorithms=["RS256"], audience=AUD, issuer=ISS))
    forged = raw_token({"alg": "HS256", "typ": "JWT"}, claims(), PUBLIC_PEM)
    r = await get(app, headers=bearer(forged))
    assert r.status_code == 401


@pytest.mark.anyio
async def test_non_latin1_header_bytes_get_401() -> None:
    app = make_app(backend=hs_backend())
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/me",
        "headers": [(b"authorization", b"Bearer \xff\xfe\x00\x80.\xc3\x28.x")],
        "query_string": b"",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 401


@pytest.mark.anyio
async def test_invalid_token_challenge_says_invalid_token() -> None:
    app = make_app(backend=hs_backend())
    r = await get(app, headers=bearer(hs256(exp=1)))
    assert r.headers["www-authenticate"] == 'Bearer realm="kitmw", error="invalid_token"'


@pytest.mark.anyio
async def test_missing_token_challenge_has_no_error() -> None:
    app = make_app(backend=hs_backend())
    r = await get(app)
    assert r.headers["www-authenticate"] == 'Bearer realm="kitmw"'


# -- time claims with an injected clock -------------------------------------------------------


@pytest.mark.anyio
async def test_leeway_accepts_a_recently_expired_token() -> None:
    clock = FakeClock(time.time())
    app = make_app(backend=hs_backend(leeway=30, clock=clock))
    token = hs256(exp=int(clock.now) - 10)
    assert (await get(app, headers=bearer(token))).status_code == 200


@pytest.mark.anyio
async def test_leeway_is_bounded() -> None:
    clock = FakeClock(time.time())
    app = make_app(backend=hs_backend(leeway=30, clock=clock))
    token = hs256(exp=int(clock.now) - 31)
    assert (await get(app, headers=bearer(token))).status_code == 401


@pytest.mark.anyio
async def test_leeway_applies_to_nbf() -> None:
    clock = FakeClock(time.time())
    app = make_app(backend=hs_backend(leeway=30, clock=clock))
    assert (await get(app, headers=bearer(hs256(nbf=int(clock.now) + 20)))).status_code == 200


@pytest.mark.anyio
async def test_cached_token_stops_working_when_it_expires() -> None:
    clock = FakeClock(time.time())
    app = make_app(backend=hs_backend(clock=clock))
    token = hs256(exp=int(clock.now) + 60)
    assert (await get(app, headers=bearer(token))).status_code == 200
    clock.now += 61
    assert (await get(app, headers=bearer(token))).status_code == 401


@pytest.mark.anyio
async def test_required_claims_are_enforced() -> None:
    app = make_app(backend=hs_backend(required_claims=("exp", "jti")))
    assert (await get(app, headers=bearer(hs256()))).status_code == 401
    assert (await get(app, headers=bearer(hs256(jti="id-1")))).status_code == 200


@pytest.mark.anyio
async def test_exp_can_be_made_optional() -> None:
    app = make_app(backend=hs_backend(required_claims=()))
    assert (await get(app, headers=bearer(hs256(exp=None)))).status_code == 200


def test_verified_claims_cache_is_bounded() -> None:
    backend = hs_backend(cache_size=3)
    policy = AuthPolicy(backend=backend)
    for i in range(10):
        ex = NeutralExchange("GET", "/me", headers={"authorization": "Bearer " + hs256(jti=str(i))})
        assert policy.enter(ex) is None
    assert len(backend._cache) == 3


def test_repeated_token_is_served_from_the_cache() -> None:
    backend = hs_backend()
    token = hs256()
    first = backend.authenticate(NeutralExchange("GET", "/me", headers={"authorization": "Bearer " + token}))
    second = backend.authenticate(NeutralExchange("GET", "/me", headers={"authorization": "Bearer " + token}))
    assert first is second


def test_cached_token_is_not_taken_under_another_scheme() -> None:
    # The cache is keyed by the header value: a verified token sent again under another
    # scheme is still not this backend's, and the lower-case scheme still works.
    backend = hs_backend()
    token = hs256()
    request = NeutralExchange("GET", "/me", headers={"authorization": "Bearer " + token})
    assert backend.authenticate(request) is not None
    request = NeutralExchange("GET", "/me", headers={"authorization": "Basic " + token})
    assert backend.authenticate(request) is None
    request = NeutralExchange("GET", "/me", headers={"authorization": "bearer " + token})
    assert backend.authenticate(request) is not None


def test_async_drivers_call_enter_directly_unless_a_backend_does_io() -> None:
    # No coroutine per request for a static key; a JWKS backend keeps the awaiting aenter.
    static = AuthPolicy(backend=hs_backend())
    jwks = AuthPolicy(backend=JWT(jwks_url="https://idp.invalid/jwks", algorithms=["RS256"]))
    assert not static.hooks("asgi", True).enter_awaits
    assert jwks.hooks("asgi", True).enter_awaits
    assert not jwks.hooks("wsgi", False).enter_awaits  # the sync drivers call enter


def test_claims_are_read_only() -> None:
    backend = hs_backend()
    request = NeutralExchange("GET", "/me", headers={"authorization": "Bearer " + hs256(role="x")})
    principal = backend.authenticate(request)
    assert principal is not None and principal.claims is not None
    assert principal.claims["role"] == "x"
    with pytest.raises(TypeError):
        principal.claims["role"] = "admin"  # type: ignore[index]


# -- scopes and 403 --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_missing_scope_is_403_with_insufficient_scope_challenge() -> None:
    app = make_app(backend=hs_backend(), scopes={"/admin": ["admin", "audit"]})
    r = await get(app, "/admin/x", headers=bearer(hs256(scope="admin")))
    assert r.status_code == 403
    assert r.json() == {"error": "forbidden"}
    assert r.headers["www-authenticate"] == (
        'Bearer realm="kitmw", error="insufficient_scope", scope="admin audit"'
    )


@pytest.mark.anyio
async def test_required_scopes_present_pass() -> None:
    app = make_app(backend=hs_backend(), scopes={"/admin": ["admin"]})
    r = await get(app, "/admin/x", headers=bearer(hs256(scp=["admin"])))
    assert r.status_code == 200
    assert r.json() == {"admin": "alice"}


@pytest.mark.anyio
async def test_longest_scope_prefix_wins() -> None:
    app = make_app(backend=hs_backend(), scopes={"/": ["read"], "/admin": ["admin"]})
    token = hs256(scope="read")
    assert (await get(app, "/me", headers=bearer(token))).status_code == 200
    assert (await get(app, "/admin/x", headers=bearer(token))).status_code == 403


@pytest.mark.anyio
async def test_scope_prefix_matches_whole_segments() -> None:
    app = make_app(backend=hs_backend(), scopes={"/admin": ["admin"]})
    r = await get(app, "/administrator", headers=bearer(hs256()))
    assert r.status_code == 200


@pytest.mark.anyio
async def test_unauthenticated_request_to_scoped_path_is_401_not_403() -> None:
    app = make_app(backend=hs_backend(), scopes={"/admin": ["admin"]})
    assert (await get(app, "/admin/x")).status_code == 401


# -- Basic -----------------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


BASIC_USERS = {"ops": "correct horse", "ci": "battery staple", "zoë": "pässword"}


@pytest.mark.anyio
async def test_basic_good_credentials() -> None:
    app = make_app(backend=Basic(users=BASIC_USERS, scopes={"ops": ["deploy"]}))
    r = await get(app, headers=basic("ops", "correct horse"))
    assert r.status_code == 200
    assert r.json()["identity"] == "ops"
    assert r.json()["scopes"] == ["deploy"]


@pytest.mark.anyio
async def test_basic_utf8_credentials() -> None:
    app = make_app(backend=Basic(users=BASIC_USERS))
    assert (await get(app, headers=basic("zoë", "pässword"))).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(basic("ops", "wrong"), id="bad-password"),
        pytest.param(basic("mallory", "correct horse"), id="unknown-user"),
        pytest.param({"Authorization": "Basic !!!not-base64!!!"}, id="malformed-base64"),
        pytest.param({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, id="no-colon"),
        pytest.param({"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:x").decode()}, id="not-utf8"),
        pytest.param({"Authorization": "Basic "}, id="empty"),
        pytest.param({}, id="absent"),
    ],
)
async def test_basic_bad_credentials_get_401_with_basic_challenge(headers: dict[str, str]) -> None:
    app = make_app(backend=Basic(users=BASIC_USERS))
    r = await get(app, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Basic realm="kitmw", charset="UTF-8"'


@pytest.mark.anyio
async def test_basic_with_async_verify() -> None:
    async def verify(name: str, password: str) -> bool:
        return name == "svc" and password == "pw"

    app = make_app(backend=Basic(verify=verify))
    assert (await get(app, headers=basic("svc", "pw"))).status_code == 200
    assert (await get(app, headers=basic("svc", "nope"))).status_code == 401


def test_basic_with_sync_verify_on_the_sync_path() -> None:
    policy = AuthPolicy(backend=Basic(verify=lambda n, p: (n, p) == ("svc", "pw")))
    good = NeutralExchange("GET", "/", headers={"authorization": basic("svc", "pw")["Authorization"]})
    assert policy.enter(good) is None
    assert good.principal == "svc"


def test_basic_compares_every_user(monkeypatch: pytest.MonkeyPatch) -> None:
    # No early exit: the work is the same whatever the name, so timing tells nothing.
    import kitmw.auth.basic as basic_module

    compared: list[int] = []
    original = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        compared.append(1)
        return original(a, b)

    monkeypatch.setattr(basic_module.hmac, "compare_digest", counting)
    backend = Basic(users={f"user{i}": "pw" for i in range(5)})
    for name in ("user0", "nobody"):
        compared.clear()
        with pytest.raises(AuthError):
            wrong = basic(name, "bad")["Authorization"]
            request = NeutralExchange("GET", "/", headers={"authorization": wrong})
            backend.authenticate(request)
        assert len(compared) == 10


# -- API keys ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_api_key_good() -> None:
    app = make_app(backend=APIKey(keys={"k-123": "billing-svc"}, scopes={"billing-svc": "invoices"}))
    r = await get(app, headers={"X-API-Key": "k-123"})
    assert r.json() == {
        "identity": "billing-svc",
        "display_name": "billing-svc",
        "authenticated": True,
        "scopes": ["invoices"],
    }


@pytest.mark.anyio
async def test_api_key_bad() -> None:
    app = make_app(backend=APIKey(keys={"k-123": "billing-svc"}))
    r = await get(app, headers={"X-API-Key": "k-124"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'APIKey realm="kitmw", header="X-API-Key"'


@pytest.mark.anyio
async def test_api_key_from_hashed_configuration_and_custom_header() -> None:
    digest = hashlib.sha256(b"k-secret").hexdigest()
    app = make_app(backend=APIKey(keys={digest: "svc"}, hashed=True, header="X-Token"))
    assert (await get(app, headers={"X-Token": "k-secret"})).status_code == 200
    assert (await get(app, headers={"X-Token": digest})).status_code == 401


def test_api_key_keeps_no_plaintext_keys() -> None:
    backend = APIKey(keys={"k-plaintext": "svc"})
    assert "k-plaintext" not in repr(vars(backend) if hasattr(backend, "__dict__") else backend._keys)
    assert all(isinstance(k, bytes) and len(k) == 32 for k in backend._keys)


# -- several backends ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_backends_are_tried_in_order() -> None:
    app = make_app(backend=[APIKey(keys={"k": "svc"}), hs_backend()])
    both = {"X-API-Key": "k", **bearer(hs256())}
    assert (await get(app, headers=both)).json()["identity"] == "svc"
    assert (await get(app, headers=bearer(hs256()))).json()["identity"] == "alice"


@pytest.mark.anyio
async def test_credentials_refused_by_one_backend_are_offered_to_the_next() -> None:
    other = JWT(key="second-issuer-secret-0123456789abc", algorithms=["HS256"])
    app = make_app(backend=[hs_backend(), other])
    token = jwt.encode({"sub": "carol", "exp": int(time.time()) + 60}, "second-issuer-secret-0123456789abc")
    assert (await get(app, headers=bearer(token))).json()["identity"] == "carol"


@pytest.mark.anyio
async def test_401_lists_a_challenge_per_backend() -> None:
    app = make_app(backend=[hs_backend(), Basic(users=BASIC_USERS)])
    r = await get(app, headers=bearer("garbage"))
    assert r.headers.get_list("www-authenticate") == [
        'Bearer realm="kitmw", error="invalid_token"',
        'Basic realm="kitmw", charset="UTF-8"',
    ]


# -- exemptions, preflight, optional ----------------------------------------------------------

PREFLIGHT = {"Origin": "https://ui.example", "Access-Control-Request-Method": "GET"}


@pytest.mark.anyio
async def test_excluded_paths_need_no_credentials() -> None:
    app = make_app(backend=hs_backend(), exclude_paths=["/health"])
    assert (await get(app, "/health")).status_code == 200
    assert (await get(app, "/healthz-admin")).status_code == 401


def _fastapi_reading_the_user() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        return {"authenticated": request.user.is_authenticated, "scopes": list(request.auth.scopes)}

    return app


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["add_middleware", "stack"])
async def test_an_excluded_path_sees_an_unauthenticated_user(how: str) -> None:
    app: Any = _fastapi_reading_the_user()
    if how == "stack":
        app = kitmw.stack(app, auth=hs_backend(), exclude_paths=["/health"])
    else:
        app.add_middleware(kitmw.Auth, backend=hs_backend(), exclude_paths=["/health"])
    r = await get(app, "/health")
    assert (r.status_code, r.json()) == (200, {"authenticated": False, "scopes": []})


@pytest.mark.anyio
async def test_a_user_set_by_a_layer_outside_is_kept_on_an_excluded_path() -> None:
    from starlette.authentication import AuthCredentials, SimpleUser

    inner = _fastapi_reading_the_user()
    inner.add_middleware(kitmw.Auth, backend=hs_backend(), exclude_paths=["/health"])

    async def outer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["user"], scope["auth"] = SimpleUser("ops"), AuthCredentials(["ops"])
        await inner(scope, receive, send)

    r = await get(outer, "/health")
    assert r.json() == {"authenticated": True, "scopes": ["ops"]}


def _starlette_admin(seen: list[Any]) -> Any:
    """A Starlette app whose /admin view answers OPTIONS itself (and records who asked)."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def admin(request: Any) -> PlainTextResponse:
        seen.append(request.user.is_authenticated)
        return PlainTextResponse("admin data")

    return Starlette(routes=[Route("/admin", admin, methods=["GET", "OPTIONS"])])


@pytest.mark.anyio
async def test_a_preflight_never_reaches_a_protected_view_by_default() -> None:
    seen: list[Any] = []
    app = kitmw.Auth(_starlette_admin(seen), backend=hs_backend())
    r = await get(app, "/admin", headers=PREFLIGHT, method="OPTIONS")
    assert r.status_code == 401
    assert seen == []


@pytest.mark.anyio
async def test_allow_options_admits_preflights_with_an_unauthenticated_user() -> None:
    seen: list[Any] = []
    app = kitmw.Auth(_starlette_admin(seen), backend=hs_backend(), allow_options=True)
    assert (await get(app, "/admin", headers=PREFLIGHT, method="OPTIONS")).status_code == 200
    assert seen == [False]  # the explicit choice: the view runs, and knows nobody asked
    assert (await get(app, "/admin", method="OPTIONS")).status_code == 401  # not a preflight


@pytest.mark.anyio
async def test_cors_middleware_outside_auth_answers_preflights_and_labels_401s() -> None:
    inner = FastAPI()

    @inner.get("/me")
    async def me(request: Request) -> dict[str, str]:
        return {"id": request.user.identity}

    inner.add_middleware(kitmw.Auth, backend=hs_backend())
    # Added last, so outermost: it answers preflights itself, auth never sees them.
    inner.add_middleware(CORSMiddleware, allow_origins=["https://ui.example"], allow_headers=["Authorization"])
    r = await get(inner, headers={**PREFLIGHT, "Access-Control-Request-Headers": "authorization"}, method="OPTIONS")
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://ui.example"
    r = await get(inner, headers={"Origin": "https://ui.example"})
    assert r.status_code == 401  # the browser can read this 401: it carries the CORS headers
    assert r.headers["access-control-allow-origin"] == "https://ui.example"
    r = await get(inner, headers={"Origin": "https://ui.example", **bearer(hs256())})
    assert (r.status_code, r.json()) == (200, {"id": "alice"})


@pytest.mark.anyio
async def test_cors_middleware_inside_auth_gets_no_preflight_by_default() -> None:
    inner = FastAPI()
    inner.add_middleware(CORSMiddleware, allow_origins=["https://ui.example"], allow_methods=["GET"])
    inner.add_middleware(kitmw.Auth, backend=hs_backend())
    assert (await get(inner, headers=PREFLIGHT, method="OPTIONS")).status_code == 401


@pytest.mark.anyio
async def test_plain_options_request_still_needs_credentials() -> None:
    app = make_app(backend=hs_backend())
    assert (await get(app, method="OPTIONS")).status_code == 401


def _flask_admin(seen: list[Any]) -> Any:
    from flask import Flask, request

    app = Flask(__name__)

    @app.route("/admin", methods=["GET", "OPTIONS"])
    def admin() -> str:
        seen.append((request.environ.get("kitmw.user"), request.environ.get("REMOTE_USER")))
        return "admin data"

    @app.route("/health")
    def health() -> dict[str, Any]:
        env = request.environ
        return {"user": env["kitmw.user"], "scopes": sorted(env["kitmw.scopes"]), "remote": env.get("REMOTE_USER")}

    return app


def test_flask_a_preflight_never_reaches_a_view_that_handles_options_by_default() -> None:
    seen: list[Any] = []
    app = _flask_admin(seen)
    app.wsgi_app = kitmw.wsgi.Auth(app.wsgi_app, backend=hs_backend())  # type: ignore[method-assign]
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as c:
        assert c.options("/admin", headers=PREFLIGHT).status_code == 401
        assert seen == []
        assert c.options("/admin", headers={**PREFLIGHT, **bearer(hs256())}).status_code == 200
    assert len(seen) == 1 and seen[0][1] == "alice"


def test_flask_allow_options_admits_preflights_without_a_user() -> None:
    seen: list[Any] = []
    app = _flask_admin(seen)
    app.wsgi_app = kitmw.wsgi.Auth(app.wsgi_app, backend=hs_backend(), allow_options=True)  # type: ignore[method-assign]
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as c:
        assert c.options("/admin", headers=PREFLIGHT).status_code == 200
    assert seen == [(None, None)]


def test_flask_cors_inside_the_app_keeps_working_with_allow_options() -> None:
    from flask import Flask, Response, request

    app = Flask(__name__)

    @app.get("/orders")
    def orders() -> str:
        return "orders"

    @app.after_request
    def cors(response: Response) -> Response:  # what flask-cors does, reduced
        if request.headers.get("Origin") == "https://ui.example":
            response.headers["Access-Control-Allow-Origin"] = "https://ui.example"
            response.headers["Access-Control-Allow-Headers"] = "Authorization"
        return response

    app.wsgi_app = kitmw.wsgi.Auth(app.wsgi_app, backend=hs_backend(), allow_options=True)  # type: ignore[method-assign]
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as c:
        r = c.options("/orders", headers=PREFLIGHT)  # Flask's automatic OPTIONS answer, no view runs
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        assert c.get("/orders", headers={"Origin": "https://ui.example"}).status_code == 401


def test_flask_an_excluded_path_sees_no_user_in_the_environ() -> None:
    app = _flask_admin([])
    app.wsgi_app = kitmw.wsgi.Auth(app.wsgi_app, backend=hs_backend(), exclude_paths=["/health"])  # type: ignore[method-assign]
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as c:
        r = c.get("/health")
    assert (r.status_code, r.json()) == (200, {"user": None, "scopes": [], "remote": None})


@pytest.mark.anyio
async def test_optional_lets_anonymous_requests_through() -> None:
    app = make_app(backend=hs_backend(), optional=True)
    r = await get(app)
    assert r.status_code == 200
    assert r.json() == {"identity": None, "display_name": "", "authenticated": False, "scopes": []}


@pytest.mark.anyio
async def test_optional_still_protects_scoped_prefixes() -> None:
    app = make_app(backend=hs_backend(), optional=True, scopes={"/admin": []})
    assert (await get(app, "/admin/x")).status_code == 401
    assert (await get(app, "/admin/x", headers=bearer(hs256()))).status_code == 200


@pytest.mark.anyio
async def test_optional_still_refuses_bad_credentials() -> None:
    app = make_app(backend=hs_backend(), optional=True)
    assert (await get(app, headers=bearer(hs256(exp=1)))).status_code == 401


# -- websockets ---------------------------------------------------------------------------------


async def _websocket(app: Any, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "scheme": "ws",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "subprotocols": [],
        "asgi": {"version": "3.0"},
    }
    await app(scope, receive, send)
    return sent


@pytest.mark.anyio
async def test_websocket_without_credentials_is_closed_with_1008() -> None:
    sent = await _websocket(make_app(backend=hs_backend()), [])
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "unauthorized"}]


@pytest.mark.anyio
async def test_websocket_with_a_token_is_accepted_and_sees_the_user() -> None:
    token = hs256().encode()
    sent = await _websocket(make_app(backend=hs_backend()), [(b"authorization", b"Bearer " + token)])
    assert sent[0]["type"] == "websocket.accept"
    assert sent[1] == {"type": "websocket.send", "text": "alice"}


@pytest.mark.anyio
async def test_websocket_missing_scope_is_closed_with_1008() -> None:
    token = hs256().encode()
    app = make_app(backend=hs_backend(), scopes={"/ws": ["chat"]})
    sent = await _websocket(app, [(b"authorization", b"Bearer " + token)])
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "forbidden"}]


# -- the exchange, stack() and the policy on its own ------------------------------------------


def test_policy_records_principal_and_scopes_on_the_exchange() -> None:
    policy = AuthPolicy(backend=hs_backend())
    ex = NeutralExchange("GET", "/me", headers={"authorization": "Bearer " + hs256(scope="a b")})
    assert policy.enter(ex) is None
    assert ex.principal == "alice"
    assert ex.scopes == frozenset({"a", "b"})
    assert ex.claims["sub"] == "alice"


def test_policy_returns_rejections_not_exceptions() -> None:
    policy = AuthPolicy(backend=hs_backend())
    answer = policy.enter(NeutralExchange("GET", "/me", headers={"authorization": "Bearer nope"}))
    assert isinstance(answer, Rejection)
    assert (answer.status, answer.code) == (401, "unauthorized")


@pytest.mark.anyio
async def test_principal_reaches_later_policies() -> None:
    seen: list[Any] = []

    class Spy(Policy):
        def enter(self, ex: Exchange) -> Rejection | None:
            seen.append((ex.principal, sorted(ex.scopes)))
            return None

    inner = make_app(backend=hs_backend(), exclude_paths=["/*"])  # the app's own auth is off
    app = kitmw.asgi.Middleware(inner, AuthPolicy(backend=hs_backend()), Spy())
    r = await get(app, "/health", headers=bearer(hs256(scope="x")))
    assert r.status_code == 200
    assert seen == [("alice", ["x"])]


@pytest.mark.anyio
async def test_stack_accepts_a_backend() -> None:
    inner = FastAPI()

    @inner.get("/me")
    async def me(request: Request) -> dict[str, str]:
        return {"id": request.user.identity}

    app = kitmw.stack(inner, auth=hs_backend(), exclude_paths=["/health"])
    assert (await get(app, headers=bearer(hs256()))).json() == {"id": "alice"}
    assert (await get(app)).status_code == 401
    assert (await get(app, "/health")).status_code == 404  # excluded, so the app answers


def test_policy_attributes() -> None:
    assert AuthPolicy.name == "auth"
    assert AuthPolicy.handles_websocket is True
    assert set(AuthPolicy.shared_options) == {"exclude_paths", "registry"}


def test_principal_has_the_starlette_user_interface() -> None:
    user = Principal("alice", ["a"], {"sub": "alice"}, "jwt")
    assert (user.identity, user.display_name, user.is_authenticated) == ("alice", "alice", True)
    assert user.scopes == frozenset({"a"})


class _Badge(Principal):
    """A backend's own principal class, with a slot and a private slot of its own."""

    __slots__ = ("__pin", "team")

    def __init__(self, identity: str, team: str) -> None:
        super().__init__(identity, ["read"], None, "badge")
        self.team = team
        self.__pin = "1234"

    @property
    def pin(self) -> str:
        return self.__pin


class _BadgeBackend(Backend):
    name = "badge"

    def authenticate(self, ex: Exchange) -> Principal | None:
        team = ex.header("x-team")
        return None if team is None else _Badge("bob", team)


def _who_app(seen: list[Any]) -> FastAPI:
    app = FastAPI()

    @app.get("/who")
    async def who(request: Request) -> dict[str, Any]:
        seen.append(request.user)
        return {"identity": request.user.identity, "scopes": request.auth.scopes}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        seen.append(websocket.user)
        await websocket.accept()
        await websocket.close()

    return app


@pytest.mark.anyio
async def test_request_user_is_the_principal_and_a_starlette_user() -> None:
    from starlette.authentication import BaseUser
    from starlette.testclient import TestClient

    seen: list[Any] = []
    app = kitmw.Auth(_who_app(seen), backend=[hs_backend(), _BadgeBackend()])
    async with client(app) as c:
        for _ in range(2):  # the second request gets the remembered twin of the cached principal
            r = await c.get("/who", headers=bearer(hs256(scope="b a")))
            assert r.json() == {"identity": "alice", "scopes": ["a", "b"]}
        r = await c.get("/who", headers={"X-Team": "ops"})
        assert r.json() == {"identity": "bob", "scopes": ["read"]}
    with TestClient(app).websocket_connect("/ws", headers={"X-Team": "dev"}):
        pass
    jwt_user, again, badge, ws_user = seen
    for user in seen:
        assert isinstance(user, BaseUser) and isinstance(user, Principal)
        assert user.is_authenticated
    assert jwt_user is again
    assert jwt_user == Principal("alice", ["a", "b"], None, "jwt") and jwt_user.claims["sub"] == "alice"
    assert type(jwt_user).__name__ == "Principal" and repr(jwt_user).startswith("Principal('alice'")
    assert isinstance(badge, _Badge) and (badge.team, badge.pin, badge.backend) == ("ops", "1234", "badge")
    assert isinstance(ws_user, _Badge) and ws_user.team == "dev"


@pytest.mark.anyio
async def test_a_backend_may_return_a_starlette_user_of_its_own() -> None:
    from starlette.authentication import SimpleUser

    class Staff(SimpleUser):
        scopes = frozenset({"staff"})

        @property
        def identity(self) -> str:
            return self.username

    staff = Staff("carol")

    class StaffBackend(Backend):
        def authenticate(self, ex: Exchange) -> Any:
            return staff

    seen: list[Any] = []
    app = kitmw.Auth(_who_app(seen), backend=StaffBackend())
    r = await get(app, "/who")
    assert r.json() == {"identity": "carol", "scopes": ["staff"]}
    assert seen == [staff] and seen[0] is staff


@pytest.mark.anyio
async def test_starlettes_requires_decorator_reads_kitmws_scopes() -> None:
    from starlette.applications import Starlette
    from starlette.authentication import requires
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    @requires("write")
    async def edit(request: Any) -> PlainTextResponse:
        return PlainTextResponse(f"edited by {request.user.display_name}")

    app = kitmw.Auth(Starlette(routes=[Route("/edit", edit)]), backend=hs_backend())
    assert (await get(app, "/edit", headers=bearer(hs256(scope="read")))).status_code == 403
    r = await get(app, "/edit", headers=bearer(hs256(scope="read write")))
    assert (r.status_code, r.text) == (200, "edited by alice")


def _run_fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_importing_auth_and_wsgi_does_not_load_starlette() -> None:
    code = "import sys\nimport kitmw.auth, kitmw.wsgi\nprint(sorted(m for m in sys.modules if m.startswith('starlette')))\n"
    assert _run_fresh(code).strip() == "[]"


@pytest.mark.parametrize("how", ["wsgi.Auth", "stack"])
def test_a_flask_app_under_wsgi_auth_never_loads_starlette(how: str) -> None:
    code = f"""
import sys, jwt, httpx
from flask import Flask, request
import kitmw, kitmw.wsgi
from kitmw.auth import JWT, Basic

app = Flask("plain")

@app.get("/me")
def me():
    return {{"user": request.environ["kitmw.user"].identity, "remote": request.environ["REMOTE_USER"]}}

backend = [JWT(key={SECRET!r}, algorithms=["HS256"], audience={AUD!r}), Basic(users={{"ops": "pw"}})]
if {how!r} == "stack":
    app.wsgi_app = kitmw.stack(app.wsgi_app, auth=backend, tracing=True, access_log=True, ratelimit="100/second", breaker=True)
else:
    app.wsgi_app = kitmw.wsgi.Auth(app.wsgi_app, backend=backend)
token = jwt.encode({{"sub": "alice", "aud": {AUD!r}, "exp": 4102444800}}, {SECRET!r}, algorithm="HS256")
with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as c:
    assert c.get("/me", headers={{"Authorization": "Bearer " + token}}).json() == {{"user": "alice", "remote": "alice"}}
    assert c.get("/me", auth=("ops", "pw")).json() == {{"user": "ops", "remote": "ops"}}
    assert c.get("/me").status_code == 401
print(sorted(m for m in sys.modules if m.startswith("starlette")))
"""
    assert _run_fresh(code).strip() == "[]"


def test_scope_rules_read_the_mount_prefix_of_any_exchange() -> None:
    policy = AuthPolicy(backend=APIKey(keys={"k-user": "user"}), scopes={"/admin": ["admin"]})
    # mounted under /api (ASGI root_path, WSGI SCRIPT_NAME): the full path, as every driver gives it
    request = NeutralExchange("GET", "/api/admin/users", headers={"x-api-key": "k-user"}, mount_prefix="/api")
    answer = policy.enter(request)
    assert answer is not None and answer.status == 403  # /admin, as the mounted app routes it
    request = NeutralExchange("GET", "/api/other", headers={"x-api-key": "k-user"}, mount_prefix="/api")
    assert policy.enter(request) is None


# -- configuration errors ----------------------------------------------------------------------


def _config_cases() -> list[Any]:
    return [
        (lambda: JWT(algorithms=["HS256"]), "jwks_url"),
        (lambda: JWT(key=SECRET, jwks_url="https://x/jwks", algorithms=["RS256"]), "jwks_url"),
        (lambda: JWT(key=SECRET), "algorithms"),
        (lambda: JWT(key=SECRET, algorithms=[]), "algorithms"),
        (lambda: JWT(key=SECRET, algorithms="HS256"), "algorithms"),  # type: ignore[arg-type]
        (lambda: JWT(key=SECRET, algorithms=["none"]), "none"),
        (lambda: JWT(key=SECRET, algorithms=["HS256", "none"]), "none"),
        (lambda: JWT(key=SECRET, algorithms=["HS256", "RS256"]), "mixing"),
        (lambda: JWT(key=SECRET, algorithms=["HS999"]), "algorithms"),
        (lambda: JWT(key=PUBLIC_PEM, algorithms=["HS256"]), "key"),
        (lambda: JWT(key=PUBLIC_PEM.decode(), algorithms=["HS256"]), "key"),
        (lambda: JWT(key="short", algorithms=["HS256"]), "32 bytes"),
        (lambda: JWT(key=SECRET, algorithms=["RS256"]), "key"),
        (lambda: JWT(jwks_url="https://idp.example/jwks", algorithms=["HS256"]), "jwks_url"),
        (lambda: JWT(jwks_url="ftp://idp.example/jwks", algorithms=["RS256"]), "jwks_url"),
        (lambda: JWT(key=SECRET, algorithms=["HS256"], leeway=-1), "leeway"),
        (lambda: JWT(key=SECRET, algorithms=["HS256"], cache_size=-1), "cache_size"),
        (lambda: JWT(key=SECRET, algorithms=["HS256"], jwks_cache_ttl=0), "jwks_cache_ttl"),
        (lambda: JWT(key=SECRET, algorithms=["HS256"], jwks_refresh_cooldown=0), "jwks_refresh_cooldown"),
        (lambda: JWT(key=SECRET, algorithms=["HS256"], jwks_refresh_cooldown=10, jwks_max_backoff=5), "jwks_max_backoff"),
        (lambda: Basic(), "users"),
        (lambda: Basic(users={"a": "b"}, verify=lambda n, p: True), "users"),
        (lambda: Basic(users={"a:b": "c"}), "users"),
        (lambda: APIKey(keys={}), "keys"),
        (lambda: APIKey(keys={"abc": "svc"}, hashed=True), "keys"),
        (lambda: AuthPolicy(backend=None), "backend"),  # type: ignore[arg-type]
        (lambda: AuthPolicy(backend=[]), "backend"),
        (lambda: AuthPolicy(backend="jwt"), "backend"),  # type: ignore[arg-type]
        (lambda: AuthPolicy(backend=hs_backend(), scopes={"admin": ["x"]}), "scopes"),
        (lambda: AuthPolicy(backend=hs_backend(), exclude_paths=["health"]), "exclude_paths"),
    ]


@pytest.mark.parametrize(("build", "needle"), _config_cases())
def test_bad_options_raise_config_error_naming_the_option(build: Callable[[], Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build()


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="algorithms"):
        JWT(key=SECRET)


def test_kitmw_auth_imports_without_pyjwt() -> None:
    code = (
        "import sys; sys.modules['jwt'] = None\n"
        "import kitmw.auth\n"
        "kitmw.auth.Basic(users={'a': 'b'}); kitmw.auth.APIKey(keys={'k': 'p'})\n"
        "try:\n"
        "    kitmw.auth.JWT(key='x' * 32, algorithms=['HS256'])\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "kitmw[jwt]" in out.stdout


# -- the WSGI twin runs the same policy through its sync side ---------------------------------


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{environ.get('REMOTE_USER')} {sorted(environ.get('kitmw.scopes', ()))}".encode()]


def test_wsgi_auth_with_a_token() -> None:
    app = kitmw.wsgi.Auth(_wsgi_app, backend=hs_backend())
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as c:
        r = c.get("/", headers=bearer(hs256(scope="a")))
    assert (r.status_code, r.text) == (200, "alice ['a']")


def test_wsgi_auth_without_credentials_is_401_with_challenge() -> None:
    app = kitmw.wsgi.Auth(_wsgi_app, backend=[hs_backend(), Basic(users=BASIC_USERS)])
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as c:
        r = c.get("/")
    assert r.status_code == 401
    assert r.json() == {"error": "unauthorized"}
    assert len(r.headers.get_list("www-authenticate")) == 2


def test_wsgi_optional_anonymous_sets_no_remote_user() -> None:
    app = kitmw.wsgi.Auth(_wsgi_app, backend=hs_backend(), optional=True)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as c:
        r = c.get("/")
    assert (r.status_code, r.text) == (200, "None []")
