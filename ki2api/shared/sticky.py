"""Which account a conversation sticks to, shared by the replicas: a key with a time to live.

The same two calls as the in-process store (``StickyStore``: ``get`` and ``set`` with a TTL),
so the gateway cannot tell them apart. ``<prefix>:sticky:<conversation>`` holds the label; a
conversation's next turn finds its account whichever replica takes it. The in-process store
given as ``local`` answers first (a turn this replica served, without a round trip) and alone
while Redis is away.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from ki2api.shared.link import RedisLink, SharedUnavailable


class Sticky(Protocol):
    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, label: str, ttl: float) -> None: ...


class RedisSticky:
    """Reads what this replica remembers first (the conversation's last turn was served
    here: no round trip), then Redis; writes both, Redis in the background."""

    def __init__(self, link: RedisLink, local: Sticky) -> None:
        self.link = link
        self.local = local
        self._writes: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> str | None:
        label = await self.local.get(key)
        if label is not None or not self.link.up:
            return label
        name = self.link.key("sticky", key)
        try:
            raw = await self.link.call(lambda c: c.get(name))
        except SharedUnavailable:
            return None
        return raw.decode() if isinstance(raw, bytes) else raw

    async def set(self, key: str, label: str, ttl: float) -> None:
        await self.local.set(key, label, ttl)
        if self.link.up:
            task = asyncio.get_running_loop().create_task(self._write(key, label, ttl))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write(self, key: str, label: str, ttl: float) -> None:
        name = self.link.key("sticky", key)
        with contextlib.suppress(SharedUnavailable):
            await self.link.call(lambda c: c.set(name, label, px=max(1, int(ttl * 1000))))
