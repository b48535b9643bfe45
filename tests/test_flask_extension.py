"""kitmw.flask: the Flask extension, its configuration, and what a view reads.

Real Flask apps as users write them (blueprints, an application factory, werkzeug's
``DispatcherMiddleware`` for an app under ``SCRIPT_NAME``), driven in process by
Flask's test client or ``httpx.WSGITransport``. Under gunicorn: tests/e2e/test_flask.py.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from flask import Blueprint, Flask, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kitmw
import kitmw.auth
import kitmw.timeout
from kitmw.errors import ConfigError
from kitmw.flask import Kitmw, State, principal, request_id, scopes

KEYS = {"k-ann": "ann", "k-bob": "bob"}


def make_app(**config: Any) -> Flask:
    """A Flask service: an app route, a blueprint with a prefix, and a nested one."""
    app = Flask(f"shop-{uuid.uuid4().hex[:8]}")
    if config:
        app.config["KITMW"] = config

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id}

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        caller = principal()
        return {
            "caller": caller and caller.identity,
            "scopes": sorted(scopes()),
            "request_id": request_id(),
            "remote_user": request.remote_user,
        }

    @app.get("/budget")
    def budget() -> dict[str, Any]:
        return {"remaining": kitmw.timeout.remaining()}

    api = Blueprint("api", __name__, url_prefix="/api")
    v1 = Blueprint("v1", __name__, url_prefix="/v1")

    @api.get("/orders/<order_id>")
    def order(order_id: str) -> dict[str, str]:
        return {"order": order_id}

    @v1.get("/users/<int:uid>/files/<path:name>")
    def user_file(uid: int, name: str) -> str:
        return f"{uid}:{name}"

    api.register_blueprint(v1)
    app.register_blueprint(api)
    return app


def counts(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == "http_server_requests_total":
                found[(s.labels["route"], s.labels["status"])] = s.value
    return found


def get(app: Any, path: str, **kwargs: Any) -> httpx.Response:
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://shop.test") as client:
        return client.get(path, **kwargs)


# ----------------------------------------------------------------------------- installing


def test_the_extension_installs_the_same_one_layer_as_stack(registry: CollectorRegistry) -> None:
    options: dict[str, Any] = {
        "tracing": True,
        "access_log": True,
        "metrics": {"registry": registry},
        "timeout": 2.0,
        "ratelimit": "100/minute",
        "auth": kitmw.auth.APIKey(keys=KEYS),
        "concurrency": 8,
        "breaker": True,
    }
    app = make_app(**options)
    inner = app.wsgi_app
    ext = Kitmw(app)
    state = app.extensions["kitmw"]
    assert isinstance(state, State) and state.extension is ext
    layer = app.wsgi_app
    assert isinstance(layer, kitmw.wsgi.Middleware) and layer is state.middleware
    assert layer.app == inner  # one layer, right around Flask's own wsgi_app
    reference = kitmw.stack(make_app().wsgi_app, **{**options, "metrics": {"registry": CollectorRegistry()}})
    assert [type(p) for p in layer.policies] == [type(p) for p in reference.policies]
    assert [p.name for p in layer.policies] == [
        "tracing",
        "access_log",
        "metrics",
        "timeout",
        "ratelimit",
        "auth",
        "concurrency",
        "breaker",
    ]


def test_config_alone_configures_the_layer(registry: CollectorRegistry) -> None:
    app = make_app(access_log=True, metrics={"registry": registry})
    Kitmw(app)
    response = get(app, "/items/3", headers={"X-Request-ID": "cfg-1"})
    assert response.json() == {"id": 3}
    assert response.headers["x-request-id"] == "cfg-1"
    assert counts(registry) == {("/items/<int:item_id>", "200"): 1.0}


def test_an_application_factory_shares_one_extension_and_no_state(registry: CollectorRegistry) -> None:
    ext = Kitmw(metrics={"registry": registry}, ratelimit="1/minute")

    def create_app() -> Flask:
        app = make_app()
        ext.init_app(app)
        return app

    first, second = create_app(), create_app()
    assert not hasattr(ext, "app")  # no global app: the state lives on each app
    assert first.extensions["kitmw"].middleware is not second.extensions["kitmw"].middleware
    assert [get(first, "/items/1").status_code, get(first, "/items/1").status_code] == [200, 429]
    assert get(second, "/items/1").status_code == 200  # its own limiter: its own budget


def test_routes_added_after_init_app_are_served_and_labelled(registry: CollectorRegistry) -> None:
    app = Flask("late")
    Kitmw(app, metrics={"registry": registry})

    @app.get("/late/<int:n>")
    def late(n: int) -> str:
        return str(n)

    assert get(app, "/late/5").text == "5"
    assert counts(registry) == {("/late/<int:n>", "200"): 1.0}


def test_the_app_stays_the_flask_object_for_its_test_client(registry: CollectorRegistry) -> None:
    app = make_app(metrics={"registry": registry})
    Kitmw(app)
    app.testing = True
    response = app.test_client().get("/items/4", headers={"X-Request-ID": "tc-1"})
    assert response.json == {"id": 4}
    assert counts(registry) == {("/items/<int:item_id>", "200"): 1.0}


# ----------------------------------------------------------------------------- merging


@pytest.mark.parametrize(
    ("config", "constructor", "init", "expected"),
    [
        pytest.param({"ratelimit": "5/minute"}, {}, {}, {"ratelimit": "5/minute"}, id="config-only"),
        pytest.param({}, {"metrics": True}, {}, {"metrics": True}, id="keywords-only"),
        pytest.param(
            {"ratelimit": {"limit": "5/minute", "storage": "memory://"}},
            {"ratelimit": {"limit": "9/minute", "headers": True}},
            {},
            {"ratelimit": {"limit": "9/minute", "storage": "memory://", "headers": True}},
            id="dicts-merge-keyword-wins",
        ),
        pytest.param(
            {"ratelimit": {"storage": "memory://"}},
            {"ratelimit": "9/minute"},
            {},
            {"ratelimit": {"storage": "memory://", "limit": "9/minute"}},
            id="shorthand-merges",
        ),
        pytest.param(
            {"timeout": {"seconds": 2.0, "status": 503}},
            {"timeout": True},
            {},
            {"timeout": {"seconds": 2.0, "status": 503}},
            id="true-keeps-the-configs-options",
        ),
        pytest.param({"breaker": True}, {"breaker": False}, {}, {"breaker": False}, id="false-turns-off"),
        pytest.param({"breaker": False}, {"breaker": True}, {}, {"breaker": True}, id="keyword-turns-on"),
        pytest.param(
            {"exclude_paths": ["/health"]},
            {"exclude_paths": ["/livez"]},
            {},
            {"exclude_paths": ["/livez"]},
            id="layer-options-replace",
        ),
        pytest.param(
            {"ratelimit": "5/minute"},
            {"ratelimit": {"headers": True}},
            {"ratelimit": "7/minute"},
            {"ratelimit": {"limit": "7/minute", "headers": True}},
            id="init-app-keywords-last",
        ),
    ],
)
def test_keywords_merge_over_the_config(
    config: dict[str, Any], constructor: dict[str, Any], init: dict[str, Any], expected: dict[str, Any]
) -> None:
    app = make_app(**config)
    state = Kitmw(**constructor).init_app(app, **init)
    assert dict(state.options) == expected


def test_a_policy_object_replaces_the_configs_options() -> None:
    policy = kitmw.ratelimit.RateLimitPolicy(limit="1/minute")
    app = make_app(ratelimit={"limit": "5/minute", "storage": "memory://"})
    Kitmw(app, ratelimit=policy)
    assert app.extensions["kitmw"].options == {"ratelimit": policy}
    assert app.extensions["kitmw"].middleware.policies == (policy,)


def test_the_layer_options_reach_the_layer() -> None:
    app = make_app(handle_errors=True, exclude_paths=["/health"])
    Kitmw(app, access_log=True)
    assert app.extensions["kitmw"].middleware.handle_errors is True


def test_the_config_dict_is_not_modified() -> None:
    config = {"ratelimit": {"limit": "5/minute"}}
    app = Flask("untouched")
    app.config["KITMW"] = config
    Kitmw(app, ratelimit={"headers": True})
    assert config == {"ratelimit": {"limit": "5/minute"}}


def test_json_config_from_the_environment(monkeypatch: pytest.MonkeyPatch, registry: CollectorRegistry) -> None:
    # Flask's own way to configure from the environment: FLASK_KITMW holds JSON.
    monkeypatch.setenv("FLASK_KITMW", '{"ratelimit": "1/minute", "access_log": true}')
    app = make_app()
    app.config.from_prefixed_env()
    Kitmw(app, metrics={"registry": registry})
    assert [get(app, "/items/1").status_code for _ in range(2)] == [200, 429]
    assert counts(registry) == {("/items/<int:item_id>", "200"): 1.0, ("/items/<int:item_id>", "429"): 1.0}


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param(
            {"ratelimt": "5/minute"},
            """app.config["KITMW"]: unknown option 'ratelimt'; did you mean 'ratelimit'?""",
            id="unknown-concern",
        ),
        pytest.param(
            {"ratelimit": {"limt": "5/minute"}},
            """app.config["KITMW"]: ratelimit: unknown option 'limt'; did you mean 'limit'?""",
            id="unknown-option-of-a-concern",
        ),
        pytest.param(
            {"ratelimit": "five per minute"},
            """app.config["KITMW"]: ratelimit: limit""",
            id="bad-rate",
        ),
        pytest.param(
            {"timeout": "2"},
            """app.config["KITMW"]: timeout: expected True, a dict of options, a value for 'seconds'""",
            id="bad-shorthand-type",
        ),
        pytest.param(
            {"timeout": -1.0},
            """app.config["KITMW"]: timeout: seconds: expected a positive number of seconds""",
            id="bad-value",
        ),
        pytest.param(
            {"exclude_paths": ["health"]},
            """app.config["KITMW"]: exclude_paths: each path must be a string starting with '/'""",
            id="bad-exclude-paths",
        ),
        pytest.param(
            {"handle_errors": "yes"},
            """app.config["KITMW"]: handle_errors: expected True, False or None""",
            id="bad-handle-errors",
        ),
        pytest.param(
            {"protocol": "asgi"},
            """app.config["KITMW"]: protocol: a Flask app is always WSGI""",
            id="protocol",
        ),
        pytest.param(
            {"auth": {"scopes": {"/admin": ["admin"]}}},
            """app.config["KITMW"]: auth: option 'backend' is required""",
            id="missing-required",
        ),
    ],
)
def test_an_invalid_config_raises_at_init_app_naming_the_option(config: dict[str, Any], message: str) -> None:
    app = make_app(**config)
    inner = app.wsgi_app
    with pytest.raises(ConfigError) as raised:
        Kitmw().init_app(app)
    assert str(raised.value).startswith(message), str(raised.value)
    assert app.wsgi_app == inner and "kitmw" not in app.extensions  # nothing installed


def test_a_bad_value_merged_from_both_sources_names_both() -> None:
    app = make_app(ratelimit={"limit": "5/minute"})
    with pytest.raises(ConfigError, match=r"^app.config\[\"KITMW\"\] merged with the keywords: ratelimit: storage"):
        Kitmw(app, ratelimit={"storage": "memry://"})


def test_the_config_is_still_named_after_two_keyword_merges() -> None:
    app = make_app(ratelimit={"limit": "5/minute"})
    with pytest.raises(ConfigError, match=r"^app.config\[\"KITMW\"\] merged with the keywords: ratelimit: storage"):
        Kitmw(ratelimit={"headers": True}).init_app(app, ratelimit={"storage": "memry://"})


def test_a_bad_keyword_does_not_blame_the_config() -> None:
    app = make_app(ratelimit="5/minute")
    with pytest.raises(ConfigError) as raised:
        Kitmw(app, ratelimit=5)
    assert str(raised.value).startswith("ratelimit: expected"), str(raised.value)


def test_unknown_keywords_raise_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"^Kitmw\(\): unknown option 'metircs'; did you mean 'metrics'\?"):
        Kitmw(metircs=True)
    with pytest.raises(ConfigError, match=r"^init_app\(\): unknown option 'breakr'; did you mean 'breaker'\?"):
        Kitmw().init_app(make_app(), breakr=True)


def test_a_config_that_is_not_a_dict_is_refused() -> None:
    app = make_app()
    app.config["KITMW"] = "metrics"
    with pytest.raises(ConfigError, match=r"^app.config\[\"KITMW\"\]: expected a dict of kitmw.stack\(\) options"):
        Kitmw(app)


def test_installing_twice_on_one_app_is_refused() -> None:
    app = make_app(access_log=True)
    ext = Kitmw(app)
    with pytest.raises(ConfigError, match="already installed"):
        ext.init_app(app)
    with pytest.raises(ConfigError, match="already installed"):
        Kitmw(app)


def test_something_else_than_a_flask_app_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^app: expected a Flask application"):
        Kitmw(lambda environ, start_response: [])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- in a view


def test_a_view_reads_the_principal_its_scopes_and_the_request_id() -> None:
    backend = kitmw.auth.APIKey(keys=KEYS, scopes={"ann": ["orders:read", "admin"]})
    app = make_app(access_log=True, auth={"backend": backend, "optional": True})
    Kitmw(app)
    ann = get(app, "/whoami", headers={"X-API-Key": "k-ann", "X-Request-ID": "view-1"}).json()
    anonymous = get(app, "/whoami", headers={"X-Request-ID": "view-2"}).json()
    assert ann == {
        "caller": "ann",
        "scopes": ["admin", "orders:read"],
        "request_id": "view-1",
        "remote_user": "ann",
    }
    assert anonymous == {"caller": None, "scopes": [], "request_id": "view-2", "remote_user": None}


def test_without_auth_or_access_log_a_view_reads_none() -> None:
    app = make_app(metrics={"registry": CollectorRegistry()})
    Kitmw(app)
    assert get(app, "/whoami").json() == {"caller": None, "scopes": [], "request_id": None, "remote_user": None}


def test_the_accessors_need_a_request_context() -> None:
    with pytest.raises(RuntimeError, match="outside of request context"):
        principal()
    with pytest.raises(RuntimeError, match="outside of request context"):
        scopes()
    assert request_id() is None


def test_a_view_sees_its_deadline() -> None:
    app = make_app(timeout=2.0)
    Kitmw(app)
    remaining = get(app, "/budget").json()["remaining"]
    assert 0 < remaining <= 2.0
    assert kitmw.timeout.remaining() is None  # reset after the request


def test_the_request_id_is_on_the_views_log_records() -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign,assignment]
    handler.addFilter(kitmw.logging.ContextFilter())
    log = logging.getLogger("shop.flask")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    app = Flask("logs")

    @app.get("/")
    def index() -> str:
        log.info("served %s", request_id())
        return "ok"

    Kitmw(app, access_log=True)
    try:
        assert get(app, "/", headers={"X-Request-ID": "log-1"}).text == "ok"
    finally:
        log.removeHandler(handler)
    (record,) = records
    assert record.getMessage() == "served log-1" and record.__dict__["request_id"] == "log-1"


# ----------------------------------------------------------------------------- route labels


ROUTED = [
    pytest.param("/items/7", "/items/<int:item_id>", id="app-route"),
    pytest.param("/api/orders/o-1", "/api/orders/<order_id>", id="blueprint-url-prefix"),
    pytest.param("/api/v1/users/3/files/a/b.txt", "/api/v1/users/<int:uid>/files/<path:name>", id="nested"),
    pytest.param("/api/nothing", "<unmatched>", id="unmatched"),
]


@pytest.mark.parametrize(("path", "label"), ROUTED)
def test_blueprints_label_with_their_prefixed_rule(path: str, label: str, registry: CollectorRegistry) -> None:
    app = make_app(metrics={"registry": registry})
    Kitmw(app)
    status = get(app, path).status_code
    assert status == (404 if label == "<unmatched>" else 200)
    assert counts(registry) == {(label, str(status)): 1.0}


@pytest.mark.parametrize(("path", "label"), ROUTED[:3])
def test_a_per_route_rate_limit_finds_blueprint_rules_before_dispatch(path: str, label: str) -> None:
    registry = CollectorRegistry()
    app = make_app(metrics={"registry": registry}, ratelimit={"routes": {label: "1/minute"}})
    Kitmw(app)
    assert [get(app, path).status_code for _ in range(2)] == [200, 429]
    assert counts(registry) == {(label, "200"): 1.0, (label, "429"): 1.0}


def mounted(app: Flask) -> Callable[..., Any]:
    """``app`` under ``/shop`` as WSGI mounts it: werkzeug's dispatcher sets SCRIPT_NAME."""
    from werkzeug.exceptions import NotFound
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    return DispatcherMiddleware(NotFound(), {"/shop": app})


@pytest.mark.parametrize(("path", "label"), ROUTED)
def test_an_app_under_script_name_labels_without_the_prefix(path: str, label: str) -> None:
    registry = CollectorRegistry()
    script_names: list[str] = []
    app = make_app(metrics={"registry": registry})
    app.before_request(lambda: script_names.append(request.environ["SCRIPT_NAME"]))  # type: ignore[func-returns-value]
    Kitmw(app)
    status = get(mounted(app), "/shop" + path).status_code
    assert status == (404 if label == "<unmatched>" else 200)
    assert counts(registry) == {(label, str(status)): 1.0}
    assert script_names == ["/shop"]


def test_under_script_name_a_per_route_limit_and_auth_scopes_use_the_rule() -> None:
    backend = kitmw.auth.APIKey(keys=KEYS, scopes={"bob": ["admin"]})
    app = make_app(
        ratelimit={"routes": {"/items/<int:item_id>": "1/minute"}},
        auth={"backend": backend, "scopes": {"/api": ["admin"]}},  # the path the app routes on
    )
    Kitmw(app)
    shop = mounted(app)
    assert [get(shop, "/shop/items/1", headers={"X-API-Key": "k-ann"}).status_code for _ in range(2)] == [200, 429]
    assert get(shop, "/shop/api/orders/1", headers={"X-API-Key": "k-ann"}).status_code == 403
    assert get(shop, "/shop/api/orders/1", headers={"X-API-Key": "k-bob"}).status_code == 200


def test_under_script_name_option_paths_are_the_full_path(registry: CollectorRegistry) -> None:
    app = make_app(metrics={"registry": registry, "expose": "/shop/metrics"}, exclude_paths=["/shop/items/2"])
    Kitmw(app)
    shop = mounted(app)
    assert get(shop, "/shop/items/1").status_code == 200
    assert get(shop, "/shop/items/2").status_code == 200  # excluded: not counted
    exposition = get(shop, "/shop/metrics")
    assert exposition.status_code == 200 and 'route="/items/<int:item_id>"' in exposition.text
    assert counts(registry) == {("/items/<int:item_id>", "200"): 1.0}


def test_a_method_the_rule_does_not_allow_is_labelled_with_the_rule(registry: CollectorRegistry) -> None:
    # As under ASGI: a 405 names a known rule; only paths no rule matches are <unmatched>.
    app = make_app(metrics={"registry": registry}, ratelimit={"routes": {"/api/orders/<order_id>": "1/minute"}})
    Kitmw(app)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://shop.test") as client:
        assert client.post("/items/1").status_code == 405
        # the per-route limit knows the rule before Flask runs, whatever the method
        assert [client.delete("/api/orders/1").status_code for _ in range(2)] == [405, 429]
    assert counts(registry) == {
        ("/items/<int:item_id>", "405"): 1.0,
        ("/api/orders/<order_id>", "405"): 1.0,
        ("/api/orders/<order_id>", "429"): 1.0,
    }
