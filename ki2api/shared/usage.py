"""Usage counters per day, client key and account: what each finished request spent.

    usage.add(UsageRow(day="2026-05-01", key="alice", account="main", requests=1,
                       input_tokens=812, output_tokens=95))       # never waits
    rows = await usage.totals("2026-05-01")

:class:`MemoryUsage` counts in this process (the single-machine default). :class:`RedisUsage`
counts in Redis (one hash per day, ``<prefix>:usage:<day>``, a field per key, account and
counter), so the counts outlive any replica: the rows a request adds are sent 5 ms after it
ends, together with those of other requests that ended meanwhile (one round trip, one
script); while Redis is away they wait in memory and go when it returns.
A batch whose answer was lost is sent again under its number, and Redis adds it only once
(it keeps the last number it took from each sender: one key per replica, not one per batch).
A row may carry increments of other counters (a client key's credits spent this day and
month, its tokens-per-minute debt: :mod:`ki2api.shared.keystore`), added in the same batch,
exactly once too.

A durable store (a ``UsageStore``: the SQLite store of client keys) takes them over with
:meth:`RedisUsage.drain_to`: one replica at a time (a lock) moves each day's counters out of
Redis and into the store, so nothing is counted twice and nothing is lost if it dies midway
(the counters it took wait under ``…:draining`` and go first on the next drain).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from redis.asyncio import Redis

from ki2api.shared.link import RedisLink, SharedUnavailable, as_bytes
from ki2api.store.records import USAGE_COLUMNS

log = logging.getLogger("ki2api.shared")

COUNTERS = USAGE_COLUMNS  # the stored usage's columns (ki2api.store), in its order
FRACTIONAL = frozenset({"credits", "credits_estimated"})  # the others are whole numbers
_SEP = "\x1f"  # between key, account and counter in a hash field: in no name
USAGE_TTL = 400 * 86400  # a day's counters not drained into a store are kept this long
# Seconds between an answer's end and its batch's sending: the next request's wait for Kiro,
# where the event loop is idle, rather than the moment it arrives (and more rows a batch).
SEND_DELAY = 0.005
SENDER_TTL = 30 * 86400  # a sender's last batch number: longer than any outage it survives

# KEYS: the sender's last batch number. ARGV: the batch's number, then (hash, field, amount,
# ttl) quadruples. Adds the batch once: batches of one sender go in order, so one sent again
# after a lost answer has a number Redis has seen and adds nothing. A float (written with a
# point or an exponent) is added as one (HINCRBYFLOAT), a whole number exactly (HINCRBY); a
# hash lives at least ``ttl`` from now.
ADD = """
local n = tonumber(ARGV[1])
if n <= (tonumber(redis.call('GET', KEYS[1])) or 0) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', SENDER_TTL)
for i = 2, #ARGV, 4 do
  local h, f, v, ttl = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  if string.find(v, '[.eE]') then
    redis.call('HINCRBYFLOAT', h, f, v)
  else
    redis.call('HINCRBY', h, f, v)
  end
  if redis.call('TTL', h) < ttl then redis.call('EXPIRE', h, ttl) end
end
return 1
""".replace("SENDER_TTL", str(SENDER_TTL))


Amount = int | float
# An increment beside the usage rows: (hash, field, amount, seconds the hash lives at least).
Increment = tuple[str, str, Amount, int]
Batch = tuple[dict[tuple[str, str, str], dict[str, Amount]], dict[tuple[str, str], list[Amount]]]


@dataclass(frozen=True, slots=True)
class UsageRow:
    day: str  # YYYY-MM-DD, UTC
    key: str  # the client key's id (ki2api.store: "operator" for API_KEY)
    account: str
    requests: int = 0
    errors: int = 0
    refused: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    credits: float = 0.0
    credits_estimated: float = 0.0

    def counts(self) -> dict[str, Amount]:
        return {name: getattr(self, name) for name in COUNTERS}


class UsageSink(Protocol):
    def add(self, row: UsageRow, also: Iterable[Increment] = ()) -> None:
        """Count ``row`` (never waits; the counting may finish after the call)."""
        ...


class UsageStore(Protocol):
    """Where counters end up for good (the client-keys store)."""

    async def add_usage(self, rows: Sequence[UsageRow]) -> None: ...


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def merge(rows: Iterable[UsageRow]) -> list[UsageRow]:
    """Rows summed by (day, key, account)."""
    totals: dict[tuple[str, str, str], dict[str, Amount]] = {}
    for row in rows:
        _sum_into(totals, (row.day, row.key, row.account), row)
    return [_row(slot, counts) for slot, counts in totals.items()]


def _sum_into(
    totals: dict[tuple[str, str, str], dict[str, Amount]], slot: tuple[str, str, str], row: UsageRow
) -> None:
    counts = totals.get(slot)
    if counts is None:
        counts = totals[slot] = dict.fromkeys(COUNTERS, 0)
    for name in COUNTERS:
        value = getattr(row, name)
        if value:
            counts[name] += value


def _row(slot: tuple[str, str, str], counts: dict[str, Amount]) -> UsageRow:
    day, key, account = slot
    return UsageRow(
        day,
        key,
        account,
        **{n: float(v) if n in FRACTIONAL else int(v) for n, v in counts.items()},  # type: ignore[arg-type]
    )


class MemoryUsage:
    def __init__(self) -> None:
        self._rows: list[UsageRow] = []

    def add(self, row: UsageRow, also: Iterable[Increment] = ()) -> None:
        self._rows.append(row)
        if len(self._rows) > 1024:
            self._rows = merge(self._rows)

    async def totals(self, day: str) -> list[UsageRow]:
        return [row for row in merge(self._rows) if row.day == day]


class RedisUsage:
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self._pending: dict[tuple[str, str, str], dict[str, Amount]] = {}
        self._also: dict[tuple[str, str], list[Amount]] = {}  # (hash, field) -> [amount, ttl]
        # Batches sent without an answer (Redis lost meanwhile): sent again as they were, under
        # the same number, which Redis remembers, so a batch it did take is not counted twice.
        self._unsent: list[tuple[int, Batch]] = []
        self._ids = itertools.count(1)
        # This sender's last batch number in Redis; a random part: a restarted replica with the
        # same name starts again at 1 under another key.
        self._sender = link.key("usage", "sender", f"{link.replica}-{secrets.token_hex(4)}")
        self._sending: asyncio.Task[None] | None = None
        self._one_at_a_time = asyncio.Lock()  # the sender and the reconnect hook
        self._add = link.client.register_script(ADD)
        self.send_delay = SEND_DELAY
        link.on_reconnect(self.flush)

    def add(self, row: UsageRow, also: Iterable[Increment] = ()) -> None:
        """Count ``row``, and the increments ``also`` in the same batch."""
        _sum_into(self._pending, (row.day, row.key, row.account), row)
        for hash_key, field_name, amount, ttl in also:
            held = self._also.get((hash_key, field_name))
            if held is None:
                self._also[(hash_key, field_name)] = [amount, ttl]
            else:
                held[0] += amount
                held[1] = max(held[1], ttl)
        if self.link.up and (self._sending is None or self._sending.done()):
            self._sending = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        if self.send_delay:
            await asyncio.sleep(self.send_delay)
        while (self._pending or self._also or self._unsent) and self.link.up:
            try:
                await self.flush()
            except SharedUnavailable:
                return

    def pending(self) -> int:
        """Key/account pairs counted here and not yet in Redis (while it is away)."""
        return len(self._pending) + sum(len(rows) for _, (rows, _also) in self._unsent)

    async def flush(self) -> None:
        """Send what was counted here (exactly once); kept for the next try if Redis does not
        answer."""
        async with self._one_at_a_time:
            if self._pending or self._also:
                batch: Batch = (self._pending, self._also)
                self._pending, self._also = {}, {}
                self._unsent.append((next(self._ids), batch))
            while self._unsent:
                number, batch = self._unsent[0]
                await self.link.call(partial(self._send_batch, number, batch))
                self._unsent.pop(0)

    async def _send_batch(self, number: int, batch: Batch, client: Redis) -> None:
        rows, also = batch
        args: list[str | int | float] = [number]
        for (day, key, account), counts in rows.items():
            hash_key = self.link.key("usage", day)
            for name, value in counts.items():
                if value:
                    amount = float(value) if name in FRACTIONAL else int(value)
                    args += [hash_key, _SEP.join((key, account, name)), _amount(amount), USAGE_TTL]
        for (hash_key, field_name), (amount, ttl) in also.items():
            if amount:
                args += [hash_key, field_name, _amount(amount), int(ttl)]
        await self._add(keys=[self._sender], args=args, client=client)

    async def totals(self, day: str) -> list[UsageRow]:
        """The day's counters in Redis (those not drained into a store yet)."""
        return await self.totals_of([day])

    async def totals_of(self, days: Sequence[str]) -> list[UsageRow]:
        """The counters of ``days`` in Redis, in one round trip."""

        async def read(client: Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for day in days:
                    pipe.hgetall(self.link.key("usage", day))
                return list(await pipe.execute())

        found = await self.link.call(read) if days else []
        return [row for day, raw in zip(days, found, strict=True) for row in _rows(day, raw)]

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


def _amount(value: Amount) -> str:
    """An int as one (HINCRBY), a float as one (HINCRBYFLOAT: ``repr`` has a point or an
    exponent), so that a field of credits never meets HINCRBY."""
    return repr(value)


def _rows(day: str, raw: Mapping[Any, Any]) -> list[UsageRow]:
    by: dict[tuple[str, str, str], dict[str, Amount]] = {}
    for field_name, value in as_bytes(raw).items():
        parts = field_name.decode(errors="replace").split(_SEP)
        if len(parts) != 3 or parts[2] not in COUNTERS:
            continue
        counts = by.get((day, parts[0], parts[1]))
        if counts is None:
            counts = by[(day, parts[0], parts[1])] = dict.fromkeys(COUNTERS, 0)
        try:
            amount: Amount = float(value) if parts[2] in FRACTIONAL else int(value)
        except ValueError:
            continue  # not ours: a number is all a counter holds
        counts[parts[2]] += amount
    return [_row(slot, counts) for slot, counts in sorted(by.items())]
