"""Which account a conversation sticks to, shared by the replicas: a key with a time to live.

The same two calls as the in-process store (``StickyStore``: ``get`` and ``set`` with a TTL),
so the gateway cannot tell them apart. ``<prefix>:sticky:<conversation>`` holds the label; a
conversation's next turn finds its account whichever replica takes it. While Redis is away
the in-process store given as ``fallback`` serves (a conversation may move once then).
"""

from __future__ import annotations

from typing import Protocol

from ki2api.shared.link import RedisLink, SharedUnavailable


class Sticky(Protocol):
    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, label: str, ttl: float) -> None: ...


class RedisSticky:
    def __init__(self, link: RedisLink, fallback: Sticky) -> None:
        self.link = link
        self.fallback = fallback

    async def get(self, key: str) -> str | None:
        name = self.link.key("sticky", key)
        try:
            raw = await self.link.call(lambda c: c.get(name))
        except SharedUnavailable:
            return await self.fallback.get(key)
        return raw.decode() if isinstance(raw, bytes) else raw

    async def set(self, key: str, label: str, ttl: float) -> None:
        name = self.link.key("sticky", key)
        try:
            await self.link.call(lambda c: c.set(name, label, px=max(1, int(ttl * 1000))))
        except SharedUnavailable:
            await self.fallback.set(key, label, ttl)
