"""JWT answers that must not depend on the installed PyJWT (``kitmw[jwt]`` admits 2.8 and later).

Every token here is correctly signed unless its id says otherwise; what differs is a
detail that some PyJWT versions accept and others refuse (kid type, ``crit``, ``b64``,
base64url spelling, ``iss``/``sub``/``jti``, ECDSA curves, keys bound to an algorithm).
kitmw checks these itself, so the table holds on every version: run this file with
``PyJWT==2.8.0`` as well as the latest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import kitmw
from kitmw.auth import JWT, AuthError
from kitmw.errors import ConfigError

SECRET = b"kitmw-test-secret-0123456789abcdef"
ISSUER = "https://issuer.example"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_P384 = ec.generate_private_key(ec.SECP384R1())
HS = {"alg": "HS256", "typ": "JWT"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def padded(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def segment(value: Any) -> str:
    return value if isinstance(value, str) else b64(json.dumps(value).encode())


def good_claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 3600, **extra}


def hs256(header: Any = HS, payload: Any = None, mangle: Callable[[str], str] | None = None) -> str:
    """A token signed with SECRET over exactly the segments it carries."""
    signing_input = f"{segment(header)}.{segment(good_claims() if payload is None else payload)}"
    signature = b64(hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{mangle(signature) if mangle else signature}"


def rs(header: dict[str, Any], digest: hashes.HashAlgorithm) -> str:
    signing_input = f"{segment(header)}.{segment(good_claims())}"
    return f"{signing_input}.{b64(RSA_KEY.sign(signing_input.encode(), padding.PKCS1v15(), digest))}"


def es_p384(alg: str, digest: hashes.HashAlgorithm) -> str:
    signing_input = f"{segment({'alg': alg})}.{segment(good_claims())}"
    r, s = decode_dss_signature(EC_P384.sign(signing_input.encode(), ec.ECDSA(digest)))
    return f"{signing_input}.{b64(r.to_bytes(48, 'big') + s.to_bytes(48, 'big'))}"


def unused_bits_set(sig: str) -> str:
    """The same signature bytes, spelled with a non-zero unused bit in the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return sig[:-1] + alphabet[alphabet.index(sig[-1]) ^ 1]


def hs_padded_everywhere() -> str:
    # Padding in the signed segments too, signed as sent: valid except for the padding.
    head = padded(json.dumps({**HS, "x": "1"}).encode())
    body = next(b for n in range(3) if (b := padded(json.dumps(good_claims(pad="x" * n)).encode())).endswith("="))
    signature = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{padded(signature)}"


def rsa_jwk(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)
    return {**data, **extra}


def pem(key: Any) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


BACKENDS: dict[str, Callable[[], JWT]] = {
    "hs": lambda: JWT(key=SECRET, algorithms=["HS256"]),
    "hs-email": lambda: JWT(key=SECRET, algorithms=["HS256"], principal_claim="email"),
    "hs-issuer": lambda: JWT(key=SECRET, algorithms=["HS256"], issuer=ISSUER),
    "hs-issuers": lambda: JWT(key=SECRET, algorithms=["HS256"], issuer=[ISSUER, "https://other.example"]),
    # A JWK naming its alg verifies that algorithm only, even with more configured.
    "rs-jwk-bound": lambda: JWT(key=rsa_jwk(alg="RS256"), algorithms=["RS256", "RS512"]),
    "ec-p384": lambda: JWT(key=pem(EC_P384), algorithms=["ES256", "ES384"]),
}


def _cases() -> list[Any]:
    good = good_claims()
    refused = [
        ("kid-integer", "hs", hs256({**HS, "kid": 7})),
        ("kid-null", "hs", hs256({**HS, "kid": None})),
        ("kid-list", "hs", hs256({**HS, "kid": ["k1"]})),
        ("kid-object", "hs", hs256({**HS, "kid": {"k": 1}})),
        ("alg-list", "hs", hs256({"alg": ["HS256"]})),
        ("alg-lower-case", "hs", hs256({"alg": "hs256"})),
        ("alg-missing", "hs", hs256({"typ": "JWT"})),
        ("crit-unknown", "hs", hs256({**HS, "crit": ["exp"], "exp": 1})),
        ("crit-empty", "hs", hs256({**HS, "crit": []})),
        ("crit-not-a-list", "hs", hs256({**HS, "crit": "b64"})),
        ("crit-b64", "hs", hs256({**HS, "crit": ["b64"], "b64": True})),
        ("b64-true-without-crit", "hs", hs256({**HS, "b64": True})),
        ("b64-false", "hs", hs256({**HS, "b64": False, "crit": ["b64"]})),
        ("signature-padded", "hs", hs256(mangle=lambda s: s + "=" * (-len(s) % 4))),
        ("every-segment-padded", "hs", hs_padded_everywhere()),
        ("signature-unused-bits-set", "hs", hs256(mangle=unused_bits_set)),
        ("signature-standard-alphabet", "hs", _standard_alphabet()),
        ("four-segments", "hs", hs256() + ".x"),
        ("empty-signature", "hs", hs256().rsplit(".", 1)[0] + "."),
        ("header-not-an-object", "hs", hs256(b64(b"[1]"))),
        ("header-not-json", "hs", hs256(b64(b"{alg"))),
        ("header-utf-16", "hs", hs256(b64(json.dumps(HS).encode("utf-16")))),
        ("sub-integer", "hs-email", hs256(payload={**good, "sub": 5, "email": "a@example.com"})),
        ("jti-integer", "hs", hs256(payload={**good, "jti": 5})),
        ("iss-a-substring-of-the-issuer", "hs-issuer", hs256(payload={**good, "iss": "issuer"})),
        ("iss-a-list", "hs-issuers", hs256(payload={**good, "iss": [ISSUER]})),
        ("iss-missing", "hs-issuer", hs256(payload=good)),
        ("alg-other-than-the-jwk-bound-one", "rs-jwk-bound", rs({"alg": "RS512"}, hashes.SHA256())),
        ("es256-with-a-p384-key", "ec-p384", es_p384("ES256", hashes.SHA256())),
    ]
    accepted = [
        ("plain", "hs", hs256()),
        ("kid-a-string", "hs", hs256({**HS, "kid": "k1"})),
        ("typ-at+jwt", "hs", hs256({"alg": "HS256", "typ": "at+jwt"})),
        ("iss-exact", "hs-issuer", hs256(payload={**good, "iss": ISSUER})),
        ("iss-one-of-a-list", "hs-issuers", hs256(payload={**good, "iss": "https://other.example"})),
        ("jwk-bound-alg", "rs-jwk-bound", rs({"alg": "RS256"}, hashes.SHA256())),
        ("es384-with-a-p384-key", "ec-p384", es_p384("ES384", hashes.SHA384())),
    ]
    return [pytest.param(backend, token, 401, id=name) for name, backend, token in refused] + [
        pytest.param(backend, token, 200, id=name) for name, backend, token in accepted
    ]


def _standard_alphabet() -> str:
    """A token whose signature has a '-' or '_', spelled with '+' and '/' instead."""
    for i in range(100):
        token = hs256(payload=good_claims(jti=str(i)))
        sig = token.rsplit(".", 1)[1]
        if "-" in sig or "_" in sig:
            return token.replace(sig, sig.replace("-", "+").replace("_", "/"))
    raise AssertionError("no signature with '-' or '_' in 100 tries")


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.user.identity})


@pytest.mark.anyio
@pytest.mark.parametrize(("backend", "token", "expected"), _cases())
async def test_the_answer_does_not_depend_on_the_pyjwt_version(backend: str, token: str, expected: int) -> None:
    app = kitmw.Auth(Starlette(routes=[Route("/", whoami)]), backend=BACKENDS[backend]())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.get("/", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == expected, r.text
    if expected == 401:
        assert r.headers["www-authenticate"] == 'Bearer realm="kitmw", error="invalid_token"'


def test_the_sync_side_gives_the_same_answers() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["REMOTE_USER"].encode()]

    wsgi = kitmw.wsgi.Auth(app, backend=BACKENDS["hs"]())
    with httpx.Client(transport=httpx.WSGITransport(app=wsgi), base_url="http://t") as client:
        assert client.get("/", headers={"Authorization": f"Bearer {hs256()}"}).status_code == 200
        for header in ({**HS, "kid": 7}, {**HS, "crit": ["exp"]}, {**HS, "b64": True}):
            assert client.get("/", headers={"Authorization": f"Bearer {hs256(header)}"}).status_code == 401


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        pytest.param(lambda: JWT(key=pem(EC_P384), algorithms=["ES256"]), "secp256r1", id="ec-curve-mismatch"),
        pytest.param(
            lambda: JWT(key=json.dumps({"kty": "oct", "k": b64(SECRET)}), algorithms=["HS256"]),
            "JWK",
            id="jwk-json-as-hmac-secret",
        ),
        pytest.param(
            lambda: JWT(
                key=RSA_KEY.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
                algorithms=["HS256"],
            ),
            "DER",
            id="der-key-as-hmac-secret",
        ),
        pytest.param(
            lambda: JWT(key=rsa_jwk(alg="RS512"), algorithms=["RS256"]), "RS512", id="jwk-bound-elsewhere"
        ),
    ],
)
def test_keys_are_judged_alike_on_every_version(build: Callable[[], Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build()



def test_a_header_seen_before_is_not_decoded_again_and_a_refused_one_is_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tokens of one issuer share their JOSE header: a token missing the claims cache
    reuses the checked (alg, kid) of its header segment (issue 16: uncached verification
    cost). A refused header is decoded (and refused) every time; the cache is bounded."""
    import kitmw.auth.jwt as jwt_module

    decoded: list[str] = []
    real = jwt_module._decode_head

    def counting(head: str) -> dict[str, Any]:
        decoded.append(head)
        return real(head)

    monkeypatch.setattr(jwt_module, "_decode_head", counting)
    secret = "a-secret-of-at-least-48-bytes-0123456789abcdefghij"
    backend = JWT(key=secret, algorithms=["HS256"], cache_size=0)

    class Ex:
        def __init__(self, token: str) -> None:
            self.value = "Bearer " + token

        def header(self, name: str) -> str | None:
            return self.value

    exp = int(time.time()) + 600
    for i in range(3):
        token = jwt.encode({"sub": f"user-{i}", "exp": exp}, secret, algorithm="HS256")
        principal = backend.authenticate(Ex(token))  # type: ignore[arg-type]
        assert principal is not None and principal.identity == f"user-{i}"
    assert len(decoded) == 1
    bad = jwt.encode({"sub": "x", "exp": exp}, secret, algorithm="HS384")
    for _ in range(2):
        with pytest.raises(AuthError, match="algorithm not allowed"):
            backend.authenticate(Ex(bad))  # type: ignore[arg-type]
    assert len(decoded) == 3
    for i in range(200):  # distinct accepted headers (a kid each): the cache stays bounded
        token = jwt.encode({"sub": "u", "exp": exp}, secret, algorithm="HS256", headers={"kid": f"k{i}"})
        backend.authenticate(Ex(token))  # type: ignore[arg-type]
    assert len(backend._joses) <= jwt_module._JOSE_CACHE_SIZE
