"""OpenAI Responses: open the answer for its renderer (:mod:`.render`). No FastAPI here."""

from __future__ import annotations

import logging

from ki2api.api.endpoint import Opened, open_rendered
from ki2api.api.responses.protocol import ResponsesWire
from ki2api.api.responses.render import ResponseRenderer
from ki2api.api.responses.sealed import ReasoningSeal
from ki2api.api.responses.tools import ToolKinds
from ki2api.model.request import ChatRequest
from ki2api.pipeline.gateway import Gateway

log = logging.getLogger("ki2api.responses")


class ResponsesService:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.seal = ReasoningSeal(gateway.settings.reasoning_secret)

    async def open(
        self,
        request: ChatRequest,
        wire: ResponsesWire,
        *,
        conversation_header: str | None,
        kinds: ToolKinds | None = None,
    ) -> Opened[ResponseRenderer]:
        kinds = kinds or ToolKinds()
        for warning in kinds.warnings():
            log.warning("responses: %s", warning)
        encrypted = "reasoning.encrypted_content" in (wire.include or ())
        renderer = ResponseRenderer(request, wire, kinds, self.seal if encrypted else None)
        return await open_rendered(self.gateway, request, renderer, conversation_header)
