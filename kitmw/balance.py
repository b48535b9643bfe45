"""Client load balancing over a static list of instances of one service (Go kit ``sd/lb``).

:class:`Balancer` says in which order to try the instances (decision logic only).
:class:`InstancesPolicy` is the ``instances`` concern of the httpx transports: an
``around`` that points each attempt at an instance and, when the breaker inside it
refuses that instance (a :class:`~kitmw.errors.BreakerOpen` thrown back), tries the
next one. That is the health-aware balancing Go kit never built (PR #67): an instance
that is down opens its own breaker and stops receiving traffic until it probes
healthy. Inside a retry, each attempt is balanced again and goes to another instance
first.
"""

from __future__ import annotations

import itertools
import random as _random
from collections.abc import Callable, Generator, Iterable
from typing import Any, ClassVar, Literal, NamedTuple, TypedDict
from urllib.parse import urlsplit

from .chain import CALL, Call, Sleep
from .errors import ConfigError, Rejected
from .exchange import Exchange, Policy
from .retry import GATE

__all__ = [
    "STRATEGIES",
    "Balancer",
    "Instance",
    "InstancesOptions",
    "InstancesPolicy",
    "origin_key",
    "parse_instance",
]

STRATEGIES = ("round_robin", "random")
#: The ``balance`` names (:data:`STRATEGIES`).
Strategy = Literal["round_robin", "random"]
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_key(scheme: str, host: str, port: int | None) -> str:
    """``scheme://host:port`` with the default port filled in (breaker and limit key)."""
    if port is None:
        port = _DEFAULT_PORTS.get(scheme, 0)
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


class Instance(NamedTuple):
    """One instance: its origin parts, the ``Host`` header for it, and its key."""

    scheme: str
    host: str
    port: int | None  # None: the scheme's default port
    netloc: str  # the Host header httpx would send
    key: str  # origin_key()


def parse_instance(url: str) -> Instance:
    if not isinstance(url, str):
        url = str(url)  # an httpx.URL
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"instances: invalid URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(f"instances: expected http(s)://host[:port] base URLs, got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ConfigError(
            f"instances: expected an origin (scheme, host, port) without path, query or user, got {url!r}"
        )
    host = parts.hostname.lower()
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    shown = f"[{host}]" if ":" in host else host
    netloc = shown if port is None else f"{shown}:{port}"
    return Instance(scheme, host, port, netloc, origin_key(scheme, host, port))


class Balancer:
    """Order in which to try the instances of one service.

    :param instances: base URLs (origins) of the instances.
    :param strategy: ``"round_robin"`` (default) or ``"random"``.
    """

    __slots__ = ("_counter", "_index", "_random", "instances", "strategy")

    def __init__(
        self,
        instances: Iterable[str],
        strategy: str = "round_robin",
        *,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if isinstance(instances, str):
            raise ConfigError("instances: expected a list of base URLs, got a single string")
        if strategy not in STRATEGIES:
            raise ConfigError(f"balance: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
        parsed = tuple(parse_instance(u) for u in instances)
        if not parsed:
            raise ConfigError("instances: expected at least one base URL")
        index: dict[str, int] = {}
        for i, inst in enumerate(parsed):
            if inst.key in index:
                raise ConfigError(f"instances: {inst.key} is listed twice")
            index[inst.key] = i
        self.instances = parsed
        self.strategy = strategy
        self._index = index
        self._counter = itertools.count()
        self._random = random

    def index_of(self, key: str) -> int | None:
        """Index of the instance with origin ``key``, or ``None`` if it is not listed."""
        return self._index.get(key)

    def order(self, avoid: int | None = None) -> list[int]:
        """Indices to try, best first; ``avoid`` (the instance a retry comes from) goes
        last when there is another one."""
        n = len(self.instances)
        # itertools.count is atomic under the GIL: no lock for round robin
        start = int(self._random() * n) % n if self.strategy == "random" else next(self._counter) % n
        if start == avoid and n > 1:
            start = (start + 1) % n
        order = [(start + i) % n for i in range(n)]
        if avoid is not None and n > 1 and order[-1] != avoid:
            order.remove(avoid)
            order.append(avoid)
        return order


#: ``ex.state`` key: index of the instance the last attempt went to (a retry avoids it).
_LAST = "kitmw.instances.last"


class _Instances(TypedDict):
    instances: Iterable[str]  # required (a total base keeps __required_keys__ right at runtime)


class InstancesOptions(_Instances, total=False):
    """Options of :class:`InstancesPolicy` (a transport's ``instances=``; a bare list is
    ``instances``), for editors and type checkers (tests/test_options.py keeps them equal
    to its keyword arguments)."""

    balance: Strategy
    random: Callable[[], float]


class InstancesPolicy(Policy):
    """Balances calls over the instances of one service (the transports' ``instances``).

    A request whose URL has the origin of a listed instance is sent to the instance the
    balancer picks: the origin is replaced, path and query kept, and the ``Host``
    header follows unless it was set to something else. Other origins pass through.
    An instance whose breaker refuses the call is skipped; when every one refuses, the
    last refusal is raised. Inside a retry, a retry goes to another instance first.

    :param instances: base URLs (origins) of the instances.
    :param balance: ``"round_robin"`` (default) or ``"random"``.
    :param random: ``() -> float`` in [0, 1), injectable for tests.
    """

    __slots__ = ("_origins", "balancer")

    name: ClassVar[str] = "instances"

    def __init__(
        self,
        *,
        instances: Iterable[str],
        balance: str = "round_robin",
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.balancer = Balancer(instances, balance, random=random)
        self._origins = tuple(inst.key for inst in self.balancer.instances)

    def around(self, ex: Exchange) -> Generator[Call | Sleep, Any, Any]:
        balancer = self.balancer
        if balancer.index_of(ex.scheme + "://" + ex.host) is None:
            return (yield CALL)  # another origin: not balanced
        state = ex.state
        point = ex.set_origin  # type: ignore[attr-defined]
        refused: Rejected | None = None
        try:
            for i in balancer.order(state.get(_LAST)):
                inst = balancer.instances[i]
                point(inst.scheme, inst.host, inst.port)
                state[_LAST] = i
                try:
                    return (yield CALL)
                except Rejected as exc:
                    refused = exc  # this instance's breaker is open: try the next one
            assert refused is not None
            raise refused
        finally:
            gate = state.get(GATE)
            if gate is not None and type(gate) is not _EveryInstance:
                # The retry asks whether its next attempt would be refused: by every instance.
                state[GATE] = _EveryInstance(gate, self._origins)


class _EveryInstance:
    """The retry's gate over balancing: the next attempt may go to any instance."""

    __slots__ = ("gate", "origins")

    def __init__(self, gate: Any, origins: tuple[str, ...]) -> None:
        self.gate = gate
        self.origins = origins

    def refuses_retry(self, ex: Exchange, delay: float, origins: Any = None) -> str | None:
        return self.gate.refuses_retry(ex, delay, self.origins)  # type: ignore[no-any-return]
