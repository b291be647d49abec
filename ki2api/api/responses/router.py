"""``POST /v1/responses`` on the shared chat flow (stateless; errors in OpenAI's shape)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from ki2api.api.endpoint import ChatEndpoint, Opened, add_documented_route
from ki2api.api.errors import openai_error_response
from ki2api.api.images import ImageLoaderFactory
from ki2api.api.responses.protocol import parse_request, parse_wire
from ki2api.api.responses.render import ResponseRenderer
from ki2api.api.responses.serving import ResponsesService
from ki2api.model.errors import GatewayError

RESPONSES_PATH = "/v1/responses"


class ResponsesDoor:
    """OpenAI's Responses API on the shared flow (see :class:`ki2api.api.endpoint.ChatDoor`)."""

    def __init__(self, service: ResponsesService, images: ImageLoaderFactory) -> None:
        self.service = service
        self.images = images

    def error_response(self, error: GatewayError) -> Response:
        return openai_error_response(error)

    async def open(self, body: Any, conversation_header: str | None) -> Opened[ResponseRenderer]:
        wire = parse_wire(body)
        images = self.images.loader()
        chat_request, kinds = await parse_request(wire, images.load, self.service.seal)
        await images.fill(chat_request)
        return await self.service.open(
            chat_request, wire, conversation_header=conversation_header, kinds=kinds
        )


def create_responses_router(responses: ChatEndpoint) -> APIRouter:
    router = APIRouter()
    add_documented_route(
        router,
        RESPONSES_PATH,
        responses,
        name="responses",
        summary="OpenAI Responses (stateless; streamed as server-sent events when stream is true)",
    )
    return router
