"""A fake clock for the account pool: cooldowns and waits in exact, instant steps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from ki2api.kiro.accounts.pool import AccountPool
from ki2api.settings import Settings


class FakeClock:
    """The pool's clock; ``sleep`` moves it (and records the wait) instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def pool_on(clock: FakeClock) -> Callable[[Settings], AccountPool]:
    # The pool's own HTTP client only refreshes tokens: these accounts have none to refresh.
    return lambda s: AccountPool.from_settings(
        s, httpx.AsyncClient(), clock=clock, sleep=clock.sleep
    )
