"""A bounded number of upstream requests in flight per account, with a queue timeout.

Without a bound, a burst of clients piles up on one account until Kiro throttles it (or the
connection pool runs dry); with one, extra requests wait in line for a free slot and give up
after ``queue_timeout`` seconds with :class:`AccountBusy` (503, retryable), so the gateway can
try another account instead.

    slots = AccountSlots(limit=8, queue_timeout=30)
    slot = await slots.acquire("account-label")   # AccountBusy after queue_timeout
    ...                                           # the upstream request runs
    slot.release()                                # idempotent; also when the stream ends
"""

from __future__ import annotations

import asyncio

from ki2api.model.errors import UpstreamUnavailable


class AccountBusy(UpstreamUnavailable):
    """Every slot of the account stayed taken for the whole queue timeout."""

    openai_code = "account_busy"


class Slot:
    """One taken place in an account's line; :meth:`release` gives it back exactly once."""

    __slots__ = ("_semaphore",)

    def __init__(self, semaphore: asyncio.Semaphore | None) -> None:
        self._semaphore = semaphore

    def release(self) -> None:
        semaphore, self._semaphore = self._semaphore, None
        if semaphore is not None:
            semaphore.release()


class AccountSlots:
    """Per-account semaphores, created on first use. ``limit <= 0`` means unbounded."""

    def __init__(self, limit: int, queue_timeout: float) -> None:
        self.limit = limit
        self.queue_timeout = queue_timeout
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
        try:
            async with asyncio.timeout(self.queue_timeout):
                await semaphore.acquire()
        except TimeoutError:
            raise AccountBusy(
                f"Account {label} already has {self.limit} requests in flight and none finished "
                f"within {self.queue_timeout:g} s; try again shortly.",
                retry_after=1.0,
            ) from None
        return Slot(semaphore)
