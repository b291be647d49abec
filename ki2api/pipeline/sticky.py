"""Which account a conversation sticks to: the one that served its last turn, while it is healthy.

A conversation that stays on one account keeps whatever the service caches for it, and each
account sees whole conversations rather than pieces of many. So the gateway asks the pool for
the account that served the conversation before (``AccountPool.acquire(prefer=...)``);
when that account cannot serve now (cooling down, disabled, every slot taken, its next turn too
far off), the pool chooses another, and the conversation sticks to that one from then on.

The key is the conversation id the gateway sends upstream (:mod:`ki2api.pipeline.conversation`:
stable across the turns of one conversation). The store is small and bounded: an entry lives
``KIRO_STICKY_TTL`` seconds after the conversation's last turn, and past ``KIRO_STICKY_MAX``
conversations the least recently used is forgotten. A store shared between gateway instances
(Redis) implements the same two calls.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol


class StickyStore(Protocol):
    """Conversation key -> account label, each entry with its own time to live."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, label: str, ttl: float) -> None: ...


class MemorySticky:
    """In-process store: least recently used first out, and entries expire ``ttl`` seconds
    after they were last set."""

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max(1, max_entries)
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        label, expires = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return label

    async def set(self, key: str, label: str, ttl: float) -> None:
        self._entries[key] = (label, self._clock() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
