"""The package as users install it: public names, optional extras, typing, lint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
        "StorageError",
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
