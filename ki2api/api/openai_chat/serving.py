"""OpenAI chat completions: open the answer for its renderer (:mod:`.render`). No FastAPI here."""

from __future__ import annotations

from ki2api.api.endpoint import Opened, open_rendered
from ki2api.api.openai_chat.render import ChatRenderer
from ki2api.model.request import ChatRequest
from ki2api.pipeline.gateway import Gateway


class ChatCompletionsService:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def open(
        self, request: ChatRequest, *, include_usage: bool, conversation_header: str | None
    ) -> Opened[ChatRenderer]:
        renderer = ChatRenderer(request, include_usage)
        return await open_rendered(self.gateway, request, renderer, conversation_header)
