"""docs/grafana/kitmw-dashboard.json queries only metrics and labels kitmw really exposes.

Every PromQL expression of the dashboard (panel targets, rows included, and template
variable queries) is taken apart by a small PromQL tokenizer; the metric names, label
matchers and grouping labels it finds are checked against the exposition of a real
app: ``kitmw.stack`` with every concern plus a ``kitmw.httpx`` client on one fresh
registry, driven until every kitmw metric family exists (a 401, a 429, a 503 from an
open breaker, a 504 past a deadline, a client retry, a rate-limit storage that is down,
a kitmw.endpoint call).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port
from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kitmw
import kitmw.httpx
from kitmw.metrics import _instruments

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "kitmw-dashboard.json"

# ---------------------------------------------------------------------------- PromQL

_FUNCTION_NAMES = """abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes
    clamp clamp_max clamp_min cos cosh count_over_time days_in_month day_of_month day_of_week
    day_of_year deg delta deriv double_exponential_smoothing exp floor histogram_avg
    histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
    histogram_sum holt_winters hour idelta increase irate label_join label_replace
    last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi
    predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin
    sinh sort sort_by_label sort_by_label_desc sort_desc sqrt stddev_over_time
    stdvar_over_time sum_over_time tan tanh time timestamp vector year"""
_AGGREGATION_NAMES = (
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio"
)
FUNCTIONS = frozenset(_FUNCTION_NAMES.split())
AGGREGATIONS = frozenset(_AGGREGATION_NAMES.split())
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"})
#: Labels Prometheus adds to every scraped series (absent from the exposition).
TARGET_LABELS = frozenset({"job", "instance"})

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
   |(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
   |(?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![A-Za-z0-9_:]))
   |(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
   |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
   |(?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@])
    """,
    re.VERBOSE,
)
# Grafana's interval variables stand for durations.
_INTERVAL_VARS = re.compile(r"\$__\w+|\$\{__\w+\}")


@dataclass
class Selector:
    """One vector selector: its metric name and label matchers (label, op, value)."""

    name: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class Query:
    expr: str
    selectors: list[Selector]
    grouping: list[str]

    @property
    def metrics(self) -> set[str]:
        return {s.name for s in self.selectors}


def substitute(expr: str) -> str:
    """The expression as Prometheus would get it: interval variables become ``5m``."""
    return _INTERVAL_VARS.sub("5m", expr)


def tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot tokenize {expr!r} at {pos}: {expr[pos : pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            out.append((kind, m.group()))
    return out


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    return body if literal[0] == "`" else re.sub(r"\\(.)", r"\1", body)


def parse(expr: str) -> Query:
    """Metric names, their matchers and the grouping labels of one PromQL expression.

    Identifiers followed by ``(`` are functions or aggregations (an unknown one is an
    error), identifiers inside ``{}`` are label names, inside ``[]`` durations, after
    ``by``/``without``/``on``/``ignoring``/``group_*`` grouping labels; every other
    identifier that is not a keyword is a metric name (a bare or ``{}`` selector).
    """
    toks = tokens(substitute(expr))
    selectors: list[Selector] = []
    grouping: list[str] = []
    i = 0

    def matchers(start: int) -> tuple[list[tuple[str, str, str]], int]:
        found: list[tuple[str, str, str]] = []
        j = start + 1
        while toks[j][1] != "}":
            if toks[j][1] == ",":
                j += 1
                continue
            (lk, label), (_, op), (vk, value) = toks[j : j + 3]
            if lk != "ident" or op not in ("=", "!=", "=~", "!~") or vk != "string":
                raise ValueError(f"bad matcher in {expr!r}: {toks[j : j + 3]}")
            found.append((label, op, _unquote(value)))
            j += 3
        return found, j + 1

    while i < len(toks):
        kind, value = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if value == "{":  # a selector without a name: {__name__="..."}
            found, i = matchers(i)
            names = [v for label, op, v in found if label == "__name__" and op == "="]
            if len(names) != 1:
                raise ValueError(f"selector without a literal metric name in {expr!r}")
            selectors.append(Selector(names[0], [m for m in found if m[0] != "__name__"]))
            continue
        if value == "[":
            while toks[i][1] != "]":
                i += 1
            i += 1
            continue
        if kind != "ident":
            i += 1
            continue
        if value in GROUPING:
            i += 1
            if nxt == "(":
                i += 1
                while toks[i][1] != ")":
                    if toks[i][0] == "ident":
                        grouping.append(toks[i][1])
                    i += 1
                i += 1
            continue
        if value in AGGREGATIONS or value.lower() in KEYWORDS:
            i += 1
            continue
        if nxt == "(":
            if value not in FUNCTIONS:
                raise ValueError(f"unknown PromQL function {value!r} in {expr!r}")
            i += 1
            continue
        selector = Selector(value)
        i += 1
        if nxt == "{":
            selector.matchers, i = matchers(i)
        selectors.append(selector)
    return Query(expr, selectors, grouping)


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<query>.+),\s*(?P<label>[A-Za-z_]\w*)\s*\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<query>.+)\)\s*$", re.S)


def variable_query(text: str) -> tuple[str, str | None] | None:
    """(PromQL, label) of a Grafana Prometheus variable query, None if it has no PromQL."""
    if m := _LABEL_VALUES.match(text):
        return m["query"], m["label"]
    if m := _QUERY_RESULT.match(text):
        return m["query"], None
    return None


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target (rows included) and variable query."""
    found: list[tuple[str, str]] = []
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        text = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        parsed = variable_query(text)
        if parsed is not None:
            found.append((f"variable {var['name']!r}", parsed[0]))
    return found


# ---------------------------------------------------------------------------- exposition


@dataclass
class Exposed:
    """What a registry exposes: sample names, their family, and label values by sample name."""

    family_of: dict[str, str]
    labels: dict[str, dict[str, set[str]]]
    constant: dict[str, str] = field(default_factory=dict)  # the constant labels of the registry


def exposition(registry: CollectorRegistry) -> Exposed:
    family_of: dict[str, str] = {}
    labels: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            # The text format shows ``x_created`` as a gauge family of its own: it belongs to x.
            family_of[sample.name] = family.name.removesuffix("_created")
            seen = labels.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                seen.setdefault(label, set()).add(value)
    return Exposed(family_of, labels)


async def drive(registry: CollectorRegistry, provider: Any, labels: dict[str, str] | None = None) -> list[int]:
    """Traffic that makes every kitmw metric family appear on ``registry``."""
    api = FastAPI()

    @api.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @api.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @api.get("/unstable")
    async def unstable() -> Response:
        return Response(status_code=503)

    @api.get("/slow")
    async def slow() -> Response:
        await asyncio.sleep(30)
        return Response(status_code=200)

    unique = uuid.uuid4().hex[:8]
    app = kitmw.stack(
        api,
        tracing={"tracer_provider": provider},
        access_log=True,
        metrics={"registry": registry, "labels": labels},
        ratelimit={"limit": "6/minute", "namespace": f"dash-{unique}"},
        auth=kitmw.auth.APIKey(keys={"secret": "alice"}),
        breaker={"name": f"dash-{unique}", "fail_max": 2, "reset_timeout": 60},
        timeout={"seconds": 5.0, "routes": {"/slow": 0.05}},
        concurrency={"limit": 8, "max_wait": 1.0},
    )
    key = {"X-API-Key": "secret"}
    sleeps: list[float] = []
    down = f"redis://127.0.0.1:{free_port()}"  # nothing listens there: the storage is down
    transport = kitmw.httpx.AsyncTransport(
        transport=httpx.ASGITransport(app=app),
        access_log=True,
        metrics={"registry": registry},
        tracing={"tracer_provider": provider},
        ratelimit={"limit": "100/second", "storage": down, "mode": "error", "namespace": f"dash-{unique}"},
        retry={"attempts": 2, "sleep": sleeps.append},
    )
    statuses: list[int] = []
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc.test") as plain,
        httpx.AsyncClient(transport=transport, base_url="http://svc.test") as client,
    ):
        statuses.append((await plain.get("/items/1")).status_code)  # no key: 401
        statuses.append((await plain.get("/items/1", headers=key)).status_code)
        statuses.append((await plain.post("/upload", headers=key, content=b"x" * 100)).status_code)
        # Two 503s from the app (the call and its retry) open the breaker.
        statuses.append((await client.get("/unstable", headers=key)).status_code)
        statuses.append((await plain.get("/unstable", headers=key)).status_code)  # its breaker is open
        statuses.append((await plain.get("/items/2", headers=key)).status_code)  # 7th: limited
    other = httpx.ASGITransport(app=app, client=("10.0.0.7", 40000))  # a budget of its own
    async with httpx.AsyncClient(transport=other, base_url="http://svc.test") as elsewhere:
        statuses.append((await elsewhere.get("/slow", headers=key)).status_code)  # past its deadline
    assert len(sleeps) == 1  # the retry happened
    kitmw.endpoint("charge_card", metrics={"registry": registry})(lambda: None)()  # kitmw_endpoint_*
    return statuses


@pytest.fixture(scope="module", params=[None, {"service": "checkout"}], ids=["plain", "constant-labels"])
def exposed(request: pytest.FixtureRequest) -> Exposed:
    """The exposition of the traffic, without and with constant labels (``metrics={"labels":
    ...}``): every dashboard test holds for both."""
    import anyio
    from opentelemetry.sdk.trace import TracerProvider

    registry = CollectorRegistry()
    provider = TracerProvider()
    statuses = anyio.run(drive, registry, provider, request.param)
    provider.shutdown()
    assert statuses == [401, 200, 200, 503, 503, 429, 504]
    found = exposition(registry)
    found.constant = dict(request.param or {})
    return found


# ---------------------------------------------------------------------------- tests


def test_the_traffic_makes_every_kitmw_family_appear(exposed: Exposed) -> None:
    wanted = {name for _, name, *_ in _instruments._SPECS.values()}
    assert set(exposed.family_of.values()) == wanted


def test_the_tokenizer_finds_names_matchers_and_grouping() -> None:
    q = parse(
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{job=~"$job", x="y"}[$__rate_interval])))'
        ' / on (route) group_left sum without (pid) (b) or vector(0) + {__name__="c", d!="e"} offset 1h'
    )
    assert [(s.name, s.matchers) for s in q.selectors] == [
        ("a_bucket", [("job", "=~", "$job"), ("x", "=", "y")]),
        ("b", []),
        ("c", [("d", "!=", "e")]),
    ]
    assert q.grouping == ["le", "route", "route", "pid"]
    with pytest.raises(ValueError, match="unknown PromQL function"):
        parse("rates(a[5m])")


def test_every_expression_parses() -> None:
    found = expressions(load())
    assert len(found) >= 20
    for where, expr in found:
        assert parse(expr).selectors, f"{where}: no metric in {expr!r}"


def test_every_metric_name_is_one_kitmw_exposes(exposed: Exposed) -> None:
    unknown = {
        (where, name)
        for where, expr in expressions(load())
        for name in parse(expr).metrics
        if name not in exposed.family_of
    }
    assert not unknown, f"not exposed by kitmw: {sorted(unknown)}"


def test_every_matcher_uses_a_label_of_its_metric_and_a_value_kitmw_emits(exposed: Exposed) -> None:
    problems = []
    for where, expr in expressions(load()):
        for selector in parse(expr).selectors:
            known = exposed.labels.get(selector.name, {})
            for label, op, value in selector.matchers:
                if label in TARGET_LABELS:
                    continue
                if label not in known:
                    problems.append(f"{where}: {selector.name} has no label {label!r}")
                elif op == "=" and value not in known[label]:
                    problems.append(f"{where}: {selector.name}{{{label}={value!r}}} never emitted")
    assert not problems, "\n".join(problems)


def test_every_grouping_label_exists_on_a_metric_of_its_expression(exposed: Exposed) -> None:
    problems = []
    for where, expr in expressions(load()):
        query = parse(expr)
        available = set(TARGET_LABELS)
        for name in query.metrics:
            available |= set(exposed.labels.get(name, {}))
        problems += [
            f"{where}: no metric has label {label!r}" for label in query.grouping if label not in available
        ]
    assert not problems, "\n".join(problems)


def test_the_labels_filter_selects_every_series_the_dashboard_queries(exposed: Exposed) -> None:
    """The ad hoc ``Labels`` variable: Grafana adds each of its filters (``service="checkout"``)
    to every selector of every query, so every metric the dashboard reads must carry the
    constant labels, with their value, on every series."""
    variables = {v["name"]: v for v in load()["templating"]["list"]}
    assert variables["filters"]["type"] == "adhoc"
    assert variables["filters"]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    if not exposed.constant:
        pytest.skip("no constant labels on this registry")
    problems = []
    for where, expr in expressions(load()):
        for name in parse(expr).metrics:
            for label, value in exposed.constant.items():
                if exposed.labels.get(name, {}).get(label) != {value}:
                    problems.append(f"{where}: {name} lacks {label}={value!r}")
    assert not problems, "\n".join(problems)


def test_variable_queries_name_labels_prometheus_adds() -> None:
    for var in load()["templating"]["list"]:
        if var["type"] == "query":
            parsed = variable_query(var["query"]["query"])
            assert parsed is not None and parsed[1] in TARGET_LABELS, var["name"]


def test_every_kitmw_family_has_a_panel(exposed: Exposed) -> None:
    shown = {exposed.family_of[name] for _, expr in expressions(load()) for name in parse(expr).metrics}
    assert shown == set(exposed.family_of.values())


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard = load()
    assert dashboard["schemaVersion"] >= 36 and dashboard["id"] is None and dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard["panels"]):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
                if "$" in re.sub(r'"[^"]*"', "", substitute(target["expr"])):
                    pytest.fail(f"{panel['title']}: a variable outside a label matcher: {target['expr']}")


def test_the_tokenizer_agrees_with_promql_parser() -> None:
    """Cross-check with the promql-parser package (Prometheus' grammar) when installed."""
    promql_parser = pytest.importorskip("promql_parser")
    for where, expr in expressions(load()):
        ast = promql_parser.parse(substitute(expr))
        names: set[str] = set()

        def visit(node: Any, names: set[str] = names) -> None:
            if isinstance(node, promql_parser.VectorSelector):
                names.add(node.name)

        promql_parser.walk(ast, visit)
        assert names == parse(expr).metrics, where
