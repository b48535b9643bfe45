"""Dependency faults and misbehaving apps and clients, through the whole ``kitmw.stack()``.

The per-module suites prove each concern's fault handling on its own (in-process,
one request at a time: ``tests/e2e/test_ratelimit_redis.py``,
``tests/e2e/test_breaker_redis.py``, ``tests/test_auth_jwks.py``). Here the faults hit
a full stack on a real uvicorn while traffic flows: Redis killed or paused under the
rate limit *and* the breaker, the JWKS endpoint down while keys rotate, the OTLP
collector gone, an app that raises, truncates or ignores its body, and a client that
hangs up mid-response. What must hold: no request fails because of kitmw, everything
is recorded exactly once, and everything recovers by itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

import kitmw
from kitmw.auth import JWT

pytestmark = [pytest.mark.faults, pytest.mark.e2e]


# -- helpers ---------------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels`` (0 when absent)."""
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def statuses_of(registry: CollectorRegistry, route: str) -> dict[str, float]:
    """``http_server_requests_total`` of ``route`` by status label."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == "http_server_requests_total" and s.labels["route"] == route:
                out[s.labels["status"]] = out.get(s.labels["status"], 0) + s.value
    return out


def kitmw_errors(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.levelno >= logging.ERROR]


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "kitmw.access"]


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Captured(logging.Handler):
    """Records of one logger that does not propagate to the root (uvicorn's)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def uvicorn_errors() -> Iterator[Captured]:
    """What uvicorn logs about the app (``Exception in ASGI application`` …).

    Attached by :func:`served` once the server has configured uvicorn's loggers (its
    ``dictConfig`` drops handlers attached before).
    """
    handler = Captured()
    try:
        yield handler
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)


def served(serve_asgi: Any, app: Any, errors: Captured, **config: Any) -> Any:
    server = serve_asgi(app, **config)
    logging.getLogger("uvicorn.error").addHandler(errors)
    return server


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="kitmw")
    return caplog


def service() -> Starlette:
    """A user's service: a plain endpoint and a slow stream."""

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def stream(request: Any) -> StreamingResponse:
        async def chunks() -> Any:
            for i in range(200):  # at most ~4 s: bounded even if nobody hangs up
                yield b"chunk %03d\n" % i
                await asyncio.sleep(0.02)

        return StreamingResponse(chunks(), media_type="text/plain")

    return Starlette(routes=[Route("/ok", ok), Route("/stream", stream)])


def breaker_fails(app: Any) -> int:
    """Failures the server breakers (one per route) have counted."""
    policy = next(p for p in app.policies if p.name == "breaker")
    return sum(b.fail_counter for b in policy.breakers.values())


def breakers_closed(app: Any) -> bool:
    policy = next(p for p in app.policies if p.name == "breaker")
    return all(b.state == "closed" for b in policy.breakers.values())


# -- Redis killed mid-traffic ----------------------------------------------------------------


class Traffic:
    """Threads sending GET /ok until stopped (bounded), keeping every outcome in order."""

    def __init__(self, url: str, threads: int = 4, cap: int = 2000) -> None:
        self.url = url
        self.cap = cap
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.outcomes: list[tuple[int, bool] | BaseException] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            for _ in range(self.cap):
                if self.stop.is_set():
                    return
                try:
                    r = client.get(self.url + "/ok")
                    outcome: tuple[int, bool] | BaseException = (r.status_code, "ratelimit" in r.headers)
                except Exception as exc:
                    outcome = exc
                with self.lock:
                    self.outcomes.append(outcome)

    def count(self) -> int:
        with self.lock:
            return len(self.outcomes)

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)


def test_redis_killed_mid_traffic_fails_open_counted_logged_once_and_recovers(
    redis_server: Any, redis_url: str, registry: CollectorRegistry, serve_asgi: Any, logs: Any
) -> None:
    app = kitmw.stack(
        service(),
        access_log=True,
        metrics={"registry": registry},
        ratelimit={
            "limit": "100000/minute",
            "storage": redis_url,
            "namespace": unique("kill"),
            "recovery_interval": 0.2,
        },
        breaker={"storage": redis_url, "name": unique("kill"), "storage_retry": 0.2},
    )
    with serve_asgi(app) as server, Traffic(server.url) as traffic:
        wait_until(lambda: traffic.count() >= 40, 20, "traffic before the outage")
        redis_server.stop()
        try:
            stopped_at = traffic.count()
            # The breaker asks Redis at most every refresh_interval: 80 fail-open requests
            # can all fit in less, so also wait until the breaker has met the outage.
            wait_until(
                lambda: traffic.count() >= stopped_at + 80
                and value(registry, "kitmw_storage_errors_total", component="breaker") >= 1,
                20,
                "traffic during the outage, met by the breaker too",
            )
        finally:
            redis_server.start()
        restarted_at = traffic.count()

        def limiting_again() -> bool:
            with traffic.lock:
                return any(o == (200, True) for o in traffic.outcomes[restarted_at + 10 :])

        wait_until(limiting_again, 20, "limiting to resume")
    outcomes = traffic.outcomes
    failures = [o for o in outcomes if not isinstance(o, tuple) or o[0] != 200]
    assert failures == []  # not one request failed: no 5xx, no connection error
    degraded = sum(1 for o in outcomes if o == (200, False))
    assert degraded >= 1
    # Every degraded decision counted once, as a decision and as a storage error.
    decisions = "kitmw_ratelimit_decisions_total"
    assert value(registry, decisions, side="server", decision="fail_open") == degraded
    assert value(registry, "kitmw_storage_errors_total", component="ratelimit") == degraded
    assert value(registry, decisions, side="server", decision="allowed") == len(outcomes) - degraded
    assert statuses_of(registry, "/ok") == {"200": len(outcomes)}
    assert value(registry, "kitmw_storage_errors_total", component="breaker") >= 1
    # One ERROR per component for the whole outage, one recovery notice, no access ERROR.
    (limit_error,) = kitmw_errors(logs, "kitmw.ratelimit")
    assert "failing open" in limit_error.getMessage()
    assert len(kitmw_errors(logs, "kitmw.breaker")) == 1
    assert kitmw_errors(logs, "kitmw.access") == []
    recovered = [r for r in logs.records if r.name == "kitmw.ratelimit" and "recovered" in r.getMessage()]
    assert len(recovered) == 1
    assert len(access_records(logs)) == len(outcomes)


def test_redis_killed_fails_closed_with_503_and_retry_after_then_recovers(
    redis_server: Any, redis_url: str, registry: CollectorRegistry, serve_asgi: Any
) -> None:
    app = kitmw.stack(
        service(),
        metrics={"registry": registry},
        ratelimit={
            "limit": "3/minute",
            "storage": redis_url,
            "fail_open": False,
            "namespace": unique("closed"),
            "recovery_interval": 0.2,
        },
        breaker={"fail_max": 2, "name": unique("closed")},  # process-local: judges the app only
    )
    with serve_asgi(app) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/ok").status_code == 200
        redis_server.stop()
        try:
            during = [http.get("/ok") for _ in range(5)]
        finally:
            redis_server.start()
        assert [r.status_code for r in during] == [503] * 5
        assert all(r.json() == {"error": "unavailable"} for r in during)
        assert all(int(r.headers["retry-after"]) >= 1 for r in during)
        decisions = "kitmw_ratelimit_decisions_total"
        assert value(registry, decisions, side="server", decision="fail_closed") == 5
        # The storage's 503s are the limiter's, not the app's: the breaker saw none of them.
        assert breakers_closed(app) and breaker_fails(app) == 0

        deadline = time.monotonic() + 10
        while (r := http.get("/ok")).status_code == 503:
            assert time.monotonic() < deadline, "limiting did not resume"
            time.sleep(0.05)
        # Redis came back empty: that was hit 1 of 3, and the limit is enforced again.
        assert r.status_code == 200 and "ratelimit" in r.headers
        assert [http.get("/ok").status_code for _ in range(3)] == [200, 200, 429]


def test_paused_redis_does_not_hold_requests_beyond_the_storage_timeouts(
    redis_url: str, registry: CollectorRegistry, serve_asgi: Any
) -> None:
    timeout = 0.1
    pause = 2.0
    app = kitmw.stack(
        service(),
        metrics={"registry": registry},
        ratelimit={"limit": "1000/minute", "storage": redis_url, "storage_timeout": timeout},
        breaker={"storage": redis_url, "name": unique("pause"), "storage_timeout": timeout},
    )
    admin = redis.Redis.from_url(redis_url, socket_timeout=pause + 5)
    with serve_asgi(app) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        assert "ratelimit" in http.get("/ok").headers  # connected and limiting
        admin.execute_command("CLIENT", "PAUSE", str(int(pause * 1000)), "ALL")
        started = time.monotonic()
        try:
            during = [http.get("/ok") for _ in range(3)]
            elapsed = time.monotonic() - started
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")  # returns once the pause is over
            admin.close()
        # Each request gave up on Redis after its storage timeout: all three were
        # answered while Redis still answered nobody (20x the configured timeout).
        assert elapsed < pause
        assert [r.status_code for r in during] == [200] * 3
        assert all("ratelimit" not in r.headers for r in during)  # decided without Redis
        deadline = time.monotonic() + 10
        while "ratelimit" not in http.get("/ok").headers:
            assert time.monotonic() < deadline, "limiting did not resume after the pause"
            time.sleep(0.05)


# -- JWKS endpoint down --------------------------------------------------------------------


@pytest.fixture
def idp(serve_asgi: Any) -> Iterator[tuple[Any, str]]:
    from test_auth_jwks import IdentityProvider

    provider = IdentityProvider("k1")
    with serve_asgi(provider.app) as server:
        yield provider, server.url + "/.well-known/jwks.json"


def jwt_stack(url: str, clock: Any, registry: CollectorRegistry) -> Any:
    async def me(request: Any) -> PlainTextResponse:
        return PlainTextResponse(request.user.identity)

    backend = JWT(
        jwks_url=url, algorithms=["RS256"], clock=clock, jwks_cache_ttl=300, jwks_refresh_cooldown=30
    )
    return kitmw.stack(
        Starlette(routes=[Route("/me", me)]), access_log=True, metrics={"registry": registry}, auth=backend
    )


@pytest.mark.anyio
async def test_jwks_down_during_rotation_keeps_cached_keys_refuses_new_kid_then_recovers(
    idp: tuple[Any, str], registry: CollectorRegistry, logs: Any
) -> None:
    from test_auth_jwks import FakeClock, jwks_errors, token

    provider, url = idp
    clock = FakeClock()
    app = jwt_stack(url, clock, registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=10) as c:

        async def get(tok: str) -> httpx.Response:
            return await c.get("/me", headers={"Authorization": f"Bearer {tok}"})

        assert (await get(token("k1"))).status_code == 200
        # The identity provider rotates to k2 while its JWKS endpoint is down.
        provider.rotate("k1", "k2")
        provider.down = True
        clock.now += 31  # past the cooldown since the last fetch: an unknown kid may refetch
        refused = await get(token("k2", signer="k2"))  # one refetch, which fails
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert provider.requests == 2
        assert jwks_errors(registry) == 1
        assert (await get(token("k1", jti="x"))).status_code == 200  # cached keys still verify
        for i in range(5):  # within the cooldown: refused without hammering the endpoint
            assert (await get(token("k2", signer="k2", jti=str(i)))).status_code == 401
        assert provider.requests == 2
        clock.now += 31  # cooldown over, still down: one more attempt, refused again
        assert (await get(token("k2", signer="k2", jti="y"))).status_code == 401
        assert provider.requests == 3
        provider.down = False
        clock.now += 61  # back up; after two failures the next attempt waits 2 x cooldown: fetched, verifies
        assert (await get(token("k2", signer="k2", jti="z"))).status_code == 200
        assert (await get(token("k1", jti="w"))).status_code == 200
        assert provider.requests == 4
    assert jwks_errors(registry) == 2
    assert statuses_of(registry, "/me") == {"200": 4, "401": 7}  # never a 500
    fetch_errors = kitmw_errors(logs, "kitmw.auth")
    assert len(fetch_errors) == 2 and all("keeping 1 cached key" in r.getMessage() for r in fetch_errors)


@pytest.mark.anyio
async def test_hanging_jwks_endpoint_is_401_within_the_fetch_timeout(registry: CollectorRegistry) -> None:
    from test_auth_jwks import FakeClock, token

    fetch_timeout = 0.3
    with socket.socket() as listener:  # accepts connections (backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/jwks"
        backend = JWT(jwks_url=url, algorithms=["RS256"], clock=FakeClock(), jwks_timeout=fetch_timeout)
        app = kitmw.stack(Starlette(), metrics={"registry": registry}, auth=backend)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:
            started = time.monotonic()
            r = await c.get("/me", headers={"Authorization": f"Bearer {token()}"})
            elapsed = time.monotonic() - started
    assert r.status_code == 401
    # Bounded by the fetch timeout (plus kitmw's 1 s guard), not by the endpoint.
    assert elapsed < fetch_timeout + 1.0 + 3.0
    assert value(registry, "kitmw_storage_errors_total", component="jwks") == 1


# -- OTLP exporter down --------------------------------------------------------------------


def test_otlp_collector_down_leaves_requests_unaffected(registry: CollectorRegistry) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there

    results: list[SpanExportResult] = []

    class Observed(OTLPSpanExporter):
        """The real exporter; only its verdicts are kept."""

        def export(self, spans: Any) -> SpanExportResult:
            result = super().export(spans)
            results.append(result)
            return result

    export_timeout = 3.0
    exporter = Observed(endpoint=f"http://127.0.0.1:{port}/v1/traces", timeout=export_timeout)
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(exporter, schedule_delay_millis=20, max_export_batch_size=8)
    )
    app = kitmw.stack(service(), tracing={"tracer_provider": provider}, metrics={"registry": registry})
    try:
        started = time.monotonic()
        codes = asyncio.run(_get_many(app, "/ok", 100))
        elapsed = time.monotonic() - started
        assert codes == [200] * 100
        # Exports fail (connection refused) and retry with backoff in the processor's
        # thread; had one request waited for one export, 100 would take far longer.
        assert elapsed < export_timeout
        wait_until(lambda: SpanExportResult.FAILURE in results, 10, "a failed export")
        assert SpanExportResult.SUCCESS not in results
        assert statuses_of(registry, "/ok") == {"200": 100}
    finally:
        exporter.shutdown()  # first: aborts the retry backoff of whatever is still queued
        provider.shutdown()


async def _get_many(app: Any, path: str, n: int) -> list[int]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=10) as c:
        return [(await c.get(path)).status_code for _ in range(n)]


# -- misbehaving apps ------------------------------------------------------------------------


class Boom(RuntimeError):
    pass


def full_stack(app: Any, registry: CollectorRegistry, spans: Any) -> Any:
    provider, _ = spans
    return kitmw.stack(
        app,
        tracing={"tracer_provider": provider},
        access_log=True,
        metrics={"registry": registry},
        breaker={"fail_max": 5, "name": unique("app")},
    )


def test_app_exception_is_recorded_once_and_reaches_the_server_unchanged(
    registry: CollectorRegistry, spans: Any, serve_asgi: Any, logs: Any, uvicorn_errors: Captured
) -> None:
    raised: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        exc = Boom("kaput")
        raised.append(exc)
        raise exc

    stacked = full_stack(app, registry, spans)
    with served(serve_asgi, stacked, uvicorn_errors, lifespan="off") as server:
        r = httpx.get(server.url + "/boom", timeout=10)
        wait_until(lambda: uvicorn_errors.records, 5, "uvicorn to report the exception")
    assert r.status_code == 500 and r.json() == {"error": "internal_error"}
    assert "x-request-id" in r.headers
    (server_saw,) = [rec for rec in uvicorn_errors.records if rec.exc_info]
    assert server_saw.exc_info is not None and server_saw.exc_info[1] is raised[0]  # the very object
    (access,) = access_records(logs)
    assert access.levelno == logging.ERROR and access.__dict__["error"] == "Boom"
    assert access.__dict__["status"] == 500
    assert statuses_of(registry, "<unmatched>") == {"500": 1}
    (span,) = spans[1].get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    assert [e.name for e in span.events] == ["exception"]
    assert breaker_fails(stacked) == 1


def test_truncated_stream_is_recorded_once_with_the_apps_error(
    registry: CollectorRegistry, spans: Any, serve_asgi: Any, logs: Any, uvicorn_errors: Captured
) -> None:
    raised: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"first part\n", "more_body": True})
        exc = Boom("the source went away")
        raised.append(exc)
        raise exc

    stacked = full_stack(app, registry, spans)
    with served(serve_asgi, stacked, uvicorn_errors, lifespan="off") as server:
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream("GET", server.url + "/feed", timeout=10) as r,
        ):
            assert r.status_code == 200
            r.read()  # the body ends before its end
        wait_until(lambda: uvicorn_errors.records, 5, "uvicorn to report the exception")
    (server_saw,) = [rec for rec in uvicorn_errors.records if rec.exc_info]
    assert server_saw.exc_info is not None and server_saw.exc_info[1] is raised[0]
    (access,) = access_records(logs)
    # The status is what the client got in the status line; the error is on the record.
    assert access.levelno == logging.ERROR and access.__dict__["error"] == "Boom"
    assert access.__dict__["status"] == 200 and access.__dict__["bytes_out"] == len(b"first part\n")
    assert statuses_of(registry, "<unmatched>") == {"200": 1}
    (span,) = spans[1].get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    assert breaker_fails(stacked) == 1  # the app failed, whatever it had sent


def test_app_that_never_reads_its_body_is_recorded_normally(
    registry: CollectorRegistry, spans: Any, serve_asgi: Any, logs: Any, uvicorn_errors: Captured
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    stacked = full_stack(app, registry, spans)
    body = b"x" * (1 << 20)
    with (
        served(serve_asgi, stacked, uvicorn_errors, lifespan="off") as server,
        httpx.Client(timeout=10) as http,
    ):
        r = http.post(server.url + "/upload", content=body)
        again = http.get(server.url + "/upload")
    assert r.status_code == 200 and r.text == "ok"
    assert again.status_code == 200
    records = access_records(logs)
    assert [(rec.__dict__["method"], rec.__dict__["status"]) for rec in records] == [
        ("POST", 200),
        ("GET", 200),
    ]
    assert records[0].__dict__["bytes_in"] == 0 and records[0].__dict__["error"] is None
    assert statuses_of(registry, "<unmatched>") == {"200": 2}
    assert [s.status.status_code.name for s in spans[1].get_finished_spans()] == ["UNSET", "UNSET"]
    assert [rec for rec in uvicorn_errors.records if rec.levelno >= logging.ERROR] == []


# -- a client that hangs up ------------------------------------------------------------------


def test_client_disconnect_mid_response_is_recorded_once_as_499(
    registry: CollectorRegistry, spans: Any, serve_asgi: Any, logs: Any, uvicorn_errors: Captured
) -> None:
    stacked = full_stack(service(), registry, spans)
    with served(serve_asgi, stacked, uvicorn_errors) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: fleet\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:  # the headers and maybe a chunk, then hang up
                data = sock.recv(4096)
                assert data, "the server closed first"
                head += data
        assert head.startswith(b"HTTP/1.1 200")
        wait_until(lambda: access_records(logs), 5, "the access record")
        assert httpx.get(server.url + "/ok", timeout=10).status_code == 200  # the server is fine
    stream_records = [r for r in access_records(logs) if r.__dict__["path"] == "/stream"]
    (access,) = stream_records
    assert access.__dict__["status"] == 499
    assert access.levelno == logging.INFO and access.__dict__["error"] is None
    assert access.__dict__["bytes_out"] < 200 * len(b"chunk 000\n")  # it stopped early
    assert statuses_of(registry, "/stream") == {"499": 1}
    stream_span = next(s for s in spans[1].get_finished_spans() if s.name == "GET /stream")
    assert stream_span.status.status_code.name == "UNSET"  # a 4xx is the client's doing
    assert breaker_fails(stacked) == 0
    assert [rec for rec in uvicorn_errors.records if rec.levelno >= logging.ERROR] == []


@pytest.mark.anyio
async def test_send_failing_on_an_asgi_2_4_server_is_a_499_and_the_apps_error_passes_unchanged(
    registry: CollectorRegistry, spans: Any, logs: Any
) -> None:
    from uvicorn.protocols.utils import ClientDisconnected

    stacked = full_stack(service(), registry, spans)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},  # send raises once the client is gone
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/stream",
        "raw_path": b"/stream",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"t")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if len(sent) >= 3:
            raise ClientDisconnected()
        sent.append(message)

    with pytest.raises(ClientDisconnect):  # Starlette's answer to the OSError, unchanged
        await stacked(scope, receive, send)
    (access,) = access_records(logs)
    assert access.__dict__["status"] == 499 and access.__dict__["error"] is None
    assert statuses_of(registry, "/stream") == {"499": 1}
    assert breaker_fails(stacked) == 0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
