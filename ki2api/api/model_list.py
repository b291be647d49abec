"""``GET /v1/models`` and ``GET /v1/models/{id}``: what the pool can serve, in OpenAI's format, or
Anthropic's when the client sends ``anthropic-version`` (as Anthropic's SDKs and Claude Code do).

The list is the catalog's: the models the accounts may use (``ListAvailableModels``), else the
built-in table, plus the operator's ``MODEL_ALIASES`` names that lead to one of them. A client
key with a model allowlist sees the models it may use.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from ki2api.api.auth import authenticate_request
from ki2api.api.errors import anthropic_error_response, openai_error_response
from ki2api.kiro.wire.models import ModelCatalog, ModelInfo
from ki2api.model.errors import GatewayError, ModelNotFound
from ki2api.settings import Settings
from ki2api.teams.gate import Teams
from ki2api.teams.keys import model_allowed

CREATED = 1_700_000_000
CREATED_AT = "2023-11-14T22:13:20Z"  # the same moment, as Anthropic writes it


def _anthropic(request: Request) -> bool:
    return "anthropic-version" in request.headers


def _entries(catalog: ModelCatalog) -> list[tuple[str, ModelInfo]]:
    rows = [(m.id, m) for m in catalog.list()]
    listed = {name for name, _ in rows}
    for alias in catalog.aliases:
        if alias not in listed:
            try:
                rows.append((alias, catalog.resolve(alias)))
            except ModelNotFound:
                continue  # an alias of nothing the pool serves: not listed
    return rows


def _openai_row(name: str, model: ModelInfo) -> dict[str, Any]:
    owner = model.owned_by if name == model.id else "ki2api-alias"
    return {"id": name, "object": "model", "created": CREATED, "owned_by": owner}


def _anthropic_row(name: str, model: ModelInfo) -> dict[str, Any]:
    display = model.id if name == model.id else f"{name} → {model.id}"
    return {"type": "model", "id": name, "display_name": display, "created_at": CREATED_AT}


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def create_models_router(
    settings: Settings, catalog: ModelCatalog, teams: Teams | None = None
) -> APIRouter:
    router = APIRouter()

    def error(request: Request, exc: GatewayError) -> Response:
        if _anthropic(request):
            return anthropic_error_response(exc)
        return openai_error_response(exc)

    @router.get("/v1/models")
    async def list_models(request: Request) -> Response:
        try:
            caller = await authenticate_request(request, settings, teams)
        except GatewayError as exc:
            return error(request, exc)
        entries = _entries(catalog)
        allowed = caller.record.models if caller.record is not None else ()
        if allowed:
            entries = [(n, m) for n, m in entries if model_allowed(allowed, n, m.id)]
        if _anthropic(request):
            data = [_anthropic_row(name, model) for name, model in entries]
            return _json(
                {
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                }
            )
        return _json({"object": "list", "data": [_openai_row(n, m) for n, m in entries]})

    @router.get("/v1/models/{model_id:path}")
    async def get_model(request: Request, model_id: str) -> Response:
        try:
            await authenticate_request(request, settings, teams)
            model = catalog.resolve(model_id)  # any name a request may use
        except GatewayError as exc:
            return error(request, exc)
        row = _anthropic_row if _anthropic(request) else _openai_row
        return _json(row(model_id, model))

    return router
