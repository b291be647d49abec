"""Account endpoints off the request path: the two refresh flows, usage limits, model list."""

from __future__ import annotations

import asyncio
import calendar
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ki2api.simulator.accounts import Account
from ki2api.simulator.chat import error_response
from ki2api.simulator.scripts import HttpError, Script
from ki2api.simulator.state import SimulatorState


def _next_month_start(now: float) -> float:
    today = datetime.fromtimestamp(now, UTC)
    year, month = (today.year + 1, 1) if today.month == 12 else (today.year, today.month + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


def usage_limits_body(account: Account | None, now: float | None = None) -> dict[str, Any]:
    """A plausible ``getUsageLimits`` answer: the ``CREDIT`` entry is what gateways read."""
    now = time.time() if now is None else now
    reset = _next_month_start(now)
    limit = account.usage_limit if account else 50.0
    used = account.current_usage if account else 0.0
    entry: dict[str, Any] = {
        "resourceType": "CREDIT",
        "displayName": "Credit",
        "displayNamePlural": "Credits",
        "unit": "INVOCATIONS",
        "currency": "USD",
        "usageLimit": int(limit),
        "usageLimitWithPrecision": limit,
        "currentUsage": int(used),
        "currentUsageWithPrecision": used,
        "nextDateReset": reset,
        "overageCap": 0,
        "overageRate": 0.04,
    }
    trial_limit = account.free_trial_limit if account else 500.0
    if trial_limit is not None:
        entry["freeTrialInfo"] = {
            "freeTrialStatus": "ACTIVE",
            "freeTrialExpiry": now + 14 * 86400,
            "usageLimit": int(trial_limit),
            "usageLimitWithPrecision": trial_limit,
            "currentUsage": int(account.free_trial_usage if account else 0),
            "currentUsageWithPrecision": account.free_trial_usage if account else 0.0,
        }
    return {
        "daysUntilReset": max(0, int((reset - now) // 86400)),
        "nextDateReset": reset,
        "subscriptionInfo": {
            "subscriptionTitle": "KIRO FREE",
            "type": "Q_DEVELOPER_STANDALONE_FREE",
        },
        "usageBreakdownList": [entry],
        "userInfo": {"email": account.email if account else "simulated-user@example.com"},
    }


def _account_refusal(account: Account | None) -> HttpError | None:
    """The account's fault when it refuses the account itself (a suspension, a 403): the
    service says so to every call, not only to chats."""
    if account is None or account.fault is None:
        return None
    steps = account.fault.apply(Script(())).steps
    first = steps[0] if steps else None
    return first if isinstance(first, HttpError) and first.status == 403 else None


class AccountEndpoints:
    def __init__(self, state: SimulatorState) -> None:
        self.state = state

    async def _refresh(self, request: Request, flow: str) -> Response:
        state = self.state
        raw = await request.body()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        if state.refresh_latency > 0:
            await asyncio.sleep(state.refresh_latency)
        fault = state.next_refresh_fault()
        if fault is not None:
            status, answer = fault.status, dict(fault.body)
        elif flow == "social":
            status, answer = state.accounts.refresh_social(body)
        else:
            status, answer = state.accounts.refresh_idc(body)
        state.log_refresh(request.url.path, body, status)
        return JSONResponse(answer, status_code=status)

    async def refresh_social(self, request: Request) -> Response:
        return await self._refresh(request, "social")

    async def refresh_idc(self, request: Request) -> Response:
        return await self._refresh(request, "idc")

    async def usage_limits(self, request: Request) -> Response:
        auth = self.state.authorize({k.lower(): v for k, v in request.headers.items()})
        self.state.log_usage_call(auth.account.label if auth.account else None)
        if auth.error is not None:
            return error_response(auth.error)
        refused = _account_refusal(auth.account)
        if refused is not None:
            return error_response(refused)
        return JSONResponse(usage_limits_body(auth.account))

    async def list_models(self, request: Request) -> Response:
        auth = self.state.authorize({k.lower(): v for k, v in request.headers.items()})
        if auth.error is not None:
            return error_response(auth.error)
        models = list(self.state.available_models)
        allowed = auth.account.models if auth.account is not None else None
        if allowed is not None:
            models = [m for m in models if m.get("modelId") in allowed]
        self.state.log_models_call(auth.account.label if auth.account else None)
        return JSONResponse({"models": models, "defaultModel": {"modelId": "auto"}})
