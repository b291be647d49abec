"""The accounts' model lists (``ListAvailableModels``), asked by one replica for all.

``<prefix>:models:<label>`` holds the list as the service answered it (model ids and token
limits) and when it was asked; a replica whose list is due takes one younger than
``KIRO_MODELS_TTL`` from there instead of asking the service again, and shares what it asks.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ki2api.shared.link import RedisLink, SharedUnavailable


class RedisModelLists:
    """A ``ModelListCache`` (:mod:`ki2api.kiro.accounts.available_models`) over Redis."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    async def get(self, label: str) -> tuple[list[dict[str, Any]], float] | None:
        """The shared list and its age in seconds, or None."""
        name = self.link.key("models", label)
        try:
            raw = await self.link.call(lambda c: c.get(name))
        except SharedUnavailable:
            return None
        if not raw:
            return None
        try:
            data = orjson.loads(raw)
            return list(data["models"]), max(0.0, time.time() - float(data["at"]))
        except (ValueError, KeyError, TypeError):
            return None

    async def put(self, label: str, rows: list[dict[str, Any]], ttl: float) -> None:
        name = self.link.key("models", label)
        body = orjson.dumps({"at": time.time(), "models": rows})
        try:
            await self.link.call(lambda c: c.set(name, body, ex=max(1, int(ttl))))
        except SharedUnavailable:
            pass
