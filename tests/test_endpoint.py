"""kitmw.endpoint: the fourth driver, Go kit's endpoint middleware around any function.

Wrapping (sync, async, methods, what the wrapper keeps), options read from the registry,
outcomes and errors, around policies (retry, cancelling deadline), the metrics and the
access log of calls, and the caller's context (a real Starlette request under
``kitmw.stack``), and every concern with an endpoint policy (breaker, rate limit,
tracing, timeout, concurrency, retry) at the end.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections.abc import Generator
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

import kitmw
from kitmw.chain import CALL, Call, Sleep
from kitmw.concerns import concern
from kitmw.endpoint import EndpointExchange, endpoint_options
from kitmw.errors import Rejection
from kitmw.exchange import Exchange, Policy, current_deadline, reset_deadline, set_deadline
from kitmw.testing import capture_logs

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the tests use asyncio's events and tasks


# -- helpers -------------------------------------------------------------------------------


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples called ``name`` by their labels, read with prometheus-client's parser."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def calls(registry: CollectorRegistry, endpoint: str) -> dict[str, float]:
    """outcome -> kitmw_endpoint_calls_total of ``endpoint``."""
    return {
        dict(labels)["outcome"]: value
        for labels, value in samples(registry, "kitmw_endpoint_calls_total").items()
        if dict(labels)["endpoint"] == endpoint
    }


class Seen(Policy):
    """Keeps the exchanges it saw at exit, with their outcome then."""

    name = "seen"

    def __init__(self) -> None:
        self.exits: list[tuple[Exchange, str]] = []

    def exit(self, ex: Exchange) -> None:
        assert isinstance(ex, EndpointExchange)
        self.exits.append((ex, ex.outcome))


class Refuse(Policy):
    """Refuses every call with ``rejection``."""

    name = "refuse"

    def __init__(self, rejection: Rejection) -> None:
        self.rejection = rejection

    def enter(self, ex: Exchange) -> Rejection | None:
        return self.rejection


class RetryOnce(Policy):
    """An around that calls the rest again after a ``ConnectionError``."""

    name = "retry_once"

    def __init__(self) -> None:
        self.attempts = 0

    def around(self, ex: Exchange) -> Generator[Any, Any, Any]:
        for attempt in range(2):
            self.attempts += 1
            try:
                return (yield CALL)
            except ConnectionError:
                if attempt == 1:
                    raise
                yield Sleep(0)
        raise AssertionError("unreachable")


class Deadline(Policy):
    """An around that gives the rest ``seconds`` and refuses with 504 ``timeout`` after."""

    name = "deadline"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def around(self, ex: Exchange) -> Generator[Any, Any, Any]:
        try:
            return (yield Call(timeout=self.seconds))
        except TimeoutError:
            return Rejection(504, "timeout")


class Fallback(Policy):
    """An around that answers ``value`` when the function raises."""

    name = "fallback"

    def __init__(self, value: Any) -> None:
        self.value = value

    def around(self, ex: Exchange) -> Generator[Any, Any, Any]:
        try:
            return (yield CALL)
        except Exception:
            return self.value


class AwaitingExit(Policy):
    """An exit the async driver awaits (network I/O in a real policy)."""

    name = "awaiting"
    exit_awaits = True  # type: ignore[assignment]

    def __init__(self) -> None:
        self.done: list[str] = []

    async def aexit(self, ex: Exchange) -> None:
        await anyio.sleep(0)
        self.done.append(ex.route_label())


# -- wrapping --------------------------------------------------------------------------------


def test_a_sync_function_keeps_its_name_docstring_and_signature() -> None:
    def charge(customer_id: str, cents: int = 100) -> dict[str, Any]:
        """Charge a customer."""
        return {"customer": customer_id, "cents": cents}

    wrapped = kitmw.endpoint("charge", metrics={"registry": CollectorRegistry()})(charge)
    assert wrapped("c-1", cents=5) == {"customer": "c-1", "cents": 5}
    assert wrapped.__name__ == "charge"
    assert wrapped.__doc__ == "Charge a customer."
    assert wrapped.__wrapped__ is charge  # type: ignore[attr-defined]
    assert inspect.signature(wrapped) == inspect.signature(charge)
    assert not inspect.iscoroutinefunction(wrapped)
    assert wrapped is not charge


async def test_an_async_function_stays_a_coroutine_function() -> None:
    registry = CollectorRegistry()

    @kitmw.endpoint("charge", metrics={"registry": registry})
    async def charge(customer_id: str, cents: int) -> str:
        """Charge a customer."""
        await asyncio.sleep(0)
        return f"{customer_id}:{cents}"

    assert inspect.iscoroutinefunction(charge)
    assert charge.__name__ == "charge" and charge.__doc__ == "Charge a customer."
    assert list(inspect.signature(charge).parameters) == ["customer_id", "cents"]
    assert await charge("c-1", 5) == "c-1:5"
    assert calls(registry, "charge") == {"ok": 1.0}


def test_decorator_and_call_forms_are_the_same() -> None:
    registry = CollectorRegistry()
    made = kitmw.endpoint("twice", metrics={"registry": registry})

    @made
    def one() -> int:
        return 1

    def two() -> int:
        return 2

    assert (one(), made(two)()) == (1, 2)
    assert calls(registry, "twice") == {"ok": 2.0}  # one endpoint, two functions
    assert one.kitmw_endpoint is made  # type: ignore[attr-defined]
    assert made.policies[0].name == "metrics"


class Ledger:
    registry = CollectorRegistry()

    def __init__(self) -> None:
        self.total = 0

    @kitmw.endpoint("ledger.add", metrics={"registry": registry})
    def add(self, cents: int) -> int:
        """Add to the ledger."""
        self.total += cents
        return self.total

    @kitmw.endpoint("ledger.aadd", metrics={"registry": registry})
    async def aadd(self, cents: int) -> int:
        self.total += cents
        return self.total

    @classmethod
    @kitmw.endpoint("ledger.make", metrics={"registry": registry})
    def make(cls, total: int) -> Ledger:
        made = cls()
        made.total = total
        return made

    @kitmw.endpoint("ledger.outer_classmethod", metrics={"registry": registry})
    @classmethod
    def make_outer(cls) -> str:
        return cls.__name__

    @staticmethod
    @kitmw.endpoint("ledger.rate", metrics={"registry": registry})
    def rate(cents: int) -> float:
        return cents / 100

    @kitmw.endpoint("ledger.outer_staticmethod", metrics={"registry": registry})
    @staticmethod
    async def arate(cents: int) -> float:
        return cents / 100


async def test_methods_instance_class_and_static_in_either_order() -> None:
    ledger = Ledger()
    assert ledger.add(5) == 5 and ledger.add(2) == 7
    assert await ledger.aadd(3) == 10
    assert Ledger.make(4).total == 4 and ledger.make(1).total == 1
    assert Ledger.make_outer() == "Ledger"
    assert Ledger.rate(250) == 2.5 and ledger.rate(50) == 0.5
    assert await Ledger.arate(100) == 1.0
    assert isinstance(inspect.getattr_static(Ledger, "make_outer"), classmethod)
    assert isinstance(inspect.getattr_static(Ledger, "arate"), staticmethod)
    assert inspect.iscoroutinefunction(Ledger.arate) and inspect.iscoroutinefunction(ledger.aadd)
    assert Ledger.add.__doc__ == "Add to the ledger."
    assert list(inspect.signature(ledger.add).parameters) == ["cents"]
    assert list(inspect.signature(Ledger.make).parameters) == ["total"]
    registry = Ledger.registry
    for name, n in [
        ("ledger.add", 2),
        ("ledger.aadd", 1),
        ("ledger.make", 2),
        ("ledger.outer_classmethod", 1),
        ("ledger.rate", 2),
        ("ledger.outer_staticmethod", 1),
    ]:
        assert calls(registry, name) == {"ok": n}, name


async def test_a_callable_object_with_an_async_call_is_awaited() -> None:
    class Handler:
        async def __call__(self, x: int) -> int:
            await asyncio.sleep(0)
            return x * 2

    registry = CollectorRegistry()
    wrapped = kitmw.endpoint("handler", metrics={"registry": registry})(Handler())
    assert inspect.iscoroutinefunction(wrapped)
    assert await wrapped(4) == 8
    partial = kitmw.endpoint("partial", metrics={"registry": registry})(functools.partial(Handler(), 5))
    assert await partial() == 10
    assert calls(registry, "handler") == {"ok": 1.0} and calls(registry, "partial") == {"ok": 1.0}


def test_kitmw_endpoint_stays_the_decorator_once_the_submodule_is_imported() -> None:
    import subprocess
    import sys

    code = (
        "import kitmw.endpoint\n"
        "from kitmw.endpoint import EndpointExchange\n"
        "import kitmw\n"
        "assert callable(kitmw.endpoint), kitmw.endpoint\n"
        "assert kitmw.endpoint.__module__ == 'kitmw.endpoint', kitmw.endpoint\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_without_a_concern_the_wrapper_only_calls() -> None:
    seen: list[Any] = []

    @kitmw.endpoint("plain")
    def plain(x: int) -> int:
        seen.append(x)
        return x

    assert plain(3) == 3 and seen == [3]
    assert plain.kitmw_endpoint.policies == ()  # type: ignore[attr-defined]


# -- options ---------------------------------------------------------------------------------


def test_options_are_the_registry_s_endpoint_policies() -> None:
    from kitmw.concerns import CONCERNS

    expected = sorted([c.name for c in CONCERNS if "endpoint" in c.policies] + ["policies"])
    assert endpoint_options() == expected
    assert {"metrics", "access_log"} <= set(expected)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"metric": True}, r"^metric: unknown option; did you mean 'metrics'\?", id="typo"),
        pytest.param({"acess_log": True}, r"^acess_log: unknown option; did you mean 'access_log'", id="typo2"),
        pytest.param({"auth": True}, r"^auth: not available on kitmw\.endpoint", id="server-only"),
        pytest.param({"metrics": {"bucket": [1]}}, r"^metrics: unknown option 'bucket'; did you mean", id="inner"),
        pytest.param({"metrics": "yes"}, r"^metrics: expected True, a dict of options", id="value"),
        pytest.param({"access_log": {"level": "LOUD"}}, r"^access_log: level: expected a logging", id="level"),
        pytest.param({"policies": [object()]}, r"^policies: expected kitmw\.Policy objects", id="policies"),
        pytest.param({"policies": "metrics"}, r"^policies: expected a list of kitmw\.Policy", id="policies-str"),
    ],
)
def test_a_bad_option_is_refused_when_the_decorator_is_made(options: dict[str, Any], message: str) -> None:
    with pytest.raises(kitmw.ConfigError, match=message) as caught:
        kitmw.endpoint("checked", **options)
    assert isinstance(caught.value, ValueError)


def test_every_option_is_listed_in_the_message() -> None:
    with pytest.raises(kitmw.ConfigError) as caught:
        kitmw.endpoint("checked", auth=True)
    for option in endpoint_options():
        assert option in str(caught.value)


@pytest.mark.parametrize("name", ["", None, 3])
def test_the_name_is_a_non_empty_string(name: Any) -> None:
    with pytest.raises(kitmw.ConfigError, match=r"^name: expected the endpoint's name"):
        kitmw.endpoint(name)


def test_the_decorator_without_a_name_says_how_to_use_it() -> None:
    def charge() -> None:
        pass

    with pytest.raises(kitmw.ConfigError, match=r"as in @kitmw.endpoint\('charge_card'"):
        kitmw.endpoint(charge)  # type: ignore[arg-type]  # @kitmw.endpoint without a name


def test_generators_and_classes_are_refused() -> None:
    def gen() -> Generator[int, None, None]:
        yield 1

    async def agen() -> Any:
        yield 1

    made = kitmw.endpoint("nope")
    for target in (gen, agen):
        with pytest.raises(kitmw.ConfigError, match="cannot wrap the generator function"):
            made(target)
    with pytest.raises(kitmw.ConfigError, match="wraps a function or a method"):
        made(Ledger)
    with pytest.raises(kitmw.ConfigError, match="wraps a function or a method"):
        made(42)


def test_a_policy_object_is_used_as_given() -> None:
    registry = CollectorRegistry()
    policy = kitmw.metrics.EndpointMetricsPolicy(registry=registry)
    made = kitmw.endpoint("given", metrics=policy)
    assert made.policies == (policy,)
    made(lambda: None)()
    assert calls(registry, "given") == {"ok": 1.0}


# -- the exchange and the outcomes -------------------------------------------------------------


def test_the_exchange_carries_the_call() -> None:
    seen = Seen()

    @kitmw.endpoint("charge_card", policies=[seen])
    def charge(customer_id: str, cents: int = 100, *, currency: str = "EUR") -> str:
        return f"{customer_id}:{cents}{currency}"

    assert charge("c-1", currency="USD") == "c-1:100USD"
    ((ex, outcome),) = seen.exits
    assert isinstance(ex, EndpointExchange)
    assert (ex.side, ex.protocol, ex.method) == ("endpoint", "endpoint", "CALL")
    assert ex.route == ex.route_label() == ex.path == ex.url == ex.endpoint == "charge_card"
    assert ex.args == ("c-1",) and ex.kwargs == {"currency": "USD"}
    assert ex.arguments == {"customer_id": "c-1", "cents": 100, "currency": "USD"}
    assert ex.function is charge.__wrapped__  # type: ignore[attr-defined]
    assert ex.result == "c-1:100USD" and ex.error is None and ex.rejection is None
    assert outcome == "ok" and ex.status == 0
    assert ex.end_ns >= ex.start_ns > 0 and ex.duration >= 0
    assert ex.header("x-request-id") is None and ex.client is None


def test_arguments_of_a_method_include_self() -> None:
    seen = Seen()

    class Shop:
        @kitmw.endpoint("shop.buy", policies=[seen])
        def buy(self, item: str) -> str:
            return item

    shop = Shop()
    shop.buy(item="tea")
    ex = seen.exits[0][0]
    assert isinstance(ex, EndpointExchange)
    assert ex.arguments == {"self": shop, "item": "tea"}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_an_exception_propagates_unchanged(is_async: bool) -> None:
    registry = CollectorRegistry()
    seen = Seen()
    error = ValueError("card declined")
    made = kitmw.endpoint("declines", metrics={"registry": registry}, policies=[seen])
    if is_async:

        async def adecline() -> None:
            raise error

        wrapped = made(adecline)
        run = lambda: asyncio.run(wrapped())  # noqa: E731
    else:

        def decline() -> None:
            raise error

        run = made(decline)
    with pytest.raises(ValueError) as caught:
        run()
    assert caught.value is error
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    frames = [frame.name for frame in caught.traceback]
    assert frames[-1] in ("decline", "adecline")  # raised where the function raised it
    ex, outcome = seen.exits[0]
    assert outcome == "error" and ex.error is error
    assert calls(registry, "declines") == {"error": 1.0}


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        ("circuit_open", 503, kitmw.BreakerOpen),
        ("rate_limited", 429, kitmw.RateLimited),
        ("concurrency_limited", 503, kitmw.ConcurrencyLimited),
        ("timeout", 504, kitmw.DeadlineExceeded),
    ],
)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_refusal_raises_its_error_and_the_function_is_not_called(
    code: str, status: int, error: type[kitmw.Rejected], is_async: bool
) -> None:
    registry = CollectorRegistry()
    seen = Seen()
    refusal = Rejection(status, code, headers=(("Retry-After", "7"),))
    called: list[int] = []
    made = kitmw.endpoint("refused", metrics={"registry": registry}, policies=[seen, Refuse(refusal)])

    if is_async:

        async def afn() -> None:
            called.append(1)

        wrapped = made(afn)
        run = lambda: asyncio.run(wrapped())  # noqa: E731
    else:
        run = made(lambda: called.append(1))
    with pytest.raises(error) as caught:
        run()
    assert isinstance(caught.value, kitmw.Rejected) and isinstance(caught.value, kitmw.KitmwError)
    assert caught.value.rejection is refusal and caught.value.retry_after == 7
    assert not called
    ex, outcome = seen.exits[0]
    assert outcome == "rejected" and ex.rejection is refusal and ex.error is None
    assert calls(registry, "refused") == {"rejected": 1.0}
    if error is kitmw.DeadlineExceeded:
        assert isinstance(caught.value, TimeoutError)


def test_the_function_s_own_kitmw_error_is_an_error_not_a_refusal() -> None:
    """A BreakerOpen raised by a client the function calls is the function's error."""
    seen = Seen()
    downstream = kitmw.BreakerOpen("payments is down")

    @kitmw.endpoint("calls_payments", policies=[seen])
    def pay() -> None:
        raise downstream

    with pytest.raises(kitmw.BreakerOpen) as caught:
        pay()
    assert caught.value is downstream
    ex, outcome = seen.exits[0]
    assert outcome == "error" and ex.error is downstream and ex.rejection is None


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_an_around_retries_and_the_call_ends_ok(is_async: bool) -> None:
    registry = CollectorRegistry()
    retry, inner = RetryOnce(), Seen()
    failures = [ConnectionError("reset")]
    made = kitmw.endpoint("flaky", metrics={"registry": registry}, policies=[retry, inner])

    def attempt() -> str:
        if failures:
            raise failures.pop()
        return "done"

    if is_async:

        async def aattempt() -> str:
            return attempt()

        wrapped = made(aattempt)
        assert asyncio.run(wrapped()) == "done"
    else:
        assert made(attempt)() == "done"
    assert retry.attempts == 2
    assert [outcome for _, outcome in inner.exits] == ["error", "ok"]  # each attempt, as it ended
    assert calls(registry, "flaky") == {"ok": 1.0}


def test_an_around_that_gives_up_lets_the_last_error_through() -> None:
    retry = RetryOnce()
    errors = [ConnectionError("one"), ConnectionError("two")]

    @kitmw.endpoint("down", policies=[retry])
    def down() -> None:
        raise errors.pop(0)

    with pytest.raises(ConnectionError, match="two"):
        down()
    assert retry.attempts == 2


def test_an_around_that_answers_instead_makes_the_call_ok() -> None:
    outer, inner = Seen(), Seen()

    @kitmw.endpoint("fallback", policies=[outer, Fallback("cached"), inner])
    def fresh() -> str:
        raise LookupError("cache miss")

    assert fresh() == "cached"
    assert [o for _, o in inner.exits] == ["error"]
    assert [o for _, o in outer.exits] == ["ok"]
    assert outer.exits[0][0].result == "cached"  # type: ignore[attr-defined]


async def test_an_async_call_past_its_deadline_is_cancelled_and_raises_deadline_exceeded() -> None:
    registry = CollectorRegistry()
    cancelled: list[bool] = []
    never = asyncio.Event()

    @kitmw.endpoint("slow", metrics={"registry": registry}, policies=[Deadline(0.05)])
    async def slow() -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with pytest.raises(kitmw.DeadlineExceeded) as caught:
        await slow()
    assert isinstance(caught.value, TimeoutError)
    assert cancelled == [True]
    assert calls(registry, "slow") == {"rejected": 1.0}


async def test_outside_a_refusing_around_the_call_is_rejected_with_no_error() -> None:
    """The around got the cancelled call's TimeoutError and refused: policies outside
    it (tracing, the access log) see a refusal, not that error."""
    outer = Seen()

    @kitmw.endpoint("slow", policies=[outer, Deadline(0.01)])
    async def slow() -> None:
        await asyncio.Event().wait()

    with pytest.raises(kitmw.DeadlineExceeded):
        await slow()
    ((ex, outcome),) = outer.exits
    assert outcome == "rejected" and ex.error is None and ex.rejection is not None


def test_a_sync_call_with_a_deadline_is_made_as_is() -> None:
    @kitmw.endpoint("sync_deadline", policies=[Deadline(0.0)])
    def quick() -> str:
        return "not pre-empted"

    assert quick() == "not pre-empted"


async def test_exits_that_await_are_awaited_even_when_the_caller_is_cancelled() -> None:
    """Inside a cancelled anyio scope every await is cancelled again: the exits (a slot
    or permit to release) are shielded."""
    awaiting = AwaitingExit()

    @kitmw.endpoint("awaited", policies=[awaiting])
    async def wait_forever() -> None:
        await asyncio.Event().wait()

    @kitmw.endpoint("awaited_ok", policies=[awaiting])
    async def fine() -> int:
        return 1

    assert await fine() == 1
    with anyio.move_on_after(0.01) as scope:
        await wait_forever()
    assert scope.cancelled_caught
    assert awaiting.done == ["awaited_ok", "awaited"]

    @kitmw.endpoint("awaited_around", policies=[Deadline(10.0), awaiting])
    async def wait_longer() -> None:
        await asyncio.Event().wait()

    with anyio.move_on_after(0.01):
        await wait_longer()
    assert awaiting.done[-1] == "awaited_around"


async def test_a_cancelled_call_is_an_error() -> None:
    seen = Seen()
    started = asyncio.Event()

    @kitmw.endpoint("cancelled", policies=[seen])
    async def wait_forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(wait_forever())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ex, outcome = seen.exits[0]
    assert outcome == "error" and isinstance(ex.error, asyncio.CancelledError)


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_count_and_time_each_outcome() -> None:
    registry = CollectorRegistry()
    made = kitmw.endpoint("charge_card", metrics={"registry": registry, "buckets": [0.5, 1.0]})

    @made
    def charge(cents: int) -> int:
        if cents < 0:
            raise ValueError("negative")
        return cents

    refused = kitmw.endpoint(
        "charge_card",
        metrics={"registry": registry, "buckets": [0.5, 1.0]},
        policies=[Refuse(Rejection(429, "rate_limited"))],
    )(charge.__wrapped__)  # type: ignore[attr-defined]
    charge(1)
    charge(2)
    with pytest.raises(ValueError):
        charge(-1)
    with pytest.raises(kitmw.RateLimited):
        refused(3)
    assert calls(registry, "charge_card") == {"ok": 2.0, "error": 1.0, "rejected": 1.0}
    counts = samples(registry, "kitmw_endpoint_duration_seconds_count")
    assert counts == {
        (("endpoint", "charge_card"), ("outcome", "ok")): 2.0,
        (("endpoint", "charge_card"), ("outcome", "error")): 1.0,
        (("endpoint", "charge_card"), ("outcome", "rejected")): 1.0,
    }
    buckets = {dict(k)["le"] for k in samples(registry, "kitmw_endpoint_duration_seconds_bucket")}
    assert buckets == {"0.5", "1.0", "+Inf"}
    assert kitmw.metrics.instruments(registry).created() == ["endpoint_calls", "endpoint_duration"]


def test_metrics_go_to_prometheus_client_s_registry_by_default() -> None:
    from prometheus_client import REGISTRY

    name = "default_registry_endpoint"
    kitmw.endpoint(name, metrics=True)(lambda: None)()
    assert calls(REGISTRY, name) == {"ok": 1.0}


def test_endpoints_on_one_registry_must_agree_on_buckets() -> None:
    registry = CollectorRegistry()
    kitmw.endpoint("a", metrics={"registry": registry, "buckets": [1, 2]})
    with pytest.raises(kitmw.ConfigError, match="metrics: buckets: kitmw_endpoint_duration_seconds"):
        kitmw.endpoint("b", metrics={"registry": registry, "buckets": [1, 3]})


def test_a_trace_id_on_the_call_becomes_an_exemplar() -> None:
    class TraceId(Policy):
        name = "trace_id"

        def enter(self, ex: Exchange) -> None:
            ex.trace_id = "0af7651916cd43dd8448eb211c80319c"

    registry = CollectorRegistry()
    kitmw.endpoint("traced", metrics={"registry": registry}, policies=[TraceId()])(lambda: 1)()
    text = generate_openmetrics(registry).decode()
    line = next(x for x in text.splitlines() if x.startswith('kitmw_endpoint_calls_total{endpoint="traced"'))
    assert '# {trace_id="0af7651916cd43dd8448eb211c80319c"} 1.0' in line


# -- access log ------------------------------------------------------------------------------


def test_one_debug_record_per_call_with_its_fields() -> None:
    @kitmw.endpoint("charge_card", access_log=True)
    def charge(cents: int) -> int:
        if cents < 0:
            raise ValueError("negative amount")
        return cents

    with capture_logs("kitmw.endpoint", logging.DEBUG) as records:
        charge(5)
        with pytest.raises(ValueError):
            charge(-1)
    ok, failed = records
    assert ok.name == "kitmw.endpoint" and ok.levelno == logging.DEBUG
    assert ok.getMessage().startswith("charge_card ok ") and ok.getMessage().endswith("ms")
    fields = {k: getattr(ok, k) for k in kitmw.logging.ENDPOINT_FIELDS}
    assert fields["endpoint"] == "charge_card" and fields["outcome"] == "ok"
    assert isinstance(fields["duration_ms"], float) and fields["duration_ms"] >= 0
    assert fields["error"] is None and fields["request_id"] is None and ok.exc_info is None
    assert failed.levelno == logging.DEBUG
    assert (failed.outcome, failed.error, failed.error_message) == ("error", "ValueError", "negative amount")
    assert failed.getMessage().endswith("ms ValueError")


def test_the_record_of_a_refusal_names_the_error_the_caller_got() -> None:
    made = kitmw.endpoint(
        "limited", access_log={"error_level": "WARNING"}, policies=[Refuse(Rejection(429, "rate_limited"))]
    )
    with capture_logs("kitmw.endpoint", logging.DEBUG) as records, pytest.raises(kitmw.RateLimited):
        made(lambda: None)()
    (record,) = records
    assert (record.outcome, record.error, record.levelno) == ("rejected", "RateLimited", logging.WARNING)


def test_no_record_below_the_logger_s_level() -> None:
    made = kitmw.endpoint("quiet", access_log=True)(lambda: None)
    with capture_logs("kitmw.endpoint", logging.INFO) as records:
        made()
    assert records == []


def test_level_logger_and_exc_info_are_options() -> None:
    @kitmw.endpoint("loud", access_log={"logger": "myapp.calls", "level": "INFO", "exc_info": True})
    def loud(fail: bool) -> None:
        if fail:
            raise KeyError("missing")

    with capture_logs("myapp.calls", logging.INFO) as records:
        loud(False)
        with pytest.raises(KeyError):
            loud(True)
    assert [r.levelno for r in records] == [logging.INFO, logging.INFO]
    assert records[1].exc_info is not None and records[1].exc_info[0] is KeyError


def test_the_record_formats_as_a_json_line() -> None:
    import io
    import json

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(kitmw.logging.JsonFormatter())
    logger = logging.getLogger("kitmw.endpoint.json")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        with kitmw.logging.bind_context(request_id="req-7"):
            kitmw.endpoint("json", access_log={"logger": logger})(lambda: None)()
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["endpoint"] == "json" and line["outcome"] == "ok" and line["request_id"] == "req-7"
    assert line["message"].startswith("json ok ")


# -- the caller's context ---------------------------------------------------------------------


def test_the_call_runs_in_the_caller_s_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    @kitmw.endpoint("ctx", metrics={"registry": CollectorRegistry()})
    def read_and_set() -> str:
        seen = var.get()
        var.set("set inside")
        return seen

    var.set("caller")
    assert read_and_set() == "caller"
    assert var.get() == "set inside"  # as a plain call: one context


async def test_an_async_call_runs_in_the_caller_s_task_and_context() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    @kitmw.endpoint("actx", policies=[Deadline(5.0)])
    async def read() -> tuple[str, Any]:
        return var.get(), asyncio.current_task()

    var.set("caller")
    assert await read() == ("caller", asyncio.current_task())


def test_the_exchange_starts_with_the_caller_s_deadline() -> None:
    seen = Seen()
    made = kitmw.endpoint("deadline", policies=[seen])(lambda: current_deadline())
    assert made() is None
    token = set_deadline(1234.5)
    try:
        assert made() == 1234.5
    finally:
        reset_deadline(token)
    assert [ex.deadline for ex, _ in seen.exits] == [None, 1234.5]


def _starlette_app(spans: Any = None) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    app_log = logging.getLogger("myapp.payments")

    @kitmw.endpoint("charge_card", access_log=True, metrics={"registry": CollectorRegistry()})
    async def charge_card(cents: int) -> dict[str, Any]:
        app_log.info("charging %d", cents)
        return {"cents": cents, "request_id": kitmw.logging.current_request_id()}

    @kitmw.endpoint("refund", access_log=True)
    def refund(cents: int) -> dict[str, Any]:
        app_log.info("refunding %d", cents)
        return {"cents": -cents, "request_id": kitmw.logging.current_request_id()}

    async def charge(request: Any) -> JSONResponse:
        return JSONResponse(await charge_card(int(request.query_params["cents"])))

    def refund_view(request: Any) -> JSONResponse:  # Starlette runs it in a worker thread
        return JSONResponse(refund(int(request.query_params["cents"])))

    app = Starlette(routes=[Route("/charge", charge), Route("/refund", refund_view)])
    options: dict[str, Any] = {"access_log": True}
    if spans is not None:
        options["tracing"] = {"tracer_provider": spans[0]}
    return kitmw.stack(app, **options)


async def test_the_request_id_of_a_starlette_request_reaches_the_function_and_its_record() -> None:
    app_records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            app_records.append(record)

    handler = Keep()
    handler.addFilter(kitmw.logging.ContextFilter())  # as kitmw.logging.configure() does
    app_log = logging.getLogger("myapp")
    app_log.addHandler(handler)
    app_log.setLevel(logging.INFO)
    try:
        with capture_logs("kitmw.endpoint", logging.DEBUG) as records:
            transport = httpx.ASGITransport(app=_starlette_app())
            async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
                charged = await client.get("/charge?cents=500", headers={"X-Request-ID": "req-charge-1"})
                refunded = await client.get("/refund?cents=200", headers={"X-Request-ID": "req-refund-1"})
    finally:
        app_log.removeHandler(handler)
        app_log.setLevel(logging.NOTSET)
    assert charged.json() == {"cents": 500, "request_id": "req-charge-1"}
    assert refunded.json() == {"cents": -200, "request_id": "req-refund-1"}
    assert [(r.endpoint, r.request_id) for r in records] == [
        ("charge_card", "req-charge-1"),
        ("refund", "req-refund-1"),
    ]
    assert [(r.getMessage(), r.request_id) for r in app_records] == [
        ("charging 500", "req-charge-1"),
        ("refunding 200", "req-refund-1"),
    ]


async def test_the_trace_id_of_the_request_reaches_the_endpoint_record(spans: Any) -> None:
    _, exporter = spans
    app = _starlette_app(spans)
    with capture_logs("kitmw.endpoint", logging.DEBUG) as records:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            assert (await client.get("/charge?cents=1")).status_code == 200
    (server,) = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
    assert records[0].trace_id == f"{server.context.trace_id:032x}"


# -- every concern with an endpoint policy ---------------------------------------------------


def test_breaker_opens_and_raises_breaker_open() -> None:
    registry = CollectorRegistry()
    made = kitmw.endpoint(
        "fragile", metrics={"registry": registry}, breaker={"fail_max": 2, "reset_timeout": 60}
    )
    called: list[int] = []

    @made
    def fragile() -> None:
        called.append(1)
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            fragile()
    with pytest.raises(kitmw.BreakerOpen):
        fragile()
    assert len(called) == 2
    assert calls(registry, "fragile") == {"error": 2.0, "rejected": 1.0}


def test_breaker_failure_classifier_can_be_overridden() -> None:
    accepted = inspect.signature(concern("breaker").policy_class("endpoint")).parameters
    option = "is_failure" if "is_failure" in accepted else "failure"

    def classify(*args: Any) -> bool:  # (exchange) or (result, error), as the policy asks
        error = args[0].error if len(args) == 1 else args[-1]
        return isinstance(error, ConnectionError)

    @kitmw.endpoint("classified", breaker={"fail_max": 1, "reset_timeout": 60, option: classify})
    def business(error: Exception) -> None:
        raise error

    for _ in range(3):
        with pytest.raises(ValueError):
            business(ValueError("declined"))  # a business error: not a failure
    with pytest.raises(ConnectionError):
        business(ConnectionError("down"))
    with pytest.raises(kitmw.BreakerOpen):
        business(ValueError("declined"))


def test_an_erroring_rate_limit_raises_rate_limited() -> None:
    made = kitmw.endpoint("limited_calls", ratelimit="2/minute")(lambda: "ok")
    assert [made(), made()] == ["ok", "ok"]
    with pytest.raises(kitmw.RateLimited) as caught:
        made()
    assert caught.value.retry_after > 0


async def test_a_waiting_rate_limit_is_bounded_by_the_timeout() -> None:
    @kitmw.endpoint("waits", ratelimit={"limit": "1/minute", "wait": True}, timeout=0.05)
    async def waits() -> str:
        return "ok"

    assert await waits() == "ok"
    with pytest.raises((kitmw.RateLimited, kitmw.DeadlineExceeded)):
        await waits()


async def test_timeout_cancels_the_async_call_and_raises_a_timeout_error() -> None:
    cancelled: list[bool] = []

    @kitmw.endpoint("times_out", timeout=0.05)
    async def slow() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with pytest.raises(TimeoutError) as caught:
        await slow()
    assert isinstance(caught.value, kitmw.DeadlineExceeded) and cancelled == [True]


async def test_a_full_concurrency_limit_raises_concurrency_limited() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    @kitmw.endpoint("one_at_a_time", concurrency=1)
    async def hold() -> str:
        started.set()
        await release.wait()
        return "done"

    first = asyncio.ensure_future(hold())
    await started.wait()
    with pytest.raises(kitmw.ConcurrencyLimited) as caught:
        await hold()
    assert isinstance(caught.value, kitmw.KitmwError)
    release.set()
    assert await first == "done"
    assert await hold() == "done"  # the slot was freed


async def test_tracing_makes_an_internal_span_child_of_the_current_span(spans: Any) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("test")

    @kitmw.endpoint("charge_card", tracing={"tracer_provider": provider})
    async def charge_card() -> None:
        return None

    with tracer.start_as_current_span("parent") as parent:
        await charge_card()
    span = next(s for s in exporter.get_finished_spans() if s.name == "charge_card")
    assert span.kind.name == "INTERNAL"
    assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id


def test_retry_calls_again_after_a_connection_error() -> None:
    failures = [ConnectionError("reset")]

    @kitmw.endpoint("retried", retry={"attempts": 3})
    def flaky() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    assert flaky() == "ok"


async def test_the_example_of_the_issue_runs(spans: Any) -> None:
    registry = CollectorRegistry()

    @kitmw.endpoint(
        "charge_card",
        breaker=True,
        ratelimit={"limit": "50/second", "wait": True},
        metrics={"registry": registry},
        tracing={"tracer_provider": spans[0]},
        access_log=True,
        timeout=2.0,
        concurrency=8,
        retry=True,
    )
    async def charge_card(customer_id: str, cents: int) -> dict[str, Any]:
        return {"customer_id": customer_id, "cents": cents}

    assert await charge_card("c-1", 500) == {"customer_id": "c-1", "cents": 500}
    assert calls(registry, "charge_card") == {"ok": 1.0}


# -- garbage ---------------------------------------------------------------------------------


def _cyclic_garbage(run: Any) -> int:
    import gc

    gc.collect()
    gc.disable()
    try:
        run()
        return gc.collect()
    finally:
        gc.enable()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_calls_leave_no_cyclic_garbage_ok_or_raising(is_async: bool) -> None:
    """An exception's traceback keeps the wrapper's frame: the frame must not hold the
    exchange, whose ``error`` is that exception (a cycle per failed call otherwise)."""
    made = kitmw.endpoint("gc", metrics={"registry": CollectorRegistry()}, access_log=True)

    def check(x: int) -> int:
        if x < 0:
            raise ValueError(x)
        return x

    async def acheck(x: int) -> int:
        return check(x)

    def run(x: int) -> None:
        for _ in range(50):
            try:
                wrapped(x)
            except ValueError:
                pass

    wrapped = made(acheck if is_async else check)
    if is_async:  # in one event loop: asyncio.run() makes cycles of its own

        async def many(x: int) -> None:
            for _ in range(50):
                try:
                    await wrapped(x)
                except ValueError:
                    pass

        loop = asyncio.new_event_loop()
        try:
            assert _cyclic_garbage(lambda: loop.run_until_complete(many(1))) == 0
            assert _cyclic_garbage(lambda: loop.run_until_complete(many(-1))) == 0
        finally:
            loop.close()
    else:
        assert _cyclic_garbage(lambda: run(1)) == 0
        assert _cyclic_garbage(lambda: run(-1)) == 0
