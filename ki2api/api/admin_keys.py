"""The admin API for client keys and usage (``ki2api.teams``), behind ``ADMIN_KEY``.

    GET    /admin/keys[?include_revoked=true]   every key (masked) with today's and this
                                                month's usage
    POST   /admin/keys                          make one: {"name", "models", "rpm", "tpm",
                                                "credits_per_day", "credits_per_month",
                                                "expires_at" | "expires_in_days", "enabled"};
                                                201 with "secret", the key, shown this once
    GET    /admin/keys/{id or name}
    PATCH  /admin/keys/{id or name}             change fields (null: no limit / no expiry)
    DELETE /admin/keys/{id or name}             revoke (401 from then on; usage kept)
    GET    /admin/keys/{id or name}/daily[?days=30]   usage per day, for a plot
    GET    /admin/usage[?key=&account=&from=YYYY-MM-DD&to=YYYY-MM-DD&format=csv]
                                                rows by day, key and account; JSON, or CSV
                                                (format=csv, or Accept: text/csv)

Errors use OpenAI's format, as the rest of the admin API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ki2api.api.admin import run_as_admin
from ki2api.api.common import read_json_body
from ki2api.model.errors import InvalidRequest
from ki2api.settings import Settings
from ki2api.teams.manage import KeyAdmin, usage_csv

MAX_KEY_BODY = 64 * 1024
MAX_DAYS = 366


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def _fields(request: Request) -> dict[str, Any]:
    body = await read_json_body(request, MAX_KEY_BODY)
    if not isinstance(body, dict):
        raise InvalidRequest("Send the key's fields as a JSON object.")
    return body


def create_admin_keys_router(admin: KeyAdmin, settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"])

    def guarded(request: Request, work: Callable[[], Awaitable[Response]]) -> Awaitable[Response]:
        return run_as_admin(request, settings, work)

    @router.get("/keys")
    async def list_keys(request: Request) -> Response:
        async def work() -> Response:
            flag = request.query_params.get("include_revoked", "").lower()
            if flag not in ("", "true", "false", "1", "0"):
                raise InvalidRequest("include_revoked: true or false", param="include_revoked")
            keys = await admin.list_keys(include_revoked=flag in ("true", "1"))
            return _json({"object": "list", "data": keys})

        return await guarded(request, work)

    @router.post("/keys")
    async def create_key(request: Request) -> Response:
        async def work() -> Response:
            return _json(await admin.create(await _fields(request)), status=201)

        return await guarded(request, work)

    @router.get("/keys/{ref}")
    async def get_key(request: Request, ref: str) -> Response:
        async def work() -> Response:
            return _json(await admin.get(ref))

        return await guarded(request, work)

    @router.patch("/keys/{ref}")
    async def update_key(request: Request, ref: str) -> Response:
        async def work() -> Response:
            return _json(await admin.update(ref, await _fields(request)))

        return await guarded(request, work)

    @router.delete("/keys/{ref}")
    async def revoke_key(request: Request, ref: str) -> Response:
        async def work() -> Response:
            return _json(await admin.revoke(ref))

        return await guarded(request, work)

    @router.get("/keys/{ref}/daily")
    async def key_daily(request: Request, ref: str) -> Response:
        async def work() -> Response:
            raw = request.query_params.get("days", "30")
            if not raw.isdigit() or not 1 <= int(raw) <= MAX_DAYS:
                raise InvalidRequest(f"days: a whole number from 1 to {MAX_DAYS}", param="days")
            rows = await admin.daily(ref, int(raw))
            return _json({"object": "list", "data": rows})

        return await guarded(request, work)

    @router.get("/usage")
    async def usage(request: Request) -> Response:
        async def work() -> Response:
            query = request.query_params
            rows = await admin.usage(
                key=query.get("key") or None,
                account=query.get("account") or None,
                since=query.get("from") or None,
                until=query.get("to") or None,
            )
            wanted = query.get("format") or ""
            if wanted == "csv" or (not wanted and "text/csv" in request.headers.get("accept", "")):
                return Response(
                    usage_csv(rows),
                    media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": 'attachment; filename="ki2api-usage.csv"'},
                )
            if wanted not in ("", "json"):
                raise InvalidRequest("format: json or csv", param="format")
            return _json({"object": "list", "data": rows})

        return await guarded(request, work)

    return router
