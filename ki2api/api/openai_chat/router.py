"""``/v1/chat/completions`` on the shared chat flow (OpenAI parsing and errors), ``/v1/models``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from ki2api.api.endpoint import ChatEndpoint, Opened, add_documented_route
from ki2api.api.errors import openai_error_response
from ki2api.api.images import ImageLoaderFactory
from ki2api.api.openai_chat.plain import parse_plain
from ki2api.api.openai_chat.protocol import parse_wire, to_chat_request
from ki2api.api.openai_chat.render import ChatRenderer
from ki2api.api.openai_chat.serving import ChatCompletionsService
from ki2api.kiro.wire.models import ModelCatalog
from ki2api.model.errors import GatewayError
from ki2api.settings import Settings

CHAT_PATH = "/v1/chat/completions"


class OpenAIChatDoor:
    """OpenAI's chat completions on the shared flow (see :class:`ki2api.api.endpoint.ChatDoor`)."""

    def __init__(self, service: ChatCompletionsService, images: ImageLoaderFactory) -> None:
        self.service = service
        self.images = images

    def error_response(self, error: GatewayError) -> Response:
        return openai_error_response(error)

    async def open(self, body: Any, conversation_header: str | None) -> Opened[ChatRenderer]:
        plain = parse_plain(body)
        if plain is not None:
            chat_request, include_usage = plain
        else:
            wire = parse_wire(body)
            images = self.images.loader()
            chat_request = await to_chat_request(wire, images.load)
            await images.fill(chat_request)
            include_usage = bool(wire.stream_options and wire.stream_options.include_usage)
        return await self.service.open(
            chat_request,
            include_usage=include_usage,
            conversation_header=conversation_header,
        )


def create_openai_router(
    settings: Settings,
    chat: ChatEndpoint,
    catalog: ModelCatalog,
) -> APIRouter:
    router = APIRouter()

    add_documented_route(
        router,
        CHAT_PATH,
        chat,
        name="chat_completions",
        summary="OpenAI chat completions (streamed as server-sent events when stream is true)",
    )
    return router
