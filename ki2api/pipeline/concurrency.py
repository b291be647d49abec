"""A bounded number of upstream requests in flight per account, with a queue timeout.

Without a bound, a burst of clients piles up on one account until Kiro throttles it (or the
connection pool runs dry); with one, extra requests wait in line for a free slot and give up
after ``queue_timeout`` seconds with :class:`AccountBusy` (503, retryable), so the gateway can
try another account instead.

    slots = AccountSlots(limit=8, queue_timeout=30)
    slot = await slots.acquire("account-label")   # AccountBusy after queue_timeout
    ...                                           # the upstream request runs
    slot.release()                                # idempotent; also when the stream ends

With replicas sharing state (``REDIS_URL``), the cap counts every replica's requests: after
its local place, a request takes one in the shared count (``SharedSlots``), polling while
all are taken, within the same queue timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from ki2api.model.errors import UpstreamUnavailable

_FIRST_POLL = 0.02  # seconds before looking again at a full shared count; doubles to _LAST_POLL
_LAST_POLL = 0.25


class SharedSlots(Protocol):
    """The places on each account across replicas (:mod:`ki2api.shared.slots`)."""

    async def take(self, label: str, limit: int) -> Callable[[], None] | None:
        """A place (the callable gives it back), or None when ``limit`` are taken."""
        ...


class AccountBusy(UpstreamUnavailable):
    """Every slot of the account stayed taken for the whole queue timeout."""

    openai_code = "account_busy"


class Slot:
    """One taken place in an account's line; :meth:`release` gives it back exactly once."""

    __slots__ = ("_semaphore", "_shared")

    def __init__(
        self, semaphore: asyncio.Semaphore | None, shared: Callable[[], None] | None = None
    ) -> None:
        self._semaphore = semaphore
        self._shared = shared

    def release(self) -> None:
        semaphore, self._semaphore = self._semaphore, None
        if semaphore is not None:
            semaphore.release()
        shared, self._shared = self._shared, None
        if shared is not None:
            shared()


class AccountSlots:
    """Per-account semaphores, created on first use. ``limit <= 0`` means unbounded."""

    def __init__(self, limit: int, queue_timeout: float, shared: SharedSlots | None = None) -> None:
        self.limit = limit
        self.queue_timeout = queue_timeout
        self.shared = shared
        self._semaphores: dict[str, asyncio.Semaphore] = {}

    def in_use(self, label: str) -> int:
        semaphore = self._semaphores.get(label)
        return 0 if semaphore is None else self.limit - semaphore._value

    def has_room(self, label: str) -> bool:
        """Whether a request on ``label`` would get a slot without waiting."""
        return self.limit <= 0 or self.in_use(label) < self.limit

    async def acquire(self, label: str) -> Slot:
        if self.limit <= 0:
            return Slot(None)
        semaphore = self._semaphores.get(label)
        if semaphore is None:
            semaphore = self._semaphores[label] = asyncio.Semaphore(self.limit)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.queue_timeout
        try:
            async with asyncio.timeout(self.queue_timeout):
                await semaphore.acquire()
        except TimeoutError:
            raise self._busy(label) from None
        if self.shared is None:
            return Slot(semaphore)
        try:
            give_back = await self._take_shared(self.shared, label, deadline, loop)
        except BaseException:
            semaphore.release()
            raise
        return Slot(semaphore, give_back)

    async def _take_shared(
        self,
        shared: SharedSlots,
        label: str,
        deadline: float,
        loop: asyncio.AbstractEventLoop,
    ) -> Callable[[], None]:
        pause = _FIRST_POLL
        while (give_back := await shared.take(label, self.limit)) is None:
            left = deadline - loop.time()
            if left <= 0:
                raise self._busy(label, everywhere=True)
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, _LAST_POLL)
        return give_back

    def _busy(self, label: str, *, everywhere: bool = False) -> AccountBusy:
        where = " across the replicas" if everywhere else ""
        return AccountBusy(
            f"Account {label} already has {self.limit} requests in flight{where} and none "
            f"finished within {self.queue_timeout:g} s; try again shortly.",
            retry_after=1.0,
        )
