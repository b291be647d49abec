"""The account pool: which account serves a request, and what a failure does to that account.

    pool = AccountPool.from_settings(settings, http)
    lease = await pool.acquire(exclude=frozenset(tried), model="claude-sonnet-4.5", lacking=without)
    lease.credential       # use it; on an expired-token answer: await lease.token_rejected()
    lease.settle(error)    # the outcome: None for an answer, else what failed

``acquire`` raises ``NotConfigured``, or when no account can serve the model now:
``AccountsCoolingDown`` (429: the way out is an account cooling down after Kiro's throttles,
``retry_after`` the shortest wait), ``QuotaExceeded`` (every account that could serve is out of
quota) or ``NoHealthyAccount``.

Choice among healthy accounts: least recently used (``KIRO_POOL_STRATEGY=lru``, the default),
``round_robin`` or ``first`` (the first healthy one in source order: primary + fallbacks).
``acquire(prefer=label)`` takes that account when it can serve (a conversation's own account:
:mod:`ki2api.pipeline.sticky`). An account with a minimum interval between requests
(``KIRO_MIN_INTERVAL_MS``, ``minIntervalMs``) serves a request once its next turn comes; one
whose turn is further off than ``QUEUE_TIMEOUT`` is passed over, and when every account is,
``AccountsPaced`` (429) says when the first turn is free.

``settle`` takes a request's outcome the same way whether Kiro said it in a status or inside a
started answer: an answer, or a request at fault (``InvalidRequest``, ``NotFound``), ends the
account's rows of throttles (``succeeded``); Kiro's failures go to ``failed``, which scopes each
cooldown to what failed (docs/errors.md):

    ModelCapacity,       that model on that account, briefly: Kiro's Retry-After, else 0.5 s
    ModelUnavailable     doubling (to 8 s) while it repeats; other models keep the account
    UpstreamThrottled    the account: Kiro's Retry-After; else nothing for one throttle, and
                         1 s doubling (to 30 s) from the second in a row (each within a minute)
    QuotaExceeded        out of rotation until the quota resets (retry_after, else a default)
    NeedsLogin           needs login (the refresh token is dead)
    TokenExpired         the token is refreshed before its next use
    AccountSuspended     disabled and marked suspended, with the service's words
    UpstreamAuthFailed   disabled, with the service's reason (not authorised)
    anything else        counted only (5xx, timeouts: the gateway retries)

Throttles answered while a cooldown runs were sent before it started: they do not lengthen it.

Each account's own logic (refresh, login file) lives in :mod:`ki2api.kiro.accounts.account`.
Its remaining credits are asked on demand (``fetch_usage``) and, with ``KIRO_USAGE_REFRESH``,
in the background (:mod:`ki2api.kiro.accounts.credits`).

Replicas share their accounts through ``pool.sharing`` (a :class:`PoolSharing`, set by
:mod:`ki2api.shared` when ``REDIS_URL`` is set): the pool's accounts refresh through it (one
replica at a time) and tell it each change of state. Without it nothing leaves the process.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar, get_args

import httpx

from ki2api.kiro.accounts.account import (
    CAUSE_TEXT,
    Account,
    AccountStatus,
    Clock,
    Cooldown,
    Refresher,
    StateChange,
)
from ki2api.kiro.accounts.credentials import (
    LABEL_PATTERN,
    AccountSpec,
    Credential,
    CredentialError,
    parse_pasted_token,
)
from ki2api.kiro.accounts.credits import CreditsRefresher
from ki2api.kiro.accounts.proxy import (
    CONFIGURED_PROXY,
    check_account_proxy,
    mask_proxy,
    proxy_password,
)
from ki2api.kiro.accounts.refresh import NeedsLogin, RefreshResult, refresh_tokens
from ki2api.kiro.accounts.sources import (
    Source,
    account_source,
    file_source,
    load_sources,
    unique_label,
)
from ki2api.kiro.accounts.usage_limits import UsageLimits, fetch_usage_limits
from ki2api.model.errors import (
    AccountsCoolingDown,
    AccountsPaced,
    AccountSuspended,
    GatewayError,
    InvalidRequest,
    ModelCapacity,
    ModelUnavailable,
    NoHealthyAccount,
    NotConfigured,
    NotFound,
    QuotaExceeded,
    TokenExpired,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamThrottled,
)
from ki2api.model.logsafe import hide_paths
from ki2api.settings import PoolStrategy, Settings

_DEFAULT_FILE_RECHECK = 1.0  # seconds between looks for a Kiro login made after start-up
log = logging.getLogger("ki2api.accounts")
T = TypeVar("T")

STRATEGIES: tuple[str, ...] = get_args(PoolStrategy)
QUOTA_COOLDOWN = 3600.0  # when the service does not say when the quota resets
THROTTLE_WINDOW = 60.0  # throttles further apart than this are not "in a row"
ALLOWED_THROTTLES = 1  # one throttle is not a pattern: it cools nothing (cf. LiteLLM allowed_fails)
THROTTLE_BASE = 1.0
THROTTLE_CAP = 30.0
CAPACITY_BASE = 0.5
CAPACITY_CAP = 8.0
RETRY_AFTER_CAP = 6 * 3600.0
# Exceptions acquire raises when no account can serve the request right now.
NO_ACCOUNT_NOW = (AccountsCoolingDown, QuotaExceeded, NoHealthyAccount)
Sleep = Callable[[float], Awaitable[None]]

NOT_CONFIGURED_MESSAGE = (
    "No Kiro account is configured. To try Ki2API without one, restart it with --demo (a "
    "built-in simulator answers); to chat in the playground with your own Kiro token, paste it "
    "in the page's Tokens tab. For real use, set KIRO_ACCESS_TOKEN and/or KIRO_REFRESH_TOKEN "
    "(Space secrets or environment), point KIRO_TOKEN_FILE at a kiro-auth-token.json, list "
    "accounts in KIRO_ACCOUNTS, add one with POST /admin/accounts, or log in to Kiro on this "
    "machine (the login is read from {path})."
)
NO_ACCOUNTS_WARNING = (
    "no Kiro account: every chat will answer 503 until there is one. Three ways out: "
    "restart with --demo (a built-in simulator answers); paste a token in the page's Tokens "
    "tab (for your own playground chats); or set KIRO_ACCESS_TOKEN / KIRO_REFRESH_TOKEN / "
    "KIRO_ACCOUNTS / KIRO_TOKEN_FILE, or log in to Kiro on this machine (read from {path})"
)


class HttpClients(Protocol):
    """The HTTP client for each outbound proxy (ki2api/kiro/http/client.py's ``UpstreamHttp``):
    an account's token refresh and usage calls go through its own proxy, as its chats do."""

    def for_proxy(self, proxy: str | None) -> httpx.AsyncClient: ...


class OneClient:
    """Every account on one client, whatever its proxy (tests and tools that bring their own)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    def for_proxy(self, proxy: str | None) -> httpx.AsyncClient:
        return self.http


class PoolSharing(Protocol):
    """What replicas share of a pool (:mod:`ki2api.shared` implements it over Redis)."""

    async def refresh(self, spec: AccountSpec, refresher: Refresher) -> RefreshResult:
        """The account's new tokens: refreshed with ``refresher`` by one replica at a time."""
        ...

    def changed(self, account: Account, change: StateChange) -> None:
        """``account``'s state changed here (a cooldown, a login lost, ...): tell the others."""
        ...


class Lease:
    """One request's use of one account. ``credential`` changes if ``token_rejected`` refreshes."""

    __slots__ = ("_account", "_pool", "credential", "model", "_settled", "_rejected", "_done")

    def __init__(
        self,
        account: Account,
        pool: AccountPool | None,
        credential: Credential,
        model: str | None = None,
    ) -> None:
        self._account = account
        self._pool = pool
        self.credential = credential
        self.model = model  # Kiro's id of the model asked for: a capacity failure cools only it
        self._settled = False  # the account's state was already decided by token_rejected
        self._rejected = False
        self._done = False

    @property
    def spec(self) -> AccountSpec:
        """The account's current tokens (an ephemeral lease's caller keeps them after a refresh)."""
        return self._account.spec

    async def token_rejected(self) -> Credential | None:
        """The service said the token is invalid: a newer credential, or None if none can help."""
        if self._rejected:
            return None  # once per lease: a second rejection is not fixed by another refresh
        self._rejected = True
        new = await self._account.recover_rejected_token(self.credential.access_token)
        if new is None:
            self._settled = True
            return None
        self.credential = new
        return new

    def settle(self, error: GatewayError | None) -> None:
        """The request's outcome, told the same way whether Kiro said it in its status or inside
        a started answer: an answer, or a request at fault (refused as malformed or too long, a
        model the account lacks), leaves the account well (``succeeded``); Kiro's failures go to
        ``failed``; the gateway's own refusals (e.g. a wrong KIRO_API_URL) change nothing."""
        if error is None or isinstance(error, InvalidRequest | NotFound):
            self.succeeded()
        elif isinstance(error, UpstreamError):
            self.failed(error)

    def failed(self, error: GatewayError) -> None:
        if self._done:
            return
        self._done = True
        self._account.record_error(error)
        if not self._settled:
            apply_failure(self._account, error, self.model)

    def succeeded(self) -> None:
        if self._done:
            return
        self._done = True
        self._account.record_success(self.model)

    def __repr__(self) -> str:
        return f"Lease({self.credential!r})"


def apply_failure(account: Account, error: GatewayError, model: str | None = None) -> None:
    if isinstance(error, QuotaExceeded):
        account.cool_down(_quota_cooldown(account, error), error.message, "quota")
    elif isinstance(error, ModelCapacity | ModelUnavailable):
        if model is not None:
            # Answers to requests sent before a running cooldown began do not lengthen it.
            streak = 0 if account.cooling(model) else account.note_throttle(model, THROTTLE_WINDOW)
            if error.retry_after is not None or streak > 0:
                delay = _delay(error, CAPACITY_BASE * 2 ** (streak - 1), CAPACITY_CAP)
                account.cool_model(model, delay, error.message)
    elif isinstance(error, UpstreamThrottled):
        streak = 0 if account.cooling(None) else account.note_throttle(None, THROTTLE_WINDOW)
        streak -= ALLOWED_THROTTLES
        if error.retry_after is not None or streak > 0:
            delay = _delay(error, THROTTLE_BASE * 2 ** (streak - 1), THROTTLE_CAP)
            account.cool_down(delay, error.message, "rate_limit")
    elif isinstance(error, NeedsLogin):
        account.set_needs_login(error.message)
    elif isinstance(error, TokenExpired):
        account.mark_token_suspect()
    elif isinstance(error, UpstreamAuthFailed):
        account.disable(error.message, suspended=isinstance(error, AccountSuspended))


def _delay(error: GatewayError, backoff: float, cap: float) -> float:
    """Kiro's Retry-After when it gave one (never longer), else our own capped back-off."""
    if error.retry_after is not None:
        return min(error.retry_after, RETRY_AFTER_CAP)
    return min(backoff, cap)


def _quota_cooldown(account: Account, error: QuotaExceeded) -> float:
    if error.retry_after is not None:
        return min(error.retry_after, 31 * 24 * 3600.0)
    usage = account.usage
    if usage is not None and usage.resets_at is not None:
        seconds = (usage.resets_at - datetime.now(UTC)).total_seconds()
        if seconds > 0:
            return seconds
    return QUOTA_COOLDOWN


# Accounts added while the gateway runs (the admin API, the page): kept in the store, with
# their tokens as they rotate, and added back at the next start (ki2api/kiro/accounts/kept.py).
RUNTIME_SOURCES = ("admin", "ui", "cli")  # added at run time: the keeper keeps them


class AccountKeeper(Protocol):
    def keep(self, spec: AccountSpec, *, existing_only: bool = False) -> None:
        """Store this account (added at run time, or its tokens changed); never blocks.
        ``existing_only``: its tokens changed; store them only if it is still stored (another
        process may have removed it)."""
        ...

    def forget(self, label: str) -> None: ...

    def keep_proxy(self, label: str, proxy: str | None) -> None:
        """Store the proxy set at run time for this account (None: ``KIRO_PROXY``)."""
        ...

    def forget_proxy(self, label: str) -> None:
        """The account is back on the proxy its configuration names."""
        ...


class AccountPool:
    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient | HttpClients,
        *,
        strategy: str | None = None,
        clock: Clock = time.monotonic,
        refresher: Refresher | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._http = OneClient(http) if isinstance(http, httpx.AsyncClient) else http
        chosen = (strategy or settings.kiro_pool_strategy or "lru").lower()
        if chosen not in STRATEGIES:
            log.error("unknown KIRO_POOL_STRATEGY %r; using lru", chosen)
            chosen = "lru"
        self.strategy = chosen
        self._clock = clock
        self.sleep = sleep  # waiting out a cooldown goes by the pool's clock (tests: a fake one)
        self._refresher: Refresher = refresher or self._refresh_with_http
        self._accounts: dict[str, Account] = {}
        self._next = 0  # round_robin position
        self.problems: list[str] = []  # sources that could not be used (shown to the admin)
        self._pending_default_file: Path | None = None
        self._next_default_check = 0.0
        self._closing: set[asyncio.Future[None]] = set()
        self.keeper: AccountKeeper | None = None  # set by the runtime: the store
        self._kept: set[str] = set()  # labels of accounts the keeper keeps
        self.credits = CreditsRefresher(self, every=settings.kiro_usage_refresh)
        self.sharing: PoolSharing | None = None  # set when replicas share state (REDIS_URL)

    async def _refresh_shared(self, spec: AccountSpec) -> RefreshResult:
        """A pool account's refresh: through the replicas' sharing when there is one."""
        if self.sharing is not None:
            return await self.sharing.refresh(spec, self._refresher)
        return await self._refresher(spec)

    def _account_changed(self, account: Account, change: StateChange) -> None:
        if self.sharing is not None and self._accounts.get(account.label) is account:
            self.sharing.changed(account, change)

    async def _refresh_with_http(self, spec: AccountSpec) -> RefreshResult:
        return await refresh_tokens(self._http.for_proxy(spec.proxy), self._settings, spec)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        http: httpx.AsyncClient | HttpClients,
        *,
        strategy: str | None = None,
        clock: Clock = time.monotonic,
        refresher: Refresher | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> AccountPool:
        """Every configured source (see :mod:`ki2api.kiro.accounts.sources`); never raises."""
        pool = cls(settings, http, strategy=strategy, clock=clock, refresher=refresher, sleep=sleep)
        found = load_sources(settings)
        pool.problems.extend(found.problems)
        pool._pending_default_file = found.pending_default_file
        for src in found.accounts:
            pool._add_source(src)
        return pool

    async def start(self) -> None:
        states = ", ".join(f"{a.label} ({a.status().description})" for a in self._accounts.values())
        log.info("%d Kiro account(s): %s", len(self._accounts), states or "none")
        if not self._accounts:
            log.warning(NO_ACCOUNTS_WARNING.format(path=self._settings.kiro_token_file))
        self.credits.start()  # only with KIRO_USAGE_REFRESH

    async def aclose(self) -> None:
        await self.credits.aclose()
        await asyncio.gather(
            *(a.aclose() for a in self._accounts.values()), *self._closing, return_exceptions=True
        )

    # --- membership --------------------------------------------------------------------------

    def _add_source(self, src: Source) -> Account:
        account = Account(
            src.spec,
            settings=self._settings,
            refresher=self._refresh_shared,
            clock=self._clock,
            login_file=src.login_file,
            min_interval_ms=src.min_interval_ms,
            on_change=self._account_changed,
        )
        if src.missing_reason is not None:
            account.set_needs_login(src.missing_reason)
        self._accounts[account.label] = account
        return account

    def add_account(
        self,
        data: Mapping[str, Any] | AccountSpec,
        *,
        label: str | None = None,
        replace_existing: bool = False,
        source: str = "admin",
        from_store: bool = False,
    ) -> AccountStatus:
        """Add an account given as fields / a login file's contents, or as a spec.

        Raises ``InvalidRequest`` for unusable input or a label / account already in the pool
        (unless ``replace_existing``). ``from_store``: it comes from the keeper's store (kept
        there already: not written again). A proxy set at run time on the account it replaces
        holds on the new one, as it would after a restart.
        """
        wanted = label if label is not None else getattr(data, "label", None)
        if wanted is not None and not LABEL_PATTERN.match(wanted):
            raise InvalidRequest("a label is 1-64 letters, digits and . _ @ + -", param="label")
        try:
            if isinstance(data, AccountSpec):
                src = Source(replace(data, label=label or data.label, source=source))
            else:
                fields = dict(data)
                if label is not None:
                    fields["label"] = label
                src = account_source(
                    fields,
                    default_label=self.free_label("added"),
                    source=source,
                    settings=self._settings,
                    taken=set(),  # a label given here is refused if taken, not renamed
                )
        except CredentialError as exc:
            raise InvalidRequest(str(exc)) from None
        new_label = src.spec.label
        if new_label in self._accounts and not replace_existing:
            raise InvalidRequest(f"an account labelled {new_label!r} exists", param="label")
        identity = src.spec.identity()
        for other in self._accounts.values():
            if other.label != new_label and identity and other.spec.identity() == identity:
                raise InvalidRequest(f"this account is already in the pool as {other.label!r}")
        old = self._accounts.pop(new_label, None)
        if old is not None:
            log.info("account %s replaced", new_label)
        account = self._add_source(src)
        if old is not None and old.spec.proxy != old.configured_proxy:
            account.spec = replace(account.spec, proxy=old.spec.proxy)
        log.info("account %s added (%s, %s)", account.label, src.spec.source, src.spec.auth_method)
        self._kept.discard(new_label)
        if source in RUNTIME_SOURCES:
            self._keep(account, write=not from_store)
        return account.status()

    def _keep(self, account: Account, *, write: bool = True) -> None:
        self._kept.add(account.label)
        account.on_refreshed = self._refreshed
        if self.keeper is not None and write:
            self.keeper.keep(_as_configured(account))

    def _refreshed(self, spec: AccountSpec) -> None:
        account = self._accounts.get(spec.label)
        if account is None or account.spec is not spec:
            return  # a replaced or removed account's refresh ending late: not the stored one
        if self.keeper is not None and spec.label in self._kept:
            self.keeper.keep(_as_configured(account), existing_only=True)

    def kept(self, label: str) -> bool:
        """Whether the account was added at run time (the keeper stores it)."""
        return label in self._kept

    def free_label(self, base: str) -> str:
        """``base`` if no account has it, else ``base-2``, ``base-3``, ..."""
        return unique_label(base, set(self._accounts))

    def remove_account(self, label: str, *, from_store: bool = False) -> None:
        """``from_store``: the keeper's store no longer has it (another process removed it)."""
        account = self._get(label)
        del self._accounts[account.label]
        if account.label in self._kept:
            self._kept.discard(account.label)
            account.on_refreshed = None
            if self.keeper is not None and not from_store:
                self.keeper.forget(account.label)
        if account.refreshing():  # let it finish in the background (it has a loop, then)
            closing = asyncio.ensure_future(account.aclose())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        log.info("account %s removed", label)

    def set_proxy(self, label: str, proxy: str | None) -> AccountStatus:
        """Route the account's calls (chats, refreshes, credits) through ``proxy`` from the next
        call on: a proxy URL, ``direct``, None for ``KIRO_PROXY``, or ``configured`` for the one
        its configuration names. Kept by the keeper across restarts."""
        account = self._get(label)
        if proxy is not None and proxy.strip().lower() == CONFIGURED_PROXY:
            self.use_proxy(label, account.configured_proxy)
            if self.keeper is not None:
                self.keeper.forget_proxy(label)
        else:
            try:
                value = None if proxy is None or not proxy.strip() else check_account_proxy(proxy)
            except ValueError as exc:
                raise InvalidRequest(f"proxy: {exc}", param="proxy") from None
            self.use_proxy(label, value)
            if self.keeper is not None:
                self.keeper.keep_proxy(label, value)
        return account.status()

    def use_proxy(self, label: str, proxy: str | None) -> None:
        """``set_proxy`` without telling the keeper (the value came from the store)."""
        account = self._get(label)
        if account.spec.proxy != proxy:
            account.spec = replace(account.spec, proxy=proxy)
            log.info("account %s now goes through %s", label, mask_proxy(proxy) or "KIRO_PROXY")

    def _get(self, label: str) -> Account:
        account = self._accounts.get(label)
        if account is None:
            raise NotFound(f"no account labelled {label!r}")
        return account

    def _adopt_default_file(self) -> None:
        """The user logged in to Kiro after start-up: take the new login file into the pool."""
        path = self._pending_default_file
        if path is None:
            return
        now = self._clock()
        if self._accounts and now < self._next_default_check:
            return  # other accounts serve meanwhile: one stat a second is plenty
        self._next_default_check = now + _DEFAULT_FILE_RECHECK
        if not path.exists():
            return
        self._pending_default_file = None
        self._add_source(
            file_source(
                path, label=unique_label("kiro-login", set(self._accounts)), settings=self._settings
            )
        )
        log.info("found a Kiro login at %s", path)

    # --- visibility --------------------------------------------------------------------------

    def snapshot(self) -> list[AccountStatus]:
        self._adopt_default_file()
        self._revive_from_files()
        return [a.status() for a in self._accounts.values()]

    def has_accounts(self) -> bool:
        """Any account at all (a Kiro login made since start-up counts)."""
        self._adopt_default_file()
        return bool(self._accounts)

    def not_configured(self) -> NotConfigured:
        """The error for a pool without any account, saying how to get one."""
        # Clients and the page's visitors see this: the file's name, not where it is.
        where = f"…/{self._settings.kiro_token_file.name}"
        return NotConfigured(NOT_CONFIGURED_MESSAGE.format(path=where))

    def usable_count(self) -> int:
        return sum(1 for a in self._accounts.values() if a.usable())

    def state_counts(self) -> dict[str, float]:
        """Accounts by state, for ``/metrics``: the same as ``/health``'s."""
        return {state: float(n) for state, n in self.counts().items()}

    def counts(self) -> dict[str, int]:
        """Accounts by state (``suspended`` apart from the other ``disabled``), for ``/health``."""
        self._adopt_default_file()
        self._revive_from_files()
        counts = dict.fromkeys(("healthy", "cooling_down", "needs_login", "disabled"), 0)
        counts["suspended"] = 0
        for account in self._accounts.values():
            account.usable()  # settles an ended cooldown
            counts["suspended" if account.suspended else account.state] += 1
        return counts

    def __len__(self) -> int:
        return len(self._accounts)

    # --- choosing ----------------------------------------------------------------------------

    def _revive_from_files(self) -> None:
        # An account out of rotation for its login comes back when its file changes (one stat).
        for account in self._accounts.values():
            if account.state in ("needs_login", "disabled") and account.spec.token_file:
                account.sync_from_file()

    def _choose(
        self, skip: frozenset[str], model: str | None, prefer: str | None = None
    ) -> Account | None:
        accounts = list(self._accounts.values())
        longest = self._settings.queue_timeout  # a turn further off passes the account over
        candidates = [
            a
            for a in accounts
            if a.label not in skip and a.usable() and a.serves(model) and a.turn_wait() <= longest
        ]
        if not candidates:
            return None
        if prefer is not None:
            preferred = self._accounts.get(prefer)
            if preferred is not None and preferred in candidates:
                return preferred
        if self.strategy == "first":
            return candidates[0]
        if self.strategy == "round_robin":
            n = len(accounts)
            for step in range(n):
                account = accounts[(self._next + step) % n]
                if account in candidates:
                    self._next = (self._next + step + 1) % n
                    return account
        return min(candidates, key=lambda a: (a.turn_wait(), a.last_used))

    async def wait(self, seconds: float) -> None:
        """Sleep until ``seconds`` have passed on the pool's clock, so that a cooldown that
        long has ended: an event loop may wake a timer early (uvloop keeps the time in whole
        milliseconds), and one that ends a moment too soon would still refuse the account."""
        end = self._clock() + seconds
        await self.sleep(seconds)
        while (left := end - self._clock()) > 0:
            await self.sleep(left + 0.001)

    def any_ready(self, labels: set[str], model: str | None) -> bool:
        """Whether one of ``labels`` could serve ``model`` now (it failed only passingly)."""
        return any(
            a.usable() and a.serves(model) for a in self._accounts.values() if a.label in labels
        )

    async def acquire(
        self,
        exclude: frozenset[str] = frozenset(),
        model: str | None = None,
        lacking: frozenset[str] = frozenset(),
        prefer: str | None = None,
    ) -> Lease:
        """A lease on a healthy account that may serve ``model`` (Kiro's id) now; see the
        module's docstring for what is raised when there is none. ``exclude``: accounts this
        request tried already; ``lacking``: accounts that do not offer the model (their state
        says nothing about when it can be served); ``prefer``: the account to take if it can
        serve (else the strategy chooses)."""
        self._adopt_default_file()
        if not self._accounts:
            raise self.not_configured()
        self._revive_from_files()
        skip = exclude | lacking
        while True:
            account = self._choose(skip, model, prefer)
            if account is None:
                raise self._no_account(exclude, model, lacking)
            account.last_used = self._clock()  # before any await: spreads concurrent requests
            turn = account.take_turn()  # likewise: concurrent requests queue in order
            try:
                credential = await account.ensure_fresh()
                if turn is not None and (wait := turn - self._clock()) > 0:
                    await self._wait_for_turn(account, wait)
            except GatewayError as exc:
                account.give_back_turn(turn)
                log.info("account %s unusable: %s", account.label, exc.message)
                skip = skip | {account.label}
                continue
            except BaseException:  # cancelled while waiting: the turn is free for another
                account.give_back_turn(turn)
                raise
            account.requests += 1
            return Lease(account, self, credential, model)

    async def _wait_for_turn(self, account: Account, seconds: float) -> None:
        log.info(
            "account %s: a request waits %.2f s for its turn (minimum interval %.0f ms)",
            account.label,
            seconds,
            account.min_interval * 1000,
        )
        account.waiting += 1
        try:
            await self.wait(seconds)
        finally:
            account.waiting -= 1

    def _no_account(
        self, exclude: frozenset[str], model: str | None, lacking: frozenset[str] = frozenset()
    ) -> GatewayError:
        """Why no account can serve ``model`` now, told by the way out that comes first: an
        account or model cooling down after Kiro's throttles (429, with the shortest wait and
        what Kiro said), accounts out of quota (429 insufficient_quota), or else 503."""
        now = self._clock()
        blocked: list[tuple[Account, Cooldown]] = []
        paced: list[float] = []  # seconds to the next turn of accounts passed over for it
        parts = []
        for account in self._accounts.values():
            if account.label in lacking:
                parts.append(f"{account.label}: does not offer {model}")
                continue
            cooldown = account.blocking(model)
            if cooldown is not None:
                blocked.append((account, cooldown))
                parts.append(f"{account.label}: {_cooldown_text(cooldown, now)}")
            elif account.label in exclude and account.state == "healthy":
                parts.append(f"{account.label}: already tried")
            elif account.state == "healthy" and account.turn_wait() > 0:
                paced.append(account.turn_wait())
                parts.append(
                    f"{account.label}: next turn in {math.ceil(paced[-1])} s (minimum interval "
                    f"{account.min_interval * 1000:.0f} ms)"
                )
            else:
                parts.append(f"{account.label}: {account.status().description}")
        listing = hide_paths("; ".join(parts) + ".")  # clients see a login file's name only
        first = min(blocked, key=lambda b: b[1].until)[1] if blocked else None
        retry_after = max(0.0, first.until - now) if first is not None else None
        if paced and (retry_after is None or min(paced) <= retry_after):
            return AccountsPaced(
                f"Every Kiro account that can serve {model or 'this request'} is pacing its "
                f"requests and none has a turn within {self._settings.queue_timeout:g} s "
                f"(QUEUE_TIMEOUT); the first is free in {math.ceil(min(paced))} s: {listing}",
                retry_after=min(paced),
            )
        if first is not None and first.cause in ("rate_limit", "capacity"):
            what = f"Kiro is throttling every account that can serve {model or 'this request'}"
            return AccountsCoolingDown(
                f"{what}; the first is back in {math.ceil(retry_after or 0)} s: {listing}",
                retry_after=retry_after,
            )
        if first is not None and first.cause == "quota":
            return QuotaExceeded(
                "Every Kiro account that can serve this request has used up its quota: " + listing,
                retry_after=retry_after,
            )
        hint = ""
        if any(a.state == "needs_login" for a in self._accounts.values()):
            hint = (
                " Log in to Kiro again (or update the account's refresh token), then retry "
                "or POST /admin/accounts/{label}/refresh."
            )
        return NoHealthyAccount(
            "No Kiro account can take this request right now: " + listing + hint,
            retry_after=retry_after,
        )

    # --- one-off credentials (a visitor's own token in the UI) ------------------------------

    async def ephemeral_lease(self, spec: AccountSpec | str) -> Lease:
        """A lease on an account that is not in the pool: refreshed in memory only, never saved.

        ``spec`` is an :class:`AccountSpec` (e.g. from :func:`parse_pasted_token`) or the pasted
        text itself. After use, ``lease.spec`` holds the current tokens for the caller to keep.
        Raises ``InvalidRequest`` for unusable text, ``NeedsLogin`` / ``Upstream*`` errors when
        the token cannot be refreshed.
        """
        if isinstance(spec, str):
            try:
                spec = parse_pasted_token(spec, self._settings)
            except CredentialError as exc:
                raise InvalidRequest(str(exc)) from None
        account = Account(
            replace(spec, token_file=None, client_file=None),
            settings=self._settings,
            refresher=self._refresher,
            clock=self._clock,
        )
        if account.state != "healthy":
            raise NeedsLogin(f"the token for {spec.label!r} cannot be used: {account.reason}")
        credential = await account.ensure_fresh()
        return Lease(account, None, credential)

    # --- admin actions -----------------------------------------------------------------------

    async def refresh_account(self, label: str) -> AccountStatus:
        """Refresh now (re-reading its login file first); success puts it back in rotation."""
        account = self._get(label)
        if account.spec.token_file is not None and account.sync_from_file(thorough=True):
            account.enable()
            if not account.needs_refresh():
                return account.status()
        if not account.spec.can_refresh:
            raise InvalidRequest(
                f"account {label!r} cannot be refreshed "
                + ("(an API key)" if account.spec.is_api_key else "(no refresh token / client)")
            )
        await account.refresh(account.spec.access_token)
        account.enable()
        return account.status()

    async def with_credential(self, label: str, call: Callable[[Credential], Awaitable[T]]) -> T:
        """An off-path call (usage, model list) with the account's fresh token; once more with
        a newer token if the service refuses this one."""
        account = self._get(label)
        credential = await account.ensure_fresh()
        try:
            return await call(credential)
        except TokenExpired:
            newer = await account.recover_rejected_token(credential.access_token)
            if newer is None:
                raise
            return await call(newer)

    def labels(self) -> list[str]:
        return list(self._accounts)

    def account(self, label: str) -> Account | None:
        """The live account (for state sharing between replicas), or None."""
        return self._accounts.get(label)

    def accounts(self) -> list[Account]:
        return list(self._accounts.values())

    def secrets(self) -> list[str]:
        """Every secret the accounts hold now (tokens, OIDC client secrets, proxy passwords), for
        leak checks such as the backup's (:mod:`ki2api.store.backup`). Never log, show or send
        these."""
        found: list[str] = []
        for account in list(self._accounts.values()):  # the backup asks from its own thread
            spec = account.spec
            found += [s for s in (spec.access_token, spec.refresh_token, spec.client_secret) if s]
            found += [p for p in map(proxy_password, (spec.proxy, account.configured_proxy)) if p]
        return found

    def usable_labels(self) -> list[str]:
        return [a.label for a in self._accounts.values() if a.usable()]

    def usage_labels(self) -> list[str]:
        """Accounts whose credits are worth asking for: those serving or cooling down (a
        suspended account's or a dead login's call would fail)."""
        return [a.label for a in self._accounts.values() if a.state in ("healthy", "cooling_down")]

    async def fetch_usage(self, label: str) -> UsageLimits:
        """Ask the service for the account's remaining credits and reset date, and keep them
        on the account. A suspension found this way takes the account out, as a chat would."""
        account = self._get(label)
        try:
            usage = await self.with_credential(
                label,
                lambda credential: fetch_usage_limits(
                    self._http.for_proxy(credential.proxy), self._settings, credential
                ),
            )
        except GatewayError as exc:
            account.usage_error = exc.message
            if isinstance(exc, AccountSuspended):
                account.record_error(exc)
                apply_failure(account, exc)
            raise
        account.usage, account.usage_error = usage, None
        return usage


def _as_configured(account: Account) -> AccountSpec:
    """The account's spec to store: its tokens now, the proxy its fields name (a proxy set at
    run time is stored apart, :meth:`AccountKeeper.keep_proxy`)."""
    return replace(account.spec, proxy=account.configured_proxy)


def _cooldown_text(cooldown: Cooldown, now: float) -> str:
    scope = f"{cooldown.model} " if cooldown.model else ""
    left = math.ceil(max(0.0, cooldown.until - now))
    why = f"{CAUSE_TEXT[cooldown.cause]}: {cooldown.reason}"
    return f"{scope}cooling down for {left} s more ({why})"


__all__ = [
    "AccountPool",
    "AccountSpec",
    "AccountStatus",
    "Credential",
    "Lease",
    "NeedsLogin",
    "parse_pasted_token",
]
