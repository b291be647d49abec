"""Thin routes for ``/v1/chat/completions`` and ``/v1/models``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

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
from ki2api.api.openai_chat.protocol import parse_wire, to_chat_request
from ki2api.api.openai_chat.serving import ChatCompletionsService, OpenChat
from ki2api.api.sse import EventStreamResponse
from ki2api.core.errors import GatewayError
from ki2api.kiro.models import ModelCatalog
from ki2api.settings import Settings


def create_openai_router(
    settings: Settings,
    get_service: Callable[[], ChatCompletionsService],
    get_catalog: Callable[[], ModelCatalog],
    images: ImageLoaderFactory,
) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def list_models(request: Request) -> Response:
        try:
            check_api_key(request, settings)
        except GatewayError as exc:
            return openai_error_response(exc)
        data = [
            {"id": m.id, "object": "model", "created": 1_700_000_000, "owned_by": m.owned_by}
            for m in get_catalog().list()
        ]
        return Response(
            orjson.dumps({"object": "list", "data": data}), media_type="application/json"
        )

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        service = get_service()
        try:
            check_api_key(request, settings)
            wire = parse_wire(await read_json_body(request, settings.max_body_bytes))
            chat_request = await to_chat_request(wire, images.loader())
            include_usage = bool(wire.stream_options and wire.stream_options.include_usage)
            opening = service.open(
                chat_request,
                include_usage=include_usage,
                conversation_header=request.headers.get("x-conversation-id"),
            )
            if chat_request.stream:
                chat = await unless_disconnected(request, opening)
                return EventStreamResponse(service.sse(chat), headers=SSE_HEADERS)
            # One disconnect watcher for the whole answer, not one per step.
            chat, body = await unless_disconnected(request, _whole(service, opening))
        except GatewayError as exc:
            return openai_error_response(exc)
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED)
        headers = {"x-ki2api-warning": "; ".join(chat.warnings)} if chat.warnings else None
        return Response(orjson.dumps(body), media_type="application/json", headers=headers)

    return router


async def _whole(
    service: ChatCompletionsService, opening: Awaitable[OpenChat]
) -> tuple[OpenChat, dict[str, Any]]:
    chat = await opening
    return chat, await service.complete(chat)
