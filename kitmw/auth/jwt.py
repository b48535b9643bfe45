"""Bearer JWT backend: static keys or a JWKS URL, verified by PyJWT.

PyJWT checks signatures, algorithms, audience, issuer and required claims. Two things
live here because PyJWT cannot do them with an injected clock or without blocking an
event loop:

* the time claims (``exp``, ``nbf``, ``iat``) are checked with ``clock`` (same rules as
  PyJWT: integers, ``leeway`` seconds of grace), so the verified-claims cache and the
  checks agree on what "now" is, and tests never sleep;
* the JWKS key set is fetched with httpx on the async side (urllib in a thread when
  httpx is missing) and urllib on the sync side, cached for ``jwks_cache_ttl``, fetched
  again on an unknown ``kid`` at most once per ``jwks_refresh_cooldown`` (a flood of
  random kids cannot hammer the identity provider), and a failed fetch keeps the last
  good keys (a JWKS outage never becomes an auth outage).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

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

    One cache per :class:`JWT` backend. ``fetches`` and ``failures`` count fetch
    attempts; ``keys`` is the last good key set (``kid`` -> key), ``None`` before the
    first successful fetch. Decisions are made under a short lock that is never held
    across a fetch or an ``await``.
    """

    __slots__ = (
        "_algorithms",
        "_clock",
        "_cooldown",
        "_headers",
        "_inflight",
        "_lock",
        "_on_error",
        "_pyjwt",
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
    ) -> None:
        self.url = url
        self._algorithms = algorithms
        self._ttl = ttl
        self._cooldown = cooldown
        self._timeout = timeout
        self._headers = {"Accept": "application/json", "User-Agent": "kitmw", **headers}
        self._clock = clock
        self._pyjwt = pyjwt
        self._on_error = on_error
        self._lock = threading.Lock()
        self._inflight: _Inflight | None = None
        self.keys: dict[str | None, Any] | None = None
        self.fetched_at = 0.0
        self.attempted_at: float | None = None
        self.fetches = 0
        self.failures = 0

    # -- decision (no I/O) ---------------------------------------------------------------

    def _find(self, kid: str | None) -> Any:
        keys = self.keys
        if not keys:
            return None
        if kid is None:
            # A token without kid is accepted only when the set holds a single key.
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(kid)

    def _plan(self, kid: str | None) -> tuple[Any, int]:
        with self._lock:
            now = self._clock()  # read under the lock: decisions are ordered like the clock
            key = self._find(kid)
            # A clock that jumped backwards counts as "time is up", never as "wait longer".
            if key is not None and 0.0 <= now - self.fetched_at < self._ttl:
                return key, _USE
            if self._inflight is not None:
                # Someone is fetching: a stale key is good enough meanwhile, a missing one waits.
                return key, (_USE if key is not None else _WAIT)
            if self.attempted_at is not None and 0.0 <= now - self.attempted_at < self._cooldown:
                return key, _USE  # stale or missing: at most one fetch per cooldown
            self.attempted_at = now
            self.fetches += 1
            return key, _FETCH

    def _start(self, future: asyncio.Future[None] | None) -> _Inflight:
        inflight = _Inflight(future)
        with self._lock:
            self._inflight = inflight
        return inflight

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
            else:
                self.failures += 1
            self._inflight = None
        inflight.done.set()
        if inflight.future is not None and not inflight.future.done():
            inflight.future.set_result(None)
        if error is not None and not cancelled:
            kept = len(self.keys or ())
            logger.error("JWKS fetch from %s failed (%s); keeping %d cached key(s)", self.url, error, kept)
            self._on_error(error)

    def _parse(self, document: Any) -> dict[str | None, Any]:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWKS document (no 'keys' list)")
        pyjwk = self._pyjwt.PyJWK
        keys: dict[str | None, Any] = {}
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
                parsed = pyjwk(jwk)
            except Exception:
                continue  # one unusable key must not spoil the others
            # With an ``alg`` the key is bound to it; without, the configured list decides.
            keys[kid] = parsed if alg is not None else parsed.key
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

    def get(self, kid: str | None) -> Any:
        """The key for ``kid``, fetching the set if needed (blocking: sync drivers)."""
        key, action = self._plan(kid)
        if action == _USE:
            return key
        if action == _WAIT:
            inflight = self._inflight
            if inflight is not None:
                inflight.done.wait(self._timeout + 1.0)
            with self._lock:
                return self._find(kid)
        inflight = self._start(None)
        document: Any = None
        error: BaseException | None = None
        try:
            document = self._fetch_sync()
        except Exception as exc:
            error = exc
        self._finish(inflight, document, error)
        with self._lock:
            return self._find(kid)

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

    async def aget(self, kid: str | None) -> Any:
        """The key for ``kid``, fetching the set if needed without blocking the loop."""
        key, action = self._plan(kid)
        if action == _USE:
            return key
        loop = asyncio.get_running_loop()
        if action == _WAIT:
            inflight = self._inflight
            if inflight is not None:
                future = inflight.future
                if future is not None and future.get_loop() is loop:
                    await asyncio.shield(future)
                else:  # fetched by another thread or loop
                    await asyncio.to_thread(inflight.done.wait, self._timeout + 1.0)
            with self._lock:
                return self._find(kid)
        inflight = self._start(loop.create_future())
        # The fetch runs as its own task: a client that disconnects (cancelling this
        # request) must not abort the fetch every other request is waiting for.
        task = inflight.task = loop.create_task(self._run_fetch(inflight))
        await asyncio.shield(task)
        with self._lock:
            return self._find(kid)

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
    :param issuer: accepted ``iss`` value(s).
    :param leeway: seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``.
    :param required_claims: claims that must be present (default ``("exp",)``).
    :param scheme: the ``Authorization`` scheme (``"Bearer"``; ``""`` for a bare token).
    :param header: the request header carrying the token.
    :param realm: the realm of the ``WWW-Authenticate`` challenge.
    :param principal_claim: the claim naming the caller (``"sub"``).
    :param jwks_cache_ttl: seconds a fetched key set is fresh.
    :param jwks_refresh_cooldown: minimum seconds between two fetches (unknown ``kid``,
        expired set or a failed fetch).
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
        "_cache_size",
        "_challenge_scheme",
        "_clock",
        "_decode_options",
        "_header",
        "_issuer",
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
        jwks_refresh_cooldown: float = 30,
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
        if isinstance(issuer, str) or issuer is None:
            self._issuer: str | list[str] | None = issuer
        else:
            self._issuer = [str(i) for i in issuer]
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
        cooldown = _number(jwks_refresh_cooldown, "jwks_refresh_cooldown")
        timeout = _number(jwks_timeout, "jwks_timeout", strict=True)
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ConfigError(f"cache_size: expected an integer >= 0, got {cache_size!r}")
        self._cache_size = cache_size
        self._cache: dict[str, tuple[Principal, float]] = {}
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
        self._key: Any = None
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

    def _prepare_key(self, key: Any, symmetric: bool) -> Any:
        pyjwt = self._pyjwt
        available = pyjwt.algorithms.get_default_algorithms()
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
            if key.algorithm_name not in self._algorithms:
                raise ConfigError(
                    f"key: the JWK is for {key.algorithm_name}, not one of algorithms={list(self._algorithms)}"
                )
            return key
        if symmetric:
            if not isinstance(key, (str, bytes)):
                raise ConfigError(
                    f"key: an HMAC algorithm needs a str or bytes secret, got {type(key).__name__}"
                )
            try:
                secret = available[self._algorithms[0]].prepare_key(key)
            except Exception as exc:
                raise ConfigError(
                    "key: this looks like a public key or certificate, which must never be used "
                    "as an HMAC secret (HS/RS confusion); use an RS/ES/PS/EdDSA algorithm"
                ) from exc
            needed = max(_HMAC_MIN_BYTES[a] for a in self._algorithms)
            if len(secret) < needed:
                raise ConfigError(
                    f"key: an HMAC secret for {'/'.join(self._algorithms)} must be at least "
                    f"{needed} bytes (RFC 7518 section 3.2), got {len(secret)}"
                )
            return secret
        errors: list[str] = []
        for alg in self._algorithms:
            try:
                prepared = available[alg].prepare_key(key)
            except Exception as exc:
                errors.append(f"{alg}: {exc}")
                continue
            public = getattr(prepared, "public_key", None)
            # A private key verifies through its public half.
            return public() if callable(public) else prepared
        raise ConfigError(
            f"key: not a public key usable with algorithms={list(self._algorithms)} ({'; '.join(errors)})"
        )

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

    def _kid(self, token: str) -> str | None:
        try:
            header = self._pyjwt.get_unverified_header(token)
        except Exception as exc:
            raise AuthError(f"malformed token: {exc}") from exc
        # Refuse a foreign algorithm before it can cause a key-set fetch.
        if header.get("alg") not in self._algorithms:
            raise AuthError("algorithm not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed kid")
        return kid  # type: ignore[no-any-return]

    def _cached(self, value: str, now: float) -> Principal | None:
        hit = self._cache.get(value)
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
        jwks = self._jwks
        key = self._key if jwks is None else jwks.get(self._kid(token))
        return self._verify(token, key, now, value)

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
        key = await jwks.aget(self._kid(token))
        return self._verify(token, key, now, value)

    def _verify(self, token: str, key: Any, now: float, cache_key: str) -> Principal:
        if key is None:
            jwks = self._jwks
            if jwks is not None and jwks.keys is None:
                raise KeysUnavailable("no JWKS key set could be fetched yet")
            raise AuthError("no key for this token's kid")
        try:
            payload = self._pyjwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options=self._decode_options,
            )
        except Exception as exc:  # whatever PyJWT raises on hostile input is a 401
            raise AuthError(f"invalid token: {exc}") from exc
        if not isinstance(payload, dict):
            raise AuthError("the payload is not a JSON object")
        until = self._check_times(payload, now)
        identity = payload.get(self._principal_claim)
        if not isinstance(identity, str) or not identity:
            raise AuthError(f"the {self._principal_claim} claim is missing or not a string")
        principal = Principal(identity, _scopes(payload), MappingProxyType(payload), "jwt")
        if self._cache_size:
            cache = self._cache
            if len(cache) >= self._cache_size:
                try:
                    del cache[next(iter(cache))]
                except (StopIteration, KeyError, RuntimeError):
                    pass  # another thread evicted it first
            cache[cache_key] = (principal, until)
        return principal

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
