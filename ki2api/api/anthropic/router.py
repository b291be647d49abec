"""Thin routes for ``/v1/messages`` and ``/v1/messages/count_tokens``.

Keys come as ``x-api-key`` or ``Authorization: Bearer``; the ``anthropic-version`` and
``anthropic-beta`` headers are accepted whatever their value. Errors use Anthropic's shape.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from ki2api.api.anthropic.protocol import parse_count_wire, parse_wire, to_chat_request
from ki2api.api.anthropic.serving import MessagesService
from ki2api.api.auth import check_api_key
from ki2api.api.common import (
    CLIENT_CLOSED,
    SSE_HEADERS,
    ClientDisconnected,
    read_json_body,
    unless_disconnected,
)
from ki2api.api.errors import anthropic_error_response
from ki2api.api.images import ImageLoaderFactory
from ki2api.api.sse import EventStreamResponse
from ki2api.core.errors import GatewayError
from ki2api.settings import Settings


def create_anthropic_router(
    settings: Settings,
    get_service: Callable[[], MessagesService],
    images: ImageLoaderFactory,
) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/messages")
    async def messages(request: Request) -> Response:
        service = get_service()
        try:
            check_api_key(request, settings)
            wire = parse_wire(await read_json_body(request, settings.max_body_bytes))
            chat_request = await to_chat_request(
                wire, images.loader(), max_image_bytes=settings.max_image_bytes
            )
            msg = await unless_disconnected(
                request,
                service.open(
                    chat_request, conversation_header=request.headers.get("x-conversation-id")
                ),
            )
            if chat_request.stream:
                return EventStreamResponse(service.sse(msg), headers=SSE_HEADERS)
            body = await unless_disconnected(request, service.complete(msg))
        except GatewayError as exc:
            return anthropic_error_response(exc)
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED)
        return Response(orjson.dumps(body), media_type="application/json")

    @router.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request) -> Response:
        service = get_service()
        try:
            check_api_key(request, settings)
            wire = parse_count_wire(await read_json_body(request, settings.max_body_bytes))
            chat_request = await to_chat_request(
                wire, images.loader(), max_image_bytes=settings.max_image_bytes
            )
            tokens = service.count_tokens(chat_request)
        except GatewayError as exc:
            return anthropic_error_response(exc)
        return Response(orjson.dumps({"input_tokens": tokens}), media_type="application/json")

    return router
