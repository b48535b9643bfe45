"""``kitmw.endpoint``: the fourth driver, Go kit's endpoint middleware for any function.

::

    @kitmw.endpoint("charge_card", metrics=True, access_log=True, breaker=True, timeout=2.0)
    async def charge_card(customer_id: str, cents: int) -> Receipt: ...

The options are the concerns of the registry (:mod:`kitmw.concerns`) that have an
``"endpoint"`` policy, built once when the decorator is made and compiled once per
function (:func:`kitmw.chain.compile_chain`); this module knows none of them by name.
Each call is one :class:`EndpointExchange`: the call returns (outcome ``ok``), raises
(``error``: the exception propagates unchanged), or a policy refuses it (``rejected``:
:meth:`~kitmw.errors.Rejection.error` is raised, ``BreakerOpen``, ``RateLimited``,
``ConcurrencyLimited``, ``DeadlineExceeded``). The call runs in the caller's context:
the request id, trace and deadline of a request being served reach the function.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, TypeVar

from .chain import Chain, Pending, afinish, compile_chain, finish
from .concerns import CONCERNS, EndpointConcerns, build_all, policy_objects
from .errors import ConfigError, Rejected
from .exchange import Exchange, Policy, inherit_deadline

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "METHOD",
    "OUTCOMES",
    "Endpoint",
    "EndpointExchange",
    "EndpointOptions",
    "endpoint",
    "endpoint_options",
]

#: The exchange's ``method`` for a function call (there is no HTTP method).
METHOD = "CALL"
#: The outcomes of a call: it returned, it raised, or a policy refused it.
OUTCOMES = ("ok", "error", "rejected")
#: The option that takes extra policy objects (your own, run inside the concerns).
_POLICIES = "policies"

_F = TypeVar("_F")


class EndpointOptions(EndpointConcerns, total=False):
    """Every option of :func:`endpoint`, typed: the concerns that have an endpoint policy
    (:class:`~kitmw.concerns.EndpointConcerns`) and ``policies``."""

    policies: Policy | Iterable[Policy] | None


def endpoint_options() -> list[str]:
    """The options :func:`endpoint` accepts today: every concern with an endpoint policy
    (read from the registry), and ``policies``."""
    return sorted([c.name for c in CONCERNS if "endpoint" in c.policies] + [_POLICIES])


class _Target:
    """What the exchanges of one wrapped function share: its name and the function."""

    __slots__ = ("function", "name", "signature")

    def __init__(self, name: str, function: Callable[..., Any]) -> None:
        self.name = name
        self.function = function
        self.signature: inspect.Signature | None = None  # made on first use (key functions)


class EndpointExchange(Exchange):
    """One call of a :func:`kitmw.endpoint` function, as every policy sees it.

    ``route``/``route_label()``/``path``/``url`` are the endpoint's name and ``method``
    is ``"CALL"``, so a policy keyed by route (one breaker per route) keys by endpoint.
    ``args``/``kwargs`` are the call's arguments (``self`` first for a method) and
    :attr:`arguments` the same bound to the parameter names, for key functions.
    ``result`` is what the function returned (``None`` until then), ``error`` what it
    raised, ``rejection`` the answer of a policy that refused the call; :attr:`outcome`
    sums them up. ``deadline`` starts as the deadline of the code that calls
    (:func:`kitmw.exchange.current_deadline`, a request being served). There are no
    headers and no status: ``status`` is 0, or the status of an inner refusal.
    """

    __slots__ = ("_target", "args", "kwargs", "result")
    protocol = "endpoint"
    side = "endpoint"

    def __init__(self, target: _Target, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        name = target.name
        Exchange.__init__(self, METHOD, name)  # not super(): one lookup less per call
        self._route = name
        self._target = target
        self.args = args
        self.kwargs = kwargs
        self.result: Any = None
        inherit_deadline(self)

    @property
    def endpoint(self) -> str:
        """The endpoint's name (the first argument of :func:`kitmw.endpoint`)."""
        return self._target.name

    @property
    def function(self) -> Callable[..., Any]:
        """The function being called (not the wrapper)."""
        return self._target.function

    @property
    def native(self) -> Callable[..., Any]:
        return self._target.function

    @property
    def arguments(self) -> dict[str, Any]:
        """The call's arguments by parameter name, defaults filled in
        (``{"customer_id": "c-1", "cents": 500}``); made on each access, for key functions."""
        target = self._target
        signature = target.signature
        if signature is None:
            signature = target.signature = inspect.signature(target.function)
        bound = signature.bind(*self.args, **self.kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    @property
    def outcome(self) -> str:
        """``"rejected"`` (a policy refused the call), ``"error"`` (the function raised)
        or ``"ok"`` (it returned, or is still running)."""
        if self.rejection is not None:
            return "rejected"
        return "ok" if self.error is None else "error"


class Endpoint:
    """The decorator :func:`kitmw.endpoint` returns: the endpoint's name and its policies.

    Applied to several functions, they share its policies (one breaker, one rate limit),
    as calls of one endpoint should. Each wrapper has it as ``kitmw_endpoint``.
    """

    __slots__ = ("name", "policies")

    def __init__(self, name: str, policies: Iterable[Policy]) -> None:
        self.name = name
        #: The policies every call runs, outermost first.
        self.policies: tuple[Policy, ...] = tuple(policies)

    def __repr__(self) -> str:
        names = ", ".join(p.name for p in self.policies)
        return f"<kitmw.endpoint {self.name!r} [{names}]>"

    def __call__(self, fn: _F) -> _F:
        """Wrap ``fn`` (a function, a method, a ``classmethod``/``staticmethod``, any callable)."""
        if isinstance(fn, (classmethod, staticmethod)):
            wrapped: Any = type(fn)(self(fn.__func__))
            return wrapped  # type: ignore[no-any-return]
        if not callable(fn) or isinstance(fn, type):
            raise ConfigError(f"{self.name}: kitmw.endpoint wraps a function or a method, got {fn!r}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise ConfigError(
                f"{self.name}: kitmw.endpoint cannot wrap the generator function {fn!r}: its work runs "
                "after the call returns, outside every policy; wrap a function that returns a result"
            )
        is_async = inspect.iscoroutinefunction(fn) or (
            not inspect.isroutine(fn) and inspect.iscoroutinefunction(type(fn).__call__)
        )
        target = _Target(self.name, fn)
        if is_async:
            wrapper = _async_wrapper(fn, target, compile_chain(self.policies, "endpoint", is_async=True))
        else:
            wrapper = _sync_wrapper(fn, target, compile_chain(self.policies, "endpoint", is_async=False))
        functools.update_wrapper(wrapper, fn)
        wrapper.kitmw_endpoint = self  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]


def endpoint(name: str, /, **concerns: Unpack[EndpointOptions]) -> Endpoint:
    """Go kit's endpoint middleware for any function: the concerns run around each call.

    ``name`` names the endpoint (the ``endpoint`` label of its metrics, its log records,
    the route of route-keyed policies). Each concern is ``True`` (defaults), a dict of
    its endpoint policy's options, a bare value for its shorthand option, or a policy
    object; ``policies`` takes your own policy objects, run inside the concerns
    (closest to the function), outermost first. The options are typed
    (:class:`EndpointOptions`), so editors complete them and type checkers reject a
    misspelled one; they are checked now too: an unknown one, or a concern without an
    endpoint policy, raises :class:`~kitmw.errors.ConfigError`.

    Works as ``@kitmw.endpoint(name, ...)`` and as ``kitmw.endpoint(name, ...)(fn)``;
    the wrapper keeps ``fn``'s name, docstring and signature, and is a coroutine
    function exactly when ``fn`` is.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(
            "name: expected the endpoint's name (a non-empty string), as in "
            f"@kitmw.endpoint('charge_card', metrics=True); got {name!r}"
        )
    valid = endpoint_options()
    for option in concerns:
        if option not in valid:
            raise ConfigError(_not_an_option(option, valid))
    options: dict[str, Any] = dict(concerns)
    extra = policy_objects(options.pop(_POLICIES, None), _POLICIES)
    return Endpoint(name, [*build_all("endpoint", options), *extra])


def _not_an_option(option: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(option, valid, n=1)
    suggestion = f"; did you mean {close[0]!r}?" if close else ""
    if any(c.name == option for c in CONCERNS):
        problem = f"{option}: not available on kitmw.endpoint (no endpoint policy)"
    else:
        problem = f"{option}: unknown option"
    return f"{problem}{suggestion} (kitmw.endpoint options: {', '.join(valid)})"


def _failed(ex: EndpointExchange, exc: BaseException) -> None:
    """Record how a call ended that raised ``exc``: refused by a policy of this call
    (whatever an inner attempt raised before, such as the ``TimeoutError`` of a call
    cancelled at its deadline), or an error (the function's, or a policy's that is no
    refusal)."""
    if isinstance(exc, Rejected) and exc.rejection is ex.rejection:
        ex.error = None
        return
    ex.rejection = None
    ex.error = exc


def _returned(ex: EndpointExchange, result: Any) -> None:
    """Record a call that returned: ``ok``, whatever an around caught on the way."""
    ex.result = result
    if ex.error is not None or ex.rejection is not None:
        ex.error = None
        ex.rejection = None


async def _shielded(awaitable: Awaitable[Any]) -> None:
    """Await the exits even when the call was cancelled: a slot or permit must be released."""
    import anyio

    with anyio.CancelScope(shield=True):
        await awaitable


def _sync_wrapper(fn: Callable[..., Any], target: _Target, chain: Chain) -> Callable[..., Any]:
    if not chain:

        def bare(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        return bare

    if chain.inline:  # enters and exits only: no generator, no closure per call
        enter = chain.enter

        def inline(*args: Any, **kwargs: Any) -> Any:
            ex = EndpointExchange(target, args, kwargs)
            exits: list[Pending] = []
            ex.start_ns = perf_counter_ns()
            try:
                enter(ex, exits)
                result = fn(*args, **kwargs)
            except BaseException as exc:
                ex.end_ns = perf_counter_ns()
                _failed(ex, exc)
                finish(ex, exits, exc)
                del ex  # the traceback keeps this frame: no cycle through ex.error
                raise
            ex.end_ns = perf_counter_ns()
            ex.result = result
            finish(ex, exits)
            return result

        return inline

    run = chain.run_sync

    def around(*args: Any, **kwargs: Any) -> Any:
        ex = EndpointExchange(target, args, kwargs)
        exits: list[Pending] = []

        def call() -> Any:  # one attempt: inner exits see how it ended
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                ex.end_ns = perf_counter_ns()
                if isinstance(exc, Exception):
                    ex.error = exc
                raise
            ex.end_ns = perf_counter_ns()
            ex.result = result
            return result

        ex.start_ns = perf_counter_ns()
        try:
            result = run(ex, call, exits)
        except BaseException as exc:
            if not ex.end_ns:
                ex.end_ns = perf_counter_ns()
            _failed(ex, exc)
            finish(ex, exits, exc)
            ex.error = None  # the traceback holds the frames that hold ex: no cycle
            raise
        _returned(ex, result)
        finish(ex, exits)
        return result

    return around


def _async_wrapper(fn: Callable[..., Any], target: _Target, chain: Chain) -> Callable[..., Any]:
    if not chain:

        async def bare(*args: Any, **kwargs: Any) -> Any:
            return await fn(*args, **kwargs)

        return bare

    exits_await = chain.exits_await

    if chain.inline:
        enter = chain.enter

        async def inline(*args: Any, **kwargs: Any) -> Any:
            ex = EndpointExchange(target, args, kwargs)
            exits: list[Pending] = []
            ex.start_ns = perf_counter_ns()
            try:
                enter(ex, exits)
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                ex.end_ns = perf_counter_ns()
                _failed(ex, exc)
                if exits_await:
                    await _shielded(afinish(ex, exits, exc))
                else:
                    finish(ex, exits, exc)
                del ex  # the traceback keeps this frame: no cycle through ex.error
                raise
            ex.end_ns = perf_counter_ns()
            ex.result = result
            if exits_await:
                await afinish(ex, exits)
            else:
                finish(ex, exits)
            return result

        return inline

    run = chain.run_async

    async def around(*args: Any, **kwargs: Any) -> Any:
        ex = EndpointExchange(target, args, kwargs)
        exits: list[Pending] = []

        async def call() -> Any:
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                ex.end_ns = perf_counter_ns()
                if isinstance(exc, Exception):
                    ex.error = exc
                raise
            ex.end_ns = perf_counter_ns()
            ex.result = result
            return result

        ex.start_ns = perf_counter_ns()
        try:
            result = await run(ex, call, exits)
        except BaseException as exc:
            if not ex.end_ns:
                ex.end_ns = perf_counter_ns()
            _failed(ex, exc)
            if exits_await:
                await _shielded(afinish(ex, exits, exc))
            else:
                finish(ex, exits, exc)
            ex.error = None  # the traceback holds the frames that hold ex: no cycle
            raise
        _returned(ex, result)
        if exits_await:
            await afinish(ex, exits)
        else:
            finish(ex, exits)
        return result

    return around
