"""Thin route for ``POST /v1/responses`` (stateless; errors in OpenAI's shape)."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from ki2api.api.auth import check_api_key
from ki2api.api.common import (
    CLIENT_CLOSED,
    SSE_HEADERS,
    ClientDisconnected,
    read_json_body,
    unless_disconnected,
)
from ki2api.api.errors import openai_error_response
from ki2api.api.images import ImageLoaderFactory
from ki2api.api.responses.protocol import parse_wire, to_chat_request
from ki2api.api.responses.serving import ResponsesService
from ki2api.api.sse import EventStreamResponse
from ki2api.core.errors import GatewayError
from ki2api.settings import Settings


def create_responses_router(
    settings: Settings,
    get_service: Callable[[], ResponsesService],
    images: ImageLoaderFactory,
) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/responses")
    async def responses(request: Request) -> Response:
        service = get_service()
        try:
            check_api_key(request, settings)
            wire = parse_wire(await read_json_body(request, settings.max_body_bytes))
            chat_request = await to_chat_request(wire, images.loader())
            resp = await unless_disconnected(
                request,
                service.open(
                    chat_request,
                    wire,
                    conversation_header=request.headers.get("x-conversation-id"),
                ),
            )
            if chat_request.stream:
                return EventStreamResponse(service.sse(resp), headers=SSE_HEADERS)
            body = await unless_disconnected(request, service.complete(resp))
        except GatewayError as exc:
            return openai_error_response(exc)
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED)
        return Response(orjson.dumps(body), media_type="application/json")

    return router
