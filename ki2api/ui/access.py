"""Who may chat on the pool's accounts from the page, and the API's checks on each chat.

The page's events can be called over raw HTTP by anyone who can load it (hidden ones too), so
each handler decides for itself. The pool is used only for a visitor who signed in on the page
with the API key, a client key or the admin key (the sign-in lives in their session's
``gr.State``), or by anyone in demo mode (the pool is the built-in simulator); otherwise only a
token the visitor pasted is used. Each chat on the pool passes the API's key check and rate
limit (the same buckets as the API's; a client key's own limits, :mod:`ki2api.teams`), is
counted in the metrics, the access log (``/playground/chat``) and the key's usage, and the
page's chats together hold at most ``PLAYGROUND_MAX_SHARE`` of the pool's slots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ki2api.api.auth import check_presented_key
from ki2api.api.limits import RateLimiter, key_digest
from ki2api.api.observability import PLAYGROUND_PATH, Metrics, record
from ki2api.model.context import Caller, RequestContext
from ki2api.model.errors import AuthenticationFailed, RateLimited, UpstreamUnavailable
from ki2api.settings import Settings
from ki2api.teams.gate import OPERATOR, Teams
from ki2api.ui.tokens import PageKey, admin_key_ok

if TYPE_CHECKING:
    from ki2api.runtime import Runtime

_SLOTS_WHEN_UNBOUNDED = 16  # MAX_CONCURRENT_PER_ACCOUNT=0: count an account as its default


class NotSignedIn(AuthenticationFailed):
    """A chat on the pool from a visitor who neither signed in nor pasted a token."""

    openai_code = "not_signed_in"


class PlaygroundBusy(UpstreamUnavailable):
    """The page's chats already hold their share of the pool's slots."""

    openai_code = "playground_busy"


@dataclass(slots=True)
class ApiChecks:
    """The API's machinery the page reuses: settings, the rate limiter, the metrics, the
    client keys."""

    settings: Settings
    metrics: Metrics
    limiter: RateLimiter | None = None
    teams: Teams | None = None


class Playground:
    """Admission for the page's chats on the pool, and their accounting."""

    def __init__(self, checks: ApiChecks, runtime: Runtime) -> None:
        self.checks = checks
        self.runtime = runtime
        self.in_flight = 0  # the page's chats holding a pool slot now

    def check_key(self, signed: PageKey | None) -> None:
        """The API's key check for a chat on the pool (nothing for a visitor's own token: that
        spends their own account); :meth:`check_rate` follows."""
        settings = self.checks.settings
        if signed is None:
            if settings.demo:
                return  # the pool is the built-in simulator
            pool = self.runtime.pool
            if not pool.has_accounts():  # the page's banner says so too: say how to get one
                raise pool.not_configured()
            raise NotSignedIn(
                "Sign in with the API key (Tokens tab), or paste your own Kiro token there, "
                "to chat on this server's accounts."
            )
        if signed.role == "admin":
            if not admin_key_ok(signed.key, settings):
                raise AuthenticationFailed("Incorrect admin key provided.")
        else:
            check_presented_key(signed.key, settings)

    async def check_rate(self, signed: PageKey | None) -> None:
        """The API's rate limit for a chat on the pool (after :meth:`check_key`), from the
        same buckets as the API's (the replicas' shared ones when they share state)."""
        limiter, settings = self.checks.limiter, self.checks.settings
        if signed is not None and limiter is not None:
            wait = await limiter.acquire(key_digest(signed.key))
            if wait > 0:
                raise RateLimited(
                    f"Rate limit of {settings.rate_limit} per API key reached; retry in "
                    f"{wait:.1f} s.",
                    retry_after=wait,
                )

    async def caller(self, signed: PageKey | None) -> Caller | None:
        """:meth:`check_key` and :meth:`check_rate`, for client keys too; who the chat is
        counted for (None: nobody, a signed-out demo visitor). A client key's own limits are
        checked when the chat starts (``Gateway.open``), as for the API."""
        teams = self.checks.teams
        if signed is not None and signed.role == "api" and teams is not None:
            found = await teams.find(signed.key)
            if found is not None:
                return found
        self.check_key(signed)
        await self.check_rate(signed)
        return None if signed is None else OPERATOR

    def cap(self) -> int:
        """The most chats the page may have on the pool at once."""
        settings = self.checks.settings
        share = settings.playground_max_share
        if share <= 0:
            return 0
        per_account = settings.max_concurrent_per_account or _SLOTS_WHEN_UNBOUNDED
        accounts = max(1, len(self.runtime.pool))
        return max(1, int(share * accounts * per_account))

    def take_slot(self) -> Callable[[], None]:
        """A place among the page's chats on the pool (PlaygroundBusy when there is none);
        returns what gives it back (once, however often it is called)."""
        if self.in_flight >= self.cap():
            raise PlaygroundBusy(
                "The playground already has as many chats on this server's accounts as it may "
                "(PLAYGROUND_MAX_SHARE); try again in a moment, or use the API.",
                retry_after=1.0,
            )
        self.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight -= 1

        return release

    def record(self, ctx: RequestContext, status: int, elapsed: float) -> None:
        """One finished chat in the metrics and the access log, as the API counts its own."""
        record(self.checks.metrics, "PAGE", PLAYGROUND_PATH, PLAYGROUND_PATH, ctx, status, elapsed)
