"""Usage counters per day, client key and account: what each finished request spent.

    usage.add(UsageRow(day="2026-05-01", key="alice", account="main", requests=1,
                       input_tokens=812, output_tokens=95))       # never waits
    rows = await usage.totals("2026-05-01")

:class:`MemoryUsage` counts in this process (the single-machine default). :class:`RedisUsage`
counts in Redis (one hash per day, ``<prefix>:usage:<day>``, a field per key, account and
counter), so the counts outlive any replica: the rows a request adds are sent right after it
ends, together with those of other requests that ended in the same turn of the event loop
(one round trip, one script); while Redis is away they wait in memory and go when it returns.
A batch whose answer was lost is sent again under its id, and Redis adds it only once.

A durable store (a ``UsageStore``: the SQLite store of client keys) takes them over with
:meth:`RedisUsage.drain_to`: one replica at a time (a lock) moves each day's counters out of
Redis and into the store, so nothing is counted twice and nothing is lost if it dies midway
(the counters it took wait under ``…:draining`` and go first on the next drain).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Protocol

from redis.asyncio import Redis

from ki2api.shared.link import RedisLink, SharedUnavailable, as_bytes

log = logging.getLogger("ki2api.shared")

COUNTERS = ("requests", "errors", "input_tokens", "output_tokens")
_SEP = "\x1f"  # between key, account and counter in a hash field: in no name
USAGE_TTL = 400 * 86400  # a day's counters not drained into a store are kept this long

# KEYS: the batch's marker. ARGV: batch id, ttl, then (hash, field, amount) triples. Adds the
# batch once: a batch sent again after a lost answer finds its marker and adds nothing.
ADD = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 86400) then return 0 end
for i = 3, #ARGV, 3 do
  redis.call('HINCRBY', ARGV[i], ARGV[i + 1], ARGV[i + 2])
  redis.call('EXPIRE', ARGV[i], ARGV[2])
end
return 1
"""


@dataclass(frozen=True, slots=True)
class UsageRow:
    day: str  # YYYY-MM-DD, UTC
    key: str  # the client key's name ("" for the operator's API_KEY)
    account: str
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}


class UsageSink(Protocol):
    def add(self, row: UsageRow) -> None:
        """Count ``row`` (never waits; the counting may finish after the call)."""
        ...


class UsageStore(Protocol):
    """Where counters end up for good (the client-keys store)."""

    async def add_usage(self, rows: Sequence[UsageRow]) -> None: ...


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def merge(rows: Iterable[UsageRow]) -> list[UsageRow]:
    """Rows summed by (day, key, account)."""
    totals: dict[tuple[str, str, str], dict[str, int]] = {}
    for row in rows:
        counts = totals.setdefault((row.day, row.key, row.account), dict.fromkeys(COUNTERS, 0))
        for name, value in row.counts().items():
            counts[name] += value
    return [UsageRow(day, key, account, **c) for (day, key, account), c in totals.items()]


class MemoryUsage:
    def __init__(self) -> None:
        self._rows: list[UsageRow] = []

    def add(self, row: UsageRow) -> None:
        self._rows.append(row)
        if len(self._rows) > 1024:
            self._rows = merge(self._rows)

    async def totals(self, day: str) -> list[UsageRow]:
        return [row for row in merge(self._rows) if row.day == day]


class RedisUsage:
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self._pending: dict[tuple[str, str, str], dict[str, int]] = {}
        # Batches sent without an answer (Redis lost meanwhile): sent again as they were, under
        # the same id, which Redis remembers, so a batch it did take is not counted twice.
        self._unsent: list[tuple[str, dict[tuple[str, str, str], dict[str, int]]]] = []
        self._ids = itertools.count(1)
        self._sending: asyncio.Task[None] | None = None
        self._one_at_a_time = asyncio.Lock()  # the sender and the reconnect hook
        self._add = link.client.register_script(ADD)
        link.on_reconnect(self.flush)

    def add(self, row: UsageRow) -> None:
        counts = self._pending.setdefault(
            (row.day, row.key, row.account), dict.fromkeys(COUNTERS, 0)
        )
        for name, value in row.counts().items():
            counts[name] += value
        if self.link.up and (self._sending is None or self._sending.done()):
            self._sending = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        while (self._pending or self._unsent) and self.link.up:
            try:
                await self.flush()
            except SharedUnavailable:
                return

    def pending(self) -> int:
        """Key/account pairs counted here and not yet in Redis (while it is away)."""
        return len(self._pending) + sum(len(batch) for _, batch in self._unsent)

    async def flush(self) -> None:
        """Send what was counted here (exactly once); kept for the next try if Redis does not
        answer."""
        async with self._one_at_a_time:
            if self._pending:
                batch, self._pending = self._pending, {}
                self._unsent.append((f"{self.link.replica}:{next(self._ids)}", batch))
            while self._unsent:
                batch_id, batch = self._unsent[0]
                await self.link.call(partial(self._send_batch, batch_id, batch))
                self._unsent.pop(0)

    async def _send_batch(
        self, batch_id: str, batch: dict[tuple[str, str, str], dict[str, int]], client: Redis
    ) -> None:
        args: list[str | int] = [batch_id, USAGE_TTL]
        for (day, key, account), counts in batch.items():
            hash_key = self.link.key("usage", day)
            for name, value in counts.items():
                if value:
                    args += [hash_key, _SEP.join((key, account, name)), value]
        marker = self.link.key("usage", "batch", batch_id)
        await self._add(keys=[marker], args=args, client=client)

    async def totals(self, day: str) -> list[UsageRow]:
        """The day's counters in Redis (those not drained into a store yet)."""
        hash_key = self.link.key("usage", day)
        raw = await self.link.call(lambda c: c.hgetall(hash_key))
        return _rows(day, as_bytes(raw))

    async def drain_to(self, store: UsageStore, days: Sequence[str]) -> int:
        """Move ``days``' counters from Redis into ``store`` (one replica at a time); the
        number of rows moved. Counters a failed store did not take wait for the next drain."""
        lock = self.link.key("usage", "drain-lock")
        got = await self.link.call(lambda c: c.set(lock, self.link.replica, nx=True, px=60_000))
        if not got:
            return 0
        moved = 0
        try:
            for day in days:
                source = self.link.key("usage", day)
                taken = f"{source}:draining"
                raw = await self.link.call(partial(_take_day, source=source, taken=taken))
                if not raw:
                    continue
                rows = _rows(day, raw)
                await store.add_usage(rows)
                await self.link.call(partial(_delete, key=taken))
                moved += len(rows)
        finally:
            await self.link.call(lambda c: c.delete(lock))
        return moved


async def _take_day(client: Redis, *, source: str, taken: str) -> dict[bytes, bytes]:
    """The day's counters, renamed out of the way of new ones (a drain that died midway left
    its own under ``taken``: those first)."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.exists(source)
        pipe.hgetall(taken)
        exists, left = await pipe.execute()
    if left:
        return as_bytes(left)
    if not exists:
        return {}
    await client.rename(source, taken)
    return as_bytes(await client.hgetall(taken))


async def _delete(client: Redis, *, key: str) -> None:
    await client.delete(key)


def _rows(day: str, raw: dict[bytes, bytes]) -> list[UsageRow]:
    by: dict[tuple[str, str], dict[str, int]] = {}
    for field_name, value in raw.items():
        parts = field_name.decode().split(_SEP)
        if len(parts) != 3 or parts[2] not in COUNTERS:
            continue
        counts = by.setdefault((parts[0], parts[1]), dict.fromkeys(COUNTERS, 0))
        counts[parts[2]] += int(value)
    return [UsageRow(day, key, account, **counts) for (key, account), counts in sorted(by.items())]
