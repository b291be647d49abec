"""Every account's remaining credits and reset date (``getUsageLimits``), asked again every
``KIRO_USAGE_REFRESH`` seconds in the background, for the page's Status tab and the admin
listing (``usage`` of each account). Never on the request path; a failure keeps the last
answer and is asked again at the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ki2api.kiro.accounts.pool import AccountPool
from ki2api.model.errors import GatewayError

log = logging.getLogger("ki2api.accounts")

CHECK_INTERVAL = 60.0  # how often the task looks for an account whose figures are due


class UsageWatch:
    def __init__(
        self,
        pool: AccountPool,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.interval = interval
        self._clock = clock
        self._asked: dict[str, float] = {}  # label -> when its figures were last asked for
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """Ask for the figures of every usable account that is due, concurrently."""
        now = self._clock()
        due = [
            label
            for label in self.pool.usable_labels()
            if now - self._asked.get(label, -self.interval) >= self.interval
        ]
        for label in due:
            self._asked[label] = now
        await asyncio.gather(*(self._ask(label) for label in due))

    async def _ask(self, label: str) -> None:
        try:
            usage = await self.pool.fetch_usage(label)
        except GatewayError as exc:
            log.info("remaining credits of account %s not available: %s", label, exc.message)
            return
        except Exception:  # noqa: BLE001 - the figures are a nicety: never fail the task
            log.exception("asking for the remaining credits of account %s failed", label)
            return
        log.debug("account %s: %s credits left", label, usage.remaining)

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(min(CHECK_INTERVAL, self.interval))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
