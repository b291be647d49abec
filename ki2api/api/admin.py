"""The admin API: list, add, remove and refresh accounts; fetch an account's remaining credits.

    GET    /admin/accounts                  every account's status (tokens masked)
    POST   /admin/accounts[?replace=true]   one account's fields, a kiro-auth-token.json's
                                            contents, or a JSON string (a pasted key / token)
    DELETE /admin/accounts/{label}
    POST   /admin/accounts/{label}/refresh  refresh now; a success puts it back in rotation
    GET    /admin/accounts/{label}/usage    ask Kiro for the remaining credits (getUsageLimits)

Protected by ``ADMIN_KEY`` (else the API key). Accounts added here live in memory only. Errors
use OpenAI's format; no answer ever contains a full token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ki2api.api.auth import check_admin_key
from ki2api.api.common import read_json_body
from ki2api.api.errors import openai_error_response
from ki2api.core.errors import GatewayError, InvalidRequest
from ki2api.kiro.accounts import AccountPool
from ki2api.kiro.credentials import CredentialError, parse_pasted_token
from ki2api.settings import Settings

MAX_ADMIN_BODY = 256 * 1024  # a login file is a few KB


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def create_admin_router(get_pool: Callable[[], AccountPool], settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"])

    async def guarded(request: Request, work: Callable[[], Awaitable[Response]]) -> Response:
        try:
            check_admin_key(request, settings)
            return await work()
        except GatewayError as exc:
            return openai_error_response(exc)

    def listing(pool: AccountPool) -> dict[str, Any]:
        rows = pool.snapshot()
        return {
            "object": "list",
            "strategy": pool.strategy,
            "usable": sum(1 for r in rows if r.state == "healthy"),
            "data": [r.to_dict() for r in rows],
            "problems": list(pool.problems),
        }

    @router.get("/accounts")
    async def list_accounts(request: Request) -> Response:
        async def work() -> Response:
            return _json(listing(get_pool()))

        return await guarded(request, work)

    @router.post("/accounts")
    async def add_account(request: Request, replace: bool = False) -> Response:
        async def work() -> Response:
            body = await read_json_body(request, MAX_ADMIN_BODY)
            pool = get_pool()
            if isinstance(body, str):
                label = request.query_params.get("label") or pool.free_label("added")
                try:
                    spec = parse_pasted_token(body, settings, label=label)
                except CredentialError as exc:
                    raise InvalidRequest(str(exc)) from None
                status = pool.add_account(spec, replace_existing=replace)
            elif isinstance(body, dict):
                status = pool.add_account(body, replace_existing=replace)
            else:
                raise InvalidRequest(
                    "send one account as a JSON object (its fields, or the contents of "
                    "kiro-auth-token.json), or a pasted key / token as a JSON string"
                )
            return _json({"account": status.to_dict()}, status=201)

        return await guarded(request, work)

    @router.delete("/accounts/{label}")
    async def delete_account(request: Request, label: str) -> Response:
        async def work() -> Response:
            get_pool().remove_account(label)
            return _json({"deleted": label})

        return await guarded(request, work)

    @router.post("/accounts/{label}/refresh")
    async def refresh_account(request: Request, label: str) -> Response:
        async def work() -> Response:
            status = await get_pool().refresh_account(label)
            return _json({"account": status.to_dict()})

        return await guarded(request, work)

    @router.get("/accounts/{label}/usage")
    async def account_usage(request: Request, label: str) -> Response:
        async def work() -> Response:
            usage = await get_pool().fetch_usage(label)
            return _json({"label": label, "usage": usage.to_dict()})

        return await guarded(request, work)

    return router
