"""Soak: many requests with random paths, request ids, clients and tokens through the full stack.

The six-concern ``kitmw.stack()`` around a Starlette app is driven in-process with
asyncio (raw ASGI calls, no server), partly one request at a time awaited in the driving
task itself (so a context variable that is not reset would show there), partly in
concurrent batches. Checked along the way and at the end:

* resident memory is flat: RSS after a warm-up and at the end differ by less than
  ``MAX_RSS_GROWTH`` (figures printed, ``-s`` shows them);
* the Prometheus series count is within the same bound after 10k requests and at the end;
* no context leaks: outside a request ``current_request_id()`` is ``None`` and no span is
  current; inside, the app sees exactly its own request's id, even across an ``await``
  while other requests run;
* no task leaks: only the driving task exists between batches;
* kitmw's caches stay within their bounds (route cache, metrics label children, verified
  JWTs, breaker answers) and the in-memory rate-limit storage holds no more keys than one
  window's worth of clients.

``KITMW_SOAK_REQUESTS`` sets the number of requests (default 100,000: about 77 s on a
quiet 2-core machine, up to 140 s on a loaded one).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import hmac
import json
import logging
import os
import random
import time
from typing import Any

import psutil
import pytest
from opentelemetry import trace
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kitmw
import kitmw.auth
from kitmw.logging import JsonFormatter, LogfmtFormatter, current_request_id, is_valid_request_id

pytestmark = pytest.mark.faults

REQUESTS = int(os.environ.get("KITMW_SOAK_REQUESTS", "100000"))
WARMUP = min(5000, REQUESTS // 6)
BATCH = 200
MAX_RSS_GROWTH = 20 * 1024 * 1024
SECRET = b"soak-test-secret-0123456789-abcdefghij"
NOW = int(time.time())
TEMPLATES = {"/", "/items/{item_id}", "/users/{name}/posts/{post_id:int}", "/admin/stats", "/api/v1/{thing}"}
METHODS = ["GET"] * 16 + ["POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "get", "PROPFIND", ""]
STATUSES = {200, 401, 403, 404, 405}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _token(sub: str, scope: str = "read") -> str:
    signing_input = (
        _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        + "."
        + _b64(json.dumps({"sub": sub, "scope": scope, "exp": NOW + 86400}).encode())
    )
    sig = hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(sig)


class Sink(logging.Handler):
    """Formats every record in JSON and logfmt, checks one line in 97, keeps none."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.json = JsonFormatter()
        self.logfmt = LogfmtFormatter()
        self.count = 0
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        try:
            a = self.json.format(record)
            b = self.logfmt.format(record)
        except Exception as exc:  # pragma: no cover - reported by the test
            self.bad.append(repr(exc))
            return
        printable = a.isprintable() and b.isprintable()  # also rules out CR, LF, U+2028
        if not printable or (self.count % 97 == 0 and not json.loads(a).get("request_id")):
            self.bad.append(a[:200])


class Soak:
    def __init__(self, rng: random.Random) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse
        from starlette.routing import Mount, Route

        self.rng = rng
        self.mismatches: list[tuple[str | None, str | None]] = []

        async def endpoint(request: Request) -> PlainTextResponse:
            rid = current_request_id()
            await asyncio.sleep(0)  # let the other requests of the batch run in between
            if current_request_id() != rid:
                self.mismatches.append((rid, current_request_id()))
            return PlainTextResponse("ok", headers={"x-app-rid": rid or "-"})

        app = Starlette(
            routes=[
                Route("/", endpoint),
                Route("/items/{item_id}", endpoint),
                Route("/users/{name}/posts/{post_id:int}", endpoint),
                Route("/admin/stats", endpoint),
                Route("/healthz", endpoint),
                Mount("/api", routes=[Route("/v1/{thing}", endpoint)]),
            ]
        )
        for router in (app.router, app.router.routes[-1].app):  # the redirects are not under test
            router.redirect_slashes = False
        self.registry = CollectorRegistry()
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.sink = Sink()
        self.logger = logging.getLogger(f"tests.soak.access.{id(self)}")
        self.logger.addHandler(self.sink)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.app = kitmw.stack(
            app,
            tracing={"tracer_provider": self.provider},
            access_log={"logger": self.logger},
            metrics={"registry": self.registry},
            # A limit no test traffic reaches, with a one-second window: the in-memory
            # storage keeps one counter per client per window (see the docs).
            ratelimit={"limit": "1000000/second"},
            auth={
                "backend": kitmw.auth.JWT(key=SECRET, algorithms=["HS256"]),
                "scopes": {"/admin": ["admin"]},
            },
            breaker={"name": f"soak-{id(self)}"},
            exclude_paths=["/healthz"],
        )
        self.policies = {p.name: p for p in self.app.policies}
        self.good = _token("alice")
        self.admin = _token("root", "read admin")
        self.pool = [_token(f"user-{i}") for i in range(1500)]  # more than the JWT cache holds
        self.statuses: dict[int, int] = {}
        self.done = 0
        self.spans = 0

    def close(self) -> None:
        self.logger.removeHandler(self.sink)
        self.provider.shutdown()

    # -- random requests ---------------------------------------------------------------------

    def _text(self, n: int) -> str:
        rng = self.rng
        return "".join(rng.choice("abcXYZ019-_.~%é😀\x00\r\n/ ") for _ in range(rng.randint(0, n)))

    def path(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.25:
            return f"/items/{rng.getrandbits(40)}"
        if r < 0.35:
            return f"/users/{self._text(12) or 'x'}/posts/{rng.randint(0, 10**9)}"
        if r < 0.45:
            return f"/api/v1/{self._text(20) or 'x'}"
        if r < 0.5:
            return rng.choice(["/", "/admin/stats", "/healthz", "/healthz/"])
        if r < 0.501:
            return "/metrics"
        return "/" + self._text(40)  # a scan of random URLs

    def headers(self) -> list[tuple[bytes, bytes]]:
        rng = self.rng
        headers: list[tuple[bytes, bytes]] = []
        r = rng.random()
        if r < 0.8:
            token = self.good
        elif r < 0.85:
            token = self.admin
        elif r < 0.93:
            token = rng.choice(self.pool)
        elif r < 0.97:
            token = _b64(rng.randbytes(30)) + "." + _b64(rng.randbytes(10))
        else:
            token = ""
        if token:
            headers.append((b"authorization", b"Bearer " + token.encode()))
        r = rng.random()
        if r < 0.3:
            headers.append((b"x-request-id", f"{rng.getrandbits(128):032x}".encode()))
        elif r < 0.45:
            headers.append((b"x-request-id", rng.randbytes(rng.randint(0, 200))))
        if rng.random() < 0.2:
            hops = ", ".join(
                f"{rng.randint(1, 254)}.{rng.randint(0, 255)}.0.{rng.randint(1, 254)}" for _ in range(3)
            )
            headers.append((b"x-forwarded-for", hops.encode()))
        if rng.random() < 0.1:
            tp = f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"
            headers.append((b"traceparent", tp.encode() if rng.random() < 0.7 else rng.randbytes(55)))
        headers.append((b"user-agent", self._text(30).encode("utf-8", "surrogatepass")))
        return headers

    def client(self) -> tuple[str, int]:
        rng = self.rng
        if rng.random() < 0.8:
            return (
                f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                1,
            )
        return (f"2001:db8:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::{rng.getrandbits(16):x}", 1)

    # -- one request ---------------------------------------------------------------------------

    async def one(self) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": self.rng.choice(METHODS),
            "scheme": "http",
            "path": self.path(),
            "root_path": "",
            "query_string": b"",
            "headers": self.headers(),
            "client": self.client(),
            "server": ("soak", 80),
        }
        start: dict[str, Any] = {}
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.disconnect"}  # pragma: no cover

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)

        await self.app(scope, receive, send)
        status = start["status"]
        self.statuses[status] = self.statuses.get(status, 0) + 1
        headers = start["headers"]
        rid = [v for k, v in headers if k == b"x-request-id"]
        assert len(rid) == 1 and is_valid_request_id(rid[0].decode("latin-1")), headers
        app_rid = [v for k, v in headers if k == b"x-app-rid"]
        if app_rid:
            assert app_rid == rid, (app_rid, rid)
        self.done += 1

    # -- measurements ----------------------------------------------------------------------------

    def series(self) -> int:
        text = generate_latest(self.registry).decode()
        keys = set()
        for family in text_string_to_metric_families(text):
            if family.name == "http_server_requests":
                for sample in family.samples:
                    labels = sample.labels
                    assert labels["route"] in TEMPLATES | {"<unmatched>"}, labels
                    keys.add((labels["method"], labels["route"], labels["status"]))
        return len(keys)

    def check_caches(self) -> dict[str, int]:
        from kitmw import routes

        sizes = {
            "route_cache": max(len(routes._walks), len(routes._django)),
            "metrics_children": len(self.policies["metrics"]._children),
            "jwt_cache": len(self.policies["auth"]._backends[0]._cache),
            "breaker_answers": len(self.policies["breaker"]._cache),
            "breakers": len(self.policies["breaker"].breakers),  # one per route, one unmatched
            "limiter_keys": len(self.policies["ratelimit"].backend.sync),
        }
        assert sizes["route_cache"] <= 2048
        assert sizes["metrics_children"] <= 4096
        assert sizes["jwt_cache"] <= 1024
        assert sizes["breaker_answers"] <= 256
        assert sizes["breakers"] <= 32  # the soak app's routes + <unmatched>, whatever the paths
        return sizes


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


@pytest.mark.timeout(600)  # 100,000 requests: 77 s quiet, up to ~140 s on a loaded 2-core machine
def test_soak_memory_series_contexts_tasks_and_caches_stay_flat(record_property: Any) -> None:
    soak = Soak(random.Random(20241123))
    figures: dict[str, Any] = {"requests": REQUESTS}
    samples: list[float] = []
    # 11 methods (known + _OTHER) x 6 routes (templates + <unmatched>) x 5 statuses
    series_bound = 11 * (len(TEMPLATES) + 1) * len(STATUSES)

    async def main() -> None:
        me = asyncio.current_task()
        batches = REQUESTS // BATCH
        for batch in range(batches):
            if batch % 2 == 0:
                for _ in range(BATCH):  # awaited in this very task: a leaked context shows here
                    await soak.one()
                    assert current_request_id() is None
            else:
                await asyncio.gather(*(soak.one() for _ in range(BATCH)))
            assert current_request_id() is None, "a request id leaked out of a request"
            assert not trace.get_current_span().get_span_context().is_valid, "a span leaked"
            assert asyncio.all_tasks() == {me}, "a task outlived its request"
            soak.spans += len(soak.exporter.get_finished_spans())
            soak.exporter.clear()
            done = (batch + 1) * BATCH
            if done == WARMUP:
                figures["rss_after_warmup"] = _rss()
            if done % 5000 == 0:
                samples.append(round(_rss() / 2**20, 1))  # the curve, for the report
            if done == 10000 or (done < 10000 and batch == batches - 1):
                figures["series_at_10k"] = soak.series()
                figures["caches_at_10k"] = soak.check_caches()
            if batch == batches - 1:
                figures["rss_end"] = _rss()  # still inside the loop, as the warm-up figure

    try:
        asyncio.run(main())
        figures["series_end"] = soak.series()
        figures["caches_end"] = soak.check_caches()
        figures["statuses"] = dict(sorted(soak.statuses.items()))
        figures["log_records"] = soak.sink.count
        figures["spans"] = soak.spans
        growth = figures["rss_end"] - figures["rss_after_warmup"]
        figures["rss_growth_mib"] = round(growth / 2**20, 2)
        figures["rss_mib_every_5k"] = samples
        print(f"\nsoak figures: {figures}")
        for key, value in figures.items():
            record_property(key, value)

        assert soak.done == REQUESTS // BATCH * BATCH
        assert not soak.mismatches, soak.mismatches[:5]
        assert not soak.sink.bad, soak.sink.bad[:5]
        assert set(soak.statuses) <= STATUSES, soak.statuses
        assert figures["series_at_10k"] <= series_bound and figures["series_end"] <= series_bound
        assert growth < MAX_RSS_GROWTH, figures
        # one record and one span per request that is not excluded (/healthz)
        assert soak.sink.count == soak.spans <= soak.done
        # the storage forgets a client when its one-second window is over
        assert figures["caches_end"]["limiter_keys"] <= soak.done
    finally:
        soak.close()
