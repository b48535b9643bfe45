"""The one registry of concerns: each concern is named here once, and nowhere else.

Everything that lists concerns reads :data:`CONCERNS`: ``stack()`` and ``kitmw.Stack``
(their options and the canonical order), both drivers' per-concern classes
(``kitmw.RateLimit``, ``kitmw.wsgi.RateLimit``), the httpx transports' options,
``kitmw.endpoint``, the metrics instruments each concern declares, and the docs'
order table. A concern is a package holding its policies (one per side it serves) and
one :class:`Concern` entry below; the order of the entries is the canonical order,
outermost first, on every side.

Options given as a dict (``stack(app, metrics={...})``, ``kitmw.Metrics(app,
**options)``, a transport's ``breaker={...}``) are checked against the signature of
what they configure, so a misspelled or missing option raises
:class:`~kitmw.errors.ConfigError` naming the concern, the option and the closest
valid name, never Python's ``TypeError`` about an ``__init__``.

The same options are typed for editors and type checkers: each concern's package has a
typed dict per policy (``kitmw.ratelimit.RateLimitOptions``), and this module, beside
the entries, the concerns of each side as typed options (:class:`ServerConcerns`,
:class:`ClientConcerns`, :class:`EndpointConcerns`) and the constructors of the
per-concern classes (typing only), so that a concern's entry and its typed options are
written in one file. tests/test_options.py keeps them equal to the registry and to the
policies' signatures.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TypedDict, TypeVar, cast
from urllib.parse import urlsplit

from .errors import ConfigError
from .exchange import Policy

if TYPE_CHECKING:  # the concerns' typed options (no import at runtime: import kitmw stays light)
    from typing_extensions import Unpack

    from .auth import AuthOptions, Backend
    from .balance import InstancesOptions
    from .breaker import Breaker, BreakerOptions, ClientBreakerOptions, EndpointBreakerOptions
    from .concurrency import ClientConcurrencyOptions, ConcurrencyOptions, EndpointConcurrencyOptions
    from .logging import AccessLogOptions, ClientLogOptions, ClientRequestIdOptions, EndpointLogOptions
    from .metrics import ClientMetricsOptions, EndpointMetricsOptions, MetricsOptions
    from .ratelimit import ClientRateLimitOptions, EndpointRateLimitOptions, Limiter, RateLimitOptions
    from .retry import ClientRetryOptions, EndpointRetryOptions, Retry
    from .timeout import ClientTimeoutOptions, EndpointTimeoutOptions, TimeoutOptions
    from .tracing import ClientTracingOptions, EndpointTracingOptions, TracingOptions

__all__ = [
    "CONCERNS",
    "SIDES",
    "ClientConcerns",
    "Concern",
    "EndpointConcerns",
    "Instrument",
    "ServerConcerns",
    "build",
    "build_all",
    "check_options",
    "check_storage_uri",
    "concern",
    "concern_class",
    "construct",
    "instruments",
    "middleware_names",
    "policy_objects",
]

Side = Literal["server", "client", "endpoint"]
#: The sides a concern may serve: the ASGI/WSGI drivers, the httpx driver, ``kitmw.endpoint``.
SIDES: tuple[Side, ...] = ("server", "client", "endpoint")


class Instrument(NamedTuple):
    """A metric a concern declares; :mod:`kitmw.metrics` creates it once per registry.

    ``kind``: ``"counter"``, ``"gauge"`` or ``"histogram"``; ``attr``: the attribute of
    :class:`kitmw.metrics.Instruments`; ``options``: extra keyword arguments of the
    prometheus-client class (``multiprocess_mode``, ``buckets``).
    """

    attr: str
    kind: str
    name: str
    documentation: str
    labels: tuple[str, ...]
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Concern:
    """One cross-cutting concern: where its policies live and how its option reads.

    :param name: the option everywhere (``stack(ratelimit=...)``, ``Transport(ratelimit=...)``).
    :param package: the concern's package (``kitmw.ratelimit``).
    :param policies: side -> policy class name in the package (a side it does not serve
        is absent).
    :param middleware: the per-concern class name of the server drivers (``RateLimit``:
        ``kitmw.RateLimit`` and ``kitmw.wsgi.RateLimit``), if it has one.
    :param shorthand: the option a bare value fills (``"100/minute"`` is ``limit``), and
        ``shorthand_types`` the types of such values (anything else than ``True``, a
        dict or a policy object, when empty).
    :param on_by_default: sides where the concern runs unless set ``False`` (the client's
        deadline propagation).
    :param why: its place in the canonical order, for the docs' table.
    :param instruments: the metrics it writes.
    """

    name: str
    package: str
    policies: Mapping[str, str]
    middleware: str | None = None
    shorthand: str | None = None
    shorthand_types: tuple[type, ...] = ()
    on_by_default: frozenset[str] = frozenset()
    why: str = ""
    instruments: tuple[Instrument, ...] = field(default=())
    hint: str | None = None  #: what to write for a required option left out

    def policy_class(self, side: str) -> type[Policy]:
        """The policy class for ``side`` (its package is imported now, not at ``import kitmw``)."""
        try:
            attr = self.policies[side]
        except KeyError:
            raise ConfigError(f"{self.name}: not available on the {side} side") from None
        cls: type[Policy] = getattr(importlib.import_module(self.package), attr)
        return cls

    def options_name(self, side: str) -> str:
        """The name of the typed dict of the ``side`` policy's options in the concern's
        package (``RateLimitPolicy``: ``RateLimitOptions``)."""
        return self.policies[side].removesuffix("Policy") + "Options"

    def options(self, value: Any) -> dict[str, Any]:
        """The options dict a value of this concern's option stands for."""
        if value is True:
            return {}
        if isinstance(value, Mapping):
            return dict(value)
        if (
            self.shorthand is not None
            and not isinstance(value, bool)
            and value is not None
            and (not self.shorthand_types or isinstance(value, self.shorthand_types))
        ):
            return {self.shorthand: value}
        accepted = "True, a dict of options"
        if self.shorthand is not None:
            accepted += f", a value for {self.shorthand!r}"
        raise ConfigError(f"{self.name}: expected {accepted} or a policy, got {value!r}")


_PKG = __name__.rpartition(".")[0] + "."
_SERVER = ("method", "route", "status")
_CLIENT = ("method", "host", "status")
_ENDPOINT = ("endpoint", "outcome")

#: Every concern, in the canonical order (outermost first), on every side.
CONCERNS: tuple[Concern, ...] = (
    Concern(
        "tracing",
        _PKG + "tracing",
        {"server": "TracingPolicy", "client": "ClientTracingPolicy", "endpoint": "EndpointTracingPolicy"},
        middleware="Tracing",
        why="the span covers everything below and gives the logs a trace id",
    ),
    Concern(
        "access_log",
        _PKG + "logging",
        {"server": "AccessLogPolicy", "client": "ClientLogPolicy", "endpoint": "EndpointLogPolicy"},
        middleware="AccessLog",
        why="every request is logged, the rejected ones too",
    ),
    Concern(
        "request_id",
        _PKG + "logging",
        {"client": "ClientRequestIdPolicy"},
        shorthand="header",
        shorthand_types=(str,),
        on_by_default=frozenset({"client"}),
        why="every call carries the request id of the request being served",
    ),
    Concern(
        "metrics",
        _PKG + "metrics",
        {"server": "MetricsPolicy", "client": "ClientMetricsPolicy", "endpoint": "EndpointMetricsPolicy"},
        middleware="Metrics",
        why="rejections (429, 401, 503, 504) are counted",
        instruments=(
            Instrument("server_requests", "counter", "http_server_requests", "HTTP requests served.", _SERVER),
            Instrument(
                "server_duration",
                "histogram",
                "http_server_request_duration_seconds",
                "Time from the request to the last response byte.",
                _SERVER,
            ),
            Instrument(
                "server_in_progress",
                "gauge",
                "http_server_requests_in_progress",
                "HTTP requests being served.",
                ("method",),
                (("multiprocess_mode", "livesum"),),
            ),
            Instrument(
                "server_request_size",
                "histogram",
                "http_server_request_size_bytes",
                "Request body bytes received.",
                _SERVER,
                (("buckets", "size"),),
            ),
            Instrument(
                "server_response_size",
                "histogram",
                "http_server_response_size_bytes",
                "Response body bytes sent.",
                _SERVER,
                (("buckets", "size"),),
            ),
            Instrument("client_requests", "counter", "http_client_requests", "HTTP requests sent.", _CLIENT),
            Instrument(
                "client_duration",
                "histogram",
                "http_client_request_duration_seconds",
                "Time from sending the request to the end of the response.",
                _CLIENT,
            ),
            Instrument(
                "endpoint_calls",
                "counter",
                "kitmw_endpoint_calls",
                "Calls of functions wrapped with kitmw.endpoint, by outcome (ok, error, rejected).",
                _ENDPOINT,
            ),
            Instrument(
                "endpoint_duration",
                "histogram",
                "kitmw_endpoint_duration_seconds",
                "Time from the call of a kitmw.endpoint function to its return or exception.",
                _ENDPOINT,
            ),
            Instrument(
                "storage_errors",
                "counter",
                "kitmw_storage_errors",
                "Errors reaching a shared storage (ratelimit, breaker, jwks).",
                ("component",),
            ),
        ),
    ),
    Concern(
        "timeout",
        _PKG + "timeout",
        {"server": "TimeoutPolicy", "client": "ClientTimeoutPolicy", "endpoint": "EndpointTimeoutPolicy"},
        middleware="Timeout",
        shorthand="seconds",
        shorthand_types=(int, float),
        why="the deadline bounds everything below it: waits for a rate limit or a slot, auth, the application",
        instruments=(
            Instrument(
                "timeouts",
                "counter",
                "kitmw_timeouts",
                "Exchanges whose deadline passed before they were over.",
                ("side", "scope"),
            ),
        ),
    ),
    Concern(
        "ratelimit",
        _PKG + "ratelimit",
        {"server": "RateLimitPolicy", "client": "ClientRateLimitPolicy", "endpoint": "EndpointRateLimitPolicy"},
        middleware="RateLimit",
        shorthand="limit",
        shorthand_types=(str,),
        why="cheap, it protects what follows; keyed by client unless a principal key moves it after auth",
        instruments=(
            Instrument(
                "ratelimit_decisions",
                "counter",
                "kitmw_ratelimit_decisions",
                "Rate-limit decisions (allowed, limited, fail_open, fail_closed).",
                ("side", "decision"),
            ),
        ),
    ),
    Concern(
        "auth",
        _PKG + "auth",
        {"server": "AuthPolicy"},
        middleware="Auth",
        shorthand="backend",
        shorthand_types=(object,),
        why="verifies the caller before anything that holds resources for it",
        hint=(
            "a kitmw.auth.JWT(...), kitmw.auth.Basic(...) or kitmw.auth.APIKey(...) backend, or a"
            " list of them: stack(app, auth=kitmw.auth.JWT(...)) or kitmw.Auth(app, backend=...)"
        ),
    ),
    Concern(
        "concurrency",
        _PKG + "concurrency",
        {
            "server": "ConcurrencyPolicy",
            "client": "ClientConcurrencyPolicy",
            "endpoint": "EndpointConcurrencyPolicy",
        },
        middleware="ConcurrencyLimit",
        shorthand="limit",
        shorthand_types=(int,),
        why="holds a slot only for a caller that passed the rate limit and auth; the slot covers the call",
        instruments=(
            Instrument(
                "concurrency_limit",
                "gauge",
                "kitmw_concurrency_limit",
                "The current concurrency limit (static, or where the adaptive algorithm put it).",
                ("side", "scope"),
                (("multiprocess_mode", "livesum"),),
            ),
            Instrument(
                "concurrency_in_flight",
                "gauge",
                "kitmw_concurrency_in_flight",
                "Exchanges holding a slot of a concurrency limit.",
                ("side", "scope"),
                (("multiprocess_mode", "livesum"),),
            ),
            Instrument(
                "concurrency_rejections",
                "counter",
                "kitmw_concurrency_rejections",
                "Exchanges refused by a full concurrency limit (after waiting, if a wait is configured).",
                ("side", "scope"),
            ),
            Instrument(
                "concurrency_queue_wait",
                "histogram",
                "kitmw_concurrency_queue_wait_seconds",
                "Time an exchange waited for a slot (only exchanges that had to wait).",
                ("side", "scope"),
            ),
        ),
    ),
    Concern(
        "retry",
        _PKG + "retry",
        {"client": "ClientRetryPolicy", "endpoint": "EndpointRetryPolicy"},
        shorthand="attempts",
        shorthand_types=(int,),
        why=(
            "inside the limits (a retry takes no second slot); around balancing and the breaker,"
            " so each attempt asks its own instance's breaker and a retry can move to another"
        ),
        instruments=(
            Instrument(
                "client_retries",
                "counter",
                "http_client_retries",
                "HTTP requests sent again by the retry policy.",
                ("method", "host"),
            ),
        ),
    ),
    Concern(
        "instances",
        _PKG + "balance",
        {"client": "InstancesPolicy"},
        shorthand="instances",
        why="picks the instance of each attempt, skipping those whose breaker refuses",
        hint="the base URLs of the instances: instances=['http://orders-1:8000', 'http://orders-2:8000']",
    ),
    Concern(
        "breaker",
        _PKG + "breaker",
        {"server": "BreakerPolicy", "client": "ClientBreakerPolicy", "endpoint": "EndpointBreakerPolicy"},
        middleware="CircuitBreaker",
        why="closest to the application (or the upstream), it judges that one's health only",
        instruments=(
            Instrument(
                "breaker_state",
                "gauge",
                "kitmw_breaker_state",
                "1 for the current state of each circuit breaker, 0 for the others.",
                ("breaker", "state"),
                # Breakers are process-local by default: each live worker reports its own.
                (("multiprocess_mode", "liveall"),),
            ),
            Instrument(
                "breaker_transitions",
                "counter",
                "kitmw_breaker_transitions",
                "Circuit breaker state changes.",
                ("breaker", "from_state", "to_state"),
            ),
            Instrument(
                "breaker_rejections",
                "counter",
                "kitmw_breaker_rejections",
                "Requests refused by an open circuit breaker.",
                ("breaker",),
            ),
        ),
    ),
)

_BY_NAME = {c.name: c for c in CONCERNS}
_BY_CLASS = {c.middleware: c for c in CONCERNS if c.middleware}


# -- the concerns as typed options, one key per concern of a side (in the order above) -----------
#
# A concern's value: True (its defaults; Literal[False] where it has none, such as a rate
# limit without a limit), False or None (off), a dict of its policy's options, a bare value
# for its shorthand option, or a policy object.


class ServerConcerns(TypedDict, total=False):
    """The concerns of ``stack(app, **concerns)`` (the server side), typed."""

    tracing: bool | TracingOptions | Policy | None
    access_log: bool | AccessLogOptions | Policy | None
    metrics: bool | MetricsOptions | Policy | None
    timeout: float | TimeoutOptions | Policy | Literal[False] | None
    ratelimit: str | RateLimitOptions | Policy | Literal[False] | None
    auth: Backend | Iterable[Backend] | AuthOptions | Policy | Literal[False] | None
    concurrency: int | ConcurrencyOptions | Policy | Literal[False] | None
    breaker: bool | BreakerOptions | Policy | None


class ClientConcerns(TypedDict, total=False):
    """The concerns of the httpx transports (the client side), typed; ``request_id`` is
    on unless set ``False``."""

    tracing: bool | ClientTracingOptions | Policy | None
    access_log: bool | ClientLogOptions | Policy | None
    request_id: bool | str | ClientRequestIdOptions | Policy | None
    metrics: bool | ClientMetricsOptions | Policy | None
    timeout: bool | float | ClientTimeoutOptions | Policy | None
    ratelimit: str | Limiter | ClientRateLimitOptions | Policy | Literal[False] | None
    concurrency: int | ClientConcurrencyOptions | Policy | Literal[False] | None
    retry: bool | int | Retry | ClientRetryOptions | Policy | None
    instances: Iterable[str] | InstancesOptions | Policy | Literal[False] | None
    breaker: bool | Breaker | ClientBreakerOptions | Policy | None


class EndpointConcerns(TypedDict, total=False):
    """The concerns of ``kitmw.endpoint(name, **concerns)``, typed."""

    tracing: bool | EndpointTracingOptions | Policy | None
    access_log: bool | EndpointLogOptions | Policy | None
    metrics: bool | EndpointMetricsOptions | Policy | None
    timeout: float | EndpointTimeoutOptions | Policy | Literal[False] | None
    ratelimit: str | EndpointRateLimitOptions | Policy | Literal[False] | None
    concurrency: int | EndpointConcurrencyOptions | Policy | Literal[False] | None
    retry: bool | int | EndpointRetryOptions | Policy | None
    breaker: bool | EndpointBreakerOptions | Policy | None


# -- the per-concern classes -------------------------------------------------------------------

_T = TypeVar("_T")
_CLASSES: dict[tuple[type, str], type] = {}


def concern_class(base: type[_T], name: str) -> type[_T]:
    """The per-concern class ``name`` (``"RateLimit"``) of a server driver, made once.

    It subclasses ``base``, the driver's ``ConcernMiddleware`` (which builds the server
    policy of the class's ``concern``), in the driver's module. Both drivers make theirs
    here, from the entry whose ``middleware`` is ``name``; an unknown name raises
    ``AttributeError``, as a missing module attribute does.
    """
    found = _CLASSES.get((base, name))
    if found is None:
        entry = _BY_CLASS.get(name)
        if entry is None:
            raise AttributeError(f"module {base.__module__!r} has no attribute {name!r}")
        driver = base.__module__.rpartition(".")[2].upper()
        doc = (
            f"The {driver} driver with :class:`{entry.package}.{entry.policies['server']}`: its"
            f" options (:class:`{entry.package}.{entry.options_name('server')}`), keyword-only."
        )
        made = type(
            name,
            (base,),
            {"concern": entry.name, "__doc__": doc, "__module__": base.__module__, "__qualname__": name},
        )
        found = _CLASSES.setdefault((base, name), made)  # one class, even if two threads made one
    return cast("type[_T]", found)


if TYPE_CHECKING:
    # The constructors of the per-concern classes, for type checkers only: each driver
    # declares its classes as ``class RateLimit(RateLimitInit[ASGIApp], ConcernMiddleware)``
    # in a TYPE_CHECKING block, while at runtime they are made by concern_class().
    _App = TypeVar("_App")

    class TracingInit(Generic[_App]):
        def __init__(
            self, app: _App, *, handle_errors: bool | None = None, **options: Unpack[TracingOptions]
        ) -> None: ...

    class AccessLogInit(Generic[_App]):
        def __init__(
            self, app: _App, *, handle_errors: bool | None = None, **options: Unpack[AccessLogOptions]
        ) -> None: ...

    class MetricsInit(Generic[_App]):
        def __init__(
            self, app: _App, *, handle_errors: bool | None = None, **options: Unpack[MetricsOptions]
        ) -> None: ...

    class TimeoutInit(Generic[_App]):
        def __init__(
            self, app: _App, *, handle_errors: bool | None = None, **options: Unpack[TimeoutOptions]
        ) -> None: ...

    class RateLimitInit(Generic[_App]):
        def __init__(
            self, app: _App, *, handle_errors: bool | None = None, **options: Unpack[RateLimitOptions]
        ) -> None: ...

    class AuthInit(Generic[_App]):
        def __init__(
            self, app: _App, *, handle_errors: bool | None = None, **options: Unpack[AuthOptions]
        ) -> None: ...

    class ConcurrencyLimitInit(Generic[_App]):
        def __init__(
            self, app: _App, *, handle_errors: bool | None = None, **options: Unpack[ConcurrencyOptions]
        ) -> None: ...

    class CircuitBreakerInit(Generic[_App]):
        def __init__(
            self, app: _App, *, handle_errors: bool | None = None, **options: Unpack[BreakerOptions]
        ) -> None: ...


def concern(name: str) -> Concern:
    """The registry entry of ``name`` (a :class:`ConfigError` with the closest name if none)."""
    found = _BY_NAME.get(name)
    if found is None:
        close = difflib.get_close_matches(str(name), list(_BY_NAME), n=1)
        raise ConfigError(
            f"unknown concern(s): {name}"
            + (f"; did you mean {close[0]!r}?" if close else "")
            + f" (concerns: {', '.join(_BY_NAME)})"
        )
    return found


def instruments() -> dict[str, Instrument]:
    """Every metric the concerns declare, by :class:`kitmw.metrics.Instruments` attribute."""
    found: dict[str, Instrument] = {}
    for entry in CONCERNS:
        for inst in entry.instruments:
            if inst.attr in found:
                raise ValueError(f"{entry.name}: instrument {inst.attr!r} declared twice")
            found[inst.attr] = inst
    return found


def middleware_names() -> dict[str, Concern]:
    """Per-concern class name (``RateLimit``) -> its concern, for the drivers."""
    return dict(_BY_CLASS)


def policy_objects(value: Any, option: str = "policies") -> list[Policy]:
    """The value of the ``policies`` option of the drivers of calls (your own policy
    objects): None, a policy, or an iterable of policies."""
    if value is None:
        return []
    if isinstance(value, Policy):
        value = [value]
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ConfigError(f"{option}: expected a list of kitmw.Policy objects, got {value!r}")
    found = list(value)
    for policy in found:
        if not isinstance(policy, Policy):
            raise ConfigError(f"{option}: expected kitmw.Policy objects, got {policy!r}")
    return found


def build(side: str, name: str, value: Any, *, shared: Mapping[str, Any] | None = None) -> Policy | None:
    """The ``side`` policy of concern ``name`` for an option ``value``, or None if off.

    ``value`` is ``True`` (defaults), a dict of options, a bare value for the concern's
    shorthand option, or a policy object (used as given). ``shared`` options
    (``exclude_paths``, ``registry``) go to every policy that accepts them unless its
    own options set them.
    """
    entry = concern(name)
    if value is None or value is False:
        return None
    if isinstance(value, Policy):
        return value
    options = entry.options(value)
    cls = entry.policy_class(side)
    accepted = getattr(cls, "shared_options", ())
    for key, shared_value in (shared or {}).items():
        if key in accepted and key not in options and shared_value is not None:
            options[key] = shared_value
    if "storage" in options and name == "ratelimit":
        check_storage_uri(options["storage"], name)
    policy: Policy = construct(name, cls, options, hint=entry.hint)
    return policy


def build_all(side: str, values: Mapping[str, Any], *, shared: Mapping[str, Any] | None = None) -> list[Policy]:
    """Policies for the enabled concerns of ``values`` (name -> option value), in the
    canonical order; the first policy with a metrics ``registry`` lends it to the others."""
    for name in values:
        if name not in _BY_NAME or side not in _BY_NAME[name].policies:
            if name in _BY_NAME:
                raise ConfigError(f"{name}: not available on the {side} side")
            concern(name)  # raises with the closest name
    policies: list[Policy] = []
    common = dict(shared or {})
    for entry in CONCERNS:
        value = values.get(entry.name)
        if value is None and side in entry.on_by_default:
            value = True
        if side not in entry.policies:
            continue
        policy = build(side, entry.name, value, shared=common)
        if policy is None:
            continue
        registry = getattr(policy, "registry", None)
        if registry is not None and common.get("registry") is None:
            common["registry"] = registry  # one registry for every kitmw metric
        policies.append(policy)
    return _ordered(policies)


def _ordered(policies: list[Policy]) -> list[Policy]:
    """Move each policy that declares ``runs_after`` behind that concern's policy."""
    for policy in list(policies):
        after = getattr(policy, "runs_after", None)
        if not after:
            continue
        at = policies.index(policy)
        target = next((j for j, p in enumerate(policies) if p.name == after), None)
        if target is not None and target > at:
            policies.insert(target, policies.pop(at))
    return policies


# -- option checking ------------------------------------------------------------------------


def construct(
    what: str, target: Callable[..., Any], options: Mapping[str, Any], *, hint: str | None = None
) -> Any:
    """``target(**options)`` for the concern ``what``, with :func:`check_options` first.

    A ``ConfigError`` the target raises (``"limit: ..."``) gets ``what`` in front of its
    message (``"ratelimit: limit: ..."``), so every configuration error names the concern.
    """
    check_options(what, target, options, hint=hint)
    try:
        return target(**options)
    except ConfigError as exc:
        message = str(exc)
        if not message.startswith(f"{what}:"):
            exc.args = (f"{what}: {message}", *exc.args[1:])
        raise


def check_options(
    what: str,
    target: Callable[..., Any],
    options: Mapping[str, Any],
    *,
    extra: Iterable[str] = (),
    supplied: Iterable[str] = (),
    hint: str | None = None,
) -> None:
    """Raise ``ConfigError`` if ``options`` cannot configure ``target`` (a class or function).

    An unknown name is reported with the closest valid one (difflib), a required option
    that is missing with what to give. ``extra`` are the names the caller takes itself
    (suggested, not passed on); ``supplied`` the required ones the caller passes itself.
    """
    accepted, required, open_ended = _parameters(target)
    if not open_ended:
        valid = sorted(set(accepted) | set(extra))
        for name in options:
            if name not in accepted:
                raise ConfigError(_unknown(what, name, valid))
    given = set(supplied)
    if hint is None and what in _BY_NAME:
        hint = _BY_NAME[what].hint
    for name in required:
        if name not in options and name not in given:
            raise ConfigError(f"{what}: option {name!r} is required" + (f": {hint}" if hint else ""))


def _unknown(what: str, name: Any, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(name), valid, n=1) if isinstance(name, str) else []
    suggestion = f"; did you mean {close[0]!r}?" if close else ""
    return f"{what}: unknown option {name!r}{suggestion} (options: {', '.join(valid)})"


@lru_cache(maxsize=64)
def _parameters(target: Callable[..., Any]) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(keyword names, required keyword names, takes ``**kwargs``) of ``target``."""
    function = target.__init__ if inspect.isclass(target) else target  # type: ignore[misc]
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        return (), (), True
    if inspect.isclass(target) and parameters and parameters[0].kind is not inspect.Parameter.KEYWORD_ONLY:
        parameters = parameters[1:]  # self
    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    accepted = tuple(p.name for p in parameters if p.kind in keyword)
    required = tuple(p.name for p in parameters if p.kind in keyword and p.default is inspect.Parameter.empty)
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    return accepted, required, open_ended


def check_storage_uri(uri: Any, what: str = "ratelimit") -> None:
    """Raise ``ConfigError`` naming the ``storage`` option for a URI ``limits`` cannot use.

    An unknown scheme is reported with the closest known one and the list of schemes
    of the installed ``limits`` (``async+`` variants are accepted wherever the plain
    scheme is), instead of limits' own "unknown storage scheme" text.
    """
    if not isinstance(uri, str) or "://" not in uri:
        raise ConfigError(f"{what}: storage: expected a limits storage URI such as 'memory://', got {uri!r}")
    try:
        from limits import storage
    except ImportError:  # pragma: no cover - limits is a dependency
        return
    known: Mapping[str, Any] = getattr(storage, "SCHEMES", None) or {}
    if not known:  # pragma: no cover - limits moved its registry: let limits judge
        return
    schemes = sorted(s for s in known if not s.startswith("async+"))
    try:
        scheme = urlsplit(uri.removeprefix("async+")).scheme
    except ValueError:
        scheme = uri.partition("://")[0]
    if scheme in schemes:
        return
    close = difflib.get_close_matches(scheme, schemes, n=1)
    suggestion = f"; did you mean {close[0] + '://'!r}?" if close else ""
    raise ConfigError(
        f"{what}: storage: unknown scheme {scheme + '://'!r}{suggestion}"
        f" (schemes of the installed limits: {', '.join(schemes)})"
    )
