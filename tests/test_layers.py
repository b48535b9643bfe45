"""A second kitmw layer of a concern enforces its own configuration (issue 12, item 1).

Nested kitmw layers (a class inside a class, ``stack()`` outside and ``add_middleware`` /
``app.wsgi_app = kitmw.wsgi.X(...)`` inside) share one exchange. Every layer still runs
its own policies: only a policy an outer layer already applied with the same join key
(the very same object; a second ``Metrics`` on the same registry, a second access log on
the same logger, a second tracing layer) is skipped, because running it again could only
duplicate its output. Each case runs on ASGI (Starlette) and on WSGI (Flask).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio.from_thread
import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kitmw
from kitmw.auth import APIKey

BACKEND = APIKey(keys={"key-alice": "alice", "key-bob": "bob"}, scopes={"alice": ["admin"]})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def starlette_app(*middleware: tuple[Any, dict[str, Any]]) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def fail(request: Any) -> PlainTextResponse:
        return PlainTextResponse("down", status_code=500)

    app = Starlette(
        routes=[Route("/login", ok), Route("/admin", ok), Route("/items", ok), Route("/fail", fail)]
    )
    for cls, options in middleware:
        app.add_middleware(cls, **options)
    return app


def flask_app() -> Any:
    from flask import Flask

    app = Flask(unique("layers"))

    @app.get("/login")
    def login() -> str:
        return "ok"

    @app.get("/admin")
    def admin() -> str:
        return "ok"

    @app.get("/items")
    def items() -> str:
        return "ok"

    @app.get("/fail")
    def fail() -> tuple[str, int]:
        return "down", 500

    return app


class Side:
    """Builds the two placements on one protocol and calls the result."""

    protocol: str

    def nest(
        self, inner_concern: str, inner: dict[str, Any], outer_concern: str, outer: dict[str, Any]
    ) -> Any:
        """``kitmw.X(kitmw.X(app, **inner), **outer)``: a class wrapped in a class."""
        raise NotImplementedError

    def stacked(self, inner_concern: str, inner: dict[str, Any], **outer: Any) -> Any:
        """``stack()`` outside, the framework's own way of adding a middleware inside."""
        raise NotImplementedError

    def get(self, app: Any, path: str, **kw: Any) -> httpx.Response:
        raise NotImplementedError


CLASS_NAMES = {"ratelimit": "RateLimit", "auth": "Auth", "breaker": "CircuitBreaker", "metrics": "Metrics"}


class Asgi(Side):
    protocol = "asgi"

    def __init__(self, portal: Any) -> None:
        self.portal = portal

    def nest(
        self, inner_concern: str, inner: dict[str, Any], outer_concern: str, outer: dict[str, Any]
    ) -> Any:
        inner_cls = getattr(kitmw, CLASS_NAMES[inner_concern])
        outer_cls = getattr(kitmw, CLASS_NAMES[outer_concern])
        return outer_cls(inner_cls(starlette_app(), **inner), **outer)

    def stacked(self, inner_concern: str, inner: dict[str, Any], **outer: Any) -> Any:
        cls = getattr(kitmw, CLASS_NAMES[inner_concern])
        return kitmw.stack(starlette_app((cls, inner)), **outer)

    def get(self, app: Any, path: str, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                return await c.get(path, **kw)

        return self.portal.call(go)  # type: ignore[no-any-return]


class Wsgi(Side):
    protocol = "wsgi"

    def nest(
        self, inner_concern: str, inner: dict[str, Any], outer_concern: str, outer: dict[str, Any]
    ) -> Any:
        inner_cls = getattr(kitmw.wsgi, CLASS_NAMES[inner_concern])
        outer_cls = getattr(kitmw.wsgi, CLASS_NAMES[outer_concern])
        return outer_cls(inner_cls(flask_app(), **inner), **outer)

    def stacked(self, inner_concern: str, inner: dict[str, Any], **outer: Any) -> Any:
        app = flask_app()
        app.wsgi_app = getattr(kitmw.wsgi, CLASS_NAMES[inner_concern])(app.wsgi_app, **inner)
        return kitmw.stack(app, **outer)

    def get(self, app: Any, path: str, **kw: Any) -> httpx.Response:
        transport = httpx.WSGITransport(app=app, remote_addr="127.0.0.1")
        with httpx.Client(transport=transport, base_url="http://test") as c:
            return c.get(path, **kw)


@pytest.fixture(params=["asgi", "wsgi"])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    if request.param == "asgi":
        with anyio.from_thread.start_blocking_portal() as portal:
            yield Asgi(portal)
    else:
        yield Wsgi()


def statuses(side: Side, app: Any, path: str, n: int, **kw: Any) -> list[int]:
    return [side.get(app, path, **kw).status_code for _ in range(n)]


# -- the two examples, exactly -----------------------------------------------------


def test_rate_limit_inside_rate_limit_enforces_the_inner_route_limit(side: Side) -> None:
    app = side.nest("ratelimit", {"routes": {"/login": "1/minute"}}, "ratelimit", {"limit": "100/minute"})
    assert statuses(side, app, "/login", 3) == [200, 429, 429]
    assert side.get(app, "/items").status_code == 200  # the outer limit still allows the rest


def test_optional_auth_outside_scoped_auth_still_refuses_anonymous_callers(side: Side) -> None:
    app = side.nest(
        "auth",
        {"backend": BACKEND, "scopes": {"/admin": ["admin"]}},
        "auth",
        {"backend": BACKEND, "optional": True},
    )
    assert side.get(app, "/admin").status_code == 401
    assert side.get(app, "/admin", headers={"X-API-Key": "key-bob"}).status_code == 403
    assert side.get(app, "/admin", headers={"X-API-Key": "key-alice"}).status_code == 200
    assert side.get(app, "/items").status_code == 401  # the inner layer requires credentials


# -- stack() outside, the framework's middleware inside ---------------------------------------


def test_stack_outside_rate_limit_inside(side: Side) -> None:
    app = side.stacked(
        "ratelimit",
        {"routes": {"/login": "1/minute"}, "namespace": unique("inner")},
        ratelimit={"limit": "100/minute", "namespace": unique("outer")},
    )
    assert statuses(side, app, "/login", 3) == [200, 429, 429]


def test_stack_outside_auth_inside(side: Side) -> None:
    app = side.stacked(
        "auth",
        {"backend": BACKEND, "scopes": {"/admin": ["admin"]}},
        auth={"backend": BACKEND, "optional": True},
    )
    assert side.get(app, "/admin").status_code == 401
    assert side.get(app, "/admin", headers={"X-API-Key": "key-bob"}).status_code == 403
    assert side.get(app, "/admin", headers={"X-API-Key": "key-alice"}).status_code == 200


def test_stack_outside_breaker_inside(side: Side) -> None:
    app = side.stacked(
        "breaker",
        {"fail_max": 2, "reset_timeout": 600, "name": unique("inner")},
        breaker={"fail_max": 100, "reset_timeout": 600, "name": unique("outer")},
    )
    assert statuses(side, app, "/fail", 3) == [500, 500, 503]


def test_stack_outside_is_enforced_too(side: Side) -> None:
    """The inner layer is stricter on /login, the outer one everywhere else."""
    app = side.stacked(
        "ratelimit",
        {"routes": {"/login": "5/minute"}, "namespace": unique("inner")},
        ratelimit={"limit": "2/minute", "namespace": unique("outer")},
    )
    assert statuses(side, app, "/items", 3) == [200, 200, 429]


# -- observability layers share a key where a second run would only duplicate --------------------


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == name:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


def test_two_metrics_layers_on_one_registry_count_each_request_once(side: Side) -> None:
    registry = CollectorRegistry()
    app = side.stacked("metrics", {"registry": registry}, metrics={"registry": registry})
    side.get(app, "/items")
    counts = samples(registry, "http_server_requests_total")
    assert list(counts.values()) == [1.0]


def test_two_metrics_layers_on_two_registries_both_count(side: Side) -> None:
    inner, outer = CollectorRegistry(), CollectorRegistry()
    app = side.stacked("metrics", {"registry": inner}, metrics={"registry": outer})
    side.get(app, "/items")
    assert list(samples(inner, "http_server_requests_total").values()) == [1.0]
    assert list(samples(outer, "http_server_requests_total").values()) == [1.0]


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def loggers() -> Iterator[Callable[[], tuple[logging.Logger, Keep]]]:
    made: list[tuple[logging.Logger, Keep]] = []

    def make() -> tuple[logging.Logger, Keep]:
        logger = logging.getLogger(unique("tests.layers"))
        handler = Keep()
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        made.append((logger, handler))
        return logger, handler

    yield make
    for logger, handler in made:
        logger.removeHandler(handler)


def _access_layers(side: Side, inner: logging.Logger, outer: logging.Logger) -> Any:
    if side.protocol == "asgi":
        return kitmw.AccessLog(kitmw.AccessLog(starlette_app(), logger=inner), logger=outer)
    return kitmw.wsgi.AccessLog(kitmw.wsgi.AccessLog(flask_app(), logger=inner), logger=outer)


def test_two_access_logs_on_one_logger_write_one_line(side: Side, loggers: Any) -> None:
    logger, kept = loggers()
    r = side.get(_access_layers(side, logger, logger), "/items")
    assert len(kept.records) == 1
    assert r.headers.get_list("x-request-id") == [kept.records[0].request_id]  # type: ignore[attr-defined]


def test_two_access_logs_on_two_loggers_write_one_line_each_with_one_request_id(
    side: Side, loggers: Any
) -> None:
    (inner, inner_kept), (outer, outer_kept) = loggers(), loggers()
    r = side.get(_access_layers(side, inner, outer), "/items", headers={"X-Request-ID": "abc-123"})
    assert len(inner_kept.records) == len(outer_kept.records) == 1
    assert inner_kept.records[0].request_id == outer_kept.records[0].request_id == "abc-123"  # type: ignore[attr-defined]
    assert r.headers.get_list("x-request-id") == ["abc-123"]
    generated = side.get(_access_layers(side, inner, outer), "/items")
    assert generated.headers.get_list("x-request-id") == [inner_kept.records[1].request_id]  # type: ignore[attr-defined]
    assert outer_kept.records[1].request_id == inner_kept.records[1].request_id  # type: ignore[attr-defined]


def test_two_tracing_layers_make_one_span(side: Side, spans: Any) -> None:
    provider, exporter = spans
    app: Any
    if side.protocol == "asgi":
        app = kitmw.Tracing(
            kitmw.Tracing(starlette_app(), tracer_provider=provider), tracer_provider=provider
        )
    else:
        app = kitmw.wsgi.Tracing(
            kitmw.wsgi.Tracing(flask_app(), tracer_provider=provider), tracer_provider=provider
        )
    side.get(app, "/items")
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /items"


# -- the /metrics page is guarded by the policies of every layer (item 3) ---------------------


def test_metrics_outside_auth_inside_guards_the_metrics_page(side: Side) -> None:
    registry = CollectorRegistry()
    app = side.stacked("auth", {"backend": BACKEND}, metrics={"registry": registry})
    assert side.get(app, "/metrics").status_code == 401
    allowed = side.get(app, "/metrics", headers={"X-API-Key": "key-bob"})
    assert allowed.status_code == 200 and "http_server_requests_total" in allowed.text


def test_metrics_outside_rate_limit_inside_limits_the_metrics_page(side: Side) -> None:
    app = side.stacked(
        "ratelimit",
        {"limit": "2/minute", "namespace": unique("inner")},
        metrics={"registry": CollectorRegistry()},
    )
    assert statuses(side, app, "/metrics", 3) == [200, 200, 429]


def test_metrics_inside_auth_outside_guards_the_metrics_page(side: Side) -> None:
    app = side.stacked("metrics", {"registry": CollectorRegistry()}, auth={"backend": BACKEND})
    assert side.get(app, "/metrics").status_code == 401
    assert side.get(app, "/metrics", headers={"X-API-Key": "key-bob"}).status_code == 200


def test_metrics_page_is_served_through_an_inner_layer_that_does_not_guard_it(side: Side) -> None:
    registry = CollectorRegistry()
    app = side.stacked(
        "metrics", {"registry": CollectorRegistry(), "expose": None}, metrics={"registry": registry}
    )
    side.get(app, "/items")
    r = side.get(app, "/metrics")
    assert r.status_code == 200 and 'route="/items"' in r.text
