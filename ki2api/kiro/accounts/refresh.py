"""The two refresh flows (protocol doc, "Refresh"), and the seam where their httpx errors end.

- social: ``POST {KIRO_REFRESH_URL}`` with ``{"refreshToken"}``;
- IdC / Builder ID: ``POST {KIRO_OIDC_URL}`` with ``{"clientId", "clientSecret",
  "grantType": "refresh_token", "refreshToken"}``.

A dead refresh token (``invalid_grant``) raises :class:`NeedsLogin`: retrying cannot help. Network
trouble raises ``UpstreamUnavailable`` / ``UpstreamTimeout``; nothing from httpx escapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from ki2api.kiro.accounts.credentials import AccountSpec, mask_secret
from ki2api.model.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ki2api.settings import Settings

DEFAULT_EXPIRES_IN = 3600.0  # what both endpoints grant today, if an answer leaves it out
_DEAD_LOGIN_MARKERS = (
    "invalid_grant",
    "invalid refresh token",
    "invalid_client",  # the IdC client registration expired
    "unauthorized_client",
    "refresh token expired",
    "refresh token has expired",
)


class NeedsLogin(UpstreamAuthFailed):
    """The refresh token (or IdC client) is dead: the account needs a new Kiro login."""

    openai_code = "kiro_login_required"


@dataclass(frozen=True, slots=True)
class RefreshResult:
    access_token: str
    refresh_token: str | None  # set when the service rotated it: the old one may be dead now
    expires_at: datetime
    profile_arn: str | None

    def __repr__(self) -> str:
        return (
            f"RefreshResult(access_token={mask_secret(self.access_token)!r}, "
            f"refresh_token={mask_secret(self.refresh_token)!r}, expires_at={self.expires_at!r})"
        )


def refresh_request(settings: Settings, spec: AccountSpec) -> tuple[str, dict[str, str]]:
    """The URL and JSON body for ``spec``'s flow, exactly as the protocol doc gives them."""
    if not spec.refresh_token:
        raise NeedsLogin(f"account {spec.label!r} has no refresh token: log in to Kiro again")
    if spec.auth_method == "idc":
        if not (spec.client_id and spec.client_secret):
            raise NeedsLogin(
                f"account {spec.label!r} is an IdC login without its OIDC client "
                "(clientId / clientSecret): log in to Kiro again or provide them"
            )
        body = {
            "clientId": spec.client_id,
            "clientSecret": spec.client_secret,
            "grantType": "refresh_token",
            "refreshToken": spec.refresh_token,
        }
        return settings.url(settings.kiro_oidc_url, spec.region), body
    return settings.url(settings.kiro_refresh_url, spec.region), {
        "refreshToken": spec.refresh_token
    }


async def refresh_tokens(
    http: httpx.AsyncClient, settings: Settings, spec: AccountSpec
) -> RefreshResult:
    """Exchange ``spec``'s refresh token for a new access token (and maybe a new refresh token)."""
    url, body = refresh_request(settings, spec)
    try:
        response = await http.post(
            url,
            content=orjson.dumps(body),
            headers={"content-type": "application/json", "accept": "application/json"},
            timeout=settings.timeouts.refresh,
        )
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(
            f"refreshing account {spec.label!r} timed out ({type(exc).__name__})"
        ) from exc
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(
            f"refreshing account {spec.label!r} failed: cannot reach {httpx.URL(url).host} "
            f"({type(exc).__name__})"
        ) from exc
    if response.status_code != 200:
        raise _error_for(response, spec)
    return _parse_answer(response.content, spec)


def _error_for(response: httpx.Response, spec: AccountSpec) -> UpstreamError:
    status = response.status_code
    detail = _detail(response.content, spec)
    where = f"refreshing account {spec.label!r}: HTTP {status}" + (f" ({detail})" if detail else "")
    if status in (400, 401) and any(m in detail.lower() for m in _DEAD_LOGIN_MARKERS):
        return NeedsLogin(f"the refresh token was refused, log in to Kiro again ({where})")
    if status == 429:
        return UpstreamThrottled(where, retry_after=_retry_after(response))
    if status >= 500:
        return UpstreamUnavailable(where, retry_after=_retry_after(response))
    return UpstreamAuthFailed(where)


def _detail(raw: bytes, spec: AccountSpec) -> str:
    """The service's reason, shortened, with any secret of the account scrubbed out."""
    try:
        data: Any = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        text = raw[:200].decode("utf-8", "replace")
    else:
        if isinstance(data, dict):
            parts = [
                str(data[k])
                for k in ("error", "reason", "error_description", "message", "Message")
                if data.get(k)
            ]
            text = ": ".join(parts)
        else:
            text = ""
    for secret in (spec.refresh_token, spec.access_token, spec.client_secret):
        if secret:
            text = text.replace(secret, mask_secret(secret))
    return " ".join(text.split())[:300]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _parse_answer(raw: bytes, spec: AccountSpec) -> RefreshResult:
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError(
            f"refreshing account {spec.label!r}: the answer is not JSON"
        ) from exc
    if not isinstance(data, dict):
        raise UpstreamProtocolError(f"refreshing account {spec.label!r}: unexpected answer")
    access = data.get("accessToken") or data.get("access_token")
    if not isinstance(access, str) or not access:
        raise UpstreamProtocolError(
            f"refreshing account {spec.label!r}: the answer has no accessToken"
        )
    rotated = data.get("refreshToken") or data.get("refresh_token")
    expires_in = data.get("expiresIn", data.get("expires_in"))
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        expires_in = DEFAULT_EXPIRES_IN
    arn = data.get("profileArn")
    return RefreshResult(
        access_token=access,
        refresh_token=rotated if isinstance(rotated, str) and rotated else None,
        expires_at=datetime.now(UTC) + timedelta(seconds=float(expires_in)),
        profile_arn=arn if isinstance(arn, str) and arn else None,
    )
