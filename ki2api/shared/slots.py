"""Requests in flight per account, counted across replicas (``MAX_CONCURRENT_PER_ACCOUNT``).

Each account has a sorted set ``<prefix>:slots:<label>`` of the places taken, each scored with
the end of its lease (Redis's own clock). Taking a place is one script: drop the expired,
count, add if under the cap. The replica that holds places renews their leases every second;
a replica that dies stops renewing, and its places expire after ``SLOT_LEASE`` seconds.
Giving places back is batched: the places freed in one turn of the event loop go in one
round trip, after the answer, off the request's path.

With Redis away a place costs nothing here: each replica's own cap (the local semaphore in
:mod:`ki2api.pipeline.concurrency`) is the only bound meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from functools import partial

from redis.asyncio import Redis

from ki2api.shared.link import RedisLink, SharedUnavailable

log = logging.getLogger("ki2api.shared")

SLOT_LEASE = 15.0  # seconds a place outlives the last renewal of a replica that died

# KEYS: the set. ARGV: cap, lease ms, member. 1 if taken.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# KEYS: the set. ARGV: lease ms, members... Extends the leases of those still there.
RENEW = """
local t = redis.call('TIME')
local ends = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', ends, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


def _nothing() -> None:
    return None


class RedisSlots:
    """A ``SharedSlots`` (:mod:`ki2api.pipeline.concurrency`) over Redis."""

    def __init__(self, link: RedisLink, *, lease: float = SLOT_LEASE) -> None:
        self.link = link
        self.lease_ms = int(lease * 1000)
        self._take = link.client.register_script(TAKE)
        self._renew = link.client.register_script(RENEW)
        self._ids = itertools.count(1)
        self._live: dict[str, set[str]] = {}  # label -> places held here
        self._freed: dict[str, list[str]] = {}  # given back, not yet removed in Redis
        self._flushing: asyncio.Task[None] | None = None
        link.on_tick(self.renew)

    async def take(self, label: str, limit: int) -> Callable[[], None] | None:
        """A place among all replicas' requests on ``label`` (the callable gives it back), or
        None when ``limit`` are taken. Redis away: a place that costs nothing."""
        if not self.link.up:
            return _nothing
        member = f"{self.link.replica}:{next(self._ids)}"
        key = self.link.key("slots", label)
        try:
            taken = await self.link.call(
                lambda c: self._take(keys=[key], args=[limit, self.lease_ms, member])
            )
        except SharedUnavailable:
            return _nothing
        if not taken:
            return None
        self._live.setdefault(label, set()).add(member)
        return lambda: self._give(label, member)

    def _give(self, label: str, member: str) -> None:
        live = self._live.get(label)
        if live is None or member not in live:
            return  # given back already
        live.discard(member)
        if not self.link.up:
            return  # its lease ends by itself
        self._freed.setdefault(label, []).append(member)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._freed:
            freed, self._freed = self._freed, {}
            try:
                await self.link.call(partial(_remove, link=self.link, freed=freed))
            except SharedUnavailable:
                return

    async def renew(self) -> None:
        held = {label: sorted(members) for label, members in self._live.items() if members}
        if not held:
            return

        async def run(client: Redis) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for label, members in held.items():
                    key = self.link.key("slots", label)
                    await self._renew(keys=[key], args=[self.lease_ms, *members], client=pipe)
                await pipe.execute()

        await self.link.call(run)

    def held(self, label: str) -> int:
        return len(self._live.get(label, ()))

    async def aclose(self) -> None:
        for members in self._live.values():
            members.clear()
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)


async def _remove(client: Redis, link: RedisLink, freed: dict[str, list[str]]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for label, members in freed.items():
            pipe.zrem(link.key("slots", label), *members)
        await pipe.execute()
