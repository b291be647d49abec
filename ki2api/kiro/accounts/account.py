"""One account's live state: current tokens, health, counters, and its single-flight refresh.

States: ``healthy``; ``cooling_down`` until a time (quota, throttling, a failed refresh);
``needs_login`` (the refresh token is dead, or there is none and the token expired);
``disabled`` (the service refused the account: not authorised, or ``suspended``: Kiro suspended
or flagged it). Apart from its state, a healthy account can have models cooling down on it (Kiro
lacked capacity for them): it serves every other model meanwhile.

An account may keep a minimum interval between the requests it sends (``KIRO_MIN_INTERVAL_MS``,
or ``minIntervalMs`` on the account): each request takes the next free turn
(:meth:`Account.take_turn`) and waits for it; the pool decides how long a wait is acceptable.

However many requests find the token stale at once, one refresh runs (a shared task that a
cancelled waiter cannot abort); the others wait for it and use its result. Accounts that came
from a login file re-read it before refreshing (another program may have refreshed already) and
write refreshed tokens back to it.

Replicas sharing state (``REDIS_URL``, :mod:`ki2api.shared`) hear of each change of state as a
:class:`StateChange` (``on_change``) and hand back the merged view of the others with
:meth:`Account.adopt_shared` and :meth:`Account.adopt_tokens`; without it both stay unused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from ki2api.kiro.accounts.credentials import (
    AccountSpec,
    Credential,
    CredentialError,
    format_time,
    mask_secret,
)
from ki2api.kiro.accounts.proxy import mask_proxy
from ki2api.kiro.accounts.refresh import NeedsLogin, RefreshResult
from ki2api.kiro.accounts.tokenfile import (
    FileStamp,
    LoginFile,
    digest_of,
    load_login_file,
    stamp_of,
    update_login_file,
)
from ki2api.kiro.accounts.usage_limits import UsageLimits
from ki2api.model.errors import GatewayError, UpstreamUnavailable
from ki2api.settings import Settings

log = logging.getLogger("ki2api.accounts")

State = Literal["healthy", "cooling_down", "needs_login", "disabled"]
# Why a cooldown applies: Kiro's rate limit for the account, Kiro's capacity for one model,
# the account's quota, or a failed token refresh.
Cause = Literal["rate_limit", "capacity", "quota", "refresh"]
CAUSE_TEXT: dict[str, str] = {
    "rate_limit": "rate limit",
    "capacity": "model capacity",
    "quota": "quota",
    "refresh": "token refresh",
}
Refresher = Callable[[AccountSpec], Awaitable[RefreshResult]]
Clock = Callable[[], float]

REFRESH_MARGIN = 300.0  # refresh this long before expiresAt
REFRESH_FAILURE_COOLDOWN = 15.0  # after a refresh that failed for a reason other than the login


@dataclass(frozen=True, slots=True)
class StateChange:
    """One change of an account's state, as told to the other replicas: a cooldown (``cool``,
    of the account or of ``model``) or a new state (``set``: needs_login, disabled, or healthy
    again by an operator's hand or a new login)."""

    kind: Literal["cool", "set"]
    state: State
    reason: str | None = None
    cause: Cause | None = None
    model: str | None = None
    seconds: float = 0.0  # a cooldown's length
    suspended: bool = False  # disabled because Kiro suspended or flagged the account


@dataclass(frozen=True, slots=True)
class SharedState:
    """The replicas' merged view of one account: ``generation`` counts the ``set`` changes
    (a newer one wins), cooldowns are in seconds from now (the longer one wins)."""

    generation: int
    state: State
    reason: str | None
    cause: Cause | None
    cooldown: float | None  # the account's, seconds left
    models: dict[str, tuple[float, str]]  # model -> (seconds left, reason)
    suspended: bool = False


@dataclass(frozen=True, slots=True)
class Cooldown:
    """The whole account (``model`` None) or one model on it, out until ``until`` (clock time)."""

    model: str | None
    cause: Cause
    reason: str  # what Kiro said
    until: float


@dataclass(frozen=True, slots=True)
class CooldownStatus:
    """One cooldown as the admin API and the UI show it."""

    model: str | None  # None: the whole account
    cause: Cause
    reason: str
    until: datetime
    seconds: float  # left when the status was taken

    @property
    def scope(self) -> str:
        return self.model or "all models"

    @property
    def description(self) -> str:
        """``claude-sonnet-4.5: model capacity, 3 s more (Kiro 429 ...)``"""
        left = f"{math.ceil(self.seconds)} s more"
        return f"{self.scope}: {CAUSE_TEXT[self.cause]}, {left} ({self.reason})"

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "scope": "account" if self.model is None else "model",
            "cause": self.cause,
            "reason": self.reason,
            "until": self.until.isoformat(),
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """What the admin API, ``/health`` and the UI show; holds no secret."""

    label: str
    source: str
    auth_method: str
    token: str  # masked
    expires_at: datetime | None
    state: State
    until: datetime | None
    reason: str | None
    requests: int
    errors: int
    last_error: str | None
    usage: UsageLimits | None
    can_refresh: bool
    cause: Cause | None = None  # why the whole account is cooling down
    cooldowns: tuple[CooldownStatus, ...] = ()  # the account's and its models'
    suspended: bool = False  # disabled because Kiro suspended or flagged it
    usage_error: str | None = None  # why the last getUsageLimits call failed
    min_interval_ms: float = 0.0  # between two requests sent on the account; 0: none
    waiting: int = 0  # requests waiting for their turn now
    proxy: str | None = None  # masked: None (KIRO_PROXY), "direct" or scheme://***@host:port

    @property
    def shown_state(self) -> str:
        """The state, with ``suspended`` told apart from other reasons to be disabled."""
        return "suspended" if self.suspended else self.state

    @property
    def description(self) -> str:
        """``healthy`` | ``cooling down until 12:00:05Z (why)`` | ``needs login: why`` | ...,
        then the models cooling down on the account, if any."""
        models = "; ".join(c.description for c in self.cooldowns if c.model is not None)
        if self.state == "healthy":
            return f"healthy; {models}" if models else "healthy"
        if self.state == "cooling_down" and self.until is not None:
            when = self.until.astimezone(UTC).strftime("%H:%M:%SZ")
            why = f"{CAUSE_TEXT[self.cause]}: {self.reason}" if self.cause else self.reason
            text = f"cooling down until {when}" + (f" ({why})" if why else "")
            return f"{text}; {models}" if models else text
        text = self.shown_state.replace("_", " ")
        return f"{text}: {self.reason}" if self.reason else text

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "source": self.source,
            "auth_method": self.auth_method,
            "token": self.token,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "state": self.state,
            "until": self.until.isoformat() if self.until else None,
            "reason": self.reason,
            "description": self.description,
            "requests": self.requests,
            "errors": self.errors,
            "last_error": self.last_error,
            "usage": self.usage.to_dict() if self.usage else None,
            "can_refresh": self.can_refresh,
            "cause": self.cause,
            "cooldowns": [c.to_dict() for c in self.cooldowns],
            "suspended": self.suspended,
            "usage_error": self.usage_error,
            "min_interval_ms": self.min_interval_ms,
            "waiting": self.waiting,
            "proxy": self.proxy,
        }


class Account:
    def __init__(
        self,
        spec: AccountSpec,
        *,
        settings: Settings,
        refresher: Refresher,
        clock: Clock = time.monotonic,
        login_file: LoginFile | None = None,
        min_interval_ms: float | None = None,
        on_change: Callable[[Account, StateChange], None] | None = None,
    ) -> None:
        self.spec = spec
        # The proxy the account's configuration names; ``spec.proxy`` differs from it while a
        # proxy set at run time (the admin API, the page, the CLI) holds.
        self.configured_proxy = spec.proxy
        self.on_change = on_change  # told of every change of state (replicas share them)
        self.generation = 0  # the last shared ``set`` change this account took or made
        self._settings = settings
        self._refresher = refresher
        self._clock = clock
        self.state: State = "healthy"
        self.reason: str | None = None
        self.cause: Cause | None = None  # while cooling_down
        self._until: float | None = None  # monotonic end of a cooldown
        self._models: dict[str, Cooldown] = {}  # models cooling down on this account
        # Throttles in a row, per account (key None) and per model: (count, time of the last).
        self._streaks: dict[str | None, tuple[int, float]] = {}
        self.requests = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_used = 0.0
        self.usage: UsageLimits | None = None
        self.usage_error: str | None = None
        self.suspended = False  # disabled because Kiro suspended or flagged the account
        # Pacing: the account's own interval, else the gateway's; the clock time of its next
        # free turn; requests waiting for theirs.
        interval = settings.kiro_min_interval_ms if min_interval_ms is None else min_interval_ms
        self.min_interval = max(0.0, interval) / 1000.0
        self._next_turn = 0.0
        self.waiting = 0
        self._force_refresh = False  # the service refused a token we thought was fine
        self._inflight: asyncio.Task[None] | None = None
        self._refresh_backoff_until = 0.0  # after a failed refresh: no new attempt before this
        self._writing = False
        self._rotation_noted = False
        # Set by the pool for accounts added at run time: their new tokens go to the store.
        self.on_refreshed: Callable[[AccountSpec], None] | None = None
        self._stamp: FileStamp | None = login_file.stamp if login_file else None
        self._digest: str | None = login_file.digest if login_file else None
        if not spec.access_token and not spec.can_refresh:
            self.set_needs_login(
                "an IdC login needs its OIDC client (clientId / clientSecret) to refresh"
                if spec.auth_method == "idc" and spec.refresh_token
                else "no access token and no refresh token"
            )

    @property
    def label(self) -> str:
        return self.spec.label

    # --- health ------------------------------------------------------------------------------

    def usable(self) -> bool:
        if self.state == "cooling_down" and self._until is not None:
            if self._clock() >= self._until:
                self._set_healthy()
        return self.state == "healthy"

    def serves(self, model: str | None) -> bool:
        """False while ``model`` cools down on this account (one lookup in a dict that is
        empty unless Kiro lacked capacity lately)."""
        if model is None or not self._models:
            return True
        cooldown = self._models.get(model)
        if cooldown is None:
            return True
        if self._clock() >= cooldown.until:
            del self._models[model]
            return True
        return False

    def cooldown_remaining(self) -> float | None:
        if self.state != "cooling_down" or self._until is None:
            return None
        return max(0.0, self._until - self._clock())

    def blocking(self, model: str | None) -> Cooldown | None:
        """The cooldown that keeps this account from serving ``model`` now (the longer one when
        both the account and the model cool down), or None."""
        found: Cooldown | None = None
        self.usable()  # settles an ended cooldown
        if self.state == "cooling_down" and self._until is not None and self.cause is not None:
            found = Cooldown(None, self.cause, self.reason or "", self._until)
        if model is not None and not self.serves(model):
            mine = self._models[model]
            if found is None or mine.until > found.until:
                found = mine
        return found

    def cooling(self, model: str | None) -> bool:
        """True while a throttle-type cooldown of the account or of ``model`` is running:
        throttles answered meanwhile were sent before it, and do not make it longer."""
        if model is not None:
            return not self.serves(model)
        return not self.usable() and self.cause == "rate_limit"

    def _set_healthy(self) -> None:
        self.state, self.reason, self.cause, self._until = "healthy", None, None, None
        self.suspended = False

    # --- pacing ------------------------------------------------------------------------------

    def turn_wait(self) -> float:
        """Seconds until this account's next free turn (0 without a minimum interval)."""
        if not self.min_interval:
            return 0.0
        return max(0.0, self._next_turn - self._clock())

    def take_turn(self) -> float | None:
        """Reserve the next free turn and return its clock time (None: the account keeps no
        interval). Turns are handed out in order: concurrent requests queue, none polls."""
        if not self.min_interval:
            return None
        turn = max(self._clock(), self._next_turn)
        self._next_turn = turn + self.min_interval
        return turn

    def give_back_turn(self, turn: float | None) -> None:
        """A request gave up the turn it took (it was cancelled while waiting for it): free it
        again, unless a later request took the one after it."""
        if turn is not None and self._next_turn == turn + self.min_interval:
            self._next_turn = turn

    def cool_down(self, seconds: float, reason: str, cause: Cause = "refresh") -> None:
        if self.state in ("needs_login", "disabled"):
            return  # a worse state wins
        until = self._clock() + max(0.0, seconds)
        if self.state == "cooling_down" and self._until is not None and self._until > until:
            return
        self.state, self.reason, self.cause, self._until = "cooling_down", reason, cause, until
        log.info("account %s cooling down for %.1fs: %s", self.label, seconds, reason)
        self._changed(StateChange("cool", self.state, reason, cause, None, seconds))

    def cool_model(self, model: str, seconds: float, reason: str) -> None:
        """Keep ``model`` off this account for ``seconds``; other models are not affected."""
        until = self._clock() + max(0.0, seconds)
        current = self._models.get(model)
        if current is not None and current.until > until:
            return
        self._models[model] = Cooldown(model, "capacity", reason, until)
        log.info("account %s: %s cooling down for %.1fs: %s", self.label, model, seconds, reason)
        self._changed(StateChange("cool", self.state, reason, "capacity", model, seconds))

    def note_throttle(self, model: str | None, window: float) -> int:
        """Count a throttle of the account (``model`` None) or of one model's capacity; return
        how many came in a row, each within ``window`` seconds of the one before."""
        now = self._clock()
        count, last = self._streaks.get(model, (0, now))
        count = count + 1 if now - last <= window else 1
        self._streaks[model] = (count, now)
        return count

    def set_needs_login(self, reason: str) -> None:
        self.state, self.reason, self.cause, self._until = "needs_login", reason, None, None
        self.suspended = False
        log.warning("account %s needs a new Kiro login: %s", self.label, reason)
        self._changed(StateChange("set", "needs_login", reason))

    def disable(self, reason: str, *, suspended: bool = False) -> None:
        self.state, self.reason, self.cause, self._until = "disabled", reason, None, None
        self.suspended = suspended
        log.warning(
            "account %s %s: %s", self.label, "suspended" if suspended else "disabled", reason
        )
        self._changed(StateChange("set", "disabled", reason, suspended=suspended))

    def enable(self) -> None:
        self._set_healthy()
        self._models.clear()
        self._streaks.clear()
        self._changed(StateChange("set", "healthy"))

    def _changed(self, change: StateChange) -> None:
        if self.on_change is not None:
            self.on_change(self, change)

    def adopt_shared(self, shared: SharedState) -> None:
        """Take the other replicas' view: a newer ``set`` change (by generation), and any
        cooldown longer than ours. Tells nobody (it came from them)."""
        now = self._clock()
        if shared.generation > self.generation:
            self.generation = shared.generation
            if shared.state in ("needs_login", "disabled"):
                if self.state != shared.state or self.reason != shared.reason:
                    log.warning(
                        "account %s: %s (seen by another replica): %s",
                        self.label,
                        shared.state.replace("_", " "),
                        shared.reason,
                    )
                self.state, self.reason, self.cause, self._until = (
                    shared.state,
                    shared.reason,
                    None,
                    None,
                )
                self.suspended = shared.suspended
            elif self.state in ("needs_login", "disabled"):
                self._set_healthy()
                self._models.clear()
                log.info("account %s is back in rotation (by another replica)", self.label)
        if shared.cooldown is not None and shared.cooldown > 0 and shared.cause is not None:
            until = now + shared.cooldown
            mine = self._until if self.state == "cooling_down" else None
            if self.state in ("healthy", "cooling_down") and (mine is None or mine < until):
                self.state, self.reason, self.cause = "cooling_down", shared.reason, shared.cause
                self._until = until
        for model, (seconds, reason) in shared.models.items():
            until = now + seconds
            current = self._models.get(model)
            if seconds > 0 and (current is None or current.until < until):
                self._models[model] = Cooldown(model, "capacity", reason, until)

    def record_error(self, error: GatewayError | str) -> None:
        self.errors += 1
        self.last_error = error if isinstance(error, str) else error.message

    def record_success(self, model: str | None = None) -> None:
        """An answer: the throttles in a row (the account's, the model's) are over."""
        if self._streaks:
            self._streaks.pop(None, None)
            self._streaks.pop(model, None)

    def mark_token_suspect(self) -> None:
        self._force_refresh = True

    def cooldowns(self) -> tuple[CooldownStatus, ...]:
        """Every cooldown running now: the account's, then its models'."""
        now, wall = self._clock(), datetime.now(UTC)
        running = list(self._models.values())
        if self.state == "cooling_down" and self._until is not None and self.cause is not None:
            running.insert(0, Cooldown(None, self.cause, self.reason or "", self._until))
        return tuple(
            CooldownStatus(
                c.model, c.cause, c.reason, wall + timedelta(seconds=c.until - now), c.until - now
            )
            for c in running
            if c.until > now
        )

    def status(self) -> AccountStatus:
        remaining = self.cooldown_remaining()
        self.usable()  # settles an ended cooldown
        until = (
            datetime.now(UTC) + timedelta(seconds=remaining)
            if remaining is not None and self.state == "cooling_down"
            else None
        )
        return AccountStatus(
            label=self.label,
            source=self.spec.source,
            auth_method=self.spec.auth_method,
            token=mask_secret(self.spec.access_token or self.spec.refresh_token),
            expires_at=self.spec.expires_at,
            state=self.state,
            until=until,
            reason=self.reason,
            requests=self.requests,
            errors=self.errors,
            last_error=self.last_error,
            usage=self.usage,
            can_refresh=self.spec.can_refresh,
            cause=self.cause if self.state == "cooling_down" else None,
            cooldowns=self.cooldowns(),
            suspended=self.suspended,
            usage_error=self.usage_error,
            min_interval_ms=self.min_interval * 1000.0,
            waiting=self.waiting,
            proxy=mask_proxy(self.spec.proxy),
        )

    def credential(self) -> Credential | None:
        return self.spec.credential()

    # --- the login file ----------------------------------------------------------------------

    def sync_from_file(self, *, thorough: bool = False) -> bool:
        """Adopt the login file's tokens if another program changed it; True when adopted.

        The quick check compares the file's stamp (one ``stat``); ``thorough`` also compares the
        contents, for writes that left the stamp unchanged.
        """
        path = self.spec.token_file
        if path is None or self._writing:
            return False  # while we write, the file is ours (old or new, both known)
        stamp = stamp_of(path)
        if stamp is None:
            return False
        if stamp == self._stamp and (not thorough or digest_of(path) == self._digest):
            return False
        try:
            fresh = load_login_file(
                path, label=self.label, source=self.spec.source, settings=self._settings
            )
        except CredentialError as exc:
            # Half-written by another program, most likely: keep what we have, and look again
            # once it changes (remembering the stamp keeps this from being logged per request).
            self._stamp, self._digest = stamp, None
            log.warning("account %s: cannot use %s right now: %s", self.label, path, exc)
            return False
        self._stamp, self._digest = fresh.stamp, fresh.digest
        new = replace(fresh.spec, proxy=self.spec.proxy)  # set by KIRO_ACCOUNTS, not the file
        if (new.access_token, new.refresh_token) == (
            self.spec.access_token,
            self.spec.refresh_token,
        ):
            self.spec = new  # other fields (expiry, profile) may still have changed
            return False
        if self._is_older(new):
            # Another program saved a login older than ours (it had not seen our refresh):
            # our tokens are the live ones.
            log.warning("account %s: %s holds older tokens than ours; kept ours", self.label, path)
            return False
        self.spec = new
        self._force_refresh = False
        if self.state in ("needs_login", "disabled"):
            self._set_healthy()  # a new login revives the account
            self._changed(StateChange("set", "healthy"))
        log.info(
            "account %s: picked up new tokens from %s (token %s)",
            self.label,
            path,
            mask_secret(new.access_token),
        )
        return True

    def _is_older(self, other: AccountSpec) -> bool:
        if self.state in ("needs_login", "disabled") or not self.spec.access_token:
            return False
        mine, theirs = self.spec.expires_at, other.expires_at
        return mine is not None and theirs is not None and theirs < mine - timedelta(minutes=1)

    async def adopt_tokens(self, result: RefreshResult) -> bool:
        """Tokens another replica refreshed (shared state): used from now on and written to
        the login file, if any; True if they were new to this account."""
        if (result.access_token, result.refresh_token or self.spec.refresh_token) == (
            self.spec.access_token,
            self.spec.refresh_token,
        ):
            return False
        self.spec = replace(
            self.spec,
            access_token=result.access_token,
            refresh_token=result.refresh_token or self.spec.refresh_token,
            expires_at=result.expires_at,
            profile_arn=result.profile_arn or self.spec.profile_arn,
        )
        self._force_refresh = False
        self._refresh_backoff_until = 0.0
        if self.state == "needs_login":
            self._set_healthy()  # a new login
            self._changed(StateChange("set", "healthy"))
        elif self.state == "cooling_down" and self.cause == "refresh":
            self._set_healthy()  # the refresh that failed here worked there
        log.info(
            "account %s: took the tokens another replica refreshed (token %s)",
            self.label,
            mask_secret(result.access_token),
        )
        await self._write_back(result)
        return True

    async def _write_back(self, result: RefreshResult) -> None:
        path = self.spec.token_file
        if path is None:
            return
        updates: dict[str, object] = {
            "accessToken": result.access_token,
            "expiresAt": format_time(result.expires_at),
        }
        if result.refresh_token:
            updates["refreshToken"] = result.refresh_token
        if result.profile_arn:
            updates["profileArn"] = result.profile_arn
        self._writing = True
        try:
            self._stamp, self._digest = await asyncio.to_thread(update_login_file, path, updates)
        except (OSError, CredentialError) as exc:
            # The new tokens still work from memory; a later successful write will persist them.
            log.error(
                "account %s: could not write refreshed tokens to %s: %s", self.label, path, exc
            )
        finally:
            self._writing = False

    # --- refresh -----------------------------------------------------------------------------

    def _token_unusable(self) -> bool:
        return self._force_refresh or self.spec.expires_within(0)

    def needs_refresh(self) -> bool:
        if not self.spec.can_refresh:
            return False
        return self._force_refresh or self.spec.expires_within(REFRESH_MARGIN)

    async def refresh(self, stale_token: str | None) -> None:
        """Refresh unless the token already moved on from ``stale_token``; one flight at a time."""
        if self.spec.access_token != stale_token and self.spec.access_token is not None:
            return
        task = self._inflight
        if task is None or task.done():
            task = asyncio.create_task(self._refresh_now(), name=f"refresh {self.label}")
            task.add_done_callback(_retrieve_exception)
            self._inflight = task
        await asyncio.shield(task)

    async def _refresh_now(self) -> None:
        stale = self.spec.access_token
        if self.sync_from_file(thorough=True) and not self.spec.expires_within(REFRESH_MARGIN):
            return  # another program refreshed it for us
        try:
            result = await self._refresher(self.spec)
        except NeedsLogin as exc:
            # The file may hold a newer refresh token than ours (another program rotated it).
            if self.sync_from_file(thorough=True) and self.spec.access_token != stale:
                return
            self.record_error(exc)
            self.set_needs_login(exc.message)
            raise
        except GatewayError as exc:
            self.record_error(exc)
            self._refresh_backoff_until = self._clock() + REFRESH_FAILURE_COOLDOWN
            if self._token_unusable():  # else it keeps serving until it expires
                self.cool_down(REFRESH_FAILURE_COOLDOWN, f"refresh failed: {exc.message}")
            raise
        self.spec = replace(
            self.spec,
            access_token=result.access_token,
            refresh_token=result.refresh_token or self.spec.refresh_token,
            expires_at=result.expires_at,
            profile_arn=result.profile_arn or self.spec.profile_arn,
        )
        self._force_refresh = False
        self._refresh_backoff_until = 0.0
        if self.state == "cooling_down" and self.cause == "refresh":
            self._set_healthy()
        log.info(
            "account %s refreshed (token %s, expires %s%s)",
            self.label,
            mask_secret(result.access_token),
            format_time(result.expires_at),
            ", refresh token rotated" if result.refresh_token else "",
        )
        if self.on_refreshed is not None:
            self.on_refreshed(self.spec)
        elif (
            result.refresh_token
            and self.spec.token_file is None
            and self.spec.source != "pasted"  # the session keeps lease.spec itself
            and not self._rotation_noted
        ):
            self._rotation_noted = True
            log.warning(
                "account %s: Kiro rotated its refresh token; the new one is kept in memory only, "
                "so the configured one (%s) may stop working after a restart. Use a login file "
                "(KIRO_TOKEN_FILE) for this account, or update the secret.",
                self.label,
                self.spec.source,
            )
        await self._write_back(result)

    async def ensure_fresh(self) -> Credential:
        """The credential to use now, refreshing first when it is (nearly) expired.

        Raises the refresh's error when the token cannot be used (the account's state is set).
        A refresh that fails while the old token is still valid is logged and the old token used.
        """
        self.sync_from_file()
        if self.needs_refresh():
            wait = self._refresh_backoff_until - self._clock()
            if wait <= 0:
                try:
                    await self.refresh(self.spec.access_token)
                except NeedsLogin:
                    raise
                except GatewayError:
                    if self._token_unusable():
                        raise
                    log.warning(
                        "account %s: early refresh failed; the token is still valid", self.label
                    )
            elif self._token_unusable():  # a refresh failed moments ago: do not hammer it
                self.cool_down(wait, "refresh failed recently")
                raise UpstreamUnavailable(
                    f"account {self.label!r}: refreshing its token failed moments ago"
                )
        credential = self.credential()
        if credential is None or (self.spec.expires_within(0) and not self.spec.can_refresh):
            reason = "the access token has expired and there is no refresh token"
            self.set_needs_login(reason)
            raise NeedsLogin(f"account {self.label!r}: {reason}")
        return credential

    async def recover_rejected_token(self, rejected: str) -> Credential | None:
        """The service refused ``rejected`` as expired: a newer token, or None if none helps."""
        if self.state in ("needs_login", "disabled"):
            return None
        if self.spec.access_token not in (None, rejected):
            return self.credential()  # already refreshed by a concurrent request
        self._force_refresh = True  # whatever its expiry says, this token is dead
        if self._clock() < self._refresh_backoff_until and not self.refreshing():
            wait = self._refresh_backoff_until - self._clock()
            self.cool_down(wait, "refresh failed recently")
            return None  # a refresh just failed (outage): do not hammer the endpoint
        if self._inflight is None or self._inflight.done():
            # Before spending a refresh, look whether another program already did.
            if self.sync_from_file(thorough=True) and self.spec.access_token != rejected:
                return self.credential()
        if not self.spec.can_refresh:
            self.set_needs_login("Kiro refused the access token and there is no refresh token")
            return None
        try:
            await self.refresh(rejected)
        except GatewayError:
            return None  # the state says why (needs login / cooling down)
        if self.spec.access_token == rejected:
            return None
        return self.credential()

    def refreshing(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    async def aclose(self, grace: float = 3.0) -> None:
        """Let a refresh in flight finish (a rotated token must not be lost), then stop it."""
        task = self._inflight
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except (TimeoutError, GatewayError):
            pass
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _retrieve_exception(task: asyncio.Task[None]) -> None:
    # Waiters may all be gone (cancelled); mark the outcome as seen so asyncio does not warn.
    if not task.cancelled():
        task.exception()
