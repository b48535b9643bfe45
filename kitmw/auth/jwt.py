"""Bearer JWT backend: static keys or a JWKS URL, verified by PyJWT.

PyJWT checks signatures, algorithms, audience and required claims. Three things live
here because PyJWT cannot do them with an injected clock, without blocking an event
loop, or the same way on every version that ``kitmw[jwt]`` admits (``PyJWT>=2.8``):

* the token's shape and JOSE header are checked before PyJWT sees it (:func:`_jose_header`,
  ``JWT._jose``), and ``iss``/``sub``/``jti`` after it, by the strictest rules any
  admitted PyJWT applies, so every version gives the same answer (docs/auth.md lists them);
* the time claims (``exp``, ``nbf``, ``iat``) are checked with ``clock`` (same rules as
  PyJWT: integers, ``leeway`` seconds of grace), so the verified-claims cache and the
  checks agree on what "now" is, and tests never sleep;
* the JWKS key set is fetched with httpx on the async side (urllib in a thread when
  httpx is missing) and urllib on the sync side, cached for ``jwks_cache_ttl``, fetched
  again on an unknown ``kid``: one fetch at a time (concurrent misses share it), at most
  one per ``jwks_refresh_cooldown`` (a flood of random kids cannot hammer the identity
  provider, nor delay a rotation by more than that), backing off up to ``jwks_max_backoff``
  while fetches fail, and a failed fetch keeps the last good keys (a JWKS outage never
  becomes an auth outage).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from .._cache import BoundedCache
from .._types import Clock
from ..errors import ConfigError
from ..exchange import Exchange
from ._base import AuthError, Backend, KeysUnavailable, Principal, quote

__all__ = ["JWT", "JWKSCache"]

logger = logging.getLogger("kitmw.auth")

_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
#: A JWKS document larger than this is refused (a hostile or broken endpoint).
_MAX_JWKS_BYTES = 1 << 20

_USE = 0  # use the key found (or fail without it)
_FETCH = 1  # this caller fetches the key set
_WAIT = 2  # another caller is fetching: wait for it

#: A key and the algorithms it verifies (one when the JWK names its ``alg``).
KeyEntry = tuple[Any, tuple[str, ...]]

#: A compact JWS (RFC 7515 §7.1): three base64url segments, no padding (§2).
#: Distinct accepted JOSE headers remembered per backend (see ``JWT._jose``).
_JOSE_CACHE_SIZE = 64
_COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
#: The last character of a segment 2 or 3 characters past a multiple of 4 carries unused
#: bits, which must be zero: a token then has one spelling. (PyJWT < 2.14 decodes the
#: other spellings, and ``+``/``/``; 2.14 refuses them.)
_LAST = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}
#: RFC 7518 §3.4: each ECDSA algorithm is defined on one curve (PyJWT >= 2.11 checks it).
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1", "ES256K": "secp256k1"}


def _jose_header(token: str) -> dict[str, Any]:
    """The JOSE header of ``token``, once its shape is one every PyJWT version reads alike."""
    return _decode_head(_compact_head(token))


def _compact_head(token: str) -> str:
    """The header segment of ``token``, once its shape is one every PyJWT version reads
    alike (three canonical base64url segments)."""
    match = _COMPACT.fullmatch(token)
    if match is None:
        raise AuthError("malformed token")
    for segment in match.groups():
        extra = len(segment) % 4
        if extra == 1 or (extra and segment[-1] not in _LAST[extra]):
            raise AuthError("malformed token (not canonical base64url)")
    return match.group(1)


def _decode_head(head: str) -> dict[str, Any]:
    """The JOSE header in the header segment ``head``: a UTF-8 JSON object."""
    try:
        # UTF-8 (RFC 7515 §4): PyJWT's json.loads(bytes) would also take UTF-16/32.
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode())
    except (ValueError, RecursionError):
        raise AuthError("malformed token header") from None
    if not isinstance(header, dict):
        raise AuthError("the token header is not a JSON object")
    return header


def _usable(pyjwt: Any, key: Any, algorithms: Iterable[str]) -> tuple[Any, tuple[str, ...], list[str]]:
    """The public form of ``key``, the ``algorithms`` it verifies, and why others cannot.

    An ECDSA key verifies only the algorithm of its curve, whatever the PyJWT version.
    """
    available = pyjwt.algorithms.get_default_algorithms()
    prepared: Any = None
    usable: list[str] = []
    errors: list[str] = []
    for alg in algorithms:
        try:
            candidate = available[alg].prepare_key(key)
        except Exception as exc:
            errors.append(f"{alg}: {exc}")
            continue
        curve = _EC_CURVES.get(alg)
        if curve is not None and getattr(getattr(candidate, "curve", None), "name", None) != curve:
            errors.append(f"{alg}: needs a {curve} key")
            continue
        usable.append(alg)
        if prepared is None:
            public = getattr(candidate, "public_key", None)
            # A private key verifies through its public half.
            prepared = public() if callable(public) else candidate
    return prepared, tuple(usable), errors


def _jwk_algorithm(jwk: Any) -> Any:
    """The algorithm a ``jwt.PyJWK`` is bound to (``algorithm_name`` is PyJWT >= 2.9)."""
    name = getattr(jwk, "algorithm_name", None)
    if name is None:
        table = getattr(jwk, "_algorithms", None) or {}
        name = next((n for n, a in table.items() if a is jwk.Algorithm), None)
    return name


def _key_document(secret: bytes) -> str | None:
    """What ``secret`` is if it is a key document rather than a secret (PyJWT >= 2.13
    refuses these as HMAC secrets, older versions take them), else ``None``."""
    try:
        found = [json.loads(secret)]
    except RecursionError:
        return "deeply nested JSON"
    except ValueError:
        found = []
    while found:
        item = found.pop()
        if isinstance(item, dict):
            if "kty" in item:
                return "a JWK in JSON text (pass it as a dict)"
            found.extend(item.values())
        elif isinstance(item, list):
            found.extend(item)
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError:  # pragma: no cover - PyJWT[crypto] brings it
        return None
    for load in (
        serialization.load_der_public_key,
        lambda data: serialization.load_der_private_key(data, password=None),
        x509.load_der_x509_certificate,
    ):
        try:
            load(secret)
        except Exception:
            continue
        return "a DER-encoded key or certificate"
    return None


def _import_pyjwt() -> Any:
    try:
        import jwt
        import jwt.algorithms
    except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
        raise ImportError(
            "kitmw.auth.JWT needs PyJWT with its crypto extra: pip install 'kitmw[jwt]'"
        ) from exc
    return jwt


def _number(value: Any, option: str, *, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{option}: expected a number of seconds, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ConfigError(f"{option}: must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return float(value)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A JWKS URL is configuration: a redirect elsewhere is a fault, not something to follow.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Inflight:
    __slots__ = ("done", "future", "task")

    def __init__(self, future: asyncio.Future[None] | None) -> None:
        self.done = threading.Event()
        self.future = future
        self.task: asyncio.Task[None] | None = None  # holds the fetch task against GC


class JWKSCache:
    """The key set behind ``jwks_url``: fetched, cached, refreshed, never wiped.

    One cache per :class:`JWT` backend. A fetch starts when a token needs a key the cache
    cannot give (none yet, an unknown ``kid``) or the set is older than ``ttl``, and only
    if the last fetch *started* at least ``cooldown`` seconds ago, or, after ``n``
    failed fetches in a row, ``cooldown * 2**(n-1)`` seconds ago (at most ``max_backoff``).
    Only one fetch runs at a time; callers that need its result wait for it, sync and
    async alike. So the identity provider sees at most one request per ``cooldown``
    (``1 + T / cooldown`` in any ``T`` seconds) while it answers, and one per
    ``max_backoff`` while it fails, whatever tokens arrive; and a key it publishes
    verifies every token that arrives ``cooldown`` seconds later (plus one fetch), however
    many unknown kids arrived in between.

    ``fetches`` and ``failures`` count fetch attempts and failed ones (failures are also
    counted in ``kitmw_storage_errors_total{component="jwks"}``); ``keys`` is the last
    good key set (``kid`` -> (key, algorithms)), ``None`` before the first successful
    fetch. Decisions are made under a short lock never held across a fetch or an ``await``.
    """

    __slots__ = (
        "_algorithms",
        "_clock",
        "_cooldown",
        "_headers",
        "_inflight",
        "_lock",
        "_max_backoff",
        "_on_error",
        "_pyjwt",
        "_streak",
        "_timeout",
        "_ttl",
        "attempted_at",
        "failures",
        "fetched_at",
        "fetches",
        "keys",
        "url",
    )

    def __init__(
        self,
        url: str,
        *,
        algorithms: tuple[str, ...],
        ttl: float,
        cooldown: float,
        timeout: float,
        headers: Mapping[str, str],
        clock: Clock,
        pyjwt: Any,
        on_error: Callable[[BaseException], None],
        max_backoff: float,
    ) -> None:
        self.url = url
        self._algorithms = algorithms
        self._ttl = ttl
        self._cooldown = cooldown
        self._max_backoff = max_backoff
        self._timeout = timeout
        self._headers = {"Accept": "application/json", "User-Agent": "kitmw", **headers}
        self._clock = clock
        self._pyjwt = pyjwt
        self._on_error = on_error
        self._lock = threading.Lock()
        self._inflight: _Inflight | None = None
        self._streak = 0  # failed fetches in a row
        self.keys: dict[str | None, KeyEntry] | None = None
        self.fetched_at = 0.0
        self.attempted_at: float | None = None
        self.fetches = 0
        self.failures = 0

    # -- decision (no I/O) ---------------------------------------------------------------

    def _find(self, kid: str | None) -> KeyEntry | None:
        keys = self.keys
        if not keys:
            return None
        if kid is None:
            # A token without kid is accepted only when the set holds a single key.
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(kid)

    def _found(self, kid: str | None) -> KeyEntry | None:
        with self._lock:
            return self._find(kid)

    @property
    def next_fetch_after(self) -> float:
        """Seconds after the last fetch started before another may start."""
        streak = self._streak
        if not streak:
            return self._cooldown
        return min(self._cooldown * 2.0 ** min(streak - 1, 32), self._max_backoff)

    def _plan(
        self, kid: str | None, loop: asyncio.AbstractEventLoop | None = None
    ) -> tuple[KeyEntry | None, int, _Inflight | None]:
        """What to do for ``kid``: use a key, wait for the fetch under way, or fetch (the
        fetch is registered here, under the lock, so no caller can slip in between the
        decision and the fetch and find neither a key nor a fetch to wait for)."""
        with self._lock:
            now = self._clock()  # read under the lock: decisions are ordered like the clock
            entry = self._find(kid)
            # A clock that jumped backwards counts as "time is up", never as "wait longer".
            if entry is not None and 0.0 <= now - self.fetched_at < self._ttl:
                return entry, _USE, None
            if self._inflight is not None:
                # Someone is fetching: a stale key is good enough meanwhile, a missing one waits.
                return entry, (_USE if entry is not None else _WAIT), self._inflight
            attempted = self.attempted_at
            if attempted is not None and 0.0 <= now - attempted < self.next_fetch_after:
                return entry, _USE, None  # stale or missing: the fetch rate stays bounded
            self.attempted_at = now
            self.fetches += 1
            inflight = self._inflight = _Inflight(None if loop is None else loop.create_future())
            return entry, _FETCH, inflight

    def _finish(
        self, inflight: _Inflight, document: Any, error: BaseException | None, *, cancelled: bool = False
    ) -> None:
        keys = None
        if error is None and not cancelled:
            try:
                keys = self._parse(document)
            except Exception as exc:
                error = exc
        with self._lock:
            if keys is not None:
                self.keys = keys
                self.fetched_at = self._clock()
                self._streak = 0
            elif not cancelled:
                self.failures += 1
                self._streak += 1
            self._inflight = None
        inflight.done.set()
        if inflight.future is not None and not inflight.future.done():
            inflight.future.set_result(None)
        if error is not None and not cancelled:
            kept = len(self.keys or ())
            logger.error("JWKS fetch from %s failed (%s); keeping %d cached key(s)", self.url, error, kept)
            self._on_error(error)

    def _parse(self, document: Any) -> dict[str | None, KeyEntry]:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWKS document (no 'keys' list)")
        pyjwt = self._pyjwt
        keys: dict[str | None, KeyEntry] = {}
        for jwk in document["keys"]:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue
            if jwk.get("kty") == "oct":
                continue  # never accept a shared secret from a URL
            alg = jwk.get("alg")
            if alg is not None and alg not in self._algorithms:
                continue
            kid = jwk.get("kid")
            if kid is not None and not isinstance(kid, str):
                continue
            try:
                parsed = pyjwt.PyJWK(jwk)
            except Exception:
                continue  # one unusable key must not spoil the others
            # With an ``alg`` the key is bound to it; without, the configured list decides
            # (narrowed to what the key can verify).
            key, usable, _ = _usable(pyjwt, parsed.key, (alg,) if alg is not None else self._algorithms)
            if usable:
                keys[kid] = (key, usable)
        if not keys:
            raise ValueError("the JWKS document has no usable signing key")
        return keys

    # -- sync side ---------------------------------------------------------------------

    def _fetch_sync(self) -> Any:
        request = urllib.request.Request(self.url, headers=self._headers)
        opener = urllib.request.build_opener(_NoRedirect())
        with opener.open(request, timeout=self._timeout) as response:
            body = response.read(_MAX_JWKS_BYTES + 1)
        if len(body) > _MAX_JWKS_BYTES:
            raise ValueError("JWKS document too large")
        return json.loads(body)

    def get(self, kid: str | None) -> KeyEntry | None:
        """The key for ``kid``, fetching the set if needed (blocking: sync drivers)."""
        # Twice at most: a caller that waited for a fetch which started before its key was
        # published may start the next one, if the rate bound allows it.
        for _ in range(2):
            entry, action, inflight = self._plan(kid)
            if action == _USE:
                return entry
            assert inflight is not None
            if action == _WAIT:
                inflight.done.wait(self._timeout + 1.0)
                entry = self._found(kid)
                if entry is not None:
                    return entry
                continue
            document: Any = None
            error: BaseException | None = None
            try:
                document = self._fetch_sync()
            except Exception as exc:
                error = exc
            self._finish(inflight, document, error)
            break
        return self._found(kid)

    # -- async side --------------------------------------------------------------------

    async def _fetch_async(self) -> Any:
        try:
            import httpx
        except ImportError:  # pragma: no cover - httpx is installed in the test env
            return await asyncio.to_thread(self._fetch_sync)
        async with (
            httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as client,
            client.stream("GET", self.url, headers=self._headers) as response,
        ):
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > _MAX_JWKS_BYTES:
                    raise ValueError("JWKS document too large")
        return json.loads(bytes(body))

    async def aget(self, kid: str | None) -> KeyEntry | None:
        """The key for ``kid``, fetching the set if needed without blocking the loop."""
        loop = asyncio.get_running_loop()
        for _ in range(2):  # see get()
            entry, action, inflight = self._plan(kid, loop)
            if action == _USE:
                return entry
            assert inflight is not None
            if action == _WAIT:
                future = inflight.future
                if future is not None and future.get_loop() is loop:
                    await asyncio.shield(future)
                else:  # fetched by another thread or loop
                    await asyncio.to_thread(inflight.done.wait, self._timeout + 1.0)
                entry = self._found(kid)
                if entry is not None:
                    return entry
                continue
            # The fetch runs as its own task: a client that disconnects (cancelling this
            # request) must not abort the fetch every other request is waiting for.
            task = inflight.task = loop.create_task(self._run_fetch(inflight))
            await asyncio.shield(task)
            break
        return self._found(kid)

    async def _run_fetch(self, inflight: _Inflight) -> None:
        document: Any = None
        error: BaseException | None = None
        try:
            document = await asyncio.wait_for(self._fetch_async(), self._timeout + 1.0)
        except Exception as exc:
            error = exc
        except BaseException:  # the loop is shutting down: release the waiters, count nothing
            self._finish(inflight, None, None, cancelled=True)
            raise
        self._finish(inflight, document, error)


def _scopes(payload: Mapping[str, Any]) -> frozenset[str]:
    found: list[str] = []
    for claim in ("scope", "scp"):
        value = payload.get(claim)
        if isinstance(value, str):
            found.extend(value.split())
        elif isinstance(value, list):
            found.extend(s for s in value if isinstance(s, str))
    return frozenset(found)


def _int_claim(payload: Mapping[str, Any], claim: str) -> int:
    try:
        return int(payload[claim])
    except (ValueError, TypeError, OverflowError):
        raise AuthError(f"the {claim} claim must be an integer") from None


class JWT(Backend):
    """Bearer JWT verified with PyJWT, against a static key or a JWKS URL.

    :param key: the verification key: an HMAC secret (``str``/``bytes``, at least as long
        as the hash, RFC 7518 §3.2), a PEM public key, a JWK ``dict``, a ``jwt.PyJWK`` or
        a ``cryptography`` public key. Exactly one of ``key`` and ``jwks_url``.
    :param jwks_url: URL of the identity provider's JWKS document (asymmetric keys only).
    :param algorithms: the accepted algorithms, a list (required; ``"none"`` refused;
        HMAC and asymmetric algorithms cannot be mixed, so HS/RS confusion is impossible).
    :param audience: accepted ``aud`` value(s); ``None`` refuses tokens that carry one.
    :param issuer: accepted ``iss`` value(s), compared exactly.
    :param leeway: seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``.
    :param required_claims: claims that must be present (default ``("exp",)``).
    :param scheme: the ``Authorization`` scheme (``"Bearer"``; ``""`` for a bare token).
    :param header: the request header carrying the token.
    :param realm: the realm of the ``WWW-Authenticate`` challenge.
    :param principal_claim: the claim naming the caller (``"sub"``).
    :param jwks_cache_ttl: seconds a fetched key set is fresh.
    :param jwks_refresh_cooldown: minimum seconds between the starts of two fetches
        (unknown ``kid`` or expired set): the identity provider's request rate, and the
        longest a published key can be refused (see :class:`JWKSCache`).
    :param jwks_max_backoff: after failed fetches the wait doubles from
        ``jwks_refresh_cooldown`` up to this many seconds.
    :param jwks_timeout: seconds a fetch may take.
    :param jwks_headers: extra headers for the JWKS request.
    :param cache_size: verified tokens remembered (by the raw header value carrying
        them, until ``exp`` and at most ``jwks_cache_ttl``), so a repeated token costs a
        dict lookup; 0 disables.
    :param max_token_length: longer tokens are refused before any parsing.
    :param clock: wall clock in seconds since the epoch (default ``time.time``).
    """

    __slots__ = (
        "_algorithms",
        "_audience",
        "_cache",
        "_cache_get",
        "_cache_size",
        "_challenge_scheme",
        "_clock",
        "_decode_options",
        "_header",
        "_issuers",
        "_jose_get",
        "_joses",
        "_jwks",
        "_key",
        "_leeway",
        "_max_age",
        "_max_len",
        "_prefix",
        "_prefix_len",
        "_principal_claim",
        "_pyjwt",
        "_realm",
        "_registries",
    )

    name = "jwt"

    def __init__(
        self,
        *,
        key: Any = None,
        jwks_url: str | None = None,
        algorithms: Iterable[str] | None = None,
        audience: str | Iterable[str] | None = None,
        issuer: str | Iterable[str] | None = None,
        leeway: float = 0,
        required_claims: Iterable[str] = ("exp",),
        scheme: str = "Bearer",
        header: str = "Authorization",
        realm: str = "kitmw",
        principal_claim: str = "sub",
        jwks_cache_ttl: float = 300,
        jwks_refresh_cooldown: float = 5,
        jwks_max_backoff: float = 60,
        jwks_timeout: float = 2.0,
        jwks_headers: Mapping[str, str] | None = None,
        cache_size: int = 1024,
        max_token_length: int = 16384,
        clock: Clock | None = None,
    ) -> None:
        pyjwt = _import_pyjwt()
        self._pyjwt = pyjwt
        self._algorithms = self._check_algorithms(algorithms, pyjwt)
        symmetric = self._algorithms[0] in _HMAC_ALGORITHMS
        if (key is None) == (jwks_url is None):
            raise ConfigError(
                "key / jwks_url: give exactly one: key= (a secret or public key) or "
                "jwks_url= (the identity provider's JWKS document)"
            )
        if isinstance(audience, str) or audience is None:
            self._audience: str | list[str] | None = audience
        else:
            self._audience = [str(a) for a in audience]
        # Checked here, not by PyJWT: 2.8 takes no list and 2.10.0 matches substrings.
        if issuer is None:
            self._issuers: frozenset[str] | None = None
        elif isinstance(issuer, str):
            self._issuers = frozenset((issuer,))
        else:
            self._issuers = frozenset(str(i) for i in issuer)
        self._leeway = _number(leeway, "leeway")
        if isinstance(required_claims, str):
            required_claims = (required_claims,)
        required = [c for c in required_claims]
        if not all(isinstance(c, str) and c for c in required):
            raise ConfigError(f"required_claims: expected claim names, got {required!r}")
        # Time claims are checked here with ``clock``; PyJWT checks everything else.
        self._decode_options: dict[str, Any] = {
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "require": required,
        }
        if not isinstance(scheme, str) or " " in scheme.strip():
            raise ConfigError(f"scheme: expected an auth scheme such as 'Bearer', got {scheme!r}")
        scheme = scheme.strip()
        self._prefix = (scheme.lower() + " ") if scheme else ""
        self._prefix_len = len(self._prefix)
        self._challenge_scheme = scheme or "Bearer"
        if not isinstance(header, str) or not header:
            raise ConfigError(f"header: expected a header name, got {header!r}")
        self._header = header.lower()
        if not isinstance(realm, str):
            raise ConfigError(f"realm: expected a string, got {realm!r}")
        self._realm = realm
        if not isinstance(principal_claim, str) or not principal_claim:
            raise ConfigError(f"principal_claim: expected a claim name, got {principal_claim!r}")
        self._principal_claim = principal_claim
        ttl = _number(jwks_cache_ttl, "jwks_cache_ttl", strict=True)
        cooldown = _number(jwks_refresh_cooldown, "jwks_refresh_cooldown", strict=True)
        max_backoff = _number(jwks_max_backoff, "jwks_max_backoff", minimum=cooldown)
        timeout = _number(jwks_timeout, "jwks_timeout", strict=True)
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ConfigError(f"cache_size: expected an integer >= 0, got {cache_size!r}")
        self._cache_size = cache_size
        # verified tokens cost a signature check to make again: the oldest goes first
        self._cache: BoundedCache[str, tuple[Principal, float]] = BoundedCache(cache_size or 1, evict="oldest")
        self._cache_get = self._cache.get  # bound once: a plain dict's lookup per request
        # Header segment -> (alg, kid), checked: the tokens of one issuer share a handful
        # of headers, so a token missing the cache above skips decoding its header again.
        # Only accepted headers are kept; bounded against a caller churning headers.
        self._joses: BoundedCache[str, tuple[str, str | None]] = BoundedCache(_JOSE_CACHE_SIZE)
        self._jose_get = self._joses.get
        self._max_age = ttl
        if (
            isinstance(max_token_length, bool)
            or not isinstance(max_token_length, int)
            or max_token_length < 1
        ):
            raise ConfigError(f"max_token_length: expected a positive integer, got {max_token_length!r}")
        self._max_len = max_token_length
        if clock is not None and not callable(clock):
            raise ConfigError(f"clock: expected a callable returning seconds, got {clock!r}")
        self._clock: Clock = clock or time.time
        self._registries: list[Any] = []
        self._key: KeyEntry | None = None
        self._jwks: JWKSCache | None = None
        if key is not None:
            self._key = self._prepare_key(key, symmetric)
        else:
            if not isinstance(jwks_url, str) or not jwks_url.startswith(("https://", "http://")):
                raise ConfigError(f"jwks_url: expected an http(s) URL, got {jwks_url!r}")
            if symmetric:
                raise ConfigError(
                    "jwks_url: HMAC algorithms (HS*) need a shared secret (key=); "
                    "a JWKS URL serves public keys for RS/PS/ES/EdDSA"
                )
            self._jwks = JWKSCache(
                jwks_url,
                algorithms=self._algorithms,
                ttl=ttl,
                cooldown=cooldown,
                max_backoff=max_backoff,
                timeout=timeout,
                headers=dict(jwks_headers or {}),
                clock=self._clock,
                pyjwt=pyjwt,
                on_error=self._count_error,
            )

    # -- construction helpers ------------------------------------------------------------

    @staticmethod
    def _check_algorithms(algorithms: Iterable[str] | None, pyjwt: Any) -> tuple[str, ...]:
        if algorithms is None:
            raise ConfigError("algorithms: required, a list such as ['RS256'] (never taken from the token)")
        if isinstance(algorithms, (str, bytes)):
            raise ConfigError(f"algorithms: expected a list such as [{algorithms!r}], got a string")
        algs = tuple(algorithms)
        if not algs:
            raise ConfigError("algorithms: must name at least one algorithm")
        for alg in algs:
            if not isinstance(alg, str):
                raise ConfigError(f"algorithms: expected algorithm names, got {alg!r}")
            if alg.lower() == "none":
                raise ConfigError("algorithms: 'none' is refused (it accepts unsigned tokens)")
        available = pyjwt.algorithms.get_default_algorithms()
        unknown = [a for a in algs if a not in available]
        if unknown:
            raise ConfigError(
                f"algorithms: unknown or unavailable {unknown!r} (asymmetric algorithms need "
                "cryptography: pip install 'kitmw[jwt]')"
            )
        hmac_algs = [a for a in algs if a in _HMAC_ALGORITHMS]
        if hmac_algs and len(hmac_algs) != len(algs):
            raise ConfigError(
                "algorithms: mixing HMAC (HS*) and asymmetric algorithms is refused: one key "
                "read both ways is the HS/RS confusion attack"
            )
        return algs

    def _prepare_key(self, key: Any, symmetric: bool) -> KeyEntry:
        """The key in the form PyJWT verifies with, and the algorithms it verifies."""
        pyjwt = self._pyjwt
        algorithms = self._algorithms
        if isinstance(key, Mapping):
            has_alg = key.get("alg") is not None
            if key.get("kty") == "oct" and not symmetric:
                raise ConfigError("key: a symmetric JWK (kty 'oct') needs an HMAC algorithm")
            try:
                key = pyjwt.PyJWK(dict(key))
            except Exception as exc:
                raise ConfigError(f"key: not a usable JWK ({exc})") from exc
            if not has_alg:
                key = key.key  # no alg in the JWK: the algorithms list decides
        if isinstance(key, pyjwt.PyJWK):
            # Bound to its algorithm; PyJWT gets the bare key (2.8 cannot verify with a PyJWK).
            bound = _jwk_algorithm(key)
            if bound not in algorithms:
                raise ConfigError(f"key: the JWK is for {bound}, not one of algorithms={list(algorithms)}")
            algorithms = (bound,)
            key = key.key
        if symmetric:
            if not isinstance(key, (str, bytes)):
                raise ConfigError(
                    f"key: an HMAC algorithm needs a str or bytes secret, got {type(key).__name__}"
                )
            what = _key_document(key.encode() if isinstance(key, str) else key)
            if what is not None:
                raise ConfigError(f"key: this is {what}, which must never be used as an HMAC secret")
            try:
                secret = pyjwt.algorithms.get_default_algorithms()[algorithms[0]].prepare_key(key)
            except Exception as exc:
                raise ConfigError(
                    "key: this looks like a public key or certificate, which must never be used "
                    "as an HMAC secret (HS/RS confusion); use an RS/ES/PS/EdDSA algorithm"
                ) from exc
            needed = max(_HMAC_MIN_BYTES[a] for a in algorithms)
            if len(secret) < needed:
                raise ConfigError(
                    f"key: an HMAC secret for {'/'.join(algorithms)} must be at least "
                    f"{needed} bytes (RFC 7518 section 3.2), got {len(secret)}"
                )
            return secret, algorithms
        prepared, usable, errors = _usable(pyjwt, key, algorithms)
        if not usable:
            raise ConfigError(
                f"key: not a public key usable with algorithms={list(algorithms)} ({'; '.join(errors)})"
            )
        return prepared, usable

    # -- metrics ---------------------------------------------------------------------------

    def bind_registry(self, registry: Any) -> None:
        """Count JWKS fetch failures in ``registry`` (``AuthPolicy`` calls this)."""
        if not any(r is registry for r in self._registries):
            self._registries.append(registry)

    def _count_error(self, error: BaseException) -> None:
        for registry in self._registries:
            try:
                from ..metrics import instruments

                instruments(registry).storage_errors.labels("jwks").inc()
            except Exception:  # metrics must never break auth
                logger.debug("cannot count a JWKS error", exc_info=True)

    # -- the protocol ----------------------------------------------------------------------

    @property
    def does_io(self) -> bool:
        return self._jwks is not None

    @property
    def jwks(self) -> JWKSCache | None:
        """The key-set cache when ``jwks_url`` is set."""
        return self._jwks

    def challenge(self, error: str | None = None, scope: str | None = None) -> str:
        value = f"{self._challenge_scheme} realm={quote(self._realm)}"
        if error:
            value += f', error="{error}"'
        if scope:
            value += f", scope={quote(scope)}"
        return value

    def openapi_scheme(self) -> dict[str, Any]:
        """HTTP bearer for ``Authorization: Bearer``; an API key in its header otherwise
        (another scheme, a bare token or another header), which Swagger UI sends as typed."""
        if self._header == "authorization" and self._prefix == "bearer ":
            return {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        return {"type": "apiKey", "in": "header", "name": self._header}

    def _token(self, value: str) -> str | None:
        """The token in header ``value``; None when it is another scheme's."""
        n = self._prefix_len
        if n:
            if len(value) <= n or value[:n].lower() != self._prefix:
                return None  # another scheme: not for this backend
            value = value[n:]
            if value.isascii() and len(value) <= self._max_len and " " not in value:
                return value  # the common case: a well-formed token
        token = value.strip()
        if not token:
            raise AuthError("empty token")
        if len(token) > self._max_len:
            raise AuthError("token too long")
        return token

    def _jose(self, token: str) -> tuple[str, str | None]:
        """The token's ``alg`` and ``kid``, checked alike on every PyJWT version.

        Before a key-set fetch and before PyJWT: a foreign ``alg`` (a string naming one of
        ``algorithms``), a ``kid`` that is not a string (``null`` included: PyJWT < 2.12
        accepts those) and the ``crit``/``b64`` extensions (RFC 7515 §4.1.11, RFC 7797;
        kitmw implements none, PyJWT < 2.12 ignores ``crit``) are refused.
        """
        head = _compact_head(token)
        found = self._jose_get(head)
        if found is None:
            found = self._joses.put(head, self._check_jose(_decode_head(head)))
        return found

    def _check_jose(self, header: dict[str, Any]) -> tuple[str, str | None]:
        """:meth:`_jose`'s checks of a decoded header: its ``alg`` and ``kid``."""
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthError("algorithm not allowed")
        kid = None
        if "kid" in header:
            kid = header["kid"]
            if not isinstance(kid, str):
                raise AuthError("malformed kid")
        if "crit" in header or "b64" in header:
            raise AuthError("unsupported JWS extension")
        return alg, kid

    def _cached(self, value: str, now: float) -> Principal | None:
        hit = self._cache_get(value)
        if hit is None:
            return None
        if now < hit[1]:
            return hit[0]
        self._cache.pop(value, None)
        return None

    # The cache is keyed by the header value itself: a value seen before maps to one
    # token (``_token`` is a pure function of it), so a hit skips parsing it again.

    def authenticate(self, ex: Exchange) -> Principal | None:
        value = ex.header(self._header)
        if value is None:
            return None
        now = self._clock()
        hit = self._cached(value, now)
        if hit is not None:
            return hit
        token = self._token(value)
        if token is None:
            return None
        alg, kid = self._jose(token)
        jwks = self._jwks
        entry = self._key if jwks is None else jwks.get(kid)
        return self._verify(token, alg, entry, now, value)

    async def aauthenticate(self, ex: Exchange) -> Principal | None:
        jwks = self._jwks
        if jwks is None:
            return self.authenticate(ex)
        value = ex.header(self._header)
        if value is None:
            return None
        now = self._clock()
        hit = self._cached(value, now)
        if hit is not None:
            return hit
        token = self._token(value)
        if token is None:
            return None
        alg, kid = self._jose(token)
        entry = await jwks.aget(kid)
        return self._verify(token, alg, entry, now, value)

    def _verify(self, token: str, alg: str, entry: KeyEntry | None, now: float, cache_key: str) -> Principal:
        if entry is None:
            jwks = self._jwks
            if jwks is not None and jwks.keys is None:
                raise KeysUnavailable("no JWKS key set could be fetched yet")
            raise AuthError("no key for this token's kid")
        key, algorithms = entry
        if alg not in algorithms:
            raise AuthError("this key does not verify that algorithm")
        try:
            payload = self._pyjwt.decode(
                token, key, algorithms=algorithms, audience=self._audience, options=self._decode_options
            )
        except Exception as exc:  # whatever PyJWT raises on hostile input is a 401
            raise AuthError(f"invalid token: {exc}") from exc
        if not isinstance(payload, dict):
            raise AuthError("the payload is not a JSON object")
        self._check_claims(payload)
        until = self._check_times(payload, now)
        identity = payload.get(self._principal_claim)
        if not isinstance(identity, str) or not identity:
            raise AuthError(f"the {self._principal_claim} claim is missing or not a string")
        principal = Principal(identity, _scopes(payload), MappingProxyType(payload), "jwt")
        if self._cache_size:
            self._cache.put(cache_key, (principal, until))
        return principal

    def _check_claims(self, payload: Mapping[str, Any]) -> None:
        """``iss`` (exact match) and the types of ``sub``/``jti``: rules PyJWT applies
        only from some version on (2.10 for ``sub``/``jti``, 2.10.1 for an exact ``iss``)."""
        issuers = self._issuers
        if issuers is not None:
            iss = payload.get("iss")
            if not isinstance(iss, str) or iss not in issuers:
                raise AuthError("the iss claim is missing or not accepted")
        for claim in ("sub", "jti"):
            if claim in payload and not isinstance(payload[claim], str):
                raise AuthError(f"the {claim} claim must be a string")

    def _check_times(self, payload: Mapping[str, Any], now: float) -> float:
        """PyJWT's exp/nbf/iat rules with ``clock``; returns until when the token is good."""
        leeway = self._leeway
        if "iat" in payload and _int_claim(payload, "iat") > now + leeway:
            raise AuthError("the token is not yet valid (iat)")
        if "nbf" in payload and _int_claim(payload, "nbf") > now + leeway:
            raise AuthError("the token is not yet valid (nbf)")
        until = now + self._max_age
        if "exp" in payload:
            expires = _int_claim(payload, "exp") + leeway
            if expires <= now:
                raise AuthError("the token has expired")
            until = min(until, expires)
        return until

    def __repr__(self) -> str:
        source = f"jwks_url={self._jwks.url!r}" if self._jwks else "key=<hidden>"
        return f"JWT({source}, algorithms={list(self._algorithms)!r})"
