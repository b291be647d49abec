"""An account's remaining credits (``getUsageLimits``): on demand, never on the request path.

The URL is derived from the chat URL's host, as the protocol doc describes. What is left is the
``CREDIT`` entry's limit minus its usage, plus an active free trial's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from ki2api.kiro.accounts.credentials import Credential, CredentialError, parse_time
from ki2api.kiro.wire.errors import error_for_response
from ki2api.model.errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from ki2api.settings import Settings

_QUERY = "isEmailRequired=true&origin=AI_EDITOR&resourceType=AGENTIC_REQUEST"


@dataclass(frozen=True, slots=True)
class UsageLimits:
    remaining: float | None
    limit: float | None
    used: float | None
    subscription: str | None
    resets_at: datetime | None
    fetched_at: datetime

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("resets_at", "fetched_at"):
            value = data[key]
            data[key] = value.isoformat() if value else None
        return data


def usage_limits_url(settings: Settings, region: str) -> str:
    parts = urlsplit(settings.url(settings.kiro_api_url, region))
    return f"{parts.scheme}://{parts.netloc}/getUsageLimits?{_QUERY}"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_usage_limits(data: Any, now: datetime | None = None) -> UsageLimits:
    if not isinstance(data, dict):
        raise UpstreamProtocolError("getUsageLimits answered something that is not an object")
    entries = [e for e in data.get("usageBreakdownList") or [] if isinstance(e, dict)]
    entry = next((e for e in entries if e.get("resourceType") == "CREDIT"), None)
    if entry is None and entries:
        entry = entries[0]
    limit = used = remaining = None
    if entry is not None:
        limit = _num(entry.get("usageLimitWithPrecision", entry.get("usageLimit")))
        used = _num(entry.get("currentUsageWithPrecision", entry.get("currentUsage")))
        if limit is not None:
            remaining = limit - (used or 0.0)
        trial = entry.get("freeTrialInfo")
        if isinstance(trial, dict) and str(trial.get("freeTrialStatus", "")).upper() == "ACTIVE":
            t_limit = _num(trial.get("usageLimitWithPrecision", trial.get("usageLimit"))) or 0.0
            t_used = _num(trial.get("currentUsageWithPrecision", trial.get("currentUsage"))) or 0.0
            remaining = (remaining or 0.0) + max(0.0, t_limit - t_used)
    info = data.get("subscriptionInfo")
    subscription = info.get("subscriptionTitle") if isinstance(info, dict) else None
    try:
        resets_at = parse_time(data.get("nextDateReset"))
    except CredentialError:
        resets_at = None
    return UsageLimits(
        remaining=max(0.0, remaining) if remaining is not None else None,
        limit=limit,
        used=used,
        subscription=subscription if isinstance(subscription, str) else None,
        resets_at=resets_at,
        fetched_at=now or datetime.now(UTC),
    )


async def fetch_usage_limits(
    http: httpx.AsyncClient, settings: Settings, credential: Credential
) -> UsageLimits:
    """Ask the service; raises the gateway's ``Upstream*`` errors (``TokenExpired`` on 401/403)."""
    headers = {"authorization": f"Bearer {credential.access_token}", "accept": "application/json"}
    if credential.is_api_key:
        headers["tokentype"] = "API_KEY"
    url = usage_limits_url(settings, credential.region)
    try:
        response = await http.get(url, headers=headers, timeout=settings.timeouts.refresh)
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout("getUsageLimits timed out") from exc
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(f"getUsageLimits failed ({type(exc).__name__})") from exc
    if response.status_code != 200:
        raise error_for_response(response.status_code, response.content[:4096], response.headers)
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError("getUsageLimits did not answer JSON") from exc
    return parse_usage_limits(data)
