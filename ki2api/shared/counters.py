"""Counters for limits per key, in-process or across replicas: token buckets and running totals.

The two calls every limit needs (``RATE_LIMIT`` today; a key's requests and tokens per minute
and its credit budgets tomorrow):

    wait = await counters.take("rpm:<key>", capacity=30, per_second=0.5)   # 0.0: go
    spent = await counters.add("credits:day:<key>:2026-05-01", 1.25, ttl=86400 * 2)

:class:`LocalCounters` keeps them in this process (bounded; the single-machine default).
:class:`RedisCounters` keeps them in Redis, each call one round trip (a script for the bucket,
so that three replicas taking from one bucket at once take three tokens, never more; a large
bucket lends each replica a little credit to spend without a round trip), and falls back to
its own local counters while Redis is away.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from redis.asyncio import Redis

from ki2api.shared.link import RedisLink, SharedUnavailable

_MAX_TRACKED = 4096

# KEYS: bucket. ARGV: capacity, per second, cost, extra. Takes ``cost`` (or says how long
# to wait) and, while the bucket stays over half full, ``extra`` tokens more for the replica
# to spend later. Returns {wait as text, extra granted}. The clock is Redis's own.
TAKE = """
local cap, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local cost, extra = tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or cap
local at = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= cost then tokens = tokens - cost else wait = (cost - tokens) / rate end
local granted = 0
if wait == 0 and extra > 0 and tokens - extra >= cap / 2 then
  granted = extra
  tokens = tokens - extra
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
  'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(cap / rate * 1000) + 1000)
return {string.format('%.6f', wait), granted}
"""
# KEYS: bucket. ARGV: capacity, tokens. Puts back tokens a replica took and did not spend.
REFUND = """
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
if tokens then
  redis.call('HSET', KEYS[1], 'tokens',
    string.format('%.6f', math.min(tonumber(ARGV[1]), tokens + tonumber(ARGV[2]))))
end
return 1
"""
CREDIT_SHARE = 100  # a replica holds at most this fraction (1/n) of a bucket as credit ...
MAX_CREDIT = 256  # ... and at most this many tokens
CREDIT_IDLE = 2.0  # seconds unspent credit waits before it goes back


class Counters(Protocol):
    async def take(
        self, bucket: str, capacity: float, per_second: float, cost: float = 1.0
    ) -> float:
        """Take ``cost`` from a token bucket of ``capacity`` refilled at ``per_second``:
        0.0 when taken, else the seconds until it could be (nothing is taken then)."""
        ...

    async def add(self, counter: str, amount: float, ttl: float) -> float:
        """Add ``amount`` to a running total that ends ``ttl`` seconds after its first use;
        returns the total."""
        ...


class LocalCounters:
    """In this process only. Sans I/O: the clock is injectable."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # bucket -> (tokens, last update); least recently seen first, bounded.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._totals: OrderedDict[str, tuple[float, float]] = OrderedDict()  # -> (total, ends)

    def take_now(self, bucket: str, capacity: float, per_second: float, cost: float = 1.0) -> float:
        now = self._clock()
        tokens, updated = self._buckets.pop(bucket, (capacity, now))
        tokens = min(capacity, tokens + (now - updated) * per_second)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (cost - tokens) / per_second
        self._buckets[bucket] = (tokens, now)
        while len(self._buckets) > _MAX_TRACKED:
            self._buckets.popitem(last=False)
        return wait

    async def take(
        self, bucket: str, capacity: float, per_second: float, cost: float = 1.0
    ) -> float:
        return self.take_now(bucket, capacity, per_second, cost)

    async def add(self, counter: str, amount: float, ttl: float) -> float:
        now = self._clock()
        total, ends = self._totals.pop(counter, (0.0, now + ttl))
        if now >= ends:
            total, ends = 0.0, now + ttl
        total += amount
        self._totals[counter] = (total, ends)
        while len(self._totals) > _MAX_TRACKED:
            self._totals.popitem(last=False)
        return total


@dataclass(slots=True)
class _Credit:
    """Tokens this replica took from a shared bucket ahead of need."""

    capacity: float
    held: float = 0.0
    spent_at: float = 0.0
    topping: asyncio.Task[None] | None = None


class RedisCounters:
    """Across replicas; this replica's own counters serve while Redis is away.

    A bucket large enough (capacity of 100 or more) lends each replica a few tokens ahead
    (1% of it, at most 256, and only while it is over half full), so that most requests spend
    one here instead of waiting on a round trip; the credit is topped up in the background
    and what is not spent within two seconds goes back. A smaller bucket is asked every time:
    its count is exact whatever the number of replicas.
    """

    def __init__(self, link: RedisLink, local: LocalCounters | None = None) -> None:
        self.link = link
        self.local = local or LocalCounters()
        self._take = link.client.register_script(TAKE)
        self._refund = link.client.register_script(REFUND)
        self._credits: dict[str, _Credit] = {}
        link.on_tick(self.give_back_idle)

    async def take(
        self, bucket: str, capacity: float, per_second: float, cost: float = 1.0
    ) -> float:
        if not self.link.up:
            return self.local.take_now(bucket, capacity, per_second, cost)
        batch = min(MAX_CREDIT, int(capacity // CREDIT_SHARE))
        credit = self._credits.get(bucket) if batch else None
        if credit is not None and credit.held >= cost:
            credit.held -= cost
            credit.spent_at = time.monotonic()
            if credit.held < batch / 2:
                self._top_up(bucket, per_second, batch, credit)
            return 0.0
        try:
            wait, _ = await self._call(bucket, capacity, per_second, cost, 0)
        except SharedUnavailable:
            return self.local.take_now(bucket, capacity, per_second, cost)
        if batch and wait == 0:
            if credit is None:
                credit = self._credits[bucket] = _Credit(capacity)
                while len(self._credits) > _MAX_TRACKED:
                    self._credits.pop(next(iter(self._credits)))
            credit.spent_at = time.monotonic()
            self._top_up(bucket, per_second, batch, credit)
        return wait

    async def _call(
        self, bucket: str, capacity: float, per_second: float, cost: float, extra: int
    ) -> tuple[float, int]:
        key = self.link.key("bucket", bucket)
        args = [capacity, per_second, cost, extra]
        wait, granted = await self.link.call(lambda c: self._take(keys=[key], args=args))
        return float(wait), int(granted)

    def _top_up(self, bucket: str, per_second: float, batch: int, credit: _Credit) -> None:
        if credit.topping is not None and not credit.topping.done():
            return

        async def run() -> None:
            want = batch - int(credit.held)
            if want <= 0:
                return
            try:
                _, granted = await self._call(bucket, credit.capacity, per_second, 0, want)
            except SharedUnavailable:
                return
            credit.held += granted

        credit.topping = asyncio.get_running_loop().create_task(run())

    async def give_back_idle(self) -> None:
        """Every tick: credit not spent for a while goes back to its bucket."""
        now = time.monotonic()
        idle = [
            (bucket, credit)
            for bucket, credit in self._credits.items()
            if credit.held >= 1 and now - credit.spent_at > CREDIT_IDLE
        ]
        for bucket, credit in idle:
            tokens, credit.held = int(credit.held), credit.held - int(credit.held)
            await self.link.call(partial(self._give_back, bucket, credit.capacity, tokens))

    async def _give_back(self, bucket: str, capacity: float, tokens: int, client: Redis) -> None:
        await self._refund(keys=[self.link.key("bucket", bucket)], args=[capacity, tokens])

    async def add(self, counter: str, amount: float, ttl: float) -> float:
        key = self.link.key("total", counter)

        async def run(client: Redis) -> float:
            async with client.pipeline(transaction=True) as pipe:
                pipe.incrbyfloat(key, amount)
                pipe.expire(key, max(1, int(ttl)), nx=True)
                total, _ = await pipe.execute()
            return float(total)

        try:
            return await self.link.call(run)
        except SharedUnavailable:
            return await self.local.add(counter, amount, ttl)
