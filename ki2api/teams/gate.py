"""Client keys on the request path: who is calling, may they send this request now, and what
did it use.

    caller = await teams.find(presented_key)     # None: not a client key (try API_KEY)
    ctx.caller = caller                          # the endpoint, or the page's chat
    await teams.admit(ctx, "claude-sonnet-4-5", model)   # Gateway.open, before any account
    ...                                          # the answer; each upstream answer's usage
    ctx.settle(status)                           # lands in ctx; the access log settles it

``find`` refuses a revoked, expired or disabled key (401). ``admit`` refuses a model outside the
key's allowlist (403 ``model_not_allowed``), a spent credit budget (429 ``insufficient_quota``)
and a request past the key's RPM or TPM (429 ``rate_limit_exceeded`` with Retry-After): before
any account is chosen, so nothing goes upstream. Usage counts when the answer ends, so a long
answer may cross a budget: the next request is refused, this one is not cut.

``API_KEY`` is the operator's own key: no limits, its usage counted as ``operator``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ki2api.kiro.wire.models import ModelInfo
from ki2api.model.context import Caller, RequestContext
from ki2api.model.errors import (
    AuthenticationFailed,
    BudgetSpent,
    GatewayError,
    ModelNotAllowed,
    RateLimited,
)
from ki2api.settings import Settings, parse_rate
from ki2api.shared.keystore import RedisStore
from ki2api.shared.link import RedisLink
from ki2api.shared.usage import RedisUsage
from ki2api.store import (
    OPERATOR_KEY_ID,
    KeyRecord,
    Limits,
    Rate,
    Refusal,
    SqliteStore,
    Store,
    UsageCounts,
    day_of,
)
from ki2api.store.schema import check
from ki2api.teams.credits import CreditRates
from ki2api.teams.keys import KEY_PREFIX, key_digest, model_allowed

log = logging.getLogger("ki2api.keys")

MAX_METRIC_KEYS = 100  # /metrics names this many keys; the rest share the label "other"
_MINUTE = 60.0


@dataclass(frozen=True, slots=True)
class KeyCaller(Caller):
    record: KeyRecord | None  # None: the operator (API_KEY)
    limits: Limits


OPERATOR = KeyCaller(OPERATOR_KEY_ID, "operator", None, Limits())


def limits_of(key: KeyRecord, default_rate: Rate | None) -> Limits:
    return Limits(
        rate=Rate(key.rpm, _MINUTE) if key.rpm else default_rate,
        tpm=key.tpm or None,
        credits_per_day=key.credits_per_day,
        credits_per_month=key.credits_per_month,
    )


class KeyTotals:
    """A key's usage since start, for ``/metrics``."""

    __slots__ = ("requests", "errors", "refused", "input_tokens", "output_tokens", "credits")

    def __init__(self) -> None:
        self.requests = self.errors = self.refused = 0
        self.input_tokens = self.output_tokens = 0
        self.credits = 0.0


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def refusal_error(refusal: Refusal, name: str) -> GatewayError:
    wait = refusal.retry_after
    if refusal.limit == "rpm":
        return RateLimited(
            f"Rate limit of {_num(refusal.allowed)} requests per minute for key {name!r} reached; "
            f"retry in {wait:.1f} s.",
            retry_after=wait,
        )
    if refusal.limit == "tpm":
        return RateLimited(
            f"Token limit of {_num(refusal.allowed)} tokens per minute for key {name!r} reached; "
            f"retry in {wait:.1f} s.",
            retry_after=wait,
        )
    period = "today" if refusal.limit == "credits_per_day" else "this month"
    resets = "at midnight UTC" if refusal.limit == "credits_per_day" else "on the 1st (UTC)"
    return BudgetSpent(
        f"Key {name!r} has spent its {_num(refusal.allowed)} credits for {period} "
        f"({refusal.used:.2f} used); the budget resets {resets}.",
        retry_after=wait,
    )


def local_store(settings: Settings, clock: Callable[[], float] = time.time) -> SqliteStore:
    """The SQLite file in ``DATA_DIR``: the whole store on one machine; with ``REDIS_URL``
    the long-term record of usage, the accounts added at run time and the keys last known."""
    return SqliteStore.in_folder(
        settings.data_dir,
        persistent=settings.data_dir_persistent,
        flush_interval=settings.usage_flush_seconds,
        clock=clock,
    )


def store_for(
    settings: Settings,
    clock: Callable[[], float] = time.time,
    *,
    link: RedisLink | None = None,
    usage: RedisUsage | None = None,
) -> Store:
    """The store the settings ask for: the one place that picks a backend. SQLite in
    ``DATA_DIR``; with ``REDIS_URL``, Redis in front of it (the keys, their limits and the
    recent usage shared by the replicas). ``link`` and ``usage``: a replica's own (its
    runtime starts and closes them); without, the store makes its own and connects when it
    opens (the CLI)."""
    local = local_store(settings, clock)
    if not settings.redis_url:
        return local
    if link is None:
        link = RedisLink(
            settings.redis_url, timeout=settings.redis_timeout, prefix=settings.redis_prefix
        )
        return RedisStore(link, local, owns_link=True, drain=False, clock=clock)
    return RedisStore(link, local, usage, clock=clock)


def _file_of(store: Store) -> Path | None:
    if isinstance(store, SqliteStore | RedisStore):
        return store.file
    return None


def check_store(settings: Settings) -> None:
    """Check (and migrate) the store, then let go: run before the server starts, so that
    a damaged or newer database stops it with one clear sentence (:class:`StoreError`)."""
    database = local_store(settings).file
    if database is not None:
        check(database)


class Teams:
    """Client keys, their limits and usage, on one :class:`ki2api.store.Store`."""

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store: Store = store or store_for(settings, clock)
        self.default_rate = parse_rate(settings.rate_limit) if settings.rate_limit else None
        self.clock = clock
        self.credit_rates = CreditRates()
        self.totals: dict[str, KeyTotals] = {}
        self._callers: dict[str, KeyCaller] = {}  # by digest, while the record is the same
        self.opened = False

    @property
    def database(self) -> Path | None:
        """The database file a backup copies (``BACKUP_DATASET``), when the store has one."""
        return _file_of(self.store)

    async def open(self) -> None:
        await self.store.open()
        self.opened = True
        if not self.store.persistent and self.store.location != ":memory:":
            log.warning(
                "keys and usage are kept in %s, which a restart of this Space wipes: attach "
                "persistent storage (Settings → Persistent storage)%s",
                self.store.location,
                ""
                if self.settings.backup_dataset
                else ", or set BACKUP_DATASET to back them up to a private Hub dataset",
            )

    async def aclose(self) -> None:
        if self.opened:
            self.opened = False
            await self.store.aclose()  # writes the usage still in the batch

    # --- who is calling ------------------------------------------------------------------

    async def find(self, presented: str) -> KeyCaller | None:
        """The caller a client key stands for; None when it is no client key. Raises 401 for
        a key that was revoked, has expired or is disabled."""
        if not self.opened or not presented.startswith(KEY_PREFIX):
            return None
        digest = key_digest(presented)
        record = await self.store.find_key(digest)
        if record is None:
            return None
        if record.revoked_at is not None:
            raise AuthenticationFailed(
                f"This API key ({record.name!r}) was revoked on {_when(record.revoked_at)}.",
                code="key_revoked",
            )
        if record.expires_at is not None and record.expires_at <= self.clock():
            raise AuthenticationFailed(
                f"This API key ({record.name!r}) expired on {_when(record.expires_at)}; ask "
                "the gateway's operator for a new one.",
                code="key_expired",
            )
        if not record.enabled:
            raise AuthenticationFailed(
                f"This API key ({record.name!r}) is disabled; ask the gateway's operator.",
                code="key_disabled",
            )
        caller = self._callers.get(digest)
        if caller is None or caller.record is not record:
            caller = KeyCaller(record.id, record.name, record, limits_of(record, self.default_rate))
            self._callers[digest] = caller
        return caller

    # --- may it send this request now ----------------------------------------------------

    async def admit(self, ctx: RequestContext, requested: str, model: ModelInfo) -> None:
        """``Gateway.open``'s admission (:class:`ki2api.pipeline.admission.Admission`)."""
        caller = ctx.caller
        if not isinstance(caller, KeyCaller) or ctx.settlement is not None:
            return  # no key checked (a visitor's own token), or admitted already (web search)
        key = caller.record
        now = ctx.admitted_at = self.clock()
        if key is not None:
            if key.models and not model_allowed(key.models, requested, model.id):
                self._refused(caller, now)
                raise ModelNotAllowed(
                    f"Key {key.name!r} may not use the model {requested!r}; it may use: "
                    f"{', '.join(key.models)}.",
                    param="model",
                )
            if not caller.limits.unlimited:
                refusal = await self.store.admit(key.id, caller.limits, now)
                if refusal is not None:
                    self._refused(caller, now)
                    raise refusal_error(refusal, key.name)
            self.store.touch_key(key.id, now)
        ctx.settlement = self

    def _refused(self, caller: KeyCaller, now: float) -> None:
        self.store.record_usage(UsageCounts(day_of(now), caller.key_id, "", refused=1))
        self._totals(caller.name).refused += 1

    # --- what it used --------------------------------------------------------------------

    def settle(self, ctx: RequestContext, status: int) -> None:
        caller = ctx.caller
        if not isinstance(caller, KeyCaller):
            return
        day = day_of(ctx.admitted_at or self.clock())
        counts = UsageCounts(day, caller.key_id, ctx.account or "", requests=1)
        counts.errors = int(status >= 400 or ctx.error is not None)
        for usage in ctx.usages or ():
            counts.input_tokens += usage.input_tokens
            counts.output_tokens += usage.output_tokens
            counts.cache_read_tokens += usage.cache_read_tokens
            counts.cache_write_tokens += usage.cache_write_tokens
            if usage.credits is None:
                estimate = self.credit_rates.estimate(ctx.kiro_model, usage)
                counts.credits += estimate
                counts.credits_estimated += estimate
            else:
                counts.credits += usage.credits
                self.credit_rates.learn(ctx.kiro_model, usage)
        self.store.record_usage(counts, tpm=caller.limits.tpm)
        totals = self._totals(caller.name)
        totals.requests += 1
        totals.errors += counts.errors
        totals.input_tokens += counts.input_tokens
        totals.output_tokens += counts.output_tokens
        totals.credits += counts.credits

    def _totals(self, name: str) -> KeyTotals:
        totals = self.totals.get(name)
        if totals is None:
            if len(self.totals) >= MAX_METRIC_KEYS:
                name = "other"  # a bounded label set, however many keys come and go
                totals = self.totals.get(name)
            if totals is None:
                totals = self.totals[name] = KeyTotals()
        return totals
