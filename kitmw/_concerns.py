"""The six concerns by name: where each policy class lives, imported on first use.

One table for ``stack()`` and for the per-concern classes of every driver, so a concern
is named in one place. Options given as a dict (``stack(app, metrics={...})``,
``kitmw.Metrics(app, **options)``, a transport's ``breaker={...}``) are checked here
against the signature of what they configure, so a misspelled or missing option raises
:class:`~kitmw.errors.ConfigError` naming the concern, the option and the closest valid
name, never Python's ``TypeError`` about an ``__init__``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .exchange import Policy

__all__ = ["CONCERNS", "build_policy", "check_options", "check_storage_uri", "construct", "policy_class"]

#: option name -> (module, policy class), in the canonical server order, outermost first.
CONCERNS: dict[str, tuple[str, str]] = {
    "tracing": (".tracing", "TracingPolicy"),
    "access_log": (".logging", "AccessLogPolicy"),
    "metrics": (".metrics", "MetricsPolicy"),
    "ratelimit": (".ratelimit", "RateLimitPolicy"),
    "auth": (".auth", "AuthPolicy"),
    "breaker": (".breaker", "BreakerPolicy"),
}

#: What to write instead, for the options a concern cannot do without.
_REQUIRED_HINTS: dict[tuple[str, str], str] = {
    ("auth", "backend"): (
        "a kitmw.auth.JWT(...), kitmw.auth.Basic(...) or kitmw.auth.APIKey(...) backend, or a"
        " list of them: stack(app, auth=kitmw.auth.JWT(...)) or kitmw.Auth(app, backend=...)"
    ),
}


def policy_class(concern: str) -> Any:
    """The policy class of ``concern`` (its module is imported now, not at ``import kitmw``)."""
    module, attr = CONCERNS[concern]
    return getattr(importlib.import_module(module, __package__), attr)


def build_policy(concern: str, options: dict[str, Any]) -> Policy:
    """``concern``'s policy built with ``options``, every option checked (see :func:`construct`)."""
    if concern == "ratelimit" and "storage" in options:
        check_storage_uri(options["storage"], concern)
    policy: Policy = construct(concern, policy_class(concern), options)
    return policy


def construct(what: str, target: Callable[..., Any], options: Mapping[str, Any]) -> Any:
    """``target(**options)`` for the concern ``what``, with :func:`check_options` first.

    A ``ConfigError`` the target raises (``"limit: ..."``) gets ``what`` in front of its
    message (``"ratelimit: limit: ..."``), so every configuration error names the concern.
    """
    check_options(what, target, options)
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
    for name in required:
        if name not in options and name not in given:
            hint = _REQUIRED_HINTS.get((what, name))
            raise ConfigError(f"{what}: option {name!r} is required" + (f": {hint}" if hint else ""))


def _unknown(what: str, name: Any, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(name), valid, n=1) if isinstance(name, str) else []
    suggestion = f"; did you mean {close[0]!r}?" if close else ""
    return f"{what}: unknown option {name!r}{suggestion} (options: {', '.join(valid)})"


@lru_cache(maxsize=64)
def _parameters(target: Callable[..., Any]) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(keyword names, required keyword names, takes ``**kwargs``) of ``target``.

    A class is read from its ``__init__``: the policies' ``__new__(cls, **options)``
    only picks a subclass.
    """
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
