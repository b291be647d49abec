"""State shared by the replicas of one gateway, in Redis (``REDIS_URL``); without it, none.

What is shared, each behind the interface its user already has (in-process by default):

=====================  ========================================  ==============================
what                   module                                    used through
=====================  ========================================  ==============================
tokens, one refresher  :mod:`~ki2api.shared.tokens`              ``AccountPool.sharing``
account states         :mod:`~ki2api.shared.accounts`            ``AccountPool.sharing``
requests in flight     :mod:`~ki2api.shared.slots`               ``AccountSlots.shared``
rate limits, budgets   :mod:`~ki2api.shared.counters`            ``RateLimiter.shared``
usage counters         :mod:`~ki2api.shared.usage`               ``RequestStats.listeners``
model lists            :mod:`~ki2api.shared.models`              ``AvailableModels.shared``
sticky conversations   :mod:`~ki2api.shared.sticky`              ``StickyStore``
=====================  ========================================  ==============================

:mod:`~ki2api.shared.link` holds the one connection, the timeouts and the outage logic: Redis
lost → every part serves from local state at once; Redis back → reconciled, then shared again.
"""

from __future__ import annotations

import contextlib
import logging

from ki2api.kiro.accounts.pool import AccountPool
from ki2api.settings import Settings
from ki2api.shared.accounts import SharedAccounts
from ki2api.shared.counters import Counters, RedisCounters
from ki2api.shared.link import RedisLink, SharedUnavailable, masked_url, probe
from ki2api.shared.models import RedisModelLists
from ki2api.shared.slots import RedisSlots
from ki2api.shared.sticky import RedisSticky, Sticky
from ki2api.shared.tokens import SharedTokens
from ki2api.shared.usage import RedisUsage

__all__ = ["SharedState", "masked_url", "probe"]
log = logging.getLogger("ki2api.shared")


class SharedState:
    """The replicas' shared parts, or none of them (``link`` None: no ``REDIS_URL``).
    Built without I/O; :meth:`start` connects (and reconciles) for the app's lifespan."""

    def __init__(self, link: RedisLink | None = None) -> None:
        self.link = link
        self.counters: Counters | None = None
        self.slots: RedisSlots | None = None
        self.usage: RedisUsage | None = None
        self.models: RedisModelLists | None = None
        self.tokens: SharedTokens | None = None
        self.accounts: SharedAccounts | None = None
        if link is not None:
            self.counters = RedisCounters(link)
            self.slots = RedisSlots(link)
            self.usage = RedisUsage(link)
            self.models = RedisModelLists(link)
            self.tokens = SharedTokens(link)

    @classmethod
    def from_settings(cls, settings: Settings) -> SharedState:
        if not settings.redis_url:
            return cls()
        link = RedisLink(
            settings.redis_url, timeout=settings.redis_timeout, prefix=settings.redis_prefix
        )
        return cls(link)

    @property
    def enabled(self) -> bool:
        return self.link is not None

    def attach(self, pool: AccountPool) -> None:
        """Share ``pool``'s tokens and states (its accounts refresh one replica at a time)."""
        if self.link is not None and self.tokens is not None:
            self.accounts = SharedAccounts(self.link, pool, self.tokens)

    def sticky(self, local: Sticky) -> Sticky:
        """Conversation stickiness: ``local`` (in-process), and Redis behind it if shared."""
        return local if self.link is None else RedisSticky(self.link, local)

    async def start(self) -> None:
        if self.link is not None:
            await self.link.start()

    async def aclose(self) -> None:
        if self.accounts is not None:
            await self.accounts.aclose()
        if self.slots is not None:
            await self.slots.aclose()
        if self.usage is not None and self.link is not None:
            with contextlib.suppress(SharedUnavailable):
                await self.usage.flush()
            if self.usage.pending():
                log.warning(
                    "usage of %d key/account pair(s) could not be sent to Redis and is lost",
                    self.usage.pending(),
                )
        if self.link is not None:
            await self.link.aclose()

    def status(self) -> dict[str, object]:
        """``/health``'s ``shared_state``: the backend and, for Redis, whether it answers."""
        if self.link is None:
            return {"backend": "local"}
        return self.link.status()

    @property
    def degraded(self) -> bool:
        """Redis configured but not answering: this replica serves from its own state."""
        return self.link is not None and not self.link.up
