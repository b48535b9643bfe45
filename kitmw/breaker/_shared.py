"""Breaker state shared through Redis: one hash per breaker name, leased half-open probes.

Layout (the ``{name}`` hash tag keeps every key of one breaker in one Redis Cluster slot)::

    kitmw:breaker:{name}            hash: state, fails, successes, opened_at
    kitmw:breaker:{name}:probe:<i>  a half-open trial lease (SET NX PX), i = 1..half_open_max

Every write is one Lua script that checks the shared state before changing it and
returns the resulting snapshot, so a process always adopts what Redis decided. A
missing hash reads as "closed, no failures": nothing is initialised when a breaker is
built, so a process joining the fleet never resets the shared state (pybreaker #26).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = ["RedisClients", "SharedState", "Snapshot", "parse_snapshot"]

_FIELDS = ("state", "fails", "successes", "opened_at")

_SNAP = """
local function snap()
  return redis.call('HMGET', KEYS[1], 'state', 'fails', 'successes', 'opened_at')
end
"""

_SCRIPTS = {
    # A failure seen while closed: counted only if the shared breaker is closed too.
    "fail": _SNAP
    + """
local st = redis.call('HGET', KEYS[1], 'state')
if not st or st == 'closed' then redis.call('HINCRBY', KEYS[1], 'fails', 1) end
return snap()
""",
    # A success while closed resets the consecutive-failure count.
    "reset": _SNAP
    + """
local st = redis.call('HGET', KEYS[1], 'state')
if (not st or st == 'closed') and redis.call('HEXISTS', KEYS[1], 'fails') == 1 then
  redis.call('HSET', KEYS[1], 'fails', 0)
end
return snap()
""",
    # A successful half-open trial.
    "trial_success": _SNAP
    + """
if redis.call('HGET', KEYS[1], 'state') == 'half-open' then
  redis.call('HINCRBY', KEYS[1], 'successes', 1)
end
return snap()
""",
    # Open (from closed, or a failed trial); an already open breaker keeps its timestamp.
    "open": _SNAP
    + """
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[1], 'successes', 0)
end
return snap()
""",
    # Close after enough successful trials.
    "close": _SNAP
    + """
if redis.call('HGET', KEYS[1], 'state') == 'half-open' then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'fails', 0, 'successes', 0)
  redis.call('HDEL', KEYS[1], 'opened_at')
end
return snap()
""",
    # Lease one of ARGV[3] trial slots. Returns {code, snapshot...}: code > 0 is the slot
    # taken, 0 means refused (still open, or every slot is leased), -1 means closed.
    "lease": _SNAP
    + """
local st = redis.call('HGET', KEYS[1], 'state')
local code = 0
if not st or st == 'closed' then
  code = -1
else
  local ready = true
  if st == 'open' then
    local at = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0') or 0
    if tonumber(ARGV[4]) < at + tonumber(ARGV[5]) then ready = false end
  end
  if ready then
    for i = 1, tonumber(ARGV[3]) do
      if redis.call('SET', KEYS[2] .. i, ARGV[1], 'NX', 'PX', ARGV[2]) then
        code = i
        if st == 'open' then
          redis.call('HSET', KEYS[1], 'state', 'half-open', 'successes', 0)
        end
        break
      end
    end
  end
end
local s = snap()
return {code, s[1], s[2], s[3], s[4]}
""",
    # Give back whatever slot this token holds (compare and delete).
    "unlease": """
local freed = 0
for i = 1, tonumber(ARGV[2]) do
  if redis.call('GET', KEYS[1] .. i) == ARGV[1] then
    redis.call('DEL', KEYS[1] .. i)
    freed = freed + 1
  end
end
return freed
""",
}


class Snapshot(NamedTuple):
    """The shared state as one process last saw it."""

    state: str
    fails: int
    successes: int
    opened_at: float


def _text(value: Any) -> str:
    if value is None or value is False:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_snapshot(values: Sequence[Any]) -> Snapshot:
    """Turn an ``HMGET`` reply into a :class:`Snapshot`; missing fields mean closed/zero."""
    state = _text(values[0]) or "closed"
    if state not in ("closed", "open", "half-open"):
        state = "closed"
    try:
        fails = int(_text(values[1]) or 0)
        successes = int(_text(values[2]) or 0)
        opened_at = float(_text(values[3]) or 0.0)
    except ValueError:  # a foreign writer: read as a fresh breaker rather than crash
        fails, successes, opened_at = 0, 0, 0.0
    return Snapshot(state, fails, successes, opened_at)


class RedisClients:
    """The Redis clients of one URL: a sync one (threads) and an async one per event loop.

    Shared by every breaker of one server policy (one per route), so a service with many
    routes holds one connection pool, not one per route. redis-py's asyncio connections
    belong to the loop that opened them, and one breaker may serve several loops (uvicorn
    workers in threads, test loops). Closing is idempotent; a closed client is reopened
    on next use.
    """

    __slots__ = ("_aclients", "_lock", "_sync", "_sync_scripts", "timeout", "url")

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._lock = threading.Lock()
        self._sync: Any = None
        self._sync_scripts: dict[str, Any] = {}
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, dict[str, Any]]] = (
            weakref.WeakKeyDictionary()
        )

    def sync(self) -> tuple[Any, dict[str, Any]]:
        """The sync client and its registered scripts."""
        client = self._sync
        if client is None:
            import redis

            with self._lock:  # one pool for every thread
                if self._sync is None:
                    self._sync_scripts = {}
                    self._sync = redis.Redis.from_url(
                        self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
                    )
                client = self._sync
        return client, self._sync_scripts

    def aclient(self) -> tuple[Any, dict[str, Any]]:
        """The async client of the running loop and its registered scripts."""
        loop = asyncio.get_running_loop()
        found = self._aclients.get(loop)
        if found is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
            )
            found = self._aclients[loop] = (client, {})
        return found

    def close(self) -> None:
        with self._lock:
            client, self._sync = self._sync, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the async client of the running loop (and the sync one)."""
        self.close()
        found = self._aclients.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found[0].aclose()


class SharedState:
    """Runs the scripts above for one breaker name, on :class:`RedisClients`."""

    __slots__ = ("clients", "key", "probe", "slots")

    def __init__(
        self, url: str, name: str, *, slots: int, timeout: float, clients: RedisClients | None = None
    ) -> None:
        self.key = f"kitmw:breaker:{{{name}}}"
        self.probe = f"{self.key}:probe:"
        self.slots = slots
        self.clients = clients if clients is not None else RedisClients(url, timeout=timeout)

    def _keys_args(self, op: tuple[Any, ...]) -> tuple[list[str], list[Any]]:
        kind = op[0]
        if kind == "lease":  # ("lease", token, ttl_ms, now, reset_timeout)
            return [self.key, self.probe], [op[1], op[2], self.slots, repr(op[3]), repr(op[4])]
        if kind == "unlease":  # ("unlease", token)
            return [self.probe], [op[1], self.slots]
        if kind == "open":  # ("open", opened_at)
            return [self.key], [repr(op[1])]
        return [self.key], []

    # -- sync (threads) --------------------------------------------------------------------

    def run(self, op: tuple[Any, ...]) -> Any:
        """Run ``op`` (``("refresh",)`` or a script name and its arguments); may raise."""
        client, scripts = self.clients.sync()
        if op[0] == "refresh":
            return client.hmget(self.key, _FIELDS)
        script = scripts.get(op[0])
        if script is None:
            script = scripts.setdefault(op[0], client.register_script(_SCRIPTS[op[0]]))
        keys, args = self._keys_args(op)
        return script(keys=keys, args=args)

    # -- async (asyncio) -------------------------------------------------------------------

    async def arun(self, op: tuple[Any, ...]) -> Any:
        """Async twin of :meth:`run`."""
        client, scripts = self.clients.aclient()
        if op[0] == "refresh":
            return await client.hmget(self.key, _FIELDS)
        script = scripts.get(op[0])
        if script is None:
            script = scripts[op[0]] = client.register_script(_SCRIPTS[op[0]])
        keys, args = self._keys_args(op)
        return await script(keys=keys, args=args)

    def close(self) -> None:
        self.clients.close()

    async def aclose(self) -> None:
        await self.clients.aclose()
