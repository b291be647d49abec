"""``/v1/messages`` (the shared chat flow, Anthropic's parsing and errors) and
``/v1/messages/count_tokens``.

Keys come as ``x-api-key`` or ``Authorization: Bearer``; the ``anthropic-version`` and
``anthropic-beta`` headers are accepted whatever their value. Errors use Anthropic's shape.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from ki2api.api.anthropic.plain import parse_plain
from ki2api.api.anthropic.protocol import parse_count_wire, parse_wire, to_chat_request
from ki2api.api.anthropic.render import MessageRenderer
from ki2api.api.anthropic.serving import MessagesService
from ki2api.api.auth import authenticate_request
from ki2api.api.common import read_json_body
from ki2api.api.endpoint import ChatEndpoint, Opened, add_documented_route
from ki2api.api.errors import anthropic_error_response
from ki2api.api.images import ImageLoaderFactory
from ki2api.model.errors import GatewayError
from ki2api.settings import Settings
from ki2api.teams.gate import Teams

MESSAGES_PATH = "/v1/messages"


class AnthropicMessagesDoor:
    """Anthropic's Messages API on the shared flow (see :class:`ki2api.api.endpoint.ChatDoor`)."""

    def __init__(
        self,
        settings: Settings,
        service: MessagesService,
        images: ImageLoaderFactory,
    ) -> None:
        self.settings = settings
        self.service = service
        self.images = images

    def error_response(self, error: GatewayError) -> Response:
        return anthropic_error_response(error)

    async def open(self, body: Any, conversation_header: str | None) -> Opened[MessageRenderer]:
        chat_request = parse_plain(body)
        if chat_request is None:
            images = self.images.loader()
            chat_request = await to_chat_request(
                parse_wire(body),
                images.load,
                max_image_bytes=self.settings.max_image_bytes,
                load_base64=images.load_base64,
            )
            await images.fill(chat_request)
        return await self.service.open(chat_request, conversation_header=conversation_header)


def create_anthropic_router(
    settings: Settings,
    messages: ChatEndpoint,
    service: MessagesService,
    images: ImageLoaderFactory,
    teams: Teams | None = None,
) -> APIRouter:
    router = APIRouter()
    add_documented_route(
        router,
        MESSAGES_PATH,
        messages,
        name="messages",
        summary="Anthropic Messages (streamed as server-sent events when stream is true)",
    )

    @router.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request) -> Response:
        try:
            await authenticate_request(request, settings, teams)
            wire = parse_count_wire(await read_json_body(request, settings.max_body_bytes))
            counted = images.counting()  # never fetches: an estimate needs no image bytes
            chat_request = await to_chat_request(
                wire,
                counted.load,
                max_image_bytes=settings.max_image_bytes,
                load_base64=counted.load_base64,
            )
            await counted.fill(chat_request)
            tokens = service.count_tokens(chat_request)
        except GatewayError as exc:
            return anthropic_error_response(exc)
        return Response(orjson.dumps({"input_tokens": tokens}), media_type="application/json")

    return router
