"""The httpx suite of ``kitmw bench --suite httpx``: client overhead per request in-process.

Every configuration is a transport chain ending in the same ``httpx.MockTransport``,
which answers ``200 ok`` with an unread streaming body as a network transport does. It
is driven the way ``httpx.Client.send`` drives a transport, without the client around it
(whose own cost, tens of µs, would only dilute the figures): a fresh ``httpx.Request``
with a timeout extension, ``handle_request`` (or ``handle_async_request``), read the body,
close the response (kitmw finishes its exchange there). One configuration per kind goes
through a real ``httpx.Client`` / ``AsyncClient`` too, to check the transports work under
it. Sync and async configurations share the interleaved rounds; each is compared with the
bare MockTransport of its own kind. The ratios are to a transport that does no I/O: the
overhead in µs is the figure to weigh against a real network round trip.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .harness import Configuration, Env, Suite, Target, clock, per_request, registry

__all__ = ["CONCERNS", "SUITE", "TARGETS", "configurations", "run"]

BASE_URL = "http://bench.local"
PATH = "/items/42"
#: the client concerns of kitmw.httpx.Transport, each measured alone and all together
CONCERNS = ("access_log", "metrics", "tracing", "ratelimit", "breaker", "retry")

Builder = Callable[[Env], Any]


def _handler(request: Any) -> Any:
    import httpx

    return httpx.Response(200, headers={"content-type": "text/plain"}, stream=httpx.ByteStream(b"ok"))


def _mock() -> Any:
    import httpx

    return httpx.MockTransport(_handler)


def _client_options(env: Env, concerns: tuple[str, ...]) -> dict[str, Any]:
    """Options of kitmw's client transport, as ``kitmw bench``'s server options are fixed:
    a huge rate, a real JSON log handler on a null stream, a fresh registry, an SDK provider."""
    shared = registry()
    options: dict[str, Any] = {
        "access_log": {"logger": env.access_logger()},
        "metrics": {"registry": shared},
        "tracing": {"tracer_provider": env.provider},
        "ratelimit": {"limit": "1000000/minute", "registry": shared},
        "breaker": {"name": f"bench-{time.monotonic_ns()}", "registry": shared},
        "retry": True,
    }
    return {c: options[c] for c in concerns}


def _kitmw(concerns: tuple[str, ...], is_async: bool) -> Builder:
    def build(env: Env) -> Any:
        from .. import httpx as kitmw_httpx

        cls = kitmw_httpx.AsyncTransport if is_async else kitmw_httpx.Transport
        return cls(transport=_mock(), **_client_options(env, concerns))

    return build


def _noop_exit(is_async: bool) -> Builder:
    """The driver with one policy whose ``exit`` does nothing: what finishing an exchange
    when the response is closed costs before any concern does anything."""

    def build(env: Env) -> Any:
        from .. import httpx as kitmw_httpx
        from ..exchange import Exchange, Policy

        class Noop(Policy):
            name = "noop"

            def exit(self, ex: Exchange) -> None:
                return None

        cls = kitmw_httpx.AsyncTransport if is_async else kitmw_httpx.Transport
        return cls(transport=_mock(), policies=[Noop()])

    return build


def _otel(is_async: bool, retry: bool = False) -> Builder:
    def build(env: Env) -> Any:
        from opentelemetry.instrumentation.httpx import (
            AsyncOpenTelemetryTransport,
            SyncOpenTelemetryTransport,
        )

        inner = _retries()(env) if retry else _mock()
        cls = AsyncOpenTelemetryTransport if is_async else SyncOpenTelemetryTransport
        return cls(inner, tracer_provider=env.provider)

    return build


def _retries() -> Builder:
    def build(env: Env) -> Any:
        from httpx_retries import RetryTransport

        return RetryTransport(transport=_mock())

    return build


def configurations() -> list[Configuration]:
    """(name, group, builder, is_async); builders get the env and return a transport."""
    configs: list[Configuration] = []
    for is_async in (False, True):
        kind = "async" if is_async else "sync"
        cls = "AsyncTransport" if is_async else "Transport"
        otel = "AsyncOpenTelemetryTransport" if is_async else "SyncOpenTelemetryTransport"
        configs.append((f"bare MockTransport ({kind})", "bare", lambda env: _mock(), is_async))
        configs.append((f"kitmw {cls}, no concern", "reference", _kitmw((), is_async), is_async))
        configs.append((f"kitmw {cls}, one no-op exit policy", "reference", _noop_exit(is_async), is_async))
        for concern in CONCERNS:
            configs.append((f"kitmw {cls} ({concern})", "kitmw", _kitmw((concern,), is_async), is_async))
        configs += [
            (f"kitmw {cls} (tracing + retry)", "kitmw", _kitmw(("tracing", "retry"), is_async), is_async),
            (f"kitmw {cls}, all six", "kitmw", _kitmw(CONCERNS, is_async), is_async),
            (otel, "peer", _otel(is_async), is_async),
            (f"httpx-retries RetryTransport ({kind})", "peer", _retries(), is_async),
            (f"{otel} over RetryTransport", "peer", _otel(is_async, retry=True), is_async),
        ]
    configs.append(("floor: SDK client span, traceparent injected", "floor", _floor_client_span, CALL))
    return configs


#: ``detail`` of a plain call (a dependency floor), timed call by call.
CALL = "call"


def _floor_client_span(env: Env) -> Callable[[], Any]:
    """What any client-side tracing must ask of the SDK per call: a CLIENT span with the
    4 attributes of the old semantic conventions, the W3C headers injected through the
    global propagator, the status attribute, the end."""
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind

    tracer = env.provider.get_tracer("kitmw.bench.floor")
    attributes = {
        "http.method": "GET",
        "http.url": BASE_URL + PATH,
        "net.peer.name": "bench.local",
        "net.peer.port": 80,
    }
    in_context = trace.set_span_in_context

    def call() -> None:
        span = tracer.start_span("GET", kind=SpanKind.CLIENT, attributes=attributes)
        headers: dict[str, str] = {}
        propagate.get_global_textmap().inject(headers, context=in_context(span))
        span.set_attribute("http.status_code", 200)
        span.end()

    return call


_TIMEOUT = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}


def _sync_driver(transport: Any) -> Callable[[int], tuple[float, float]]:
    import httpx

    def drive(n: int) -> tuple[float, float]:
        send = transport.handle_request
        new = httpx.Request
        url = BASE_URL + PATH
        bad = 0
        start = clock()
        for _ in range(n):
            response = send(new("GET", url, extensions={"timeout": _TIMEOUT}))
            try:
                response.read()
            finally:
                response.close()
            if response.status_code != 200:
                bad += 1
        timing = per_request(start, n)
        if bad:
            raise RuntimeError(f"{bad} unexpected statuses")
        return timing

    return drive


def _async_driver(transport: Any) -> Callable[[int], Any]:
    import httpx

    async def drive(n: int) -> tuple[float, float]:
        send = transport.handle_async_request
        new = httpx.Request
        url = BASE_URL + PATH
        bad = 0
        start = clock()
        for _ in range(n):
            response = await send(new("GET", url, extensions={"timeout": _TIMEOUT}))
            try:
                await response.aread()
            finally:
                await response.aclose()
            if response.status_code != 200:
                bad += 1
        timing = per_request(start, n)
        if bad:
            raise RuntimeError(f"{bad} unexpected statuses")
        return timing

    return drive


async def _check(transport: Any, is_async: bool) -> None:
    """One call through a real client: it must answer ``200 ok``."""
    import httpx

    if is_async:
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            response = await client.get(PATH)
    else:
        with httpx.Client(transport=transport, base_url=BASE_URL) as client:
            response = client.get(PATH)
    if response.status_code != 200 or response.content != b"ok":
        raise RuntimeError(f"unexpected answer {response.status_code} {response.content[:80]!r}")


async def _ready(make: Callable[[], Any], is_async: Any, token: Callable[[], str]) -> Callable[[int], Any]:
    if is_async == CALL:
        call = make()

        def drive_calls(n: int) -> tuple[float, float]:
            start = clock()
            for _ in range(n):
                call()
            return per_request(start, n)

        drive_calls(20)
        return drive_calls
    await _check(make(), is_async)  # through a real client, which closes it
    transport = make()
    if is_async:
        drive = _async_driver(transport)
        await drive(20)  # warm up
        return drive
    drive_sync = _sync_driver(transport)
    drive_sync(20)  # warm up
    return drive_sync


#: The suite; ``run(rounds=, requests_per_round=, only=, progress=)`` runs it; sync and
#: async configurations are compared with the bare MockTransport of their kind.
def _targets() -> list[Target]:
    targets: list[Target] = []
    for kind, cls, otel in (
        ("sync", "Transport", "SyncOpenTelemetryTransport"),
        ("async", "AsyncTransport", "AsyncOpenTelemetryTransport"),
    ):
        targets += [
            Target(f"{kind}: no-concern cost", f"kitmw {cls}, no concern", f"bare MockTransport ({kind})", 3.0, "us"),
            Target(f"{kind}: tracing vs {otel}", f"kitmw {cls} (tracing)", otel, 0.4),
            Target(
                f"{kind}: floor share, tracing",
                f"kitmw {cls} (tracing)",
                "floor: SDK client span, traceparent injected",
                0.5,
                "share",
            ),
            Target(f"{kind}: all six vs {otel} alone", f"kitmw {cls}, all six", otel, 1.0),
        ]
    return targets


#: Targets of issue 16 read from one run.
TARGETS = _targets()

SUITE = Suite(configurations, _ready, baseline=lambda is_async: is_async, targets=TARGETS)
run = SUITE.run
