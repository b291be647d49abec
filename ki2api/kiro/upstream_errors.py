"""The one table from the service's error answers to gateway errors (see docs/errors.md).

Rows are tried in order; the first whose status matches and whose marker (if any) appears in
the reason or message wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from ki2api.core.errors import (
    ContextLengthExceeded,
    GatewayError,
    ModelNotFound,
    NotConfigured,
    QuotaExceeded,
    TokenExpired,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRejected,
    UpstreamThrottled,
    UpstreamUnavailable,
)


@dataclass(frozen=True, slots=True)
class Row:
    status: int | None  # None: any 5xx
    marker: str | None
    error: type[GatewayError]
    message: str
    until_midnight: bool = False  # a daily limit: out until the next UTC day


TABLE: tuple[Row, ...] = (
    Row(
        400,
        "CONTENT_LENGTH_EXCEEDS_THRESHOLD",
        ContextLengthExceeded,
        "The conversation is too long for the model: shorten the history.",
    ),
    Row(
        400,
        "input is too long",
        ContextLengthExceeded,
        "The conversation is too long for the model: shorten the history.",
    ),
    Row(400, "INVALID_MODEL_ID", ModelNotFound, "Kiro does not offer this model to the account."),
    Row(400, None, UpstreamRejected, "Kiro refused the request"),
    Row(401, None, TokenExpired, "Kiro refused the account's token"),
    Row(402, None, QuotaExceeded, "The Kiro account has used up its quota"),
    Row(
        403,
        "bearer token included in the request is invalid",
        TokenExpired,
        "The Kiro access token has expired",
    ),
    Row(403, "expired", TokenExpired, "The Kiro access token has expired"),
    Row(403, None, UpstreamAuthFailed, "Kiro refused the account"),
    # A wrong URL, not a passing failure: no retries, and clients are told not to retry.
    Row(404, None, NotConfigured, "Kiro answered 404: check KIRO_API_URL"),
    Row(408, None, UpstreamUnavailable, "Kiro timed out"),
    Row(429, "MONTHLY_REQUEST_COUNT", QuotaExceeded, "The Kiro account has used up its quota"),
    Row(
        429,
        "DAILY_REQUEST_COUNT",
        QuotaExceeded,
        "The Kiro account has used up today's requests",
        until_midnight=True,
    ),
    Row(429, None, UpstreamThrottled, "Kiro is throttling this account"),
    Row(None, None, UpstreamUnavailable, "Kiro is temporarily unavailable"),
)


def error_for_response(
    status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> GatewayError:
    reason, message = _reason_and_message(body)
    haystack = f"{reason} {message}".lower()
    retry_after = _retry_after(headers or {})
    for row in TABLE:
        if row.status is None:
            if status < 500:
                continue
        elif row.status != status:
            continue
        if row.marker is not None and row.marker.lower() not in haystack:
            continue
        detail = message or reason
        text = f"{row.message} (Kiro {status}: {detail})" if detail else f"{row.message} ({status})"
        if row.until_midnight and retry_after is None:
            retry_after = _seconds_to_utc_midnight()
        return row.error(text, retry_after=retry_after)
    return UpstreamError(f"Kiro answered {status}: {message or reason or 'no detail'}")


def _reason_and_message(body: bytes) -> tuple[str, str]:
    try:
        data: Any = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return "", body[:300].decode("utf-8", "replace").strip()
    if not isinstance(data, dict):
        return "", ""
    reason = data.get("reason") or data.get("__type") or data.get("error") or ""
    message = data.get("message") or data.get("Message") or data.get("error_description") or ""
    return str(reason), str(message)[:500]


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _seconds_to_utc_midnight() -> float:
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()
