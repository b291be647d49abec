"""The admin API: list, add, remove and refresh accounts; fetch an account's remaining credits.

    GET    /admin/accounts                  every account's status (tokens masked): state
                                            (``suspended`` when Kiro suspended or flagged it),
                                            credits (``usage``, ``usage_error``), pacing
                                            (``min_interval_ms``, ``waiting``), cooldowns
    POST   /admin/accounts[?replace=true]   one account's fields, a kiro-auth-token.json's
                                            contents, or a JSON string (a pasted key / token)
    PATCH  /admin/accounts/{label}          ``{"proxy": URL | "direct" | null | "configured"}``:
                                            the account's outbound proxy from now on (null:
                                            ``KIRO_PROXY``; ``configured``: back to the one its
                                            configuration names); kept across restarts
    DELETE /admin/accounts/{label}
    POST   /admin/accounts/{label}/refresh  refresh now; a success puts it back in rotation
    GET    /admin/accounts/{label}/usage    ask Kiro for the remaining credits (getUsageLimits)

An account's fields may name its own outbound ``proxy`` (``http://``, ``https://``, ``socks5://``,
``socks5h://``, with credentials; or ``direct``); listings show it masked, never its credentials.
Protected by ``ADMIN_KEY``; off while it is unset. Accounts added here are kept in the store
(``DATA_DIR``) with their tokens (and proxy) as they rotate, and come back after a restart; so
does a proxy set with ``PATCH``, on any account (:mod:`ki2api.kiro.accounts.kept`). A
``tokenFile`` must lie in the Kiro login folder or a folder of ``KIRO_TOKEN_DIRS``, and every
refusal of one reads the same (nothing tells whether some other path exists). Errors use
OpenAI's format; no answer ever contains a proxy's credentials or a full token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ki2api.api.auth import check_admin_key
from ki2api.api.common import read_json_body
from ki2api.api.errors import openai_error_response
from ki2api.kiro.accounts.credentials import CredentialError, parse_pasted_token, token_file_of
from ki2api.kiro.accounts.pool import AccountPool
from ki2api.kiro.accounts.sources import token_file_in_allowed_dirs
from ki2api.kiro.accounts.tokenfile import load_login_file
from ki2api.model.errors import GatewayError, InvalidRequest
from ki2api.settings import Settings

MAX_ADMIN_BODY = 256 * 1024  # a login file is a few KB
CHANGEABLE = ("proxy",)  # what PATCH /admin/accounts/{label} changes


TOKEN_FILE_REFUSED = (
    "tokenFile must name a readable Kiro login file (kiro-auth-token.json) in the Kiro login "
    "folder (~/.aws/sso/cache) or in a folder listed in KIRO_TOKEN_DIRS."
)


async def _checked_token_file(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """``body`` with its ``tokenFile`` replaced by the file's real path, once the file is known
    to lie in an allowed folder and to hold a login. Every refusal reads the same, so the
    answer never tells whether some other path exists or can be read."""
    try:
        path = token_file_of(body)
    except CredentialError as exc:
        raise InvalidRequest(str(exc), param="tokenFile") from None
    if path is None:
        return body
    real = token_file_in_allowed_dirs(path, settings)
    if real is None:
        raise InvalidRequest(TOKEN_FILE_REFUSED, param="tokenFile")
    try:
        await asyncio.to_thread(
            load_login_file, real, label="check", source="admin", settings=settings
        )
    except (CredentialError, OSError, ValueError):
        raise InvalidRequest(TOKEN_FILE_REFUSED, param="tokenFile") from None
    checked = {k: v for k, v in body.items() if k not in ("tokenFile", "token_file")}
    checked["tokenFile"] = str(real)
    return checked


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def run_as_admin(
    request: Request, settings: Settings, work: Callable[[], Awaitable[Response]]
) -> Response:
    """``work``'s answer for a caller with the admin key; else the refusal, in OpenAI's format."""
    try:
        check_admin_key(request, settings)
        return await work()
    except GatewayError as exc:
        return openai_error_response(exc)


def create_admin_router(pool: AccountPool, settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"])

    def guarded(request: Request, work: Callable[[], Awaitable[Response]]) -> Awaitable[Response]:
        return run_as_admin(request, settings, work)

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
            return _json(listing(pool))

        return await guarded(request, work)

    @router.post("/accounts")
    async def add_account(request: Request, replace: bool = False) -> Response:
        async def work() -> Response:
            body = await read_json_body(request, MAX_ADMIN_BODY)
            if isinstance(body, str):
                label = request.query_params.get("label") or pool.free_label("added")
                try:
                    spec = parse_pasted_token(body, settings, label=label)
                except CredentialError as exc:
                    raise InvalidRequest(str(exc)) from None
                status = pool.add_account(spec, replace_existing=replace)
            elif isinstance(body, dict):
                body = await _checked_token_file(body, settings)
                status = pool.add_account(body, replace_existing=replace)
            else:
                raise InvalidRequest(
                    "send one account as a JSON object (its fields, or the contents of "
                    "kiro-auth-token.json), or a pasted key / token as a JSON string"
                )
            return _json({"account": status.to_dict()}, status=201)

        return await guarded(request, work)

    @router.patch("/accounts/{label}")
    async def change_account(request: Request, label: str) -> Response:
        async def work() -> Response:
            body = await read_json_body(request, MAX_ADMIN_BODY)
            if not isinstance(body, dict) or not body:
                raise InvalidRequest(
                    'send the fields to change as a JSON object: {"proxy": "socks5://host:1080"}'
                )
            unknown = sorted(str(name)[:64] for name in body if name not in CHANGEABLE)
            if unknown:
                raise InvalidRequest(
                    f"cannot change {', '.join(map(repr, unknown))}: only " + ", ".join(CHANGEABLE),
                    param=unknown[0],
                )
            proxy = body["proxy"]
            if proxy is not None and not isinstance(proxy, str):
                raise InvalidRequest(
                    'proxy is a URL, "direct", "configured" or null (KIRO_PROXY)', param="proxy"
                )
            status = pool.set_proxy(label, proxy)
            return _json({"account": status.to_dict()})

        return await guarded(request, work)

    @router.delete("/accounts/{label}")
    async def delete_account(request: Request, label: str) -> Response:
        async def work() -> Response:
            pool.remove_account(label)
            return _json({"deleted": label})

        return await guarded(request, work)

    @router.post("/accounts/{label}/refresh")
    async def refresh_account(request: Request, label: str) -> Response:
        async def work() -> Response:
            status = await pool.refresh_account(label)
            return _json({"account": status.to_dict()})

        return await guarded(request, work)

    @router.get("/accounts/{label}/usage")
    async def account_usage(request: Request, label: str) -> Response:
        async def work() -> Response:
            usage = await pool.fetch_usage(label)
            return _json({"label": label, "usage": usage.to_dict()})

        return await guarded(request, work)

    return router
