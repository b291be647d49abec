"""Simulated Kiro accounts: the tokens the simulator issued or was told about, and the two
refresh flows (social ``/refreshToken`` and IdC ``/token``) with rotation and ``invalid_grant``.

By default any bearer token is accepted and any refresh token refreshes (so demo mode works with
made-up credentials); ``require_known_tokens`` turns that into a real token book. Tokens that
*are* known are always checked: expired access tokens get the expired-token 403, revoked
refresh tokens get ``invalid_grant``.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ki2api.simulator.faults import EXPIRED_TOKEN_MESSAGE, Fault, http_error
from ki2api.simulator.scripts import HttpError

SOCIAL_PROFILE_ARN = "arn:aws:codewhisperer:us-east-1:699475941385:profile/EHGA3GRVQMUK"
DEFAULT_TOKEN_TTL = 3600

AuthMethod = Literal["social", "idc"]

_INVALID_GRANT = {"error": "invalid_grant", "error_description": "Invalid refresh token provided"}
_counter = itertools.count(1)


def _new_token(prefix: str) -> str:
    return f"{prefix}{next(_counter)}-{secrets.token_urlsafe(18)}"


def mask(token: str | None) -> str:
    """Last 4 characters only: never show a whole token."""
    return "****" + token[-4:] if token else "<none>"


@dataclass(slots=True)
class Account:
    """One simulated login. Mutate freely from tests (``fault``, usage numbers ...)."""

    label: str
    auth: AuthMethod
    access_token: str
    refresh_token: str | None
    rotate_refresh: bool = False
    client_id: str | None = None
    client_secret: str | None = None
    profile_arn: str = SOCIAL_PROFILE_ARN
    access_expires_at: float = 0.0  # time.monotonic()
    # Applied to every chat call made with this account's tokens (suspended, quota, ...).
    fault: Fault | None = None
    refresh_count: int = 0
    chat_count: int = 0
    usage_limit: float = 50.0
    current_usage: float = 0.0
    free_trial_limit: float | None = 500.0
    free_trial_usage: float = 0.0
    email: str = "simulated-user@example.com"
    # Kiro model ids this account may use (ListAvailableModels, and the chat call refuses the
    # others with INVALID_MODEL_ID); None: every model the simulator lists.
    models: list[str] | None = None
    previous_access_tokens: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"Account({self.label!r}, auth={self.auth}, access={mask(self.access_token)}, "
            f"refresh={mask(self.refresh_token)})"
        )


@dataclass(frozen=True, slots=True)
class Authorization:
    """Outcome of checking a bearer token: the account (if known) or the error to answer."""

    account: Account | None = None
    error: HttpError | None = None
    is_api_key: bool = False


class AccountBook:
    def __init__(self, *, require_known_tokens: bool = False, token_ttl: float = DEFAULT_TOKEN_TTL):
        self.require_known_tokens = require_known_tokens
        self.token_ttl = token_ttl
        self._lock = threading.RLock()
        self._by_access: dict[str, Account] = {}
        self._by_refresh: dict[str, Account] = {}
        self._expired_access: set[str] = set()
        self._revoked_refresh: set[str] = set()
        self._api_keys: set[str] = set()
        self.accounts: list[Account] = []

    # --- registration ---------------------------------------------------------------------

    def add(
        self,
        *,
        access_token: str | None = None,
        refresh_token: str | None = None,
        rotate_refresh: bool = False,
        auth: AuthMethod = "social",
        client_id: str | None = None,
        client_secret: str | None = None,
        profile_arn: str = SOCIAL_PROFILE_ARN,
        label: str | None = None,
        expires_in: float | None = None,
    ) -> Account:
        if auth not in ("social", "idc"):
            raise ValueError(f"auth must be 'social' or 'idc', not {auth!r}")
        ttl = self.token_ttl if expires_in is None else expires_in
        with self._lock:
            account = Account(
                label=label or f"account-{len(self.accounts) + 1}",
                auth=auth,
                access_token=access_token or _new_token("aoaSim"),
                refresh_token=refresh_token,
                rotate_refresh=rotate_refresh,
                client_id=client_id,
                client_secret=client_secret,
                profile_arn=profile_arn,
                access_expires_at=time.monotonic() + ttl,
            )
            self.accounts.append(account)
            self._by_access[account.access_token] = account
            if refresh_token:
                self._by_refresh[refresh_token] = account
            return account

    def add_api_key(self, key: str) -> None:
        with self._lock:
            self._api_keys.add(key)

    def expire_access_token(self, token: str) -> None:
        with self._lock:
            self._expired_access.add(token)

    def revoke_refresh_token(self, token: str) -> None:
        with self._lock:
            self._revoked_refresh.add(token)

    def account_for(self, token: str) -> Account | None:
        with self._lock:
            return self._by_access.get(token) or self._by_refresh.get(token)

    # --- bearer tokens --------------------------------------------------------------------

    def authorize(self, headers: Mapping[str, str]) -> Authorization:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Authorization(error=http_error(403, "Missing Authentication Token"))
        api_key_header = headers.get("tokentype", "").upper() == "API_KEY"
        if token.startswith("ksk_") or api_key_header:
            # API keys only work with their header; they are never refreshed.
            if not api_key_header or not token.startswith("ksk_"):
                return Authorization(error=http_error(403, EXPIRED_TOKEN_MESSAGE))
            with self._lock:
                known = token in self._api_keys
            if self.require_known_tokens and not known:
                return Authorization(error=http_error(403, EXPIRED_TOKEN_MESSAGE))
            return Authorization(is_api_key=True)
        with self._lock:
            account = self._by_access.get(token)
            expired = token in self._expired_access
        if account is None:
            if expired or self.require_known_tokens:
                return Authorization(error=http_error(403, EXPIRED_TOKEN_MESSAGE))
            return Authorization()
        if expired or (
            token == account.access_token and time.monotonic() >= account.access_expires_at
        ):
            return Authorization(account, http_error(403, EXPIRED_TOKEN_MESSAGE))
        return Authorization(account)

    # --- refresh flows --------------------------------------------------------------------

    def refresh_social(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or set(body) != {"refreshToken"}:
            return 400, _invalid_request('the body must be {"refreshToken": "..."}')
        token = body["refreshToken"]
        if not isinstance(token, str) or not token:
            return 400, _invalid_request("refreshToken must be a non-empty string")
        with self._lock:
            account = self._refreshable(token, "social", None)
            if account is None:
                return 400, dict(_INVALID_GRANT)
            rotated = self._issue(account, token)
        answer: dict[str, Any] = {
            "accessToken": account.access_token,
            "expiresIn": int(self.token_ttl),
            "profileArn": account.profile_arn,
        }
        if rotated:
            answer["refreshToken"] = account.refresh_token
        return 200, answer

    def refresh_idc(self, body: Any) -> tuple[int, dict[str, Any]]:
        required = {"clientId", "clientSecret", "grantType", "refreshToken"}
        if not isinstance(body, dict) or not required <= set(body):
            return 400, _invalid_request(
                "clientId, clientSecret, grantType and refreshToken are required (camelCase)"
            )
        if body["grantType"] != "refresh_token":
            return 400, {
                "error": "unsupported_grant_type",
                "error_description": "grantType must be refresh_token",
            }
        token, client_id, secret = body["refreshToken"], body["clientId"], body["clientSecret"]
        if not all(isinstance(v, str) and v for v in (token, client_id, secret)):
            return 400, _invalid_request("clientId, clientSecret and refreshToken must be strings")
        with self._lock:
            account = self._refreshable(token, "idc", (client_id, secret))
            if account is None:
                return 400, dict(_INVALID_GRANT)
            if account.client_id is not None and (account.client_id, account.client_secret) != (
                client_id,
                secret,
            ):
                return 400, {"error": "invalid_client", "error_description": "Invalid client"}
            self._issue(account, token)
        return 200, {
            "accessToken": account.access_token,
            "refreshToken": account.refresh_token,
            "expiresIn": int(self.token_ttl),
            "tokenType": "Bearer",
        }

    def _refreshable(
        self, token: str, auth: AuthMethod, client: tuple[str, str] | None
    ) -> Account | None:
        if token in self._revoked_refresh:
            return None
        account = self._by_refresh.get(token)
        if account is not None:
            return account if account.auth == auth else None
        if self.require_known_tokens:
            return None
        client_id, secret = client or (None, None)
        return self.add(refresh_token=token, auth=auth, client_id=client_id, client_secret=secret)

    def _issue(self, account: Account, used_refresh_token: str) -> bool:
        """New access token (and refresh token when the account rotates); True if rotated."""
        account.previous_access_tokens.append(account.access_token)
        account.access_token = _new_token("aoaSim")
        account.access_expires_at = time.monotonic() + self.token_ttl
        account.refresh_count += 1
        self._by_access[account.access_token] = account
        if not account.rotate_refresh:
            return False
        # The old refresh token dies with the rotation (the field-reported trap).
        self._revoked_refresh.add(used_refresh_token)
        self._by_refresh.pop(used_refresh_token, None)
        account.refresh_token = _new_token("aorSim")
        self._by_refresh[account.refresh_token] = account
        return True


def _invalid_request(description: str) -> dict[str, Any]:
    return {"error": "invalid_request", "error_description": description}
