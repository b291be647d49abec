"""Client keys and their limits shared by the replicas: :class:`ki2api.store.Store` on Redis.

``REDIS_URL`` set, ``teams.gate.store_for`` picks this store; callers see the same protocol as
on SQLite. In Redis (``<p>`` is ``REDIS_PREFIX``):

=================================  ============================================================
``<p>:key:<digest>``               a hash per key: its record (a field per value; None: none)
``<p>:keys``                       the index: key id → digest
``<p>:keynames``                   live keys' names → key id (a name is one live key's)
``<p>:keys:version``               raised by every change, published as ``keys <version>``
``<p>:lim:<key id>``               the key's request bucket (``tokens``, ``at``: as
                                   ``RATE_LIMIT``'s), token bucket (``t``, ``ta``) and the
                                   tokens answers used since (``debt``)
``<p>:spent:<key id>:<YYYY-MM>``   credits spent that month (``m``) and each day (``01``..)
``<p>:usage:<day>``                usage rows (:mod:`ki2api.shared.usage`)
=================================  ============================================================

On the request path:

- ``find_key`` answers from memory. Every replica reloads the keys when another one (or the
  CLI) changes one: at once on the ``keys`` event, and within a second anyway (each monitor
  tick compares the version), so a revoked key is refused everywhere within a second. A key
  not in memory is looked up once in Redis (made a moment ago on another replica).
- ``admit`` is one script, one round trip: the day's and the month's credits against the
  budgets, the token bucket, then the request bucket, as :mod:`ki2api.store.counters` does in
  one process, exact across replicas. Its answer is also this replica's view of the key
  (:class:`_Lease`): while the view is under 1.5 s old and shows the key under half of
  each budget and of its tokens per minute, requests are admitted here without a round trip
  (the views of the keys in use are read again every second, in one round trip); a large
  request rate (100 a minute or more) lends a little ahead for that (1%, at most 256, while
  its bucket is over half full; what a key not used for ten seconds holds goes back), as
  ``RATE_LIMIT``'s buckets do (:mod:`ki2api.shared.counters`); a smaller one is asked for
  every time, exactly.
- ``record_usage`` never waits: the usage row, the credits spent and the tokens used go to
  Redis in the usage batch (:class:`~ki2api.shared.usage.RedisUsage`), added exactly once.

Redis lost: the keys last known (in memory, and in the SQLite file for a start without Redis)
keep answering; limits are counted here (:class:`ki2api.store.counters.Counters`, last seeded
with the shared totals; request and token rates divided by the replicas last seen) and usage
waits in memory. Redis back: the usage is sent, the keys reloaded, the counting shared again.
Keys cannot be made or changed meanwhile (:class:`~ki2api.store.StoreError`: one sentence).

The long-term record of usage is the SQLite store: one replica at a time (a lock) moves the
days older than ``recent_days`` out of Redis into its own file (``drain``); reports add the
recent days from Redis to what the file holds. Accounts added at run time stay per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from ki2api.settings import Rate
from ki2api.shared.counters import REFUND
from ki2api.shared.link import RedisLink, SharedUnavailable, as_bytes, masked_url
from ki2api.shared.usage import COUNTERS, USAGE_TTL, Increment, RedisUsage, UsageRow
from ki2api.store import (
    OPERATOR_KEY_ID,
    ChangeListener,
    KeyNameTaken,
    KeyRecord,
    Limits,
    Refusal,
    SqliteStore,
    StoredAccount,
    StoreError,
    UsageCounts,
    UsageQuery,
    day_of,
)
from ki2api.store.counters import Counters, seconds_to_next_day, seconds_to_next_month

log = logging.getLogger("ki2api.shared")

RECENT_DAYS = 40  # usage of this many days stays in Redis (reports, the page); older: drained
DRAIN_EVERY = 600.0  # seconds between two drains (each replica tries; one at a time does it)
SPENT_TTL = 40 * 86400  # a month's credits outlive it by a few days
DEBT_TTL = 300  # tokens used that no admission took into account, kept this long at least
LEASE_MIN = 100  # a request bucket this large lends each replica a little (1%) ...
LEASE_MAX = 256  # ... at most this many requests
# A key not admitted for this long is no longer in use here: what it was lent goes back, its
# view is no longer read again (the next request asks Redis). In use, both are kept up.
LEASE_IDLE = 10.0
LEASE_FRESH = 1.5  # seconds a replica's view of a key's credits and tokens admits without asking
# (refreshed every monitor tick, a second, for the keys in use: one round trip for all)
_DAY = re.compile(rb":usage:(\d{4}-\d\d-\d\d)(?::draining)?$")

_NAMES = {f.name for f in fields(KeyRecord)}
_CODES: dict[int, Any] = {1: "credits_per_day", 2: "credits_per_month", 3: "tpm", 4: "rpm"}

# KEYS: the index, the names, the key's hash, the version. ARGV: only new (1/0), id, name,
# digest, live (1/0), channel, then field, value, ... Returns the new version, or 'taken'
# (another live key has the name) or 'exists' (only new, and the key is there).
PUT = """
local id, name, digest = ARGV[2], ARGV[3], ARGV[4]
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return 'exists' end
local owner = redis.call('HGET', KEYS[2], name)
if ARGV[5] == '1' and owner and owner ~= id then return 'taken' end
local old = redis.call('HGET', KEYS[3], 'name')
if old and redis.call('HGET', KEYS[2], old) == id then redis.call('HDEL', KEYS[2], old) end
if ARGV[5] == '1' then redis.call('HSET', KEYS[2], name, id) end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], unpack(ARGV, 7))
redis.call('HSET', KEYS[1], id, digest)
local version = redis.call('INCR', KEYS[4])
redis.call('PUBLISH', ARGV[6], 'keys ' .. version)
return version
"""
# KEYS: key hashes. ARGV: their last-use times. A later time only, on a key still there.
TOUCH = """
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    local was = tonumber(redis.call('HGET', key, 'last_used_at'))
    if not was or was < tonumber(ARGV[i]) then redis.call('HSET', key, 'last_used_at', ARGV[i]) end
  end
end
return 1
"""
# KEYS: the key's buckets, its month of credits. ARGV: take (1, or 0: only lend), requests
# per period (0: none), requests per second, tokens per minute (0: none), day budget, month
# budget ('' : none), the day's field, requests to lend. Returns {code (0 admitted, 1 day
# budget, 2 month, 3 tokens, 4 requests), wait, used, lent, day's credits, month's, the
# token bucket's level}; the clock is Redis's own.
ADMIT = """
local take, cap, rate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tpm, dayb, monthb = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local s = redis.call('HMGET', KEYS[2], ARGV[7], 'm')
local day, month = tonumber(s[1]) or 0, tonumber(s[2]) or 0
local function f(x) return string.format('%.6f', x) end
local level = 0
local function out(code, wait, used, lent)
  return {code, f(wait), f(used), lent, f(day), f(month), f(level)}
end
if dayb and day >= dayb then return out(1, 0, day, 0) end
if monthb and month >= monthb then return out(2, 0, month, 0) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at', 't', 'ta', 'debt')
local life = 60
local code, wait, used, lent = 0, 0, 0, 0
if tpm > 0 then
  local per = tpm / 60
  level = tonumber(b[3]) or tpm
  level = math.min(tpm, level + math.max(0, now - (tonumber(b[4]) or now)) * per)
  level = level - (tonumber(b[5]) or 0)
  redis.call('HSET', KEYS[1], 't', f(level), 'ta', f(now), 'debt', 0)
  life = math.max(life, (tpm - level) / per)
  if level < 1 then code, wait, used = 3, (1 - level) / per, tpm - level end
end
if code == 0 and cap > 0 then
  local left = tonumber(b[1]) or cap
  left = math.min(cap, left + math.max(0, now - (tonumber(b[2]) or now)) * rate)
  if left < take then
    code, wait, used = 4, (take - left) / rate, cap - left
  else
    left = left - take
    local extra = tonumber(ARGV[8])
    if extra > 0 and left - extra >= cap / 2 then lent, left = extra, left - extra end
  end
  redis.call('HSET', KEYS[1], 'tokens', f(left), 'at', f(now))
  life = math.max(life, cap / rate)
end
redis.call('PEXPIRE', KEYS[1], math.ceil(life * 1000) + 1000)
return out(code, wait, used, lent)
"""


@dataclass(slots=True)
class _Lease:
    """What this replica may admit for a key without asking Redis: requests lent from its
    bucket, and its view of the key's credits and tokens (as last read, with what this
    replica spent since). A request is admitted here while the view is under 1.5 s old (the
    keys in use are read again every second), under half of each budget and of the tokens
    per minute, and a request is lent (if the key has a rate); otherwise Redis decides. So
    another replica can spend past a budget unseen only by spending over half of it within
    1.5 s; one that sees its own spend cross half says so (the ``spent`` event) and every
    replica asks Redis from then on; the same for tokens."""

    limits: Limits
    batch: int  # requests lent at a time (0: the key has no rate)
    held: float = 0.0
    spent_at: float = 0.0  # monotonic: the last request taken from ``held``
    seen_at: float = -math.inf  # monotonic: when the view was read
    day: float = 0.0  # credits spent today, this month (the view)
    month: float = 0.0
    tokens: float = 0.0  # the token bucket's level
    asking: asyncio.Task[None] | None = None

    def admits(self, now: float) -> bool:
        """Whether a request may go on this view; takes a lent request if so."""
        limits = self.limits
        if now - self.seen_at > LEASE_FRESH:
            return False
        budget = limits.credits_per_day
        if budget is not None and self.day >= budget / 2:
            return False
        budget = limits.credits_per_month
        if budget is not None and self.month >= budget / 2:
            return False
        tpm = limits.tpm
        if tpm is not None and self.tokens + (now - self.seen_at) * tpm / 60 < tpm / 2:
            return False
        if limits.rate is not None:
            if self.held < 1:
                return False
            self.held -= 1
            self.spent_at = now
        return True

    def saw(self, answer: list[Any], now: float) -> None:
        """The view as the admission script answered (see ADMIT)."""
        self.held += int(answer[3])
        self.day, self.month, self.tokens = float(answer[4]), float(answer[5]), float(answer[6])
        self.seen_at = now

    def spend(self, credits: float, tokens: int) -> bool:
        """Count what an answer used into the view; True when it crossed half a budget or
        half the tokens per minute."""
        limits = self.limits
        crossed = False
        for budget, spent in (
            (limits.credits_per_day, self.day),
            (limits.credits_per_month, self.month),
        ):
            if budget is not None and spent < budget / 2 <= spent + credits:
                crossed = True
        tpm = limits.tpm
        if tpm is not None and self.tokens >= tpm / 2 > self.tokens - tokens:
            crossed = True
        self.day += credits
        self.month += credits
        self.tokens -= tokens
        return crossed


def _lendable(limits: Limits) -> int:
    """Requests a key's bucket lends at a time: 0 when it has no rate, -1 when it lends none
    (a small bucket: every request asks Redis, so its count is exact)."""
    rate = limits.rate
    if rate is None:
        return 0
    if rate.requests < LEASE_MIN:
        return -1
    return min(LEASE_MAX, rate.requests // LEASE_MIN)


def _encode(key: KeyRecord) -> list[str]:
    """The record as a hash's fields and values; a None is no field."""
    out: list[str] = []
    for name in _NAMES:
        value = getattr(key, name)
        if value is None:
            continue
        if name == "models":
            text = orjson.dumps(list(value)).decode()
        elif name == "enabled":
            text = "1" if value else "0"
        else:
            text = repr(value) if isinstance(value, float) else str(value)
        out += [name, text]
    return out


def _decode(raw: Mapping[bytes | str, bytes | str]) -> KeyRecord | None:
    """A record from its hash; None when it is not one (damaged, or of another version)."""
    values = {k.decode(): v.decode() for k, v in as_bytes(raw).items()}
    try:
        models = orjson.loads(values.get("models", "[]"))
        return KeyRecord(
            id=values["id"],
            name=values["name"],
            digest=values["digest"],
            hint=values["hint"],
            created_at=float(values["created_at"]),
            last_used_at=_number(values.get("last_used_at")),
            expires_at=_number(values.get("expires_at")),
            revoked_at=_number(values.get("revoked_at")),
            enabled=values.get("enabled", "1") == "1",
            models=tuple(str(m) for m in models) if isinstance(models, list) else (),
            rpm=_whole(values.get("rpm")),
            tpm=_whole(values.get("tpm")),
            credits_per_day=_number(values.get("credits_per_day")),
            credits_per_month=_number(values.get("credits_per_month")),
        )
    except (KeyError, ValueError, orjson.JSONDecodeError):
        return None


def _number(text: str | None) -> float | None:
    return None if text is None or text == "" else float(text)


def _whole(text: str | None) -> int | None:
    return None if text is None or text == "" else int(text)


def _counts(row: UsageRow) -> UsageCounts:
    return UsageCounts(row.day, row.key, row.account, **{c: getattr(row, c) for c in COUNTERS})


def _row(counts: UsageCounts) -> UsageRow:
    values = {c: getattr(counts, c) for c in COUNTERS}
    return UsageRow(counts.day, counts.key_id, counts.account, **values)


class _Archive:
    """``RedisUsage.drain_to``'s store: the rows go into the SQLite file at once."""

    def __init__(self, local: SqliteStore) -> None:
        self.local = local

    async def add_usage(self, rows: Sequence[UsageRow]) -> None:
        await self.local.write_usage([_counts(r) for r in rows])


def _per_replica(limits: Limits, replicas: int) -> Limits:
    """A key's rates shared by ``replicas`` that cannot ask each other (Redis lost)."""
    if replicas <= 1:
        return limits
    rate = limits.rate
    if rate is not None:
        rate = Rate(max(1, math.ceil(rate.requests / replicas)), rate.period)
    tpm = max(1, math.ceil(limits.tpm / replicas)) if limits.tpm else limits.tpm
    return replace(limits, rate=rate, tpm=tpm)


class RedisStore:
    """:class:`ki2api.store.Store` with the keys, limits and recent usage in Redis and the
    rest (usage drained for good, accounts added at run time, the keys last known) in
    ``local``. ``usage``: the replica's usage batch (made here when None). ``owns_link``:
    this store connects and closes ``link`` (the CLI); a replica's runtime starts it.
    ``drain``: take part in moving old usage into ``local`` (the replicas, not the CLI)."""

    def __init__(
        self,
        link: RedisLink,
        local: SqliteStore,
        usage: RedisUsage | None = None,
        *,
        owns_link: bool = False,
        drain: bool = True,
        recent_days: int = RECENT_DAYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.link = link
        self.local = local
        self.counted = usage or RedisUsage(link)
        self.location = masked_url(link.url)
        self.persistent = True  # Redis keeps it (with its append-only file on)
        self.recent_days = recent_days
        self._owns_link = owns_link
        self._drain = drain
        self._clock = clock
        self._keys: dict[str, KeyRecord] = {}  # by id
        self._by_digest: dict[str, KeyRecord] = {}
        self._in_file: list[KeyRecord] = []  # the copy in the SQLite file, by id
        self._version = -1  # of the keys held here; -1: none read from Redis yet
        self._reloading = asyncio.Lock()
        self._counters = Counters()  # this replica's own, while Redis is away
        self._leases: dict[str, _Lease] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # news of budgets half spent, in flight
        self._touched: dict[str, float] = {}
        self._next_drain = 0.0
        self._draining: asyncio.Task[None] | None = None
        self._opened = False
        client = link.client
        self._put = client.register_script(PUT)
        self._touch = client.register_script(TOUCH)
        self._admit = client.register_script(ADMIT)
        self._give_back = client.register_script(REFUND)  # the same bucket fields
        self._index = link.key("keys")
        self._names = link.key("keynames")
        self._version_key = link.key("keys", "version")
        self._lim: dict[str, str] = {}  # key id -> its buckets' key, made once
        link.on_reconnect(self._reconnected)
        link.on_tick(self._tick)
        link.on_event("keys", self._keys_changed)
        link.on_event("spent", self._spent_elsewhere)

    @property
    def file(self) -> Path | None:
        """The SQLite file that keeps the long-term record (the backup copies it)."""
        return self.local.file

    def _key_hash(self, digest: str) -> str:
        return self.link.key("key", digest)

    def _buckets(self, key_id: str) -> str:
        name = self._lim.get(key_id)
        if name is None:
            if len(self._lim) > 4096:
                self._lim.clear()
            name = self._lim[key_id] = self.link.key("lim", key_id)
        return name

    def _spent(self, key_id: str, day: str) -> str:
        return self.link.key("spent", key_id, day[:7])

    # --- open and close ------------------------------------------------------------------

    async def open(self) -> None:
        if self._opened:
            return
        await self.local.open()
        self._in_file = sorted(await self.local.list_keys(), key=lambda k: k.id)
        self._hold(self._in_file)  # the last known, until Redis answers
        self._opened = True
        if self._owns_link and not await self.link.start():
            problem = self.link.problem or "no answer"
            await self.aclose()
            raise StoreError(
                f"Cannot reach Redis at {self.location} ({problem}); with REDIS_URL set the "
                "client keys live there: start Redis, or unset REDIS_URL for this command."
            )

    async def aclose(self) -> None:
        if not self._opened:
            return
        self._opened = False
        if self._draining is not None:
            self._draining.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._draining
        for lease in self._leases.values():
            if lease.asking is not None:
                lease.asking.cancel()
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(SharedUnavailable):
            await self._send_touches()
            if self._owns_link:
                await self.counted.flush()
        if self._owns_link:
            await self.link.aclose()
        await self.local.aclose()

    async def _reconnected(self) -> None:
        """Redis (back): keys it lacks come from the last known here, then ours from it."""
        for lease in self._leases.values():
            lease.held = 0.0  # lent by a Redis that may have forgotten it
        if not await self.link.call(lambda c: c.exists(self._version_key)) and self._keys:
            # A new Redis, or one that lost its data: it gets the keys this replica knew.
            copied = 0
            for key in list(self._keys.values()):
                if await self.link.call(partial(self._write, key, True)) not in ("exists", "taken"):
                    copied += 1
            if copied:
                log.warning("Redis had no client keys: %d copied from %s", copied, self.local.file)
        await self._reload()
        await self._send_touches()

    async def _tick(self) -> None:
        """Every second while Redis answers: last-use times out, keys in if they changed,
        idle lent requests back, and now and then a drain."""
        await self._send_touches()
        version = await self.link.call(lambda c: c.get(self._version_key))
        if version is not None and int(version) != self._version:
            await self._reload()
        await self._refresh_views()
        await self._return_idle()
        if self._drain and time.monotonic() >= self._next_drain:
            self._next_drain = time.monotonic() + DRAIN_EVERY
            if self._draining is None or self._draining.done():
                self._draining = asyncio.get_running_loop().create_task(
                    self._drain_quietly(), name="usage drain"
                )

    # --- keys ----------------------------------------------------------------------------

    def _hold(self, keys: list[KeyRecord]) -> None:
        self._keys = {k.id: k for k in keys}
        self._by_digest = {k.digest: k for k in keys}

    def _cache(self, key: KeyRecord) -> None:
        old = self._keys.get(key.id)
        if old is not None and old.digest != key.digest:
            self._by_digest.pop(old.digest, None)
        self._keys[key.id] = key
        self._by_digest[key.digest] = key

    async def _keys_changed(self, label: str) -> None:
        if not label.isdigit() or int(label) > self._version:
            await self._reload()

    async def _reload(self) -> None:
        """Every key from Redis; the copy in the SQLite file follows when it changed."""
        async with self._reloading:
            version, keys = await self.link.call(self._read_all)
            self._hold(keys)
            self._version = version
            ordered = sorted(keys, key=lambda k: k.id)
            if ordered != self._in_file:
                try:
                    await self.local.replace_keys(ordered)
                    self._in_file = ordered
                except Exception:  # the copy is for a start without Redis: never fatal here
                    log.exception("could not keep the client keys in %s", self.local.location)

    async def _read_all(self, client: Redis) -> tuple[int, list[KeyRecord]]:
        async with client.pipeline(transaction=True) as pipe:
            pipe.get(self._version_key)
            pipe.hgetall(self._index)
            version, index = await pipe.execute()
        digests = [v.decode() for v in as_bytes(index).values()]
        async with client.pipeline(transaction=False) as pipe:
            for digest in digests:
                pipe.hgetall(self._key_hash(digest))
            found = await pipe.execute()
        keys = [k for k in map(_decode, found) if k is not None]
        return int(version or 0), keys

    async def _write(self, key: KeyRecord, only_new: bool, client: Redis) -> Any:
        result = await self._put(
            keys=[self._index, self._names, self._key_hash(key.digest), self._version_key],
            args=[
                "1" if only_new else "0",
                key.id,
                key.name,
                key.digest,
                "0" if key.revoked_at is not None else "1",
                self.link.channel,
                *_encode(key),
            ],
            client=client,
        )
        return result.decode() if isinstance(result, bytes) else result

    async def _change(self, key: KeyRecord, only_new: bool) -> None:
        try:
            result = await self.link.call(partial(self._write, key, only_new))
        except SharedUnavailable as exc:
            raise StoreError(
                f"Redis at {self.location} does not answer ({exc}): keys can be made and "
                "changed once it is back."
            ) from None
        if result == "taken":
            raise KeyNameTaken(f"A key named {key.name!r} exists.")
        if result == "exists":
            raise KeyNameTaken(f"Key {key.id} exists.")
        self._cache(key)

    async def add_key(self, key: KeyRecord) -> None:
        await self._change(key, True)

    async def put_key(self, key: KeyRecord) -> None:
        await self._change(key, False)

    async def find_key(self, digest: str) -> KeyRecord | None:
        key = self._by_digest.get(digest)
        if key is not None or not self.link.up:
            return key
        # Made a moment ago on another replica, before its news came: ask once.
        try:
            raw = await self.link.call(lambda c: c.hgetall(self._key_hash(digest)))
        except SharedUnavailable:
            return None
        key = _decode(raw) if raw else None
        if key is not None and key.digest == digest:
            self._cache(key)
            return key
        return None

    async def list_keys(self) -> list[KeyRecord]:
        with contextlib.suppress(SharedUnavailable):
            await self._send_touches()
            await self._reload()
        return sorted(self._keys.values(), key=lambda k: (k.created_at, k.id))

    def touch_key(self, key_id: str, when: float) -> None:
        self._touched[key_id] = when

    async def _send_touches(self) -> None:
        if not self._touched:
            return
        touched, self._touched = self._touched, {}
        known = [(self._keys[i].digest, when) for i, when in touched.items() if i in self._keys]
        if not known:
            return
        try:
            await self.link.call(
                lambda c: self._touch(
                    keys=[self._key_hash(d) for d, _ in known],
                    args=[repr(w) for _, w in known],
                    client=c,
                )
            )
        except SharedUnavailable:
            for key_id, when in touched.items():  # for the next try
                self._touched[key_id] = max(when, self._touched.get(key_id, 0.0))
            raise

    # --- limits --------------------------------------------------------------------------

    async def admit(self, key_id: str, limits: Limits, now: float) -> Refusal | None:
        if not self.link.up:
            return self._admit_here(key_id, limits, now)
        lease = self._leases.get(key_id)
        if lease is not None and lease.limits == limits:
            moment = time.monotonic()
            if lease.admits(moment):
                if lease.held < lease.batch / 2:
                    self._ask_ahead(key_id, lease)  # more requests lent, before they run out
                return None
        lend = _lendable(limits)
        day = day_of(now)
        try:
            answer = await self.link.call(partial(self._ask, key_id, limits, day, 1, max(0, lend)))
        except SharedUnavailable:
            return self._admit_here(key_id, limits, now)
        code, wait, used, _, spent_day, spent_month, _ = answer
        self._counters.seed(key_id, now, float(spent_day), float(spent_month))
        if lend >= 0:
            self._lease(key_id, limits, lend).saw(answer, time.monotonic())
        if not code:
            return None
        limit = _CODES[int(code)]
        if limit == "credits_per_day":
            assert limits.credits_per_day is not None
            return Refusal(limit, seconds_to_next_day(now), limits.credits_per_day, float(used))
        if limit == "credits_per_month":
            assert limits.credits_per_month is not None
            allowed = limits.credits_per_month
            return Refusal(limit, seconds_to_next_month(now), allowed, float(used))
        rate = limits.rate
        allowed = float(limits.tpm or 0) if limit == "tpm" else float(rate.requests if rate else 0)
        return Refusal(limit, float(wait), allowed, float(used))

    async def _ask(
        self, key_id: str, limits: Limits, day: str, take: int, lend: int, client: Redis
    ) -> list[Any]:
        rate = limits.rate
        result: list[Any] = await self._admit(
            keys=[self._buckets(key_id), self._spent(key_id, day)],
            args=[
                take,
                rate.requests if rate is not None else 0,
                repr(rate.per_second) if rate is not None else 0,
                limits.tpm or 0,
                "" if limits.credits_per_day is None else repr(limits.credits_per_day),
                "" if limits.credits_per_month is None else repr(limits.credits_per_month),
                day[8:],
                lend,
            ],
            client=client,
        )
        return result

    def _admit_here(self, key_id: str, limits: Limits, now: float) -> Refusal | None:
        return self._counters.admit(key_id, _per_replica(limits, self.link.replicas), now)

    def _lease(self, key_id: str, limits: Limits, batch: int) -> _Lease:
        lease = self._leases.get(key_id)
        if lease is None or lease.limits != limits:
            if len(self._leases) > 4096:
                self._leases.pop(next(iter(self._leases)))
            lease = self._leases[key_id] = _Lease(limits, batch)
        lease.spent_at = time.monotonic()
        return lease

    def _ask_ahead(self, key_id: str, lease: _Lease) -> None:
        """In the background: more requests lent (and a fresh view) before they are needed."""
        if lease.asking is not None and not lease.asking.done():
            return

        async def run() -> None:
            want = max(0, lease.batch - int(lease.held))
            day = day_of(self._clock())
            call = partial(self._ask, key_id, lease.limits, day, 0, want)
            with contextlib.suppress(SharedUnavailable):
                lease.saw(await self.link.call(call), time.monotonic())

        lease.asking = asyncio.get_running_loop().create_task(run())

    async def _refresh_views(self) -> None:
        """Every tick: the views of the keys in use, read again in one round trip (each its
        admission script, taking nothing, lending what it may)."""
        now = time.monotonic()
        active = [
            (key_id, lease)
            for key_id, lease in self._leases.items()
            if now - lease.spent_at < LEASE_IDLE
        ]
        if not active:
            return
        day = day_of(self._clock())

        async def ask(client: Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for key_id, lease in active:
                    want = max(0, lease.batch - int(lease.held))
                    await self._ask(key_id, lease.limits, day, 0, want, pipe)
                return list(await pipe.execute())

        answers = await self.link.call(ask)
        seen = time.monotonic()
        for (_, lease), answer in zip(active, answers, strict=True):
            lease.saw(answer, seen)

    async def _return_idle(self) -> None:
        now = time.monotonic()
        for key_id, lease in list(self._leases.items()):
            rate = lease.limits.rate
            if rate is not None and lease.held >= 1 and now - lease.spent_at > LEASE_IDLE:
                count, lease.held = int(lease.held), lease.held - int(lease.held)
                await self.link.call(partial(self._return, key_id, rate, count))

    async def _spent_elsewhere(self, key_id: str) -> None:
        """Another replica's answers took a key past half a budget: ask Redis from now on."""
        lease = self._leases.get(key_id)
        if lease is not None:
            lease.seen_at = -math.inf

    async def _say_spent(self, key_id: str) -> None:
        with contextlib.suppress(SharedUnavailable):
            await self.counted.flush()  # the credits first, then the news
            await self.link.publish("spent", key_id)

    async def _return(self, key_id: str, rate: Rate, count: int, client: Redis) -> None:
        await self._give_back(
            keys=[self._buckets(key_id)], args=[rate.requests, count], client=client
        )

    # --- usage ---------------------------------------------------------------------------

    def record_usage(self, usage: UsageCounts, *, tpm: int | None = None) -> None:
        key_id = usage.key_id
        tokens, credits = usage.tokens, usage.credits
        if credits or tokens:
            self._counters.spend(key_id, tokens, credits, self._clock(), tpm)
        also: list[Increment] = []
        if credits and key_id != OPERATOR_KEY_ID:
            month = self._spent(key_id, usage.day)
            credits = float(credits)
            also += [(month, "m", credits, SPENT_TTL), (month, usage.day[8:], credits, SPENT_TTL)]
        if tpm and tokens:
            also.append((self._buckets(key_id), "debt", int(tokens), DEBT_TTL))
        self.counted.add(_row(usage), also)
        lease = self._leases.get(key_id)
        if lease is not None and lease.spend(float(credits), tokens) and self.link.up:
            task = asyncio.get_running_loop().create_task(self._say_spent(key_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def spent(self, key_id: str, now: float) -> tuple[float, float]:
        day = day_of(now)
        try:
            found = await self.link.call(
                lambda c: c.hmget(self._spent(key_id, day), [day[8:], "m"])
            )
        except SharedUnavailable:
            return self._counters.spent(key_id, now)
        return float(found[0] or 0), float(found[1] or 0)

    async def flush(self) -> None:
        with contextlib.suppress(SharedUnavailable):  # it waits for Redis, in memory
            await self._send_touches()
            await self.counted.flush()
        await self.local.flush()

    async def usage(self, query: UsageQuery) -> list[UsageCounts]:
        """The SQLite file's rows (drained, and from before Redis) plus the days in Redis
        (one pipeline); the file's alone while Redis is away."""
        rows = await self.local.usage(query)
        days = self._recent_days(query)
        if not days:
            return rows
        try:
            with contextlib.suppress(SharedUnavailable):
                await self.counted.flush()
            recent = await self.counted.totals_of(days)
        except SharedUnavailable:
            return rows
        by = {(r.day, r.key_id, r.account): r for r in rows}
        for row in recent:
            if (query.key_id is not None and row.key != query.key_id) or (
                query.account is not None and row.account != query.account
            ):
                continue
            counts = _counts(row)
            held = by.get((row.day, row.key, row.account))
            if held is None:
                by[(row.day, row.key, row.account)] = counts
            else:
                held.add(counts)
        return sorted(by.values(), key=lambda r: (r.day, r.key_id, r.account))

    def _recent_days(self, query: UsageQuery) -> list[str]:
        today = datetime.fromtimestamp(self._clock(), UTC).date()
        # Every day Redis may still hold: the recent ones, and older ones not drained yet.
        first = today - timedelta(seconds=USAGE_TTL)
        try:
            if query.since is not None:
                first = max(first, date.fromisoformat(query.since))
            last = today if query.until is None else min(today, date.fromisoformat(query.until))
        except ValueError:
            return []
        return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]

    async def drain(self) -> int:
        """Move the usage of days older than ``recent_days`` from Redis into the SQLite
        file (one replica at a time); the number of rows moved."""
        cutoff = (
            datetime.fromtimestamp(self._clock(), UTC).date() - timedelta(days=self.recent_days)
        ).isoformat()
        pattern = self.link.key("usage", "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*")

        async def scan(client: Redis) -> set[str]:
            found: set[str] = set()
            async for name in client.scan_iter(match=pattern, count=1000):
                match = _DAY.search(name if isinstance(name, bytes) else name.encode())
                if match is not None:
                    found.add(match.group(1).decode())
            return found

        old = sorted(d for d in await self.link.call(scan) if d < cutoff)
        return await self.counted.drain_to(_Archive(self.local), old) if old else 0

    async def _drain_quietly(self) -> None:
        try:
            moved = await self.drain()
        except SharedUnavailable:
            return
        except Exception:
            log.exception("moving old usage from Redis into %s failed", self.local.location)
            return
        if moved:
            log.info("%d usage rows moved from Redis into %s", moved, self.local.location)

    # --- accounts (this replica's own) ---------------------------------------------------

    async def load_accounts(self) -> list[StoredAccount]:
        return await self.local.load_accounts()

    async def put_account(self, account: StoredAccount, *, existing_only: bool = False) -> None:
        await self.local.put_account(account, existing_only=existing_only)

    async def delete_account(self, label: str) -> None:
        await self.local.delete_account(label)

    async def load_account_proxies(self) -> dict[str, str | None]:
        return await self.local.load_account_proxies()

    async def put_account_proxy(self, label: str, proxy: str | None) -> None:
        await self.local.put_account_proxy(label, proxy)

    async def delete_account_proxy(self, label: str) -> None:
        await self.local.delete_account_proxy(label)

    def add_change_listener(self, listener: ChangeListener) -> None:
        """The CLI's changes to this replica's accounts and proxies (its local file's)."""
        self.local.add_change_listener(listener)
