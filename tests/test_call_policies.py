"""The policies of calls on ``kitmw.endpoint``'s side: retry, rate limit and breaker.

Driven through the real chain (:func:`kitmw.chain.compile_chain`, sync and async
runners) over :class:`kitmw.testing.NeutralEndpointExchange` objects named like endpoints, the
way the ``kitmw.endpoint`` driver runs them; clocks are :class:`kitmw.testing.FakeClock`
objects and waits are recorded, never taken.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from kitmw.breaker import EndpointBreakerPolicy
from kitmw.chain import afinish, compile_chain, finish
from kitmw.errors import BreakerOpen, ConfigError, RateLimited, Rejected
from kitmw.exchange import Policy
from kitmw.ratelimit import EndpointRateLimitPolicy
from kitmw.retry import EndpointRetryPolicy, Retry, RetryBudget
from kitmw.testing import FakeClock, NeutralEndpointExchange

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def call(policies: list[Policy], fn: Callable[[], Any], name: str = "charge_card") -> Any:
    """One call of ``fn`` through ``policies`` as a sync driver of calls makes it."""
    chain = compile_chain(policies, "endpoint", is_async=False)
    ex = NeutralEndpointExchange("CALL", name)
    exits: list[Any] = []

    def attempt() -> Any:
        try:
            result = fn()
        except Exception as exc:
            ex.error = exc
            raise
        ex.result = result
        return result

    try:
        result = chain.run_sync(ex, attempt, exits)
    except BaseException as exc:
        if not (isinstance(exc, Rejected) and exc.rejection is ex.rejection):
            ex.error = exc
        finish(ex, exits, exc)
        raise
    ex.error = None
    finish(ex, exits)
    return result


async def acall(policies: list[Policy], fn: Callable[[], Any], name: str = "charge_card") -> Any:
    """:func:`call` for async functions (the async runner, awaiting hooks that await)."""
    chain = compile_chain(policies, "endpoint", is_async=True)
    ex = NeutralEndpointExchange("CALL", name)
    exits: list[Any] = []

    async def attempt() -> Any:
        try:
            result = await fn()
        except Exception as exc:
            ex.error = exc
            raise
        ex.result = result
        return result

    try:
        result = await chain.run_async(ex, attempt, exits)
    except BaseException as exc:
        if not (isinstance(exc, Rejected) and exc.rejection is ex.rejection):
            ex.error = exc
        await afinish(ex, exits, exc)
        raise
    ex.error = None
    await afinish(ex, exits)
    return result


class Flaky:
    """Raises ``error`` for the first ``fails`` calls, then returns ``"ok"``."""

    def __init__(self, fails: int, error: type[Exception] = ValueError) -> None:
        self.fails = fails
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.fails:
            raise self.error(f"failure {self.calls}")
        return "ok"


@pytest.fixture
def sleeps() -> list[float]:
    return []


def retry(sleeps: list[float], **options: Any) -> EndpointRetryPolicy:
    options.setdefault("sleep", sleeps.append)
    options.setdefault("random", lambda: 1.0)
    return EndpointRetryPolicy(**options)


def breaker(clock: FakeClock | None = None, **options: Any) -> EndpointBreakerPolicy:
    options.setdefault("registry", CollectorRegistry())
    options.setdefault("name", f"endpoint-{uuid.uuid4().hex[:8]}")
    return EndpointBreakerPolicy(clock=clock or FakeClock(), **options)


# -- retry -----------------------------------------------------------------------------------------


def test_retry_calls_again_after_an_exception(sleeps: list[float]) -> None:
    fn = Flaky(2)
    assert call([retry(sleeps, attempts=3, backoff_base=0.1)], fn) == "ok"
    assert fn.calls == 3 and sleeps == [pytest.approx(0.1), pytest.approx(0.2)]


def test_retry_raises_the_last_error_when_the_attempts_are_spent(sleeps: list[float]) -> None:
    fn = Flaky(5)
    with pytest.raises(ValueError, match="failure 3"):
        call([retry(sleeps, attempts=3)], fn)
    assert fn.calls == 3 and len(sleeps) == 2


@pytest.mark.parametrize(
    "retry_on",
    [ConnectionError, (ConnectionError, TimeoutError), lambda exc: isinstance(exc, ConnectionError)],
    ids=["class", "tuple", "predicate"],
)
def test_retry_on_chooses_the_errors_retried(sleeps: list[float], retry_on: Any) -> None:
    fn = Flaky(1, ValueError)
    with pytest.raises(ValueError):
        call([retry(sleeps, retry_on=retry_on)], fn)
    assert fn.calls == 1
    fn = Flaky(1, ConnectionError)
    assert call([retry(sleeps, retry_on=retry_on)], fn) == "ok" and fn.calls == 2


def test_retry_on_rejects_what_is_neither_a_class_nor_a_predicate() -> None:
    with pytest.raises(ConfigError, match="retry_on"):
        EndpointRetryPolicy(retry_on="ValueError")


def test_a_spent_budget_stops_the_retries(sleeps: list[float]) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=FakeClock())
    fn = Flaky(1)
    with pytest.raises(ValueError):
        call([retry(sleeps, budget=budget)], fn)
    assert fn.calls == 1 and sleeps == []


def test_no_retry_starts_that_would_end_after_the_deadline(sleeps: list[float]) -> None:
    clock = FakeClock()
    policy = retry(sleeps, deadline=1.5, backoff_base=1.0, clock=clock)
    fn = Flaky(5)

    def failing() -> str:
        clock.advance(0.2)  # each attempt takes 0.2 s
        return fn()

    with pytest.raises(ValueError):
        call([policy], failing)
    # 0.2 + 1.0 (wait) + 0.2 = 1.4: a second wait (2.0) would end after 1.5
    assert fn.calls == 2 and sleeps == [pytest.approx(1.0)]


def test_a_retry_object_is_taken_as_is(sleeps: list[float]) -> None:
    ready = Retry(attempts=2, sleep=sleeps.append, random=lambda: 0.0)
    policy = EndpointRetryPolicy(retry=ready)
    assert policy.retry is ready and EndpointRetryPolicy.options_from(ready) == {"retry": ready}
    with pytest.raises(ConfigError, match="not both"):
        EndpointRetryPolicy(retry=ready, attempts=3)
    with pytest.raises(ConfigError, match="did you mean 'attempts'"):
        EndpointRetryPolicy(atempts=3)


async def test_retry_on_the_async_runner() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        await anyio.sleep(0)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    assert await acall([EndpointRetryPolicy(attempts=3, backoff_base=0.0)], flaky) == "ok"
    assert len(calls) == 3


# -- breaker -----------------------------------------------------------------------------------------


def test_breaker_opens_after_fail_max_exceptions_and_refuses_without_calling() -> None:
    clock = FakeClock()
    policy = breaker(clock, fail_max=2, reset_timeout=10)
    fn = Flaky(2)
    for _ in range(2):
        with pytest.raises(ValueError):
            call([policy], fn)
    with pytest.raises(BreakerOpen) as info:
        call([policy], fn)
    assert fn.calls == 2
    assert info.value.retry_after == 10 and info.value.rejection.code == "circuit_open"
    assert policy.breaker_for("charge_card").name.endswith(":charge_card")
    clock.advance(10)  # the trial call goes through and closes it
    assert call([policy], fn) == "ok"
    assert policy.breaker_for("charge_card").state == "closed"


def test_breakers_are_per_endpoint_name() -> None:
    policy = breaker(fail_max=1)
    with pytest.raises(ValueError):
        call([policy], Flaky(1), "charge_card")
    with pytest.raises(BreakerOpen):
        call([policy], Flaky(0), "charge_card")
    assert call([policy], Flaky(0), "refund") == "ok"
    assert set(policy.breakers) == {"charge_card", "refund"}


def test_a_return_is_a_success_and_the_classifier_can_say_otherwise() -> None:
    policy = breaker(fail_max=1, failure=lambda result, error: result == "bad" or error is not None)
    assert call([policy], lambda: "bad") == "bad"
    with pytest.raises(BreakerOpen):
        call([policy], lambda: "good")


def test_the_classifier_can_ignore_errors() -> None:
    policy = breaker(fail_max=1, failure=lambda result, error: isinstance(error, TimeoutError))
    for _ in range(3):
        with pytest.raises(ValueError):
            call([policy], Flaky(1))
    assert policy.breaker_for("charge_card").state == "closed"


def test_a_refusal_from_inside_is_not_a_failure() -> None:
    inner = EndpointRateLimitPolicy(limit="1/minute", namespace=uuid.uuid4().hex, registry=CollectorRegistry())
    policy = breaker(fail_max=1)
    assert call([policy, inner], Flaky(0)) == "ok"
    with pytest.raises(RateLimited):
        call([policy, inner], Flaky(0))
    assert policy.breaker_for("charge_card").state == "closed"


def test_a_retry_that_would_be_refused_by_its_breaker_is_not_made(sleeps: list[float]) -> None:
    """Attempt 2 opens the breaker: the call ends with its own error, without a third wait."""
    fn = Flaky(5)
    policies = [retry(sleeps, attempts=5), breaker(fail_max=2, reset_timeout=30)]
    with pytest.raises(ValueError, match="failure 2") as info:
        call(policies, fn)
    assert fn.calls == 2 and len(sleeps) == 1
    if hasattr(info.value, "__notes__"):
        assert info.value.__notes__[0].startswith("kitmw: not retried: circuit breaker 'endpoint-")


def test_breaker_options_are_checked_at_construction() -> None:
    with pytest.raises(ConfigError, match="did you mean 'fail_max'"):
        EndpointBreakerPolicy(fail_maxx=1)
    with pytest.raises(ConfigError, match="failure"):
        EndpointBreakerPolicy(failure="yes")
    with pytest.raises(ConfigError, match="fail_max"):
        EndpointBreakerPolicy(fail_max=0)


async def test_redis_breakers_are_shared_by_endpoint_name(redis_url: str) -> None:
    name = f"ep-{uuid.uuid4().hex[:8]}"
    one = EndpointBreakerPolicy(name=name, fail_max=1, storage=redis_url, registry=CollectorRegistry())
    other = EndpointBreakerPolicy(name=name, fail_max=1, storage=redis_url, registry=CollectorRegistry())
    assert one.enter_awaits  # the async runner awaits the storage

    async def fails() -> str:
        raise ValueError("down")

    async def works() -> str:
        return "ok"

    with pytest.raises(ValueError):
        await acall([one], fails)
    with pytest.raises(BreakerOpen):  # another process's policy sees it open
        await acall([other], works)
    await one.aclose()
    await other.aclose()


# -- rate limit -------------------------------------------------------------------------------------


def limit(**options: Any) -> EndpointRateLimitPolicy:
    options.setdefault("namespace", uuid.uuid4().hex)
    options.setdefault("registry", CollectorRegistry())
    return EndpointRateLimitPolicy(**options)


def test_an_erroring_limit_refuses_without_calling() -> None:
    policy = limit(limit="2/minute")
    fn = Flaky(0)
    assert call([policy], fn) == call([policy], fn) == "ok"
    with pytest.raises(RateLimited) as info:
        call([policy], fn)
    assert fn.calls == 2 and info.value.retry_after >= 1
    assert info.value.rejection.header("Retry-After") is not None


def test_limits_are_per_endpoint_name_unless_keyed_otherwise() -> None:
    policy = limit(limit="1/minute")
    assert call([policy], Flaky(0), "charge_card") == "ok"
    assert call([policy], Flaky(0), "refund") == "ok"
    with pytest.raises(RateLimited):
        call([policy], Flaky(0), "refund")
    exempt = limit(limit="1/minute", key=lambda ex: None)
    for _ in range(3):
        assert call([exempt], Flaky(0)) == "ok"


def test_a_delaying_limit_waits_within_max_wait(sleeps: list[float]) -> None:
    policy = limit(limit="1/second", wait=True, max_wait=3, sleep=sleeps.append)
    assert call([policy], Flaky(0)) == "ok"
    # The waits are recorded, not taken: the slot never frees, the wait gives up at max_wait.
    with pytest.raises(RateLimited):
        call([policy], Flaky(0))
    assert sleeps and 0 < sum(sleeps) <= 3


def test_a_delaying_limit_does_not_wait_past_the_deadline(sleeps: list[float]) -> None:
    policy = limit(limit="1/minute", wait=True, max_wait=120, sleep=sleeps.append)
    assert call([policy], Flaky(0)) == "ok"
    chain = compile_chain([policy], "endpoint", is_async=False)
    ex = NeutralEndpointExchange("CALL", "charge_card")
    ex.deadline = time.monotonic() + 5.0  # the caller's deadline: 5 s left, the slot is ~60 s away
    with pytest.raises(RateLimited):
        chain.run_sync(ex, Flaky(0), [])
    assert sleeps == []


def test_ratelimit_options_are_checked_at_construction() -> None:
    with pytest.raises(ConfigError, match="limit"):
        EndpointRateLimitPolicy()
    with pytest.raises(ConfigError, match="wait"):
        EndpointRateLimitPolicy(limit="1/second", wait="yes")
    with pytest.raises(ConfigError, match="did you mean 'strategy'"):
        EndpointRateLimitPolicy(limit="1/second", stratgy="moving-window")


async def test_a_delaying_limit_on_the_async_runner_awaits_its_sleep() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    policy = limit(limit="1/second", wait=True, max_wait=2, sleep=sleep)

    async def works() -> str:
        return "ok"

    assert await acall([policy], works) == "ok"
    with pytest.raises(RateLimited):
        await acall([policy], works)
    assert waits and sum(waits) <= 2


async def test_redis_limits_are_shared(redis_url: str) -> None:
    namespace = uuid.uuid4().hex
    one = limit(limit="1/minute", storage=redis_url, namespace=namespace)
    other = limit(limit="1/minute", storage=redis_url, namespace=namespace)

    async def works() -> str:
        return "ok"

    assert await acall([one], works) == "ok"
    with pytest.raises(RateLimited):
        await acall([other], works)


# -- through kitmw.endpoint (the driver of another branch of issue 14) ------------------------------

needs_endpoint = pytest.mark.skipif(
    not callable(getattr(__import__("kitmw"), "endpoint", None)), reason="kitmw.endpoint has not landed here"
)


@needs_endpoint
def test_endpoint_retry_ends_with_its_own_error_when_its_breaker_opens(sleeps: list[float]) -> None:
    import kitmw

    calls: list[int] = []

    @kitmw.endpoint(
        f"pay-{uuid.uuid4().hex[:6]}",
        retry={"attempts": 5, "sleep": sleeps.append},
        breaker={"fail_max": 2, "reset_timeout": 60, "registry": CollectorRegistry()},
    )
    def pay() -> str:
        calls.append(1)
        raise ConnectionError("gateway down")

    with pytest.raises(ConnectionError):
        pay()
    assert len(calls) == 2 and len(sleeps) == 1  # the second failure opened it: no wait to be refused
    with pytest.raises(BreakerOpen):
        pay()


@needs_endpoint
async def test_endpoint_breakers_share_a_redis_state_by_name(redis_url: str) -> None:
    import kitmw

    name = f"pay-{uuid.uuid4().hex[:6]}"
    options = {"fail_max": 1, "reset_timeout": 60, "storage": redis_url}

    @kitmw.endpoint(name, breaker={**options, "registry": CollectorRegistry()})
    async def here() -> str:
        raise ConnectionError("down")

    @kitmw.endpoint(name, breaker={**options, "registry": CollectorRegistry()})
    async def elsewhere() -> str:  # the same endpoint in another process
        return "ok"

    with pytest.raises(ConnectionError):
        await here()
    with pytest.raises(BreakerOpen):
        await elsewhere()


@needs_endpoint
async def test_endpoint_waiting_rate_limit_gives_up_at_max_wait() -> None:
    import kitmw

    waits: list[float] = []

    @kitmw.endpoint(
        f"limited-{uuid.uuid4().hex[:6]}",
        ratelimit={"limit": "1/minute", "wait": True, "max_wait": 5, "sleep": waits.append},
    )
    async def limited() -> str:
        return "ok"

    assert await limited() == "ok"
    with pytest.raises(RateLimited):
        await limited()
    assert waits == []  # the slot is ~60 s away: more than max_wait, so no wait at all
