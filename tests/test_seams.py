"""The private parts of other packages that kitmw relies on, each checked in one place.

kitmw declares no upper bounds (pyproject.toml says why); instead, every foreign private
attribute it touches has a test here that fails loudly, naming the kitmw module to
update, on a release that changes its shape. Each seam also has a fallback or a
behaviour test elsewhere; these tests exist so that a changed shape never degrades
silently into the fallback.
"""

from __future__ import annotations

import inspect
from typing import Any

import httpx
import pybreaker
import pytest
from fastapi import APIRouter, FastAPI, Request  # module level: FastAPI resolves annotations here

# -- pybreaker: the lock, the state objects' verdict handlers ---------------------------------
# (kitmw/breaker/_machine.py, the one module touching them, runs pybreaker's own state
# machine as acquire/release under pybreaker's lock; its storage is a public
# CircuitBreakerStorage, kitmw's View, which pybreaker must keep its state in)

PYBREAKER = "pybreaker changed a private part kitmw/breaker/_machine.py uses"


def _machine(**options: Any) -> Any:
    from kitmw.breaker._machine import Machine, View

    view = View()
    return Machine(clock=lambda: 0.0, view=view, **options), view


def test_pybreaker_lock_is_a_reentrant_context_manager() -> None:
    cb = pybreaker.CircuitBreaker()
    lock = getattr(cb, "_lock", None)
    assert lock is not None and hasattr(lock, "__enter__"), PYBREAKER
    with lock, lock:  # kitmw's open() takes it inside pybreaker's own use
        pass
    machine, _ = _machine()
    assert machine.lock is machine._lock, PYBREAKER


def test_pybreaker_keeps_its_state_in_kitmws_storage() -> None:
    machine, view = _machine(fail_max=2, success_threshold=1)
    assert machine.current_state == pybreaker.STATE_CLOSED
    view.current = pybreaker.STATE_OPEN  # another process opened it: pybreaker adopts it
    assert machine.state.name == pybreaker.STATE_OPEN, PYBREAKER
    view.current = pybreaker.STATE_CLOSED
    assert machine.state.name == pybreaker.STATE_CLOSED, PYBREAKER


def test_pybreaker_state_objects_take_verdicts_and_follow_the_storage() -> None:
    machine, view = _machine(fail_max=2, success_threshold=1)
    state = machine.state
    assert "reraise" in inspect.signature(state._handle_error).parameters, PYBREAKER
    machine.record(True, RuntimeError("one"))  # state._handle_error(..., reraise=False)
    assert view.fails == 1, PYBREAKER
    machine.record(True, RuntimeError("two"))  # the trip: pybreaker raises, kitmw swallows
    assert view.current == pybreaker.STATE_OPEN and view.opened_ts == 0.0, PYBREAKER
    view.current = pybreaker.STATE_HALF_OPEN
    machine.record(False, None)  # state._handle_success()
    assert (view.current, view.fails) == (pybreaker.STATE_CLOSED, 0), PYBREAKER


# -- prometheus-client: a labelled child's value objects ----------------------------------
# (kitmw/metrics/_instruments.py writes them directly and falls back to the public
# methods when the shape differs; tests/test_metrics.py compares both expositions)


def test_prometheus_client_children_have_the_value_objects_kitmw_writes() -> None:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from kitmw.metrics._instruments import add_writer, histogram_writer

    registry = CollectorRegistry()
    counter = Counter("seam_requests", "d", ["route"], registry=registry).labels("/")
    histogram = Histogram("seam_seconds", "d", ["route"], registry=registry).labels("/")
    message = "prometheus-client changed a labelled child's value objects: kitmw/metrics/_instruments.py"
    assert add_writer(counter) != counter.inc, message  # the fast writer, not the fallback
    assert histogram_writer(histogram) != histogram.observe, message


# -- FastAPI: include_router()'s route contexts ---------------------------------------------
# (kitmw/routes.py reads the prefixed template of a route reached through include_router();
# without them an included route is labelled by its unprefixed template)

FASTAPI = "FastAPI changed include_router()'s route contexts that kitmw/routes.py reads"


@pytest.mark.anyio
async def test_fastapi_included_routes_expose_their_prefixed_templates() -> None:
    import kitmw
    from kitmw.routes import starlette_route

    seen: dict[str, Any] = {}
    router = APIRouter()

    @router.get("/items/{item_id}")
    async def item(item_id: int, request: Request) -> dict[str, Any]:
        seen.update(request.scope)
        return {"item_id": item_id}

    app = FastAPI()
    app.include_router(router, prefix="/v1")
    for route in app.router.routes:
        if not isinstance(getattr(route, "path", None), str):  # an included router, not its routes
            assert callable(getattr(route, "effective_route_contexts", None)), FASTAPI
    wrapped = kitmw.AccessLog(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="http://t") as c:
        assert (await c.get("/v1/items/3")).status_code == 200
    fastapi_scope = seen.get("fastapi")
    if isinstance(fastapi_scope, dict) and "effective_route_context" in fastapi_scope:
        ctx = fastapi_scope["effective_route_context"]
        assert getattr(ctx, "original_route", None) is not None, FASTAPI
        path = getattr(getattr(ctx, "starlette_route", None), "path_format", None) or getattr(
            ctx, "path_format", None
        )
        assert path == "/v1/items/{item_id}", FASTAPI
    assert starlette_route(seen, None) == "/v1/items/{item_id}", FASTAPI


# -- Starlette: a Mount's app before its middleware -----------------------------------------
# (kitmw/routes.py walks the routes under a mount from Mount._base_app; without it, down
# the middleware's .app attributes)


def test_starlette_mount_keeps_the_app_it_was_given_under_its_middleware() -> None:
    from starlette.middleware import Middleware
    from starlette.routing import Mount, Route, Router

    class Layer:
        def __init__(self, app: Any) -> None:
            self.inner = app  # not .app: the walk cannot go through it

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self.inner(scope, receive, send)

    async def item(request: Any) -> Any:
        raise AssertionError  # never called

    inner = Router(routes=[Route("/items/{item_id}", item)])
    mount = Mount("/api", app=inner, middleware=[Middleware(Layer)])
    assert getattr(mount, "_base_app", None) is inner, (
        "Starlette renamed Mount._base_app, which kitmw/routes.py reads"
    )


# -- opentelemetry-instrumentation: the semconv helpers contrib's middlewares use ------------
# (kitmw/tracing/_semconv.py binds them so its attributes match opentelemetry-instrumentation-asgi's;
# tests/test_tracing.py compares both attribute sets request by request)

SEMCONV = "opentelemetry-instrumentation changed _semconv, which kitmw/tracing/_semconv.py uses"


def test_opentelemetry_semconv_helpers_are_there_and_kitmw_binds_them() -> None:
    from opentelemetry.instrumentation import _semconv

    from kitmw.tracing._semconv import Semconv

    for name in ("DEFAULT", "HTTP", "HTTP_DUP"):
        assert hasattr(_semconv._StabilityMode, name), SEMCONV
    stability = _semconv._OpenTelemetrySemanticConventionStability
    assert callable(stability._initialize), SEMCONV
    assert callable(stability._get_opentelemetry_stability_opt_in_mode), SEMCONV
    assert hasattr(_semconv._OpenTelemetryStabilitySignalType, "HTTP"), SEMCONV
    for name in ("_report_old", "_report_new", "_get_schema_url"):
        assert callable(getattr(_semconv, name, None)), SEMCONV
    for option in (None, "default", "http", "http/dup"):
        bound = Semconv(option)
        assert isinstance(bound.mode, _semconv._StabilityMode), f"{SEMCONV}: fell back for {option!r}"
        assert bound.schema_url, f"{SEMCONV}: no schema URL for {option!r}"


def test_opentelemetry_composite_propagator_lists_its_parts() -> None:
    """kitmw/tracing/_semconv.py reads a CompositePropagator's parts to skip extraction cheaply."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parts = [TraceContextTextMapPropagator(), W3CBaggagePropagator()]
    composite = CompositePropagator(parts)
    assert list(getattr(composite, "_propagators", ())) == parts, (
        "opentelemetry-api renamed CompositePropagator._propagators, which kitmw/tracing/_semconv.py reads"
    )


def test_pyjwt_names_a_jwks_key_algorithm() -> None:
    """kitmw/auth/jwt.py reads ``PyJWK.algorithm_name`` (PyJWT >= 2.9), and on older releases
    the private ``_algorithms`` table, to bind a JWKS key to its algorithm."""
    import jwt

    jwk = jwt.PyJWK({"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTAx", "alg": "HS256"})
    name = getattr(jwk, "algorithm_name", None)
    if name is None:
        table = getattr(jwk, "_algorithms", None)
        assert isinstance(table, dict), "PyJWT removed PyJWK._algorithms, which kitmw/auth/jwt.py reads"
        name = next((n for n, a in table.items() if a is jwk.Algorithm), None)
    assert name == "HS256", "PyJWT changed how a PyJWK names its algorithm: kitmw/auth/jwt.py"


def test_logging_start_time_is_what_log_records_count_from() -> None:
    """kitmw/logging/_common.py builds kitmw's records without ``LogRecord.__init__`` and
    reads ``logging._startTime`` (seconds, or nanoseconds from Python 3.13) for their
    ``relativeCreated``; without it the records count from kitmw's import."""
    import logging

    start = getattr(logging, "_startTime", None)
    message = "logging._startTime changed, which kitmw/logging/_common.py reads"
    assert isinstance(start, (int, float)), message
    seconds = start / 1e9 if isinstance(start, int) else start
    record = logging.LogRecord("seam", logging.INFO, __file__, 0, "m", (), None)
    assert abs(record.relativeCreated - (record.created - seconds) * 1000) < 1.0, message
