"""Account tokens in Redis: one replica refreshes, the others take its tokens.

Kiro rotates refresh tokens: the old one dies when a refresh answers. Two replicas refreshing
the same account at once would leave one holding a dead token, so a refresh goes like this
(:meth:`SharedTokens.refresh`, what the pool's accounts call instead of the plain refresher):

1. the account's record (``<prefix>:tok:<label>``: access and refresh token, expiry, profile,
   and the fence of the write that made it) already holds a token other than the stale one
   and good for a while: take it, no call to Kiro;
2. else take the refresh lock (``…:lock``, a lease of ``LOCK_LEASE`` seconds) together with a
   new fence (``…:fence``, one more than any before): only the holder calls Kiro, with the
   record's refresh token (the newest), and writes the answer through a script that refuses
   any write whose fence is older than the record's (a holder whose lease ran out while Kiro
   answered cannot overwrite what a later holder wrote);
3. replicas that did not get the lock wait for the record to change (pub/sub wakes them; a
   poll is the backstop), then take it; if the holder died, its lease ends and one of them
   takes the lock.

When Redis is down the plain refresher runs (as with one replica); on reconnect the newer of
the local and the shared tokens wins (by expiry), so a refresh made meanwhile is not lost.
Tokens sit in Redis in clear: protect Redis like the login files (docs: README, Scaling out).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from ki2api.kiro.accounts.account import REFRESH_MARGIN, Refresher
from ki2api.kiro.accounts.credentials import AccountSpec
from ki2api.kiro.accounts.refresh import NeedsLogin, RefreshResult
from ki2api.model.errors import UpstreamUnavailable
from ki2api.shared.link import RedisLink, SharedUnavailable, as_bytes

log = logging.getLogger("ki2api.shared")

LOCK_LEASE = 30.0  # seconds; longer than a refresh may take (KIRO refresh timeout 15 s)
POLL = 0.2  # seconds between looks at the record while another replica refreshes

# KEYS: lock, fence. ARGV: owner, lease ms. Returns the new fence, or 0 if the lock is held.
LOCK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
  return fence
end
return 0
"""
# KEYS: lock. ARGV: owner:fence. Lets go only of one's own lock.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: record, channel-less. ARGV: fence, access, refresh, expires, arn, channel, event.
# Writes only if no write with a newer fence came first; 1 if written.
WRITE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'fence') or '-1')
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'access', ARGV[2], 'refresh', ARGV[3],
  'expires', ARGV[4], 'arn', ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
"""
# KEYS: record, fence. ARGV: access, refresh, expires, arn, channel, event.
# Tokens this replica holds (from its settings, a login file, a refresh made while Redis was
# away): written with a new fence if the record is missing or expires earlier; 1 if written.
OFFER = """
local shared = tonumber(redis.call('HGET', KEYS[1], 'expires') or '-1')
if redis.call('EXISTS', KEYS[1]) == 1 and shared >= tonumber(ARGV[3]) then return 0 end
local fence = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'fence', fence, 'access', ARGV[1], 'refresh', ARGV[2],
  'expires', ARGV[3], 'arn', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    fence: int
    access_token: str
    refresh_token: str | None
    expires_at: datetime | None
    profile_arn: str | None

    def __repr__(self) -> str:  # never a token in a log or a traceback
        return f"TokenRecord(fence={self.fence}, expires_at={self.expires_at!r})"

    def good_for(self, seconds: float) -> bool:
        if self.expires_at is None:
            return True
        return self.expires_at - datetime.now(UTC) > timedelta(seconds=seconds)

    def as_result(self, spec: AccountSpec) -> RefreshResult:
        expires = self.expires_at or datetime.now(UTC) + timedelta(hours=1)
        rotated = self.refresh_token if self.refresh_token != spec.refresh_token else None
        return RefreshResult(self.access_token, rotated, expires, self.profile_arn)


def _epoch(when: datetime | None) -> str:
    return repr(when.timestamp()) if when is not None else "0"


def _parse(raw: dict[bytes, bytes]) -> TokenRecord | None:
    if not raw or not raw.get(b"access"):
        return None
    expires = float(raw.get(b"expires", b"0") or 0)
    return TokenRecord(
        fence=int(raw.get(b"fence", b"0")),
        access_token=raw[b"access"].decode(),
        refresh_token=(raw.get(b"refresh") or b"").decode() or None,
        expires_at=datetime.fromtimestamp(expires, UTC) if expires > 0 else None,
        profile_arn=(raw.get(b"arn") or b"").decode() or None,
    )


class SharedTokens:
    def __init__(self, link: RedisLink, *, lease: float = LOCK_LEASE) -> None:
        self.link = link
        self.lease = lease
        self.refreshes = 0  # refresh calls this replica made (tests and logs)
        c = link.client
        self._lock, self._unlock = c.register_script(LOCK), c.register_script(UNLOCK)
        self._write, self._offer = c.register_script(WRITE), c.register_script(OFFER)

    def _keys(self, label: str) -> tuple[str, str, str]:
        base = self.link.key("tok", label)
        return base, f"{base}:lock", f"{base}:fence"

    async def read(self, label: str) -> TokenRecord | None:
        record_key = self._keys(label)[0]
        raw = await self.link.call(lambda c: c.hgetall(record_key))
        return _parse(as_bytes(raw))

    async def offer(self, spec: AccountSpec) -> bool:
        """Share ``spec``'s tokens if the record is missing or older; True if written."""
        if not spec.access_token or spec.is_api_key:
            return False
        record, _, fence = self._keys(spec.label)
        args = [
            spec.access_token,
            spec.refresh_token or "",
            _epoch(spec.expires_at),
            spec.profile_arn or "",
            self.link.channel,
            f"tok {spec.label}",
        ]
        written = await self.link.call(lambda c: self._offer(keys=[record, fence], args=args))
        return bool(written)

    async def refresh(self, spec: AccountSpec, refresher: Refresher) -> RefreshResult:
        """The account's new tokens, from the record or from the one refresh this replica
        makes under the lock; plain ``refresher`` when Redis is away."""
        if spec.is_api_key or not self.link.up:
            return await refresher(spec)
        try:
            return await self._coordinated(spec, refresher)
        except SharedUnavailable:
            log.warning(
                "account %s: Redis went away during a refresh; refreshing alone", spec.label
            )
            return await refresher(spec)

    async def _coordinated(self, spec: AccountSpec, refresher: Refresher) -> RefreshResult:
        record_key, lock_key, fence_key = self._keys(spec.label)
        owner = self.link.replica
        deadline = time.monotonic() + self.lease + POLL
        while True:
            record = await self.read(spec.label)
            if _newer(record, spec):
                assert record is not None
                return record.as_result(spec)
            # Before the lock call: a publish between our read and our wait is not missed.
            changed = self.link.changed("tok", spec.label)
            fence = int(
                await self.link.call(
                    lambda c: self._lock(
                        keys=[lock_key, fence_key], args=[owner, int(self.lease * 1000)]
                    )
                )
            )
            if fence:
                try:
                    return await self._refresh_holding(spec, refresher, fence)
                finally:
                    await self._release(lock_key, f"{owner}:{fence}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise UpstreamUnavailable(
                    f"account {spec.label!r}: another replica's token refresh did not finish"
                )
            try:
                await asyncio.wait_for(changed.wait(), min(POLL, left))
            except TimeoutError:
                pass

    async def _release(self, lock_key: str, token: str) -> None:
        try:
            await self.link.call(lambda c: self._unlock(keys=[lock_key], args=[token]))
        except SharedUnavailable:
            pass  # the lease ends by itself

    async def _refresh_holding(
        self, spec: AccountSpec, refresher: Refresher, fence: int
    ) -> RefreshResult:
        record = await self.read(spec.label)  # may have changed between our read and the lock
        if _newer(record, spec):
            assert record is not None
            return record.as_result(spec)
        base = spec
        if record is not None and record.refresh_token:
            # The record's refresh token is the newest any replica saw (rotation kills the others).
            base = replace(spec, refresh_token=record.refresh_token)
        self.refreshes += 1
        try:
            result = await refresher(base)
        except NeedsLogin:
            after = await self.read(spec.label)
            if after is not None and (record is None or after.fence > record.fence):
                return after.as_result(spec)  # another replica rotated it meanwhile
            raise
        stored = await self._store(spec.label, fence, result, base)
        if stored:
            return result
        newest = await self.read(spec.label)
        if newest is None:  # pragma: no cover - a record cannot vanish under a newer fence
            return result
        log.warning("account %s: a newer refresh was shared meanwhile; using it", spec.label)
        return newest.as_result(spec)

    async def _store(
        self, label: str, fence: int, result: RefreshResult, base: AccountSpec
    ) -> bool:
        record_key = self._keys(label)[0]
        args: list[str | int] = [
            fence,
            result.access_token,
            result.refresh_token or base.refresh_token or "",
            _epoch(result.expires_at),
            result.profile_arn or base.profile_arn or "",
            self.link.channel,
            f"tok {label}",
        ]
        try:
            written = await self.link.call(lambda c: self._write(keys=[record_key], args=args))
        except SharedUnavailable:
            # Kept locally; the reconnect's offer shares it (by expiry) when Redis returns.
            return True
        return bool(written)


def _newer(record: TokenRecord | None, spec: AccountSpec) -> bool:
    """The record holds a token other than the one we hold, good beyond the refresh margin."""
    return (
        record is not None
        and record.access_token != spec.access_token
        and record.good_for(REFRESH_MARGIN)
    )
