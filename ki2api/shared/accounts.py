"""The pool's accounts across replicas: tokens (:mod:`ki2api.shared.tokens`) and states.

Each account has a state record, ``<prefix>:state:<label>`` (JSON), merged in Redis by one
script per change so concurrent writers cannot lose each other's: a cooldown (the account's, or
one model's on it) keeps the later end; a new state (needs login, disabled, back in rotation)
counts one more generation and replaces the old. Every write publishes ``state <label>``; each
replica reads the record and merges it into its own account (:meth:`Account.adopt_shared`).
Ends of cooldowns are wall-clock times in Redis and seconds-from-now on the way into an
account (replicas keep their clocks by NTP; a skew of a second shifts a cooldown by as much).

Throttle streaks (how many 429s in a row) and request counters stay per replica.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from ki2api.kiro.accounts.account import Account, Refresher, SharedState, StateChange
from ki2api.kiro.accounts.credentials import AccountSpec
from ki2api.kiro.accounts.pool import AccountPool
from ki2api.kiro.accounts.refresh import RefreshResult
from ki2api.shared.link import RedisLink, SharedUnavailable
from ki2api.shared.tokens import SharedTokens

log = logging.getLogger("ki2api.shared")

STATE_TTL = 40 * 86400  # a state record outlives any cooldown (a quota's is up to a month)

# KEYS: record. ARGV: change (JSON), now (wall seconds), channel, event. Returns the record.
MERGE = """
local raw = redis.call('GET', KEYS[1])
local s = raw and cjson.decode(raw) or {gen = 0, state = 'healthy', models = {}}
if type(s.models) ~= 'table' then s.models = {} end
local c = cjson.decode(ARGV[1])
local now = tonumber(ARGV[2])
if c.kind == 'set' then
  s.gen = s.gen + 1
  s.state = c.state
  s.reason = c.reason
  s.suspended = c.suspended
  s.cause = nil
  s['until'] = nil
  if c.state == 'healthy' then s.models = {} end
elseif c.model ~= nil and c.model ~= cjson.null then
  local m = s.models[c.model]
  if m == nil or m[1] < c['until'] then s.models[c.model] = {c['until'], c.reason} end
elseif s.state == 'healthy' or s.state == 'cooling_down' then
  local ends = tonumber(s['until']) or 0
  if s.state == 'healthy' or ends < now or ends < c['until'] then
    s.state = 'cooling_down'
    s['until'] = c['until']
    s.reason = c.reason
    s.cause = c.cause
  end
end
for model, m in pairs(s.models) do
  if m[1] < now then s.models[model] = nil end
end
local out = cjson.encode(s)
redis.call('SET', KEYS[1], out, 'EX', ARGV[5])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return out
"""


def parse_state(raw: bytes | str | None, now: float) -> SharedState | None:
    """The record as an account takes it (seconds from ``now``), or None if unreadable."""
    if not raw:
        return None
    try:
        data = orjson.loads(raw)
        state = data.get("state", "healthy")
        if state not in ("healthy", "cooling_down", "needs_login", "disabled"):
            return None
        until = data.get("until")
        cooldown = float(until) - now if state == "cooling_down" and until is not None else None
        models_raw = data.get("models") or {}
        models = {
            str(model): (float(entry[0]) - now, str(entry[1]))
            for model, entry in (models_raw.items() if isinstance(models_raw, dict) else ())
        }
        return SharedState(
            generation=int(data.get("gen", 0)),
            state="healthy" if state == "cooling_down" else state,
            reason=data.get("reason"),
            cause=data.get("cause") if state == "cooling_down" else None,
            cooldown=cooldown,
            models=models,
            suspended=state == "disabled" and bool(data.get("suspended")),
        )
    except (ValueError, TypeError, IndexError, AttributeError):
        return None


class SharedAccounts:
    """A :class:`~ki2api.kiro.accounts.pool.PoolSharing` over Redis, attached to one pool."""

    def __init__(self, link: RedisLink, pool: AccountPool, tokens: SharedTokens) -> None:
        self.link = link
        self.pool = pool
        self.tokens = tokens
        self._merge = link.client.register_script(MERGE)
        self._writes: set[asyncio.Task[None]] = set()
        self._offered: dict[str, str | None] = {}  # label -> access token last shared
        link.on_event("tok", self._tokens_changed)
        link.on_event("state", self._state_changed)
        link.on_reconnect(self.reconcile)
        link.on_tick(self._offer_new_tokens)
        pool.sharing = self

    # --- PoolSharing -----------------------------------------------------------------------

    async def refresh(self, spec: AccountSpec, refresher: Refresher) -> RefreshResult:
        result = await self.tokens.refresh(spec, refresher)
        self._offered[spec.label] = result.access_token
        return result

    def changed(self, account: Account, change: StateChange) -> None:
        """Write the change in the background: the request that caused it does not wait."""
        if not self.link.up:
            return  # reconcile pushes the account's state when Redis returns
        task = asyncio.get_running_loop().create_task(self._write(account, change))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, account: Account, change: StateChange) -> None:
        now = time.time()
        body = {
            "kind": change.kind,
            "state": change.state,
            "reason": change.reason,
            "cause": change.cause,
            "model": change.model,
            "until": now + change.seconds,
            "suspended": change.suspended,
        }
        key = self.link.key("state", account.label)
        args: list[bytes | str | int] = [
            orjson.dumps(body),
            repr(now),
            self.link.channel,
            f"state {account.label}",
            STATE_TTL,
        ]
        try:
            raw = await self.link.call(lambda c: self._merge(keys=[key], args=args))
        except SharedUnavailable:
            return
        if change.kind == "set":
            shared = parse_state(raw, time.time())
            if shared is not None:
                account.generation = max(account.generation, shared.generation)

    # --- events from the replicas ----------------------------------------------------------

    async def _tokens_changed(self, label: str) -> None:
        account = self.pool.account(label)
        if account is None:
            return
        record = await self.tokens.read(label)
        if record is None or record.access_token == account.spec.access_token:
            return
        if (
            account.spec.expires_at is not None
            and record.expires_at is not None
            and record.expires_at < account.spec.expires_at
        ):
            return  # ours is newer (refreshed while Redis was away): the tick offers it
        await account.adopt_tokens(record.as_result(account.spec))
        self._offered[label] = record.access_token

    async def _state_changed(self, label: str) -> None:
        account = self.pool.account(label)
        if account is None:
            return
        key = self.link.key("state", label)
        raw = await self.link.call(lambda c: c.get(key))
        shared = parse_state(raw, time.time())
        if shared is not None:
            account.adopt_shared(shared)

    # --- reconnecting ----------------------------------------------------------------------

    async def reconcile(self) -> None:
        """On start and after an outage: share what this replica holds that is newer (tokens
        by expiry, its cooldowns and lost logins), then take what the others hold."""
        for account in self.pool.accounts():
            await self._offer(account)
            await self._tokens_changed(account.label)
            await self._push_state(account)
            await self._state_changed(account.label)

    async def _offer(self, account: Account) -> None:
        spec = account.spec
        await self.tokens.offer(spec)
        self._offered[account.label] = spec.access_token

    async def _push_state(self, account: Account) -> None:
        account.usable()  # settles an ended cooldown
        for status in account.cooldowns():
            change = StateChange(
                "cool", account.state, status.reason, status.cause, status.model, status.seconds
            )
            await self._write(account, change)
        if account.state in ("needs_login", "disabled") and account.generation == 0:
            # Lost here while Redis was away (or configured so): others should know. A state
            # taken from Redis before (generation > 0) is theirs already.
            change = StateChange("set", account.state, account.reason, suspended=account.suspended)
            await self._write(account, change)

    async def _offer_new_tokens(self) -> None:
        """Tokens that changed here without a shared refresh (a login file, the admin API):
        offered on the next tick; the record keeps the later expiry."""
        for account in self.pool.accounts():
            if self._offered.get(account.label, "") != account.spec.access_token:
                await self._offer(account)

    async def aclose(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
