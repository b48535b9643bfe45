"""The retry policies: an ``around`` that calls the rest of the chain again.

Go kit's ``lb.Retry`` retries any error until a count or a timeout runs out. These
retry what :class:`~kitmw.retry.Retry` allows, wait with backoff and jitter (or as long
as ``Retry-After`` asks), stop at the deadline and when the budget is spent. Written
once as a generator, the same policy runs on the sync and the async drivers; the
client one (``kitmw.httpx``) and the one of ``kitmw.endpoint`` differ only in what may
be retried.

A refusal by a policy inside the retry (an open breaker) is never retried. Such a
policy can also say, before the wait, that the next attempt would be refused: it sets
``ex.state[GATE]`` to an object with ``refuses_retry(ex, delay, origins=None)`` (the
breaker does; balancing passes it the origins of its instances). The retry then ends
at once with this attempt's own outcome instead of waiting to be refused.
"""

from __future__ import annotations

import inspect
from collections.abc import Generator
from typing import Any, ClassVar

from ..chain import CALL, Call, Sleep
from ..concerns import check_options
from ..errors import ConfigError, Rejected
from ..exchange import Exchange, Policy
from ._retry import Retry

__all__ = ["GATE", "ClientRetryPolicy", "EndpointRetryPolicy"]

#: ``ex.state`` key of the object that can tell whether the next attempt would be
#: refused: ``gate.refuses_retry(ex, delay, origins=None) -> str | None`` (the reason).
GATE = "kitmw.retry.gate"

_Ops = Generator["Call | Sleep", Any, Any]


class _RetryPolicy(Policy):
    """What both sides share: the loop, the waits, the deadline and the budget."""

    __slots__ = ("_count", "retry")

    name: ClassVar[str] = "retry"
    shared_options: ClassVar[tuple[str, ...]] = ("registry",)

    def __init__(self, *, retry: Retry | None = None, registry: Any = None, **options: Any) -> None:
        if retry is None:
            check_options("retry", Retry, options, extra=("registry", "retry"))
            retry = Retry(**options)
        elif not isinstance(retry, Retry):
            raise ConfigError(f"retry: expected a kitmw.retry.Retry, got {retry!r}")
        elif options:
            raise ConfigError(
                f"retry: give a Retry object or its options, not both (got retry= and {', '.join(options)})"
            )
        self.retry = retry
        self._count = self._counter(registry)

    @classmethod
    def options_from(cls, value: Any) -> dict[str, Any] | None:
        """The options a bare :class:`Retry` stands for (``Transport(retry=Retry(...))``)."""
        return {"retry": value} if isinstance(value, Retry) else None

    def _counter(self, registry: Any) -> Any:
        return None

    def _applies(self, ex: Exchange) -> bool:
        return True

    def _retries(self, ex: Exchange, exc: Exception) -> bool:
        retry_on = self.retry.retry_on
        return True if retry_on is None else bool(retry_on(exc))

    def around(self, ex: Exchange) -> _Ops:
        if not self._applies(ex):
            return (yield CALL)
        retry = self.retry
        if retry.budget is not None:
            retry.budget.deposit()
        own: float | None = None
        if retry.deadline is not None:
            own = retry.clock() + retry.deadline
            until = ex.deadline_clock() + retry.deadline
            if ex.deadline is None or until < ex.deadline:
                ex.deadline = until  # the drivers fit each attempt in what remains
        attempt = 0
        last: Exception | None = None  # the previous attempt's error
        try:
            while True:
                attempt += 1
                refused = False
                try:
                    result = yield CALL
                except Rejected:
                    if last is None:
                        raise
                    refused = True
                except Exception as exc:
                    if attempt >= retry.attempts or not self._retries(ex, exc):
                        raise
                    delay = retry.backoff(attempt)
                    why = _refused_ahead(ex, delay)
                    if why is not None:
                        _not_retried(exc, why)
                        raise
                    if not self._may_retry(ex, delay, own):
                        raise
                    last = exc
                    yield from self._wait(delay)
                    continue
                if refused:  # opened meanwhile, by other calls: end with this call's own error
                    assert last is not None
                    _not_retried(last, "the circuit breaker is open")
                    raise last  # outside the handler: its context stays its own
                last = None
                if attempt < retry.attempts and ex.status in retry.statuses:
                    delay_or_none = retry.delay(attempt, ex.response_header("retry-after"))
                    if (
                        delay_or_none is not None
                        and _refused_ahead(ex, delay_or_none) is None
                        and self._may_retry(ex, delay_or_none, own)
                    ):
                        yield from self._wait(delay_or_none)
                        continue
                return result
        finally:
            # The frame of a generator that raised joins the traceback: an earlier
            # attempt's error kept here would hold that traceback, and it this frame.
            last = None

    def _may_retry(self, ex: Exchange, delay: float, own: float | None) -> bool:
        """The retry fits in the deadlines and the budget has one (then it is counted)."""
        retry = self.retry
        if own is not None and retry.clock() + delay >= own:
            return False
        remaining = ex.remaining
        if remaining is not None and delay >= remaining:
            return False
        if retry.budget is not None and not retry.budget.withdraw():
            return False
        if self._count is not None:
            self._count(ex)
        return True

    def _wait(self, seconds: float) -> _Ops:
        sleep = self.retry.sleep
        if sleep is None:
            yield Sleep(seconds)
            return
        value = sleep(seconds)
        if inspect.isawaitable(value):  # an async sleep: the driver waits instead
            close = getattr(value, "close", None)
            if close is not None:
                close()
            yield Sleep(seconds)


def _refused_ahead(ex: Exchange, delay: float) -> str | None:
    gate = ex.state.get(GATE)
    return None if gate is None else gate.refuses_retry(ex, delay)  # type: ignore[no-any-return]


def _not_retried(exc: BaseException, why: str) -> None:
    """Say on the error itself why it was not retried (Python >= 3.11 shows notes)."""
    add_note = getattr(exc, "add_note", None)
    if add_note is not None:
        add_note(f"kitmw: not retried: {why}")


class ClientRetryPolicy(_RetryPolicy):
    """Retries outgoing httpx calls (``kitmw.httpx`` transports' ``retry`` option).

    Idempotent methods only (``methods``), and only a request whose body can be sent
    again; after a connection error, a timeout, a connection closed without a response,
    or a 429/502/503/504 (``statuses``). Each retried response is closed first. Retries
    are counted in ``http_client_retries_total{method,host}`` when a metrics registry is
    given or lent by the transport's metrics.

    :param retry: a ready :class:`~kitmw.retry.Retry`; or its options (``attempts``,
        ``methods``, ``statuses``, ``backoff_base``, ``deadline``, ``budget``, ``retry_on``…).
    :param registry: prometheus-client registry for the retry counter.
    """

    __slots__ = ()

    def _counter(self, registry: Any) -> Any:
        if registry is None:
            return None
        from ..metrics import instruments

        counter = instruments(registry).client_retries

        def count(ex: Exchange) -> None:
            counter.labels(ex.method, ex.host).inc()

        return count

    def _applies(self, ex: Exchange) -> bool:
        return ex.method in self.retry.methods and bool(getattr(ex, "replayable", True))

    def _retries(self, ex: Exchange, exc: Exception) -> bool:
        if self.retry.retry_on is not None:
            return bool(self.retry.retry_on(exc))
        errors = getattr(ex, "retryable_errors", None)
        return True if errors is None else isinstance(exc, errors)


class EndpointRetryPolicy(_RetryPolicy):
    """Retries a :func:`kitmw.endpoint` function that raised (``retry`` option there).

    Any exception is retried unless ``retry_on`` (a predicate, an exception class or a
    tuple of them) says otherwise; a refusal by kitmw's own policies (``BreakerOpen``,
    ``RateLimited``…) never is. Attempts, backoff, ``deadline`` and the budget work as
    on the client; ``methods`` and ``statuses`` do not apply.

    :param retry: a ready :class:`~kitmw.retry.Retry`; or its options.
    :param registry: accepted for symmetry (endpoint retries are not counted apart).
    """

    __slots__ = ()
