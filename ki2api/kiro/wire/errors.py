"""The one table from the service's error answers to gateway errors (see docs/errors.md).

Every way the service says something failed goes through it: an HTTP status with a JSON body
(``error_for_response``), and an ``exception`` / ``error`` frame or an error event inside a
200 stream (``error_for_exception``, whose exception type stands for the status it would have
had). Rows are tried in order; the first whose status matches and whose marker (if any)
appears in the status or type, the reason or the message wins. The class a row gives decides
everything after, the same way however the failure came: the client's status and error type
(``ki2api.model.errors``), and what the failure does to the account (``Lease.settle`` in
``ki2api.kiro.accounts.pool``; docs/errors.md, "What a failure cools down"):

    ContextLengthExceeded, UpstreamRejected   the request is at fault: the account is fine
    ModelNotFound                      the account lacks the model: skipped for that model
    ModelCapacity / ModelUnavailable   one model on one account, for a moment
    UpstreamThrottled                  one account's request rate
    QuotaExceeded                      one account, until its quota resets (a daily limit:
                                       until the next UTC day)
    TokenExpired                       the token: refreshed (a status: at once, and retried)
    UpstreamAuthFailed                 one account, until a person acts (refused)
    AccountSuspended                   one account, until a person acts (suspended, flagged)
    UpstreamUnavailable (5xx)          nothing but a count: the gateway retries

Only an HTTP answer can carry a ``Retry-After`` (an exception frame has none) and be retried
(a started answer cannot be asked again: its error reaches the client, with Kiro's words).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from ki2api.model.errors import (
    AccountSuspended,
    ContextLengthExceeded,
    GatewayError,
    ModelCapacity,
    ModelNotFound,
    ModelUnavailable,
    NotConfigured,
    QuotaExceeded,
    TokenExpired,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRejected,
    UpstreamThrottled,
    UpstreamUnavailable,
)

ANY_STATUS = range(400, 600)
SERVER_ERRORS = range(500, 600)


@dataclass(frozen=True, slots=True)
class Row:
    status: int | range
    marker: str | None
    error: type[GatewayError]
    message: str
    until_midnight: bool = False  # a daily limit: out until the next UTC day

    def takes(self, status: int | None) -> bool:
        """``status`` None: an in-stream error of an unknown type, matched by marker alone."""
        if status is None:
            return self.marker is not None
        return status in self.status if isinstance(self.status, range) else status == self.status


_SUSPENDED = "Kiro suspended the account: a person has to restore it"
_FLAGGED = "Kiro flagged the account and limits its requests: a person has to look at it"
_TOO_LONG = "The conversation is too long for the model: shorten the history."
_QUOTA = "The Kiro account has used up its quota"

TABLE: tuple[Row, ...] = (
    # A suspension reads the same whatever status carries it; no retry or refresh undoes it.
    # Kiro words it several ways ("is temporarily suspended", "temporarily is suspended",
    # "unusual user/account activity", "locked ... as a security precaution").
    Row(ANY_STATUS, "TEMPORARILY_SUSPENDED", AccountSuspended, _SUSPENDED),
    Row(ANY_STATUS, "temporarily is suspended", AccountSuspended, _SUSPENDED),
    Row(ANY_STATUS, "unusual user activity", AccountSuspended, _SUSPENDED),
    Row(ANY_STATUS, "unusual account activity", AccountSuspended, _SUSPENDED),
    Row(ANY_STATUS, "security precaution", AccountSuspended, _SUSPENDED),
    # Flagged: Kiro limits how often the account may send "due to suspicious activity" while it
    # investigates. Sending more only deepens the suspicion: out, like a suspension.
    Row(429, "suspicious activity", AccountSuspended, _FLAGGED),
    Row(ANY_STATUS, "suspicious activity", AccountSuspended, _SUSPENDED),
    Row(400, "CONTENT_LENGTH_EXCEEDS_THRESHOLD", ContextLengthExceeded, _TOO_LONG),
    Row(400, "input is too long", ContextLengthExceeded, _TOO_LONG),
    Row(400, "INVALID_MODEL_ID", ModelNotFound, "Kiro does not offer this model to the account."),
    Row(400, None, UpstreamRejected, "Kiro refused the request"),
    Row(401, None, TokenExpired, "Kiro refused the account's token"),
    Row(402, None, QuotaExceeded, _QUOTA),
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
    Row(429, "MONTHLY_REQUEST_COUNT", QuotaExceeded, _QUOTA),
    Row(
        429,
        "DAILY_REQUEST_COUNT",
        QuotaExceeded,
        "The Kiro account has used up today's requests",
        until_midnight=True,
    ),
    Row(
        429,
        "INSUFFICIENT_MODEL_CAPACITY",
        ModelCapacity,
        "Kiro has no capacity for this model right now",
    ),
    Row(429, None, UpstreamThrottled, "Kiro is throttling this account"),
    Row(
        SERVER_ERRORS,
        "MODEL_TEMPORARILY_UNAVAILABLE",
        ModelUnavailable,
        "Kiro says the model is temporarily unavailable",
    ),
    Row(SERVER_ERRORS, None, UpstreamUnavailable, "Kiro is temporarily unavailable"),
)

# The status each exception type of an event stream stands for (the same AWS error types the
# HTTP answers carry in ``x-amzn-errortype``).
EXCEPTION_STATUS: Mapping[str, int] = {
    "ValidationException": 400,
    "AccessDeniedException": 403,
    "ServiceQuotaExceededException": 402,
    "ThrottlingException": 429,
    "TooManyRequestsException": 429,
    "InternalServerException": 500,
    "ModelStreamErrorException": 500,
    "ServiceUnavailableException": 503,
}


def error_for_response(
    status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> GatewayError:
    """An HTTP error answer of the service, as a gateway error."""
    reason, message = _reason_and_message(body)
    return _classify(status, str(status), reason, message, _retry_after(headers or {}))


def error_for_exception(kind: str, payload: bytes, header_message: str = "") -> GatewayError:
    """An ``exception`` / ``error`` frame inside a 200 stream, as a gateway error."""
    reason, message = _reason_and_message(payload)
    message = message or header_message
    if not (kind or reason or message):
        return UpstreamError("Kiro reported an error inside the stream")
    return _classify(EXCEPTION_STATUS.get(kind), kind, reason, message, None)


def _classify(
    status: int | None, where: str, reason: str, message: str, retry_after: float | None
) -> GatewayError:
    haystack = f"{where} {reason} {message}".lower()
    head = " ".join(part for part in ("Kiro", where, reason) if part)
    said = f"{head}: {message}" if message else head  # e.g. "Kiro 429 REASON: message"
    for row in TABLE:
        if not row.takes(status):
            continue
        if row.marker is not None and row.marker.lower() not in haystack:
            continue
        if row.until_midnight and retry_after is None:
            retry_after = _seconds_to_utc_midnight()
        return row.error(f"{row.message} ({said})", retry_after=retry_after)
    if status is None:
        return UpstreamError(f"Kiro reported an error inside the stream ({said})")
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
