"""The admin API for models: what each account may use, and the operator's alias table.

    GET  /admin/models           the models served, the aliases, the fallback, each account's list
    POST /admin/models/refresh   ask every account for its list now (else done in the background)
    GET  /admin/model-aliases    the alias table (MODEL_ALIASES)
    PUT  /admin/model-aliases    replace it: a JSON object of client name -> model name

Protected like the rest of /admin (``ADMIN_KEY``, else the API key). Changes live in memory
only: set ``MODEL_ALIASES`` to keep them across restarts.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ki2api.api.admin import run_as_admin
from ki2api.api.common import read_json_body
from ki2api.kiro.accounts.available_models import AvailableModels
from ki2api.kiro.wire.models import ModelCatalog
from ki2api.model.errors import InvalidRequest
from ki2api.settings import Settings

MAX_ALIASES_BODY = 64 * 1024


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


def create_admin_models_router(
    settings: Settings,
    catalog: ModelCatalog,
    models: AvailableModels | None,
) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"])

    def guarded(request: Request, work: Callable[[], Awaitable[Response]]) -> Awaitable[Response]:
        return run_as_admin(request, settings, work)

    def overview() -> dict[str, Any]:
        now = time.monotonic()
        return {
            "object": "list",
            "data": [
                {
                    "id": m.id,
                    "kiro_id": m.kiro_id,
                    "context_window": m.context_window,
                    "max_output_tokens": m.max_output_tokens,
                    "owned_by": m.owned_by,
                }
                for m in catalog.list()
            ],
            "aliases": catalog.aliases,
            "fallback": catalog.fallback,
            "accounts": [e.to_dict(now) for e in models.snapshot()] if models else [],
        }

    @router.get("/models")
    async def list_models(request: Request) -> Response:
        async def work() -> Response:
            return _json(overview())

        return await guarded(request, work)

    @router.post("/models/refresh")
    async def refresh_models(request: Request) -> Response:
        async def work() -> Response:
            if models is not None:
                await models.refresh(force=True)
            return _json(overview())

        return await guarded(request, work)

    @router.get("/model-aliases")
    async def get_aliases(request: Request) -> Response:
        async def work() -> Response:
            return _json({"aliases": catalog.aliases})

        return await guarded(request, work)

    @router.put("/model-aliases")
    async def put_aliases(request: Request) -> Response:
        async def work() -> Response:
            body = await read_json_body(request, MAX_ALIASES_BODY)
            if not isinstance(body, dict):
                raise InvalidRequest(
                    'send the alias table as a JSON object, e.g. {"gpt-4o": "claude-sonnet-4-6"}'
                )
            try:
                catalog.set_aliases(body)
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from None
            return _json({"aliases": catalog.aliases})

        return await guarded(request, work)

    return router
