"""FastAPI's own forms (issue 15): ``kitmw.Stack``, ``kitmw.fastapi.instrument``, and auth,
rate limits and breaker tuning as dependencies.

Real FastAPI apps as users write them, driven with FastAPI's ``TestClient`` (the point of
keeping the app object) or ``httpx.ASGITransport``; metrics read from a fresh registry.
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations of the
# endpoints below, and their dependencies are local names.

import inspect
import time
from typing import Annotated, Any

import httpx
import jwt
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

import kitmw
import kitmw.fastapi
from kitmw.auth import JWT, APIKey, Basic, Principal
from kitmw.fastapi import HTTPRejected, rejection_handler, require

SECRET = "kitmw-fastapi-test-secret-0123456789"


def token(scope: str = "", subject: str = "alice") -> str:
    claims = {"sub": subject, "scope": scope, "exp": int(time.time()) + 600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(scope: str = "", subject: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(scope, subject)}"}


def jwt_backend() -> JWT:
    return JWT(key=SECRET, algorithms=["HS256"])


def requests_total(registry: CollectorRegistry, route: str, status: str) -> float:
    value = registry.get_sample_value(
        "http_server_requests_total", {"method": "GET", "route": route, "status": status}
    )
    return value or 0.0


def kitmw_layers(app: FastAPI) -> list[Any]:
    """The kitmw layers in the app's built middleware stack, outermost first."""
    found = []
    layer: Any = app.build_middleware_stack()
    while layer is not None:
        if isinstance(layer, kitmw.asgi.Middleware):
            found.append(layer)
        layer = getattr(layer, "app", None)
    return found


# -- kitmw.Stack ----------------------------------------------------------------------------


def test_stack_class_keeps_the_fastapi_app_working(registry: CollectorRegistry) -> None:
    app = FastAPI()

    def database() -> str:
        return "production"

    @app.get("/items/{item_id}")
    async def item(item_id: int, db: Annotated[str, Depends(database)]) -> dict[str, Any]:
        return {"item_id": item_id, "db": db}

    app.add_middleware(kitmw.Stack, metrics={"registry": registry}, access_log=True)
    app.dependency_overrides[database] = lambda: "test"
    app.state.started = "yes"

    @app.get("/later")
    async def later(request: Request) -> dict[str, str]:
        return {"state": request.app.state.started}

    client = TestClient(app)
    assert client.get("/items/3").json() == {"item_id": 3, "db": "test"}
    assert client.get("/later").json() == {"state": "yes"}
    assert client.get("/items/3").headers["x-request-id"]
    assert requests_total(registry, "/items/{item_id}", "200") == 2
    assert requests_total(registry, "/later", "200") == 1


def test_stack_class_is_one_fused_layer_with_the_policies_of_stack(registry: CollectorRegistry) -> None:
    options: dict[str, Any] = {
        "tracing": True,
        "access_log": True,
        "metrics": {"registry": registry},
        "ratelimit": {"limit": "100/minute", "key": "principal"},
        "auth": jwt_backend(),
        "breaker": True,
    }
    app = FastAPI()
    app.add_middleware(kitmw.Stack, exclude_paths=["/health"], **options)
    layers = kitmw_layers(app)
    assert len(layers) == 1 and type(layers[0]) is kitmw.Stack
    fused = kitmw.stack(FastAPI(), exclude_paths=["/health"], **{**options, "metrics": {"registry": CollectorRegistry()}})
    assert [type(p) for p in layers[0].policies] == [type(p) for p in fused.policies]
    assert [p.name for p in layers[0].policies][-3:] == ["auth", "ratelimit", "breaker"]  # principal key: after auth


def test_stack_class_takes_the_options_of_stack() -> None:
    ours = inspect.signature(kitmw.Stack.__init__).parameters
    theirs = inspect.signature(kitmw.stack).parameters
    assert [n for n in theirs if n != "protocol"] == [n for n in ours if n != "self"]
    assert list(inspect.signature(kitmw.wsgi.Stack.__init__).parameters) == list(ours)
    assert kitmw.Stack is kitmw.asgi.Stack and "Stack" in kitmw.__all__
    with pytest.raises(kitmw.ConfigError, match="ratelimit: limit"):
        kitmw.Stack(FastAPI(), ratelimit="often")
    with pytest.raises(kitmw.ConfigError, match="did you mean 'metrics'"):
        kitmw.Stack(FastAPI(), metric=True)


def test_wsgi_stack_keeps_the_flask_app(registry: CollectorRegistry) -> None:
    from flask import Flask

    app = Flask("wsgi-stack")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    app.wsgi_app = kitmw.wsgi.Stack(app.wsgi_app, metrics={"registry": registry}, ratelimit="1/minute")
    client = app.test_client()
    assert client.get("/items/1").json == {"item_id": 1}
    refused = client.get("/items/1")
    assert refused.status_code == 429 and refused.json == {"error": "rate_limited"}
    assert requests_total(registry, "/items/<int:item_id>", "429") == 1


# -- instrument -----------------------------------------------------------------------------


def test_instrument_returns_the_same_app_and_overrides_work_after_it(registry: CollectorRegistry) -> None:
    app = FastAPI()

    def settings() -> str:
        return "production"

    @app.get("/env")
    async def env(value: Annotated[str, Depends(settings)]) -> dict[str, str]:
        return {"env": value}

    assert kitmw.fastapi.instrument(app, metrics={"registry": registry}, breaker=True) is app
    app.dependency_overrides[settings] = lambda: "test"
    with TestClient(app) as client:
        assert client.get("/env").json() == {"env": "test"}
    assert requests_total(registry, "/env", "200") == 1
    assert [type(layer) for layer in kitmw_layers(app)] == [kitmw.Stack]


def test_instrument_checks_its_options_at_once() -> None:
    with pytest.raises(kitmw.ConfigError, match="ratelimit: limit"):
        kitmw.fastapi.instrument(FastAPI(), ratelimit="often")
    with pytest.raises(kitmw.ConfigError, match="app"):
        kitmw.fastapi.instrument(object())  # type: ignore[arg-type]


def test_instrument_keeps_the_apps_own_handler_for_refusals() -> None:
    app = FastAPI()

    async def mine(request: Request, exc: Exception) -> Any:
        from fastapi.responses import JSONResponse

        return JSONResponse({"mine": True}, status_code=418)

    app.add_exception_handler(HTTPRejected, mine)

    @app.get("/x", dependencies=[require(backend=jwt_backend())])
    async def x() -> None:
        return None

    kitmw.fastapi.instrument(app, access_log=True)
    assert TestClient(app).get("/x").json() == {"mine": True}


# -- require --------------------------------------------------------------------------------


#: The docs stay readable without credentials (Swagger UI needs them to offer Authorize).
DOCS = ["/docs", "/openapi.json"]


def admin_app(auth: Any = None, **stack: Any) -> FastAPI:
    """``/admin`` requiring the ``admin`` scope, instrumented with ``auth`` (the docs left open)."""
    app = FastAPI()

    @app.get("/admin")
    async def admin(user: Annotated[Principal, require("admin")], request: Request) -> dict[str, Any]:
        return {"user": user.identity, "scopes": sorted(user.scopes), "request_user": request.user.identity}

    if auth is not None:
        stack["auth"] = {"backend": auth, "exclude_paths": DOCS}
    kitmw.fastapi.instrument(app, **stack)
    return app


def test_require_answers_401_403_and_200_with_the_layers_auth() -> None:
    client = TestClient(admin_app(auth=jwt_backend()))
    anonymous = client.get("/admin")
    assert anonymous.status_code == 401 and anonymous.json() == {"error": "unauthorized"}
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="kitmw"'
    no_scope = client.get("/admin", headers=bearer("read"))
    assert no_scope.status_code == 403 and no_scope.json() == {"error": "forbidden"}
    assert no_scope.headers["www-authenticate"] == (
        'Bearer realm="kitmw", error="insufficient_scope", scope="admin"'
    )
    ok = client.get("/admin", headers=bearer("read admin"))
    assert ok.status_code == 200
    assert ok.json() == {"user": "alice", "scopes": ["admin", "read"], "request_user": "alice"}


def test_openapi_lists_the_layers_scheme_for_require_and_its_scopes() -> None:
    schema = TestClient(admin_app(auth=jwt_backend())).get("/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {
        "JWT": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    }
    assert schema["paths"]["/admin"]["get"]["security"] == [{"JWT": ["admin"]}]
    assert "parameters" not in schema["paths"]["/admin"]["get"]  # nothing of require's leaks


@pytest.mark.parametrize(
    ("backend", "schemes"),
    [
        pytest.param(jwt_backend(), {"JWT": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}, id="jwt"),
        pytest.param(Basic(users={"ann": "pw"}), {"Basic": {"type": "http", "scheme": "basic"}}, id="basic"),
        pytest.param(
            APIKey(keys={"k": "bot"}), {"APIKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}, id="apikey"
        ),
        pytest.param(
            APIKey(keys={"k": "bot"}, header="X-Token"),
            {"APIKey_X-Token": {"type": "apiKey", "in": "header", "name": "X-Token"}},
            id="apikey-header",
        ),
        pytest.param(
            JWT(key=SECRET, algorithms=["HS256"], header="X-Token", scheme=""),
            {"JWT_x-token": {"type": "apiKey", "in": "header", "name": "x-token"}},
            id="jwt-header",
        ),
    ],
)
def test_the_scheme_matches_the_backend(backend: Any, schemes: dict[str, Any]) -> None:
    own = FastAPI()

    @own.get("/admin", dependencies=[require("admin", backend=backend)])
    async def admin() -> None:
        return None

    for app in (own, admin_app(auth=backend)):  # require's own backend, the layer's
        schema = TestClient(app).get("/openapi.json").json()
        assert schema["components"]["securitySchemes"] == schemes
        assert schema["paths"]["/admin"]["get"]["security"] == [{name: ["admin"]} for name in schemes]


def test_several_backends_are_alternative_requirements() -> None:
    backends = [jwt_backend(), APIKey(keys={"key-bot": "bot"}, scopes={"bot": ["admin"]})]
    own = FastAPI()

    @own.get("/admin")
    async def admin(user: Annotated[Principal, require("admin", backend=backends)]) -> dict[str, str]:
        return {"user": user.identity}

    for app in (own, admin_app(auth=backends)):  # require's own backends, the layer's
        client = TestClient(app)
        schema = client.get("/openapi.json").json()
        assert set(schema["components"]["securitySchemes"]) == {"JWT", "APIKey"}
        assert schema["paths"]["/admin"]["get"]["security"] == [{"JWT": ["admin"]}, {"APIKey": ["admin"]}]
        assert client.get("/admin", headers={"X-API-Key": "key-bot"}).json()["user"] == "bot"
        assert client.get("/admin", headers=bearer("admin")).json()["user"] == "alice"


def test_require_verifies_by_itself_without_a_kitmw_layer() -> None:
    app = FastAPI()

    @app.get("/admin")
    async def admin(user: Annotated[Principal, require("admin", backend=jwt_backend())], request: Request) -> Any:
        return {"user": user.identity, "request_user": request.user.identity}

    client = TestClient(app)
    # No handler registered: FastAPI's own HTTPException body, kitmw's status and headers.
    anonymous = client.get("/admin")
    assert anonymous.status_code == 401 and anonymous.json() == {"detail": "unauthorized"}
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="kitmw"'
    assert client.get("/admin", headers=bearer("read")).status_code == 403
    assert client.get("/admin", headers=bearer("admin")).json() == {"user": "alice", "request_user": "alice"}
    bad = client.get("/admin", headers={"Authorization": "Bearer not.a.token"})
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]

    app.add_exception_handler(HTTPRejected, rejection_handler)
    app.middleware_stack = None  # rebuilt with the handler
    assert client.get("/admin").json() == {"error": "unauthorized"}


def test_require_on_a_path_the_layer_lets_through_uses_its_own_backend() -> None:
    app = FastAPI()

    @app.get("/public/me")
    async def me(user: Annotated[Principal, require(backend=APIKey(keys={"k": "bot"}))]) -> dict[str, str]:
        return {"user": user.identity}

    @app.get("/public/layer")
    async def layer(user: Annotated[Principal, require()]) -> dict[str, str]:
        return {"user": user.identity}

    kitmw.fastapi.instrument(app, auth={"backend": jwt_backend(), "exclude_paths": ["/public/*"]})
    client = TestClient(app)
    assert client.get("/public/me", headers={"X-API-Key": "k"}).json() == {"user": "bot"}
    refused = client.get("/public/layer")  # excluded from the layer's auth, require() insists
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == 'Bearer realm="kitmw"'


def test_require_and_limit_under_a_stack_outside_the_app() -> None:
    api = FastAPI(exception_handlers={HTTPRejected: rejection_handler})

    @api.get("/admin", dependencies=[kitmw.fastapi.limit("1/minute", key="principal")])
    async def admin(user: Annotated[Principal, require("admin")]) -> dict[str, str]:
        return {"user": user.identity}

    client = TestClient(kitmw.stack(api, auth={"backend": jwt_backend(), "optional": True}, access_log=True))
    assert client.get("/admin").json() == {"error": "unauthorized"}
    assert client.get("/admin", headers=bearer("read", subject="carol")).status_code == 403
    ok = client.get("/admin", headers=bearer("admin"))
    assert ok.json() == {"user": "alice"} and ok.headers["ratelimit"] == '"default";r=0;t=60'
    assert client.get("/admin", headers=bearer("admin")).status_code == 429
    assert client.get("/admin", headers=bearer("admin", subject="bob")).status_code == 200


def test_require_without_any_backend_is_a_configuration_error() -> None:
    app = FastAPI()

    @app.get("/admin", dependencies=[require("admin")])
    async def admin() -> None:
        return None

    with pytest.raises(kitmw.ConfigError, match="require: no backend"):
        TestClient(app).get("/admin")
    with pytest.raises(kitmw.ConfigError, match="scopes"):
        require("two words")
    with pytest.raises(kitmw.ConfigError, match="require: backend"):
        require(backend=[])


def test_require_is_overridden_like_any_dependency() -> None:
    app = admin_app(auth=jwt_backend())
    admin = require("admin")

    @app.get("/report")
    async def report(user: Annotated[Principal, admin]) -> dict[str, str]:
        return {"user": user.identity}

    app.dependency_overrides[admin.dependency] = lambda: Principal("tester", ["admin"])
    # The layer still authenticates: the override replaces the dependency, not the layer.
    assert TestClient(app).get("/report", headers=bearer()).json() == {"user": "tester"}


def test_authorize_answers_for_a_policy_that_ran() -> None:
    policy = kitmw.auth.AuthPolicy(backend=[APIKey(keys={"k": "bot"}), jwt_backend()])
    ex = kitmw.Exchange("GET", "/x")
    assert policy.authorize(ex, ["admin"]).status == 401  # type: ignore[union-attr]
    ex.set_user("alice", ["read"], None, Principal("alice", ["read"], None, "jwt"))
    assert policy.authorize(ex, ["read"]) is None
    refused = policy.authorize(ex, ["admin", "read"])
    assert refused is not None and refused.status == 403 and refused.code == "forbidden"
    # As the middleware's 403: every backend's challenge, the one that admitted the caller explains.
    assert refused.headers == (
        ("WWW-Authenticate", 'APIKey realm="kitmw", header="X-API-Key"'),
        ("WWW-Authenticate", 'Bearer realm="kitmw", error="insufficient_scope", scope="admin read"'),
    )


# -- limit ----------------------------------------------------------------------------------


def limited_app(*, layer: bool = True, **options: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/login", dependencies=[kitmw.fastapi.limit("2/minute", **options)])
    async def login() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/search", dependencies=[kitmw.fastapi.limit("2/minute", **options)])
    async def search() -> dict[str, bool]:
        return {"ok": True}

    if layer:
        kitmw.fastapi.instrument(app, access_log=True)
    return app


def test_limit_answers_429_with_the_middlewares_headers_and_body() -> None:
    client = TestClient(limited_app())
    first = client.get("/login")
    assert first.headers["ratelimit-policy"] == '"default";q=2;w=60'
    assert first.headers["ratelimit"] == '"default";r=1;t=60'
    assert client.get("/login").status_code == 200
    refused = client.get("/login")
    assert refused.status_code == 429 and refused.json() == {"error": "rate_limited"}
    assert refused.headers["retry-after"] == "60"
    assert refused.headers["ratelimit"] == '"default";r=0;t=60'
    assert refused.headers["x-request-id"]  # the layer's headers too
    assert client.get("/search").status_code == 200  # another route: its own budget


def test_limit_without_a_layer_still_sets_its_headers() -> None:
    client = TestClient(limited_app(layer=False))
    assert client.get("/login").headers["ratelimit"] == '"default";r=1;t=60'
    client.get("/login")
    refused = client.get("/login")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "60"


def test_limit_by_principal_gives_each_caller_a_budget() -> None:
    backend = APIKey(keys={"ka": "alice", "kb": "bob"})
    app = FastAPI()

    @app.get("/x", dependencies=[require(backend=backend), kitmw.fastapi.limit("1/minute", key="principal")])
    async def x() -> None:
        return None

    client = TestClient(app)
    assert client.get("/x", headers={"X-API-Key": "ka"}).status_code == 200
    assert client.get("/x", headers={"X-API-Key": "ka"}).status_code == 429
    assert client.get("/x", headers={"X-API-Key": "kb"}).status_code == 200


def test_one_limit_on_a_router_limits_each_route_on_its_own() -> None:
    app = FastAPI()
    router = APIRouter(prefix="/v1", dependencies=[kitmw.fastapi.limit("1/minute")])

    @router.get("/a")
    async def a() -> None:
        return None

    @router.get("/b/{n}")
    async def b(n: int) -> None:
        return None

    app.include_router(router)
    client = TestClient(app)
    assert [client.get(p).status_code for p in ("/v1/a", "/v1/b/1", "/v1/b/2", "/v1/a")] == [200, 200, 429, 429]


@pytest.mark.redis
def test_limit_shares_its_budget_on_redis(redis_url: str) -> None:
    first, second = limited_app(storage=redis_url), limited_app(storage=redis_url)  # two replicas
    codes = [TestClient(app).get("/login").status_code for app in (first, second, first)]
    assert codes == [200, 200, 429]
    assert TestClient(second).get("/search").status_code == 200


def test_limit_checks_its_options_where_it_is_declared() -> None:
    with pytest.raises(kitmw.ConfigError, match="limit"):
        kitmw.fastapi.limit("often")
    with pytest.raises(kitmw.ConfigError, match="storage"):
        kitmw.fastapi.limit("1/minute", storage="memcache-typo://x")
    with pytest.raises(kitmw.ConfigError, match="did you mean 'fail_open'"):
        kitmw.fastapi.limit("1/minute", fail_opn=True)
    with pytest.raises(kitmw.ConfigError, match="routes"):
        kitmw.fastapi.limit("1/minute", routes={"/x": "1/second"})


# -- per-route breaker ----------------------------------------------------------------------


def failing_app(*routes: tuple[str, list[Any]]) -> FastAPI:
    app = FastAPI()
    for path, dependencies in routes:

        async def fail() -> None:
            raise RuntimeError("down")

        app.add_api_route(path, fail, dependencies=dependencies)
    return app


def codes(app: Any, path: str, n: int = 4) -> list[int]:
    client = TestClient(app, raise_server_exceptions=False)
    return [client.get(path).status_code for _ in range(n)]


def test_a_route_tunes_its_own_breaker(registry: CollectorRegistry) -> None:
    app = failing_app(("/pay", [kitmw.fastapi.breaker(fail_max=1)]), ("/other", []))
    kitmw.fastapi.instrument(app, breaker={"fail_max": 3, "registry": registry})
    assert codes(app, "/pay") == [500, 503, 503, 503]
    assert codes(app, "/other") == [500, 500, 500, 503]


def test_router_breaker_options_apply_to_its_routes_and_a_route_wins(registry: CollectorRegistry) -> None:
    app = FastAPI()
    router = APIRouter(prefix="/api", dependencies=[kitmw.fastapi.breaker(fail_max=1, reset_timeout=60)])

    @router.get("/a")
    async def a() -> None:
        raise RuntimeError("down")

    @router.get("/b", dependencies=[kitmw.fastapi.breaker(fail_max=2)])
    async def b() -> None:
        raise RuntimeError("down")

    app.include_router(router)
    kitmw.fastapi.instrument(app, breaker={"registry": registry})

    @app.get("/late", dependencies=[kitmw.fastapi.breaker(fail_max=1)])  # added after instrument
    async def late() -> None:
        raise RuntimeError("down")

    assert codes(app, "/api/a") == [500, 503, 503, 503]
    assert codes(app, "/api/b") == [500, 500, 503, 503]
    assert codes(app, "/late") == [500, 503, 503, 503]
    open_ = TestClient(app, raise_server_exceptions=False).get("/api/a")
    assert int(open_.headers["retry-after"]) > 30  # the router's reset_timeout


def test_a_breaker_table_tunes_routes_of_any_framework(registry: CollectorRegistry) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def down(request: Any) -> PlainTextResponse:
        return PlainTextResponse("down", status_code=500)

    app = Starlette(routes=[Route("/pay/{n}", down), Route("/other", down)])
    wrapped = kitmw.stack(app, breaker={"routes": {"/pay/{n}": {"fail_max": 1}}, "registry": registry})
    assert codes(wrapped, "/pay/1", 3) == [500, 503, 503]
    assert codes(wrapped, "/other", 3) == [500, 500, 500]


def test_breaker_tuning_that_nothing_reads_is_an_error(registry: CollectorRegistry) -> None:
    app = failing_app(("/pay", [kitmw.fastapi.breaker(fail_max=1)]))
    app.add_middleware(kitmw.Stack, breaker={"registry": registry})  # kitmw.Stack cannot see the routes
    with pytest.raises(kitmw.ConfigError, match=r"instrument\(app, breaker="):
        TestClient(app).get("/pay")
    wrapped = kitmw.stack(failing_app(("/pay", [kitmw.fastapi.breaker(fail_max=1)])), breaker=True)
    with pytest.raises(kitmw.ConfigError, match=r"instrument\(app, breaker="):
        TestClient(wrapped).get("/pay")
    plain = failing_app(("/pay", [kitmw.fastapi.breaker(fail_max=1)]))  # no breaker at all: nothing to tune
    assert codes(plain, "/pay", 1) == [500]


def test_breaker_options_are_checked_where_they_are_written() -> None:
    with pytest.raises(kitmw.ConfigError, match="breaker: fail_max"):
        kitmw.fastapi.breaker(fail_max=0)
    with pytest.raises(kitmw.ConfigError, match="at least one"):
        kitmw.fastapi.breaker()
    with pytest.raises(kitmw.ConfigError, match=r"routes\['/x'\]: 'storage' cannot be set per route"):
        kitmw.breaker.BreakerPolicy(routes={"/x": {"storage": "redis://x"}})
    with pytest.raises(kitmw.ConfigError, match="per route"):
        kitmw.breaker.BreakerPolicy(routes={"/x": {"fail_max": 1}}, per_route=False)


# -- in process, as httpx sees it -------------------------------------------------------------


@pytest.mark.anyio
async def test_instrumented_app_over_asgi_transport(registry: CollectorRegistry) -> None:
    app = admin_app(auth=jwt_backend(), metrics={"registry": registry})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        refused = await client.get("/admin", headers=bearer("read"))
        served = await client.get("/admin", headers=bearer("admin"))
    assert (refused.status_code, served.status_code) == (403, 200)
    assert requests_total(registry, "/admin", "403") == 1
    assert requests_total(registry, "/admin", "200") == 1


# -- typed for editors and type checkers --------------------------------------------------------

USER_CODE = '''
from typing import Annotated

from fastapi import APIRouter, FastAPI
from flask import Flask

import kitmw
import kitmw.fastapi
from kitmw.auth import JWT, Principal
from kitmw.fastapi import breaker, limit, require

app = FastAPI()
router = APIRouter(dependencies=[breaker(fail_max=2), limit("10/minute", key="header:X-API-Key")])


@app.get("/me")
async def me(user: Annotated[Principal, require("read", backend=JWT(key="k" * 32, algorithms=["HS256"]))]) -> str:
    return user.identity


same: FastAPI = kitmw.fastapi.instrument(app, metrics=True, exclude_paths=["/health"])
app.add_middleware(kitmw.Stack, tracing=True, ratelimit="5/second")
flask_app = Flask("typed")
flask_app.wsgi_app = kitmw.wsgi.Stack(flask_app.wsgi_app, metrics=True)  # type: ignore[method-assign]
breaker(fail_max="3")  # E: the option's type
'''


def test_user_code_type_checks(tmp_path: Any) -> None:
    import subprocess
    import sys

    path = tmp_path / "user_code.py"
    path.write_text(USER_CODE)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", "/dev/null", "--no-error-summary", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    expected = USER_CODE.splitlines().index('breaker(fail_max="3")  # E: the option\'s type') + 1
    assert [int(line.split(":")[1]) for line in errors] == [expected], done.stdout
