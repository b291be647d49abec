"""API-key checks shared by every front door and the admin API.

Keys come as ``Authorization: Bearer <key>`` or ``x-api-key: <key>``. A key is a client key
(:mod:`ki2api.teams`: looked up by its hash, with its own limits) or ``API_KEY``, the operator's
own, compared in constant time. On a Hugging Face Space without an ``API_KEY`` secret the API
refuses the well-known default key (client keys still work), and says how to set one.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from ki2api.model.errors import AuthenticationFailed, NotConfigured, PermissionDenied
from ki2api.settings import Settings
from ki2api.teams.gate import OPERATOR, KeyCaller, Teams

SPACE_SETUP_MESSAGE = (
    "This Space has no API_KEY secret, so its API is switched off (the default key is public). "
    "Open the Space's Settings → Variables and secrets, add a secret named API_KEY with a long "
    "random value, and restart the Space; then send it as 'Authorization: Bearer <API_KEY>'."
)


def presented_key(request: Request) -> str | None:
    return key_from(request.headers.get("x-api-key"), request.headers.get("authorization"))


def key_from(x_api_key: str | None, authorization: str | None) -> str | None:
    # x-api-key wins: on a private Space the Hub's proxy needs the HF token in Authorization.
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


def keys_match(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def check_api_key(request: Request, settings: Settings) -> None:
    """Raise the error the client should see, or return when the key is ``API_KEY``."""
    check_presented_key(presented_key(request), settings)


async def authenticate(key: str | None, settings: Settings, teams: Teams | None) -> KeyCaller:
    """Who sent ``key``: a client key's caller, else the operator when it is ``API_KEY``;
    raises the error the client should see (a revoked or expired client key: 401)."""
    if key is not None and teams is not None:
        caller = await teams.find(key)
        if caller is not None:
            return caller
    check_presented_key(key, settings)
    return OPERATOR


async def authenticate_request(
    request: Request, settings: Settings, teams: Teams | None
) -> KeyCaller:
    return await authenticate(presented_key(request), settings, teams)


def check_presented_key(key: str | None, settings: Settings) -> None:
    """:func:`check_api_key` for a key already taken from the headers (:func:`key_from`)."""
    if settings.on_space and settings.api_key_is_default:
        raise NotConfigured(SPACE_SETUP_MESSAGE)
    if key is None:
        raise AuthenticationFailed(
            "Missing API key: send 'Authorization: Bearer <API_KEY>' or 'x-api-key: <API_KEY>'."
        )
    if not keys_match(key, settings.api_key):
        raise AuthenticationFailed("Incorrect API key provided.")


ADMIN_OFF_MESSAGE = (
    "The admin API is off: it needs its own key. Set ADMIN_KEY (a long random value, not the "
    "API key) in the environment or the Space's secrets and restart; then send it as "
    "'Authorization: Bearer <ADMIN_KEY>'."
)
METRICS_OFF_MESSAGE = (
    "/metrics needs the admin key: set ADMIN_KEY and send it as 'Authorization: Bearer "
    "<ADMIN_KEY>', or set METRICS_PUBLIC=1 to let anyone read the metrics."
)


def check_admin_key(request: Request, settings: Settings) -> None:
    """Only ``ADMIN_KEY`` opens the admin API; without one it is off. The API key never does:
    an API client is not an administrator."""
    if settings.admin_key is None:
        raise PermissionDenied(ADMIN_OFF_MESSAGE, code="admin_disabled")
    key = presented_key(request)
    if key is None:
        raise AuthenticationFailed("Missing admin key.")
    if keys_match(key, settings.admin_key):
        return
    if keys_match(key, settings.api_key):
        raise PermissionDenied("The API key may not use the admin API: send ADMIN_KEY.")
    raise AuthenticationFailed("Incorrect admin key provided.")


def check_metrics_access(request: Request, settings: Settings) -> None:
    """``/metrics``: the admin key, unless the operator made it public (``METRICS_PUBLIC=1``)."""
    if settings.metrics_public:
        return
    if settings.admin_key is None:
        raise PermissionDenied(METRICS_OFF_MESSAGE, code="admin_disabled")
    check_admin_key(request, settings)
