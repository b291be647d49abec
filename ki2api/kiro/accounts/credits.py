"""Each account's remaining credits and reset date, asked in the background (``getUsageLimits``).

Every ``KIRO_USAGE_REFRESH`` seconds (unset: :data:`DEFAULT_EVERY`; 0: never), a task asks
every account that serves or cools down for its usage limits: at start-up, then once a period,
a few accounts at a time. What the
service answers is kept on the account (``AccountStatus.usage``, shown by ``/admin/accounts``
and the page's Status tab); a failed call keeps the last numbers and says why
(``usage_error``). A quota cooldown without Kiro's ``Retry-After`` lasts until the reset date
known this way. Never on a request's way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from ki2api.kiro.accounts.usage_limits import UsageLimits
from ki2api.model.errors import GatewayError

log = logging.getLogger("ki2api.accounts")

AT_ONCE = 4  # calls in flight together: a pool of many accounts does not burst the service
DEFAULT_EVERY = 1800.0  # read when the task starts: the tests set it to 0 (tests/conftest.py)


class UsageSource(Protocol):
    """What this module needs of the account pool."""

    def usage_labels(self) -> list[str]: ...

    async def fetch_usage(self, label: str) -> UsageLimits: ...


class CreditsRefresher:
    def __init__(
        self,
        source: UsageSource,
        *,
        every: float | None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._source = source
        self.every = every
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """Ask every account once; failures are kept on the accounts, never raised."""
        gate = asyncio.Semaphore(AT_ONCE)

        async def one(label: str) -> None:
            async with gate:
                try:
                    usage = await self._source.fetch_usage(label)
                except GatewayError as exc:
                    log.info("credits of account %s not available: %s", label, exc.message)
                except Exception:  # noqa: BLE001 - a bug here must not stop the other accounts
                    log.exception("asking account %s for its credits failed", label)
                else:
                    log.debug("account %s: %s credits left", label, usage.remaining)

        await asyncio.gather(*(one(label) for label in self._source.usage_labels()))

    def start(self) -> None:
        every = DEFAULT_EVERY if self.every is None else self.every
        if every > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(every), name="usage limits refresh"
            )

    async def _loop(self, every: float) -> None:
        while True:
            await self.refresh()
            await self._sleep(every)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
