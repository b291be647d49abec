"""Counters for limits per key, in-process or across replicas: token buckets and running totals.

The two calls every limit needs (``RATE_LIMIT`` today; a key's requests and tokens per minute
and its credit budgets tomorrow):

    wait = await counters.take("rpm:<key>", capacity=30, per_second=0.5)   # 0.0: go
    spent = await counters.add("credits:day:<key>:2026-05-01", 1.25, ttl=86400 * 2)

:class:`LocalCounters` keeps them in this process (bounded; the single-machine default).
:class:`RedisCounters` keeps them in Redis, each call one round trip (a script for the bucket,
so that three replicas taking from one bucket at once take three tokens, never more), and
falls back to its own local counters while Redis is away.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis

from ki2api.shared.link import RedisLink, SharedUnavailable

_MAX_TRACKED = 4096

# KEYS: bucket. ARGV: capacity, per second, cost. Returns the seconds to wait, as text
# (0 when taken). The clock is Redis's own.
TAKE = """
local cap, rate, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or cap
local at = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= cost then tokens = tokens - cost else wait = (cost - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
  'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(cap / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


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


class RedisCounters:
    """Across replicas; this replica's own counters serve while Redis is away."""

    def __init__(self, link: RedisLink, local: LocalCounters | None = None) -> None:
        self.link = link
        self.local = local or LocalCounters()
        self._take = link.client.register_script(TAKE)

    async def take(
        self, bucket: str, capacity: float, per_second: float, cost: float = 1.0
    ) -> float:
        key = self.link.key("bucket", bucket)
        try:
            wait = await self.link.call(
                lambda c: self._take(keys=[key], args=[capacity, per_second, cost])
            )
        except SharedUnavailable:
            return self.local.take_now(bucket, capacity, per_second, cost)
        return float(wait)

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
