"""Requests in flight per account, counted across replicas (``MAX_CONCURRENT_PER_ACCOUNT``).

Each replica holds a *grant* of places per account, recorded in Redis
(``<prefix>:slots:<label>``, a hash of replica → places), and the grants of all replicas
never add up to more than the cap (one script grows a grant: it drops the grants of replicas
whose heartbeat ended, then gives what is free, up to a step). A request takes a place from
its replica's grant without asking Redis; only when the grant is used up does it ask for more
(one round trip), and when none is free it waits, asking again, within the queue timeout.

Grants follow the load: every second a replica trims its grant to the places in use plus one
step, and to the places in use alone while another replica waits for one (it leaves a
``…:want`` mark for two seconds). A replica that dies stops its heartbeat; ten seconds later
its grant is dropped by the next replica that asks, so its places come back.

With Redis away a place costs nothing here: each replica's own cap (the local semaphore in
:mod:`ki2api.pipeline.concurrency`) is the only bound meanwhile.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from ki2api.shared.link import RedisLink, SharedUnavailable

log = logging.getLogger("ki2api.shared")

WANT_MARK = 2000  # ms a waiting replica's mark lasts (renewed while it waits)

# KEYS: grants, replicas (heartbeats), want mark. ARGV: replica, cap, step.
# Grows this replica's grant by what is free (at most step); 0 (and the mark) when none is.
GROW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local grants = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #grants, 2 do
  local who = grants[i]
  local alive = redis.call('ZSCORE', KEYS[2], who)
  if who ~= ARGV[1] and (not alive or tonumber(alive) < now) then
    redis.call('HDEL', KEYS[1], who)
  else
    total = total + tonumber(grants[i + 1])
  end
end
local take = math.min(tonumber(ARGV[2]) - total, tonumber(ARGV[3]))
if take > 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], take)
  return take
end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[4])
return 0
"""
# KEYS: grants, want mark. ARGV: replica, in use, spare. This replica's grant becomes the
# places in use plus the spare (none while another replica waits), never less than in use.
TRIM = """
local want = redis.call('GET', KEYS[2])
local used = tonumber(ARGV[2])
local keep = used
if not want or want == ARGV[1] then keep = used + tonumber(ARGV[3]) end
local have = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if have > keep or have < used then
  if keep > 0 then redis.call('HSET', KEYS[1], ARGV[1], keep)
  else redis.call('HDEL', KEYS[1], ARGV[1]) end
  return keep
end
return have
"""


def _nothing() -> None:
    return None


@dataclass(slots=True)
class _Grant:
    limit: int
    granted: int = 0
    used: int = 0


class RedisSlots:
    """A ``SharedSlots`` (:mod:`ki2api.pipeline.concurrency`) over Redis."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self._grow = link.client.register_script(GROW)
        self._trim = link.client.register_script(TRIM)
        self._grants: dict[str, _Grant] = {}
        link.on_tick(self.trim)

    @staticmethod
    def step(limit: int) -> int:
        return max(1, math.ceil(limit / 4))

    async def take(self, label: str, limit: int) -> Callable[[], None] | None:
        """A place among all replicas' requests on ``label`` (the callable gives it back), or
        None when ``limit`` are taken. Redis away: a place that costs nothing."""
        if not self.link.up:
            return _nothing
        grant = self._grants.get(label)
        if grant is None:
            grant = self._grants[label] = _Grant(limit)
        grant.limit = limit
        if grant.used >= grant.granted:
            keys = [self._key(label), self.link.key("replicas"), self._key(label, "want")]
            args: list[str | int] = [self.link.replica, limit, self.step(limit), WANT_MARK]
            try:
                got = int(await self.link.call(lambda c: self._grow(keys=keys, args=args)))
            except SharedUnavailable:
                return _nothing
            if got <= 0:
                return None
            grant.granted += got
        grant.used += 1
        released = False

        def give_back() -> None:
            nonlocal released
            if not released:
                released = True
                grant.used -= 1

        return give_back

    def _key(self, label: str, *more: str) -> str:
        return self.link.key("slots", label, *more)

    async def trim(self) -> None:
        """Every tick: each grant to the places in use plus a step (in use alone while
        another replica waits); also puts back a grant Redis lost (restarted empty)."""
        grants = list(self._grants.items())
        if not grants:
            return

        async def run(client: Redis) -> list[int]:
            async with client.pipeline(transaction=False) as pipe:
                for label, grant in grants:
                    keys = [self._key(label), self._key(label, "want")]
                    args: list[str | int] = [
                        self.link.replica,
                        grant.used,
                        self.step(grant.limit),
                    ]
                    await self._trim(keys=keys, args=args, client=pipe)
                return [int(v) for v in await pipe.execute()]

        kept = await self.link.call(run)
        for (_, grant), value in zip(grants, kept, strict=True):
            grant.granted = value

    def held(self, label: str) -> int:
        grant = self._grants.get(label)
        return grant.used if grant is not None else 0

    async def aclose(self) -> None:
        """Give the grants back (the next replica to ask would drop them ten seconds later)."""
        if not self._grants or not self.link.up:
            return
        names = [self._key(label) for label in self._grants]

        async def run(client: Redis) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hdel(name, self.link.replica)
                await pipe.execute()

        try:
            await self.link.call(run)
        except SharedUnavailable:
            pass
