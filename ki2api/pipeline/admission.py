"""What ``Gateway.open`` asks before it spends an account on a request (client keys' limits).

The caller is in the request's context (``ctx.caller``, set where the key was checked); the
model is resolved. The implementation (:class:`ki2api.teams.gate.Teams`) raises the error the
client should see, or admits the request and sets ``ctx.settlement``, which counts its usage
when it ends. A second ``open`` for the same request (web search's next round) is no new request.
"""

from __future__ import annotations

from typing import Protocol

from ki2api.kiro.wire.models import ModelInfo
from ki2api.model.context import RequestContext


class Admission(Protocol):
    async def admit(self, ctx: RequestContext, requested: str, model: ModelInfo) -> None: ...
