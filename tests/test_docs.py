"""Every code sample in ``docs/`` runs.

* Every ```python block of every page is executed, in page order, in one namespace per
  page (later blocks may use what earlier ones defined), seeded with the few names the
  pages take for granted (:func:`_seed`: ``app``, ``flask_app``, ``my_app``). An ASGI or
  WSGI app a block leaves in ``app`` / ``application`` is then sent a request in process,
  which must not fail with a 5xx. ``redis://redis:6379`` in a block is pointed at the
  test Redis server. Top-level ``await`` is allowed.
* When a block is skipped (no Redis server to point it at) or fails, the rest of its
  page is skipped, naming that block: later blocks use what it defined.
* An HTML comment on the line before a block changes how it runs:
  ``<!-- test: alternatives -->``: the block lists alternatives (``app = kitmw.Metrics(app)``
  / ``app.add_middleware(kitmw.Metrics)``); its imports run first, then each other
  statement runs on its own, from a fresh namespace; ``<!-- test: skip reason -->``: not
  run, and reported as a skip with its reason (keep these rare).
* A block that includes a file (``--8<-- "docs/snippets/x.py"``) is not run here: the
  file must exist and be one that a test in this module runs (:data:`TESTED_SNIPPETS`).
* The getting-started page shows the README's two commands verbatim, and the demo
  output it shows is what ``python -m kitmw demo`` prints (ids, ports and timings aside).
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SNIPPETS = DOCS / "snippets"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*test:\s*(?P<mode>[a-z-]+)\s*(?P<reason>.*?)\s*-->\s*$")
_INCLUDE = re.compile(r"""^\s*--8<--\s+["']?(?P<path>[^"'\s]+)["']?\s*$""")
_PYTHON = {"python", "py", "python3"}


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    source: str
    mode: str = "run"  # run | alternatives | skip | include
    reason: str = ""
    includes: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def extract(path: Path) -> list[Block]:
    """The python blocks of one markdown page, with their test directives."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        lang = (m["info"].split() or [""])[0].strip("{}.").lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = _FENCE.match(lines[i])
            if close and close["fence"].startswith(fence[0] * len(fence)) and not close["info"].strip():
                break
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1
        if lang not in _PYTHON:
            continue
        block = Block(path.name, start + 1, textwrap.dedent("\n".join(body)) + "\n")
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        directive = _DIRECTIVE.match(lines[prev]) if prev >= 0 else None
        if directive:
            block.mode, block.reason = directive["mode"], directive["reason"]
            if block.mode not in ("alternatives", "skip"):
                raise ValueError(f"{block.id}: unknown test directive {block.mode!r}")
        includes = [inc["path"] for inc in map(_INCLUDE.match, body) if inc]
        if includes:
            block.mode, block.includes = "include", includes
        blocks.append(block)
    return blocks


def pages() -> list[Path]:
    return sorted(p for p in DOCS.glob("*.md"))


ALL_BLOCKS = [block for page in pages() for block in extract(page)]


# -- the namespace the pages take for granted ---------------------------------------------


def _fastapi_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.get("/health")
    async def health() -> str:
        return "ok"

    return app


def _flask_app() -> Any:
    from flask import Flask

    app = Flask("docs")

    @app.get("/")
    def root() -> str:
        return "hello"

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    return app


class _Gateway:
    async def charge(self, order: Any) -> dict[str, Any]:
        return {"charged": order}


def _seed() -> dict[str, Any]:
    """Names the pages use without defining them: the reader's own objects.

    The app being wrapped (``app``, ``my_app``: FastAPI; ``flask_app``), the registry and
    tracer provider the reader made (``registry``, ``provider``), and the reader's own
    code the samples call (``job``, ``process``, ``check_password``, ``lookup``,
    ``gateway``).
    """
    from opentelemetry.sdk.trace import TracerProvider

    return {
        "__name__": "docs_block",
        "app": _fastapi_app(),
        "my_app": _fastapi_app(),
        "flask_app": _flask_app(),
        "registry": CollectorRegistry(),
        "provider": TracerProvider(),
        "job": SimpleNamespace(request_id="job-42"),
        "process": lambda job: None,
        "check_password": lambda name, password: False,
        "lookup": lambda cookie: None,
        "gateway": _Gateway(),
    }


def _page_setup(page: str) -> None:
    """What a page's samples need from their surroundings (a Django project's settings)."""
    if page == "django.md":
        import django_project  # tests/django_project.py: settings for in-process Django

        django_project.setup()


def _is_app(value: Any) -> str | None:
    from kitmw.asgi import is_asgi

    if value is None or isinstance(value, (type, ModuleType)) or not callable(value):
        return None
    if is_asgi(value):
        return "asgi"
    try:
        params = list(inspect.signature(value).parameters)
    except (TypeError, ValueError):
        return None
    return "wsgi" if len(params) == 2 else None


async def _exercise(ns: dict[str, Any], where: str) -> None:
    """Send one request to the app a block built; kitmw must not answer it with a 5xx."""
    for name in ("app", "application"):
        target = ns.get(name)
        kind = _is_app(target)
        if kind == "asgi":
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=target), base_url="http://docs.test"
            ) as client:
                response = await client.get("/items/1")
        elif kind == "wsgi":
            with httpx.Client(
                transport=httpx.WSGITransport(app=target), base_url="http://docs.test"
            ) as client:
                response = client.get("/items/1")
        else:
            continue
        assert response.status_code < 500, f"{where}: {name} answered {response.status_code}"


def _compile(source: str, filename: str) -> Any:
    return compile(source, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)


def _run(source: str, ns: dict[str, Any], filename: str) -> None:
    """Run a block as a module would; a block with top-level ``await`` runs in an event loop."""
    code = _compile(source, filename)
    if code.co_flags & inspect.CO_COROUTINE:
        asyncio.run(eval(code, ns))
    else:
        exec(code, ns)


def _alternatives(source: str) -> tuple[str, list[str]]:
    """(imports, other top-level statements) of an alternatives block."""
    tree = ast.parse(source)
    lines = source.splitlines()
    imports: list[str] = []
    others: list[str] = []
    for node in tree.body:
        text = "\n".join(lines[node.lineno - 1 : node.end_lineno])
        (imports if isinstance(node, (ast.Import, ast.ImportFrom)) else others).append(text)
    return "\n".join(imports) + "\n", others


@dataclass
class _PageRun:
    ns: dict[str, Any]
    done: int = 0  # blocks of the page already executed
    broken: str = ""  # why the rest of the page cannot run (an earlier block skipped or failed)


_runs: dict[str, _PageRun] = {}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Blocks call ``kitmw.logging.configure()``: give the root logger back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    loggers = {name: (lg.handlers[:], lg.level, lg.propagate, lg.disabled) for name, lg in _named_loggers()}
    environ = dict(os.environ)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, (hs, lv, prop, disabled) in loggers.items():
        lg = logging.getLogger(name)
        lg.handlers = hs  # a list of its own: configure(servers=True) replaces the lists
        lg.level, lg.propagate, lg.disabled = lv, prop, disabled
    os.environ.clear()
    os.environ.update(environ)
    if "structlog" in sys.modules:
        sys.modules["structlog"].reset_defaults()
    if "loguru" in sys.modules:  # loguru's defaults: one stderr sink, no patcher
        loguru = sys.modules["loguru"].logger
        loguru.remove()
        loguru.add(sys.stderr)
        loguru.configure(patcher=lambda record: None)


_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.asgi", "uvicorn.access", "gunicorn.error", "gunicorn.access")


def _named_loggers() -> Iterator[tuple[str, logging.Logger]]:
    for name in ("kitmw", "kitmw.access", "kitmw.client", "myapp", "app", *_SERVER_LOGGERS):
        yield name, logging.getLogger(name)


def _prepare(block: Block, request: pytest.FixtureRequest) -> str:
    source = block.source
    if "redis://redis:6379" in source:
        url = request.getfixturevalue("redis_url")
        base = re.match(r"redis://[^/]+", url)
        assert base is not None, url
        source = source.replace("redis://redis:6379", base.group(0))
    return source


def _execute(block: Block, ns: dict[str, Any], request: pytest.FixtureRequest) -> None:
    source = _prepare(block, request)
    filename = f"<{block.id}>"
    if block.mode == "alternatives":
        imports, statements = _alternatives(source)
        _run(imports, ns, filename)
        for n, statement in enumerate(statements):
            local = {**ns, **_seed()}
            _run(imports + statement, local, filename)
            asyncio.run(_exercise(local, f"{block.id} statement {n + 1}"))
        return
    _run(source, ns, filename)
    asyncio.run(_exercise(ns, block.id))


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b, id=b.id, marks=[pytest.mark.redis] if "redis://redis:6379" in b.source else [])
        for b in ALL_BLOCKS
    ],
)
def test_doc_block_runs(block: Block, request: pytest.FixtureRequest, restore_logging: None) -> None:
    if block.mode == "skip":
        pytest.skip(f"{block.id}: {block.reason or 'no reason given'}")
    if block.mode == "include":
        for path in block.includes:
            assert (ROOT / path).is_file(), f"{block.id}: includes missing file {path}"
            assert path in TESTED_SNIPPETS, f"{block.id}: {path} is included but no test runs it"
        return
    page_blocks = [b for b in ALL_BLOCKS if b.page == block.page]
    _page_setup(block.page)
    run = _runs.setdefault(block.page, _PageRun(_seed()))
    index = page_blocks.index(block)

    # earlier blocks of the page first (when this one was selected alone)
    while run.done < index and not run.broken:
        earlier = page_blocks[run.done]
        run.done += 1
        if earlier.mode in ("run", "alternatives"):
            _execute_in_page(earlier, run, request)
    if run.broken:
        # later blocks use what earlier ones defined: they would fail with a NameError
        pytest.skip(f"{block.id}: not run, {run.broken}")
    run.done = index + 1
    _execute_in_page(block, run, request)


def _execute_in_page(block: Block, run: _PageRun, request: pytest.FixtureRequest) -> None:
    """Run a block in its page's namespace; if it skips or fails, the rest of the page is skipped."""
    try:
        _execute(block, run.ns, request)
    except pytest.skip.Exception as exc:
        run.broken = f"an earlier block of the page ({block.id}) was skipped: {exc.msg}"
        raise
    except BaseException:
        run.broken = f"an earlier block of the page ({block.id}) failed"
        raise


def test_a_page_whose_redis_block_is_skipped_skips_the_rest_not_fails(tmp_path: Path) -> None:
    """Without any Redis server, breaker.md's later blocks are skipped, naming the block."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    # only the interpreter's own directory on PATH: no redis-server; and not the pip one
    env.update(PATH=os.path.dirname(sys.executable), KITMW_TEST_REDIS="system")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-rs", "-o", "addopts=",
         f"{Path(__file__).name}::test_doc_block_runs", "-k", "breaker.md"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    assert " failed" not in done.stdout, done.stdout[-3000:]
    assert "redis-server is not on PATH" in done.stdout, done.stdout[-3000:]
    assert "was skipped: redis-server is not on PATH" in done.stdout, done.stdout[-3000:]


def test_every_page_is_in_the_nav() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    for page in pages():
        assert f": {page.name}" in config, f"{page.name} is not in mkdocs.yml's nav"


def test_skips_are_rare() -> None:
    skipped = [b.id for b in ALL_BLOCKS if b.mode == "skip"]
    assert len(skipped) <= max(3, len(ALL_BLOCKS) // 10), skipped


# -- included snippets, each run by a test below -----------------------------------------

TESTED_SNIPPETS: set[str] = set()


def _tested(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    TESTED_SNIPPETS.add(path)

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn

    return mark


def _load(path: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # frameworks resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    from prometheus_client import generate_latest

    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_snippet_files_are_all_tested() -> None:
    for path in SNIPPETS.glob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        assert rel in TESTED_SNIPPETS, f"{rel} is not run by any test"


# -- getting started: the README's commands and the demo's output -------------------------

README_COMMANDS = (
    'python -m pip install -e ".[demo]" && python -m kitmw demo',
    'python -m pip install -e ".[test]" && python -m pytest',
)


def test_getting_started_shows_the_readme_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    page = (DOCS / "getting-started.md").read_text()
    for command in README_COMMANDS:
        assert command in readme, f"README no longer says {command!r}: update the docs"
        assert command in page


def _normalise(line: str) -> str:
    line = re.sub(r"\[\s*\d+\.\ds\]", "[T]", line)
    line = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:P", line)
    line = re.sub(r"eyJ[\w-]+\.eyJ[\w-]*…?", "JWT", line)
    line = re.sub(r"tour-(\d{4})-[0-9a-f]+…?", r"tour-\1-ID", line)
    line = re.sub(r"\b[0-9a-f]{8,}…?", "HEX", line)
    return line.rstrip()


@_tested("docs/snippets/demo-output.txt")
def test_demo_output_shown_is_what_the_demo_prints() -> None:
    shown = (SNIPPETS / "demo-output.txt").read_text().splitlines()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "kitmw", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = {_normalise(line) for line in done.stdout.splitlines()}
    headers = [line for line in shown if line.startswith("== ")]
    assert len(headers) >= 6
    for line in shown:
        if line.strip() and not line.strip().startswith("…"):
            assert _normalise(line) in printed, f"the page shows a line the demo does not print: {line!r}"


# -- frameworks page ----------------------------------------------------------------------


async def _get(app: Any, path: str, **kwargs: Any) -> httpx.Response:
    client_addr = kwargs.pop("client", ("127.0.0.1", 50000))
    transport = httpx.ASGITransport(app=app, client=client_addr)
    async with httpx.AsyncClient(transport=transport, base_url="http://docs.test") as client:
        return await client.get(path, **kwargs)


def _exposition_has(text: str, name: str, labels: dict[str, str]) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@_tested("docs/snippets/fastapi_app.py")
def test_fastapi_snippet_serves_request_ids_metrics_and_exclusions() -> None:
    module = _load("docs/snippets/fastapi_app.py", "docs_fastapi_app")

    async def go() -> None:
        response = await _get(module.app, "/items/7", headers={"X-Request-ID": "docs-1"})
        assert response.json() == {"item_id": 7}
        assert response.headers["x-request-id"] == "docs-1"
        assert "ratelimit" in response.headers
        assert (await _get(module.app, "/health")).status_code == 200
        text = (await _get(module.app, "/metrics")).text
        labels = {"method": "GET", "route": "/items/{item_id}", "status": "200"}
        assert _exposition_has(text, "http_server_requests_total", labels) >= 1
        assert _exposition_has(text, "http_server_requests_total", {"route": "/health"}) == 0
        # a Prometheus scrape is neither counted nor logged
        text = (await _get(module.app, "/metrics")).text
        assert _exposition_has(text, "http_server_requests_total", {"route": "/metrics"}) == 0

    access, logger = _Records(), logging.getLogger("kitmw.access")
    level = logger.level
    logger.addHandler(access)
    logger.setLevel(logging.INFO)
    try:
        asyncio.run(go())
    finally:
        logger.removeHandler(access)
        logger.setLevel(level)
    paths = [record.path for record in access.records]  # type: ignore[attr-defined]
    assert paths == ["/items/7"], paths


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


#: The framework pages and examples a reader copies into a deployment.
DEPLOYMENT_EXAMPLES = [
    "docs/django.md",
    "docs/flask.md",
    "docs/snippets/fastapi_app.py",
    "docs/snippets/fastapi_add_middleware.py",
    "examples/fastapi_app.py",
    "examples/fastapi_service.py",
    "examples/flask_app.py",
    "examples/django_native/mysite/settings.py",
    "examples/django_wsgi/kitmw_example/asgi.py",
    "examples/django_wsgi/kitmw_example/wsgi.py",
]


@pytest.mark.parametrize("path", DEPLOYMENT_EXAMPLES)
def test_deployment_examples_exclude_scrapes_and_probes(path: str) -> None:
    """Every exclusion list a reader copies leaves out /metrics and the health probe."""
    # the keyword (stack(exclude_paths=[...])) or a settings dict's key ("exclude_paths": [...])
    pattern = r"""(?:exclude_paths=|["']exclude_paths["']:\s*)\[([^\]]*)\]"""
    lists = re.findall(pattern, (ROOT / path).read_text())
    assert lists, f"{path} shows no exclude_paths"
    for found in lists:
        assert '"/metrics"' in found and '"/health"' in found, f"{path}: exclude_paths=[{found}]"


@_tested("docs/snippets/fastapi_add_middleware.py")
def test_fastapi_add_middleware_snippet_runs_each_concern() -> None:
    module = _load("docs/snippets/fastapi_add_middleware.py", "docs_fastapi_mw")

    async def go() -> None:
        response = await _get(module.app, "/items/3")
        assert response.status_code == 200
        assert response.headers["x-request-id"]
        assert response.headers["ratelimit-policy"] == '"default";q=100;w=60'
        text = (await _get(module.app, "/metrics")).text
        labels = {"route": "/items/{item_id}", "status": "200"}
        assert _exposition_has(text, "http_server_requests_total", labels) >= 1

    asyncio.run(go())


@_tested("docs/snippets/starlette_app.py")
def test_starlette_snippet_labels_mounted_routes() -> None:
    module = _load("docs/snippets/starlette_app.py", "docs_starlette_app")

    async def go() -> None:
        response = await _get(module.app, "/api/v1/users/42")
        assert response.json() == {"user": "42"}
        assert response.headers["x-request-id"]
        text = (await _get(module.app, "/metrics")).text
        labels = {"route": "/api/v1/users/{uid}", "status": "200"}
        assert _exposition_has(text, "http_server_requests_total", labels) >= 1

    asyncio.run(go())


@_tested("docs/snippets/litestar_app.py")
def test_litestar_snippet_wrapped_and_as_middleware_factory() -> None:
    pytest.importorskip("litestar")
    module = _load("docs/snippets/litestar_app.py", "docs_litestar_app")

    async def go() -> None:
        response = await _get(module.app, "/items/5")
        assert response.json() == {"item_id": 5}
        assert response.headers["x-request-id"]
        assert (await _get(module.app, "/metrics")).status_code == 200
        inner = await _get(module.inner, "/items/5")
        assert inner.status_code == 200 and "ratelimit-policy" in inner.headers

    asyncio.run(go())


@_tested("docs/snippets/quart_app.py")
def test_quart_snippet_wraps_asgi_app_in_place() -> None:
    pytest.importorskip("quart")
    module = _load("docs/snippets/quart_app.py", "docs_quart_app")

    async def go() -> None:
        response = await _get(module.app, "/items/9")
        assert response.json() == {"item_id": 9}
        assert response.headers["x-request-id"]
        assert (await _get(module.app, "/metrics")).status_code == 200

    asyncio.run(go())


@_tested("docs/snippets/raw_asgi.py")
def test_raw_asgi_snippet_labels_every_request_unmatched() -> None:
    module = _load("docs/snippets/raw_asgi.py", "docs_raw_asgi")

    async def go() -> None:
        response = await _get(module.app, "/anything/at/all")
        assert response.text == "hello\n"
        text = (await _get(module.app, "/metrics")).text
        labels = {"route": "<unmatched>", "status": "200"}
        assert _exposition_has(text, "http_server_requests_total", labels) >= 1

    asyncio.run(go())


# -- operations page ----------------------------------------------------------------------


@_tested("docs/snippets/fleet.py")
def test_fleet_snippet_shares_one_budget_across_replicas(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url + "/0")
    replica_a = _load("docs/snippets/fleet.py", "docs_fleet_a")
    replica_b = _load("docs/snippets/fleet.py", "docs_fleet_b")

    async def post(app: Any) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://docs.test") as client:
            return await client.post("/orders", json={"n": 1})

    async def go() -> list[httpx.Response]:
        return [await post(app) for app in (replica_a.app, replica_b.app) * 6]

    answers = asyncio.run(go())
    # 10/second for this client over both replicas together: the 11th and 12th are refused
    assert [r.status_code for r in answers].count(429) == 2
    import redis

    keys = redis.Redis.from_url(redis_url).keys("*")
    assert any(b"orders" in key for key in keys)


class _Collector:
    """A minimal OTLP/HTTP collector: records the bodies POSTed to /v1/traces."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        bodies = self.bodies = []  # type: list[bytes]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@_tested("docs/snippets/otlp.py")
def test_otlp_snippet_exports_kitmw_spans_to_a_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    collector = _Collector()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        module = _load("docs/snippets/otlp.py", "docs_otlp")
        assert asyncio.run(_get(module.app, "/items/2")).status_code == 200
        assert module.provider.force_flush(timeout_millis=10_000)
        module.provider.shutdown()
    finally:
        collector.close()
    sent = b"".join(collector.bodies)
    assert b"GET /items/{item_id}" in sent and b"orders" in sent


@_tested("docs/snippets/otlp_metrics.py")
def test_otlp_metrics_snippet_exports_kitmw_metrics_to_a_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    collector = _Collector()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        module = _load("docs/snippets/otlp_metrics.py", "docs_otlp_metrics")
        assert asyncio.run(_get(module.app, "/items/2")).status_code == 200
        assert module.meters.force_flush(timeout_millis=10_000)
        module.meters.shutdown()
    finally:
        collector.close()
    sent = b"".join(collector.bodies)
    assert b"http.server.request.duration" in sent and b"/items/{item_id}" in sent and b"orders" in sent


@_tested("docs/snippets/proxies.py")
def test_proxies_snippet_believes_only_trusted_forwarding_headers() -> None:
    module = _load("docs/snippets/proxies.py", "docs_proxies")

    def remaining(response: httpx.Response) -> int:
        match = re.search(r";r=(\d+)", response.headers["ratelimit"])
        assert match is not None
        return int(match.group(1))

    async def go() -> None:
        lb = ("10.0.0.5", 40000)
        first = await _get(module.app, "/whoami", client=lb, headers={"X-Forwarded-For": "203.0.113.1"})
        other = await _get(module.app, "/whoami", client=lb, headers={"X-Forwarded-For": "203.0.113.2"})
        assert remaining(first) == remaining(other) == 99  # two clients behind the balancer
        # a client talking to the app directly cannot pick a fresh budget with a spoofed header
        direct = ("198.51.100.9", 40000)
        a = await _get(module.app, "/whoami", client=direct, headers={"X-Forwarded-For": "1.1.1.1"})
        b = await _get(module.app, "/whoami", client=direct, headers={"X-Forwarded-For": "2.2.2.2"})
        assert (remaining(a), remaining(b)) == (99, 98)

    asyncio.run(go())


SERVER_LOG_APP = """
import logging

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import kitmw


async def hello(request):
    logging.getLogger("app").info("hello from the app")
    return PlainTextResponse("hello")


async def boom(request):
    raise RuntimeError("kaput")


app = kitmw.stack(Starlette(routes=[Route("/", hello), Route("/boom", boom)]), access_log=True)
"""


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a server's output, each of which must be one JSON object."""
    import json

    records = []
    for line in text.splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"not a JSON line: {line!r}\n{text[-3000:]}") from None
    return records


def _wait_for(url: str, proc: subprocess.Popen[bytes], seconds: float = 30) -> None:
    import contextlib
    import time

    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, "the server exited"
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=1)
            return
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> str:
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=5)
    return err.decode(errors="replace")


@_tested("docs/snippets/uvicorn-logging.json")
@pytest.mark.e2e
def test_uvicorn_log_config_snippet_writes_uvicorns_own_lines_as_json(tmp_path: Path) -> None:
    import socket

    (tmp_path / "main.py").write_text(SERVER_LOG_APP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "uvicorn", "main:app", "--port", str(port), "--host", "127.0.0.1"]
    cmd += ["--log-config", str(SNIPPETS / "uvicorn-logging.json")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url + "/ready", proc)  # a 404 until it answers
        hello = httpx.get(url + "/", headers={"X-Request-ID": "log-config-1"}, timeout=5)
        assert hello.status_code == 200
        assert httpx.get(url + "/boom", timeout=5).status_code == 500
    finally:
        err = _stop(proc)
    records = _json_lines(err)
    by_logger: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_logger.setdefault(record["logger"], []).append(record)
    messages = [r["message"] for r in by_logger.get("uvicorn.error", [])]
    assert any("Uvicorn running on" in m for m in messages), messages  # uvicorn's startup
    (crash,) = [r for r in by_logger["uvicorn.error"] if "Exception in ASGI application" in r["message"]]
    assert "RuntimeError: kaput" in crash["exc_info"]  # the traceback, inside the JSON line
    (app_line,) = by_logger["app"]
    assert app_line["request_id"] == "log-config-1"  # the context reaches the app's lines
    assert [r["status"] for r in by_logger["kitmw.access"]] == [404, 200, 500]
    assert "uvicorn.access" not in by_logger  # kitmw's access log replaces uvicorn's


@_tested("docs/snippets/gunicorn.conf.py")
@pytest.mark.e2e
def test_gunicorn_conf_snippet_aggregates_worker_metrics_and_logs_json(tmp_path: Path) -> None:
    import contextlib
    import signal
    import socket
    import time

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    port, metrics_port = free_port(), free_port()
    prom = tmp_path / "prom"
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
        "WEB_CONCURRENCY": "2",
        "METRICS_PORT": str(metrics_port),
    }
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(SNIPPETS / "gunicorn.conf.py")]
    cmd += ["--bind", f"127.0.0.1:{port}", "--chdir", str(SNIPPETS)]
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([*cmd, "fastapi_app:app"], env=env, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=5) as client:
            for n in range(20):
                assert client.get(f"/items/{n}", headers={"Connection": "close"}).status_code == 200
            labels = {"route": "/items/{item_id}", "status": "200"}
            for _ in range(4):  # whichever worker answers the scrape, the total is the same
                text = client.get("/metrics", headers={"Connection": "close"}).text
                assert _exposition_has(text, "http_server_requests_total", labels) == 20
        # The master's metrics port (when_ready) shows every worker too.
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert _exposition_has(text, "http_server_requests_total", labels) == 20
        assert any(prom.iterdir())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    # logconfig_dict: gunicorn's and uvicorn's own lines are JSON lines like the app's
    records = _json_lines(log.read_text(errors="replace"))
    for logger, start in [
        ("gunicorn.error", "Starting gunicorn"),
        ("gunicorn.error", "Booting worker with pid"),
        ("uvicorn.error", "Application startup complete"),
    ]:
        assert any(r["logger"] == logger and r["message"].startswith(start) for r in records), start
    access = [r for r in records if r["logger"] == "kitmw.access"]
    assert len([r for r in access if r["route"] == "/items/{item_id}"]) == 20


def test_operations_cli_flags_exist() -> None:
    """The uvicorn and gunicorn flags the operations page names are real."""
    page = (DOCS / "operations.md").read_text()
    helps = {
        tool: subprocess.run(
            [sys.executable, "-m", tool, "--help"], capture_output=True, text=True, timeout=60
        ).stdout
        for tool in ("uvicorn", "gunicorn")
    }
    for tool, flag in re.findall(r"\b(uvicorn|gunicorn) [^\n`]*?(--[a-z][a-z-]+)", page):
        assert flag in helps[tool], f"{tool} has no {flag}"
    for line in re.findall(r"^(?:\$ )?((?:uvicorn|gunicorn) .+)$", page, flags=re.M):
        tool = line.split()[0]
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", line):
            assert flag in helps[tool], f"{tool} has no {flag}"


def test_getting_started_sample_prints_what_the_page_shows() -> None:
    """The in-process sample, run as a fresh script, prints exactly the text shown after it."""
    page = DOCS / "getting-started.md"
    block = next(b for b in extract(page) if "asyncio.run(main())" in b.source)
    lines = page.read_text().splitlines()
    start = next(i for i in range(block.line, len(lines)) if lines[i].startswith("```text"))
    end = lines.index("```", start + 1)
    shown = lines[start + 1 : end]
    done = subprocess.run(
        [sys.executable, "-c", block.source], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == shown


def test_site_builds_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict``: every nav entry, link, anchor, include and docstring is valid."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-5000:]
    site = tmp_path / "site"
    reference = (site / "reference" / "index.html").read_text()
    assert "build_policies" not in reference  # the reference shows the public API only
    assert 'id="kitmw.stack.stack"' in reference
    assert ":class:<code>" not in reference and ":meth:<code>" not in reference  # roles read as code
    architecture = (site / "architecture" / "index.html").read_text()
    assert "kitmw.ConcurrencyLimit" in architecture  # the order table, rendered from the registry
    # identifiers in table cells never break mid-word (docs/stylesheets/extra.css)
    css = (site / "stylesheets" / "extra.css").read_text()
    assert "word-break: normal" in css and "overflow-wrap: normal" in css
    assert 'href="../stylesheets/extra.css"' in (site / "metrics" / "index.html").read_text()
