"""Typed options (issue 13): what editors complete and type checkers check is what the code takes.

Every option of ``stack()``, of the per-concern classes (``kitmw.RateLimit``,
``kitmw.wsgi.RateLimit``, …), of the httpx transports and of ``kitmw.endpoint`` is typed:
each concern's package has a typed dict per policy (``kitmw.ratelimit.RateLimitOptions``,
``ClientRateLimitOptions``, ``EndpointRateLimitOptions``) and ``kitmw.concerns`` the concerns
of each side. Two halves keep them true:

* at run time, the typed dicts have exactly the names and the required names of their
  policy's keyword arguments, and the per-side dicts exactly the registry's concerns, so a
  new option or concern that is not typed fails here;
* mypy (strict, Python 3.10, as a user's project runs it outside this repository) accepts
  a user's correct calls, rejects a misspelled option and a wrong type naming them, and
  accepts each typed dict where its policy, stack(), the classes, the transports and
  kitmw.endpoint take it (a file generated from the registry).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ForwardRef, get_args

import pytest
from prometheus_client import CollectorRegistry

import kitmw
import kitmw.asgi
import kitmw.wsgi
from kitmw.breaker import Breaker
from kitmw.concerns import (
    CONCERNS,
    ClientConcerns,
    Concern,
    EndpointConcerns,
    ServerConcerns,
    build,
    concern_class,
    middleware_names,
)
from kitmw.ratelimit import Limiter
from kitmw.retry import Retry

#: Policies whose ``**options`` configure another class: that class, and its options the
#: policy sets itself (not options of the policy).
FORWARDED: dict[str, tuple[type, set[str]]] = {
    "ClientRateLimitPolicy": (Limiter, {"side"}),
    "EndpointRateLimitPolicy": (Limiter, {"side"}),
    "ClientRetryPolicy": (Retry, set()),
    "EndpointRetryPolicy": (Retry, set()),
    "ClientBreakerPolicy": (Breaker, set()),
    "EndpointBreakerPolicy": (Breaker, set()),
}

SIDES_OF = [(entry, side) for entry in CONCERNS for side in entry.policies]


def keywords(target: type) -> tuple[set[str], set[str], bool]:
    """(keyword names, required keyword names, takes ``**options``) of ``target``'s ``__init__``."""
    parameters = list(inspect.signature(target.__init__).parameters.values())[1:]  # type: ignore[misc]
    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = {p.name for p in parameters if p.kind in keyword}
    required = {p.name for p in parameters if p.kind in keyword and p.default is inspect.Parameter.empty}
    return names, required, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def options_dict(entry: Concern, side: str) -> Any:
    """The typed dict of ``entry``'s ``side`` policy, from the concern's package."""
    package = importlib.import_module(entry.package)
    name = entry.options_name(side)
    assert hasattr(package, name), f"{entry.package} exports no {name} (the options of {entry.policies[side]})"
    return getattr(package, name)


def keys(typed: Any) -> set[str]:
    return set(typed.__required_keys__) | set(typed.__optional_keys__)


def annotation(typed: Any, key: str) -> str:
    value = typed.__annotations__[key]
    return value.__forward_arg__ if isinstance(value, ForwardRef) else str(value)


# -- the run-time half ----------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "side"), SIDES_OF, ids=[f"{e.name}-{s}" for e, s in SIDES_OF])
def test_each_options_dict_has_its_policys_names_and_required_names(entry: Concern, side: str) -> None:
    policy = entry.policy_class(side)
    typed = options_dict(entry, side)
    accepted, required, open_ended = keywords(policy)
    if open_ended:
        assert policy.__name__ in FORWARDED, f"{policy.__name__} takes **options: say in FORWARDED what they configure"
        target, own = FORWARDED[policy.__name__]
        accepted |= keywords(target)[0] - own
    assert not accepted - keys(typed), f"{typed.__name__} lacks {sorted(accepted - keys(typed))}"
    assert not keys(typed) - accepted, f"{policy.__name__} takes no {sorted(keys(typed) - accepted)}"
    assert set(typed.__required_keys__) == required


SIDE_DICTS = [("server", ServerConcerns), ("client", ClientConcerns), ("endpoint", EndpointConcerns)]


@pytest.mark.parametrize(("side", "typed"), SIDE_DICTS, ids=[s for s, _ in SIDE_DICTS])
def test_each_sides_concerns_are_the_registrys_in_its_order(side: str, typed: Any) -> None:
    assert list(typed.__annotations__) == [c.name for c in CONCERNS if side in c.policies]
    for entry in CONCERNS:
        if side not in entry.policies:
            continue
        parts = annotation(typed, entry.name).split(" | ")
        assert entry.options_name(side) in parts, (entry.name, parts)
        assert {"Policy", "None"} <= set(parts), (entry.name, parts)
        # True (the defaults) is typed exactly where a concern has defaults to run with
        try:
            policy = build(side, entry.name, True, shared={"registry": CollectorRegistry()})
        except kitmw.ConfigError:
            takes_true = False
        else:
            takes_true = True
            close = getattr(policy, "close", None)
            if close is not None:
                close()
        assert ("bool" in parts) is takes_true, (entry.name, parts)
        assert ("Literal[False]" in parts) is not takes_true, (entry.name, parts)


def test_the_layers_own_options_are_what_they_accept() -> None:
    import kitmw._client
    import kitmw.httpx
    import kitmw.httpx2
    from kitmw.endpoint import EndpointOptions, endpoint_options
    from kitmw.stack import StackOptions

    for binding in (kitmw.httpx, kitmw.httpx2):
        assert binding.TransportOptions is kitmw._client.TransportOptions
        assert binding.AsyncTransportOptions is kitmw._client.AsyncTransportOptions
    client = set(kitmw._client.client_options())
    assert keys(kitmw._client.TransportOptions) == client == keys(kitmw._client.AsyncTransportOptions)
    assert keys(EndpointOptions) == set(endpoint_options())
    own = {p.name for p in inspect.signature(kitmw.stack).parameters.values() if p.kind is p.KEYWORD_ONLY}
    assert keys(StackOptions) == keys(ServerConcerns) | own


def test_closed_choices_are_the_ones_the_code_accepts() -> None:
    from kitmw.balance import STRATEGIES
    from kitmw.balance import Strategy as Balance
    from kitmw.ratelimit import STRATEGY_NAMES
    from kitmw.ratelimit._options import Strategy
    from kitmw.tracing._options import Semconv
    from kitmw.tracing._semconv import OPTIONS

    assert get_args(Strategy) == STRATEGY_NAMES
    assert get_args(Balance) == STRATEGIES
    assert get_args(Semconv) == OPTIONS


@pytest.mark.parametrize("driver", ["asgi", "wsgi"])
def test_one_factory_makes_the_per_concern_classes_of_both_drivers(driver: str) -> None:
    module = importlib.import_module(f"kitmw.{driver}")
    for name, entry in middleware_names().items():
        cls = getattr(module, name)
        assert cls is concern_class(module.ConcernMiddleware, name)
        assert issubclass(cls, module.ConcernMiddleware)
        assert (cls.__module__, cls.__qualname__, cls.concern) == (module.__name__, name, entry.name)
        assert f"{entry.package}.{entry.options_name('server')}" in (cls.__doc__ or "")
        assert name in module.__all__, f"from kitmw.{driver} import * leaves out {name}"
        if driver == "asgi":
            assert name in kitmw.__all__ and getattr(kitmw, name) is cls
    with pytest.raises(AttributeError, match="has no attribute 'RateLimits'"):
        concern_class(module.ConcernMiddleware, "RateLimits")


@pytest.mark.parametrize("library", ["httpx", "httpx2"])
def test_each_librarys_refusals_are_its_own_errors_and_kitmws(library: str) -> None:
    lib = pytest.importorskip(library)
    binding = importlib.import_module(f"kitmw.{library}")
    request = lib.Request("GET", "http://upstream.test/")
    bases = {
        "BreakerOpen": lib.TransportError,
        "RateLimited": lib.TransportError,
        "ConcurrencyLimited": lib.TransportError,
        "DeadlineExceeded": lib.TimeoutException,
    }
    for name, base in bases.items():
        cls = getattr(binding, name)
        default = getattr(kitmw.errors, name)
        assert issubclass(cls, default) and issubclass(cls, base) and cls.__module__ == binding.__name__
        error = cls(retry_after=2.0, request=request)
        assert error.request is request and error.retry_after == 2.0
        assert str(error) == str(default())  # the kitmw error's own message
        assert error.rejection.code == default.code
    assert issubclass(binding.DeadlineExceeded, TimeoutError)
    assert binding.BreakerOpen("open", name="orders").name == "orders"


# -- the type checker's half ----------------------------------------------------------------------

#: A user's file. ``# E: text``: mypy reports an error on that line, containing ``text``.
USER_FILE = '''
from __future__ import annotations

import httpx
from flask import Flask
from starlette.applications import Starlette

import kitmw
import kitmw.httpx
import kitmw.wsgi
from kitmw.auth import APIKey
from kitmw.breaker import Breaker, BreakerOptions
from kitmw.metrics import MetricsOptions
from kitmw.ratelimit import RateLimitOptions
from kitmw.retry import Retry
from kitmw.stack import StackOptions

app = Starlette()
flask = Flask(__name__)

# what users write: passes
kitmw.stack(app, metrics={"buckets": [0.1, 1.0]}, ratelimit="5/second", breaker={"fail_max": 5}, timeout=2.0)
limit: RateLimitOptions = {"limit": "5/second", "strategy": "moving-window", "key": "route"}
kitmw.stack(app, ratelimit=limit, concurrency=64, exclude_paths=["/health"], protocol="asgi")
options: StackOptions = {"access_log": True, "metrics": {"registry": None}, "handle_errors": False}
kitmw.stack(app, **options)
kitmw.RateLimit(app, limit="5/second", key="route")
kitmw.Timeout(app, seconds=2.0, routes={"/report": 0.5})
kitmw.wsgi.CircuitBreaker(flask.wsgi_app, fail_max=3, reset_timeout=10)
app.add_middleware(kitmw.RateLimit, limit="5/second")
app.add_middleware(kitmw.Metrics, buckets=[0.1])
kitmw.httpx.Transport(retry=3, breaker={"fail_max": 2}, ratelimit={"limit": "1/second", "mode": "error"})
kitmw.httpx.AsyncTransport(transport=httpx.AsyncHTTPTransport(), timeout=2.0, instances=["http://a:80"])
kitmw.httpx.Transport(retry=Retry(attempts=2), breaker=Breaker(name="orders"), concurrency={"adaptive": "gradient"})
keys = APIKey(keys={"key-1": "alice"})
kitmw.stack(app, auth=keys, ratelimit={"limit": "5/second", "key": "principal"})
kitmw.Auth(app, backend=[keys], scopes={"/admin": ["admin"]}, exclude_paths=["/health"])


@kitmw.endpoint("charge", breaker=True, ratelimit={"limit": "50/second", "wait": True}, timeout=2.0)
async def charge(cents: int) -> int:
    return cents


async def pay() -> int:
    return await charge(5)  # the wrapper keeps the function's type


# a misspelled option
kitmw.Metrics(app, bukets=[0.1])  # E: Unexpected keyword argument "bukets" for "Metrics"; did you mean "buckets"?
kitmw.wsgi.Metrics(flask.wsgi_app, bukets=[0.1])  # E: Unexpected keyword argument "bukets" for "Metrics"
app.add_middleware(kitmw.Metrics, bukets=[0.1])  # E: Unexpected keyword argument "bukets" for "add_middleware"
kitmw.stack(app, metrics={"bukets": [0.1]})  # E: Argument "metrics" to "stack" has incompatible type
buckets: MetricsOptions = {"bukets": [0.1]}  # E: Extra key "bukets" for TypedDict "MetricsOptions"
kitmw.stack(app, ratelimt="5/second")  # E: Unexpected keyword argument "ratelimt" for "stack"; did you mean "ratelimit"?
kitmw.httpx.Transport(retyr=3)  # E: Unexpected keyword argument "retyr" for "Transport"; did you mean "retry"?
kitmw.endpoint("pay", breakr=True)  # E: Unexpected keyword argument "breakr" for "endpoint"; did you mean "breaker"?

# a wrong type
kitmw.CircuitBreaker(app, fail_max="5")  # E: Argument "fail_max" to "CircuitBreaker" has incompatible type "str"; expected "int"
breaker: BreakerOptions = {"fail_max": "5"}  # E: TypedDict item "fail_max" has type "int"
kitmw.stack(app, breaker={"fail_max": "5"})  # E: Argument "breaker" to "stack" has incompatible type
kitmw.RateLimit(app, strategy="fixed_window")  # E: Argument "strategy" to "RateLimit" has incompatible type
kitmw.stack(app, protocol="asgi3")  # E: Argument "protocol" to "stack" has incompatible type
kitmw.httpx.Transport(transport=httpx.AsyncHTTPTransport())  # E: Argument "transport" to "Transport" has incompatible type

# a required option left out, a concern where it is not available, True where there are no defaults
kitmw.Auth(app)  # E: Missing named argument "backend" for "Auth"
kitmw.endpoint("pay", request_id=True)  # E: Unexpected keyword argument "request_id" for "endpoint"
kitmw.stack(app, ratelimit=True)  # E: Argument "ratelimit" to "stack" has incompatible type "Literal[True]"
'''


def _generated() -> tuple[str, dict[int, tuple[str, set[str]]]]:
    """A file checking every typed dict where the registry says it is taken, and the
    lines whose ``reveal_type`` must show a class's options (line -> (typed dict, keys))."""
    lines = [
        "from __future__ import annotations",
        "from typing import Any",
        "import kitmw, kitmw.asgi, kitmw.wsgi, kitmw.httpx, kitmw.httpx2",
        "from starlette.applications import Starlette",
        "asgi_app = Starlette()",
        "def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]: return []",
    ]
    reveals: dict[int, tuple[str, set[str]]] = {}
    for entry, side in SIDES_OF:
        typed = entry.options_name(side)
        policy = entry.policies[side]
        lines.append(f"from {entry.package} import {typed}, {policy}")
        lines.append(f"def check_{entry.name}_{side}(o: {typed}) -> None:")
        lines.append(f"    {policy}(**o)")  # the dict configures its policy: names and types
        if side == "server":
            lines.append(f"    kitmw.stack(asgi_app, {entry.name}=o)")
            if entry.middleware:
                lines.append(f"    kitmw.asgi.{entry.middleware}(asgi_app, **o)")
                lines.append(f"    kitmw.wsgi.{entry.middleware}(wsgi_app, **o)")
        elif side == "client":
            lines.append(f"    kitmw.httpx.Transport({entry.name}=o)")
            lines.append(f"    kitmw.httpx2.AsyncTransport({entry.name}=o)")
        else:
            lines.append(f'    kitmw.endpoint("e", {entry.name}=o)')
    for name, entry in middleware_names().items():
        options = keys(options_dict(entry, "server"))
        for driver, app in (("asgi", "asgi_app"), ("wsgi", "wsgi_app")):
            unknown = f'Unexpected keyword argument "not_an_option" for "{name}"'
            lines.append(f"kitmw.{driver}.{name}({app}, not_an_option=1)  # E: {unknown}")
            lines.append(f"reveal_type(kitmw.{driver}.{name}.__init__)")
            reveals[len(lines)] = (entry.options_name("server"), options)
    return "\n".join(lines) + "\n", reveals


def _expected(text: str) -> dict[int, str]:
    return {n: line.split("# E: ", 1)[1] for n, line in enumerate(text.splitlines(), 1) if "# E: " in line}


MYPY_LINE = re.compile(r"^(?P<file>[\w.]+):(?P<line>\d+): (?P<kind>error|note): (?P<message>.*)$")


def _mypy(tmp_path: Path, *files: str) -> Iterator[tuple[str, int, str, str]]:
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--python-version", "3.10", "--cache-dir", os.devnull, *files],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Cannot find implementation or library stub" not in done.stdout, done.stdout
    for line in done.stdout.splitlines():
        found = MYPY_LINE.match(line)
        if found:
            yield found["file"], int(found["line"]), found["kind"], found["message"]


def test_mypy_completes_the_options_and_rejects_misspelled_and_wrong_ones(tmp_path: Path) -> None:
    """Run as a user's project does it: outside the repository, kitmw as installed."""
    generated, reveals = _generated()
    (tmp_path / "app.py").write_text(USER_FILE)
    (tmp_path / "registry.py").write_text(generated)
    expected = {("app.py", n): text for n, text in _expected(USER_FILE).items()}
    expected |= {("registry.py", n): text for n, text in _expected(generated).items()}
    errors: dict[tuple[str, int], list[str]] = {}
    revealed: dict[int, str] = {}
    for file, line, kind, message in _mypy(tmp_path, "app.py", "registry.py"):
        if kind == "error":
            errors.setdefault((file, line), []).append(message)
        elif file == "registry.py" and message.startswith("Revealed type is"):
            revealed[line] = message
    unexpected = {where: errors[where] for where in sorted(set(errors) - set(expected))}
    assert not unexpected, f"mypy rejects what it should accept: {unexpected}"
    missed = {where: expected[where] for where in sorted(set(expected) - set(errors))}
    assert not missed, f"mypy accepts what it should reject: {missed}"
    for where, text in expected.items():
        assert any(text in message for message in errors[where]), (where, text, errors[where])
    assert set(revealed) == set(reveals)
    for line, (typed, options) in reveals.items():
        assert f".{typed}, {{" in revealed[line], (typed, revealed[line])
        shown = set(re.findall(r"'(\w+)'\??:", revealed[line]))
        assert options <= shown, f"{typed}: the editor does not see {sorted(options - shown)}"
