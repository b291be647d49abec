"""Credentials: what one Kiro account is (``AccountSpec``) and what a request uses (``Credential``).

Pure values and parsing, no I/O except through :mod:`ki2api.kiro.accounts.tokenfile`. Every
source (the Kiro login file, environment variables, ``KIRO_ACCOUNTS``, the admin API, a token
pasted in the UI) is parsed by :func:`spec_from_mapping`, so they all accept the same field names
(the login file's camelCase, or snake_case).

Secrets never leave this module unmasked in a ``repr``, a log line or an error message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from ki2api.kiro.accounts.proxy import check_account_proxy, mask_proxy
from ki2api.settings import AuthMethod, Settings, auth_method_named

# Social logins share this profile (protocol doc, "profileArn").
SOCIAL_PROFILE_ARN = "arn:aws:codewhisperer:us-east-1:699475941385:profile/EHGA3GRVQMUK"
API_KEY_PREFIX = "ksk_"
_BARE_TOKEN = re.compile(r"[A-Za-z0-9+/=_.:~-]{8,8192}")
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")


class CredentialError(ValueError):
    """An account description that cannot be used; the message never contains a secret."""


def mask_secret(value: str | None) -> str:
    """``"…abcd"``: enough to tell two tokens apart, never enough to use one."""
    if not value:
        return ""
    if len(value) < 12:  # the last 4 characters of a short secret give too much away
        return "…"
    return "…" + value[-4:]


@dataclass(frozen=True, slots=True)
class Credential:
    """What one upstream request needs. ``__repr__`` masks the token."""

    label: str
    access_token: str
    profile_arn: str | None
    region: str
    is_api_key: bool = False
    proxy: str | None = None  # the account's own outbound proxy; None: KIRO_PROXY

    def __repr__(self) -> str:
        return (
            f"Credential(label={self.label!r}, access_token={mask_secret(self.access_token)!r}, "
            f"profile_arn={self.profile_arn!r}, region={self.region!r}, "
            f"is_api_key={self.is_api_key!r}, proxy={mask_proxy(self.proxy)!r})"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """One account's configuration and current tokens (a plain value: safe to keep in a session).

    ``token_file`` is set for accounts that live in a Kiro login file: refreshed tokens are
    written back there, and changes made by other programs are picked up from there.
    """

    label: str
    source: str
    auth_method: AuthMethod
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None
    profile_arn: str | None = None
    region: str = "us-east-1"
    client_id: str | None = field(default=None, repr=False)
    client_secret: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    client_file: Path | None = None
    # The account's own outbound proxy (ki2api/kiro/accounts/proxy.py): a URL, "direct", or
    # None for KIRO_PROXY. It may hold credentials: repr and listings mask it.
    proxy: str | None = field(default=None, repr=False)

    @property
    def is_api_key(self) -> bool:
        return self.auth_method == "api_key"

    @property
    def can_refresh(self) -> bool:
        if self.is_api_key or not self.refresh_token:
            return False
        if self.auth_method == "idc":
            return bool(self.client_id and self.client_secret)
        return True

    def credential(self) -> Credential | None:
        if not self.access_token:
            return None
        return Credential(
            label=self.label,
            access_token=self.access_token,
            profile_arn=self.profile_arn,
            region=self.region,
            is_api_key=self.is_api_key,
            proxy=self.proxy,
        )

    def expires_within(self, seconds: float, now: datetime | None = None) -> bool:
        """True when the access token is missing or expires within ``seconds``."""
        if not self.access_token:
            return True
        if self.expires_at is None:  # unknown: trust it until the service says otherwise
            return False
        now = now or datetime.now(UTC)
        return self.expires_at - now <= timedelta(seconds=seconds)

    def with_label(self, label: str) -> AccountSpec:
        return replace(self, label=label)

    def identity(self) -> str | None:
        """What makes two specs the same account (for de-duplicating sources)."""
        return self.refresh_token or self.access_token

    def __repr__(self) -> str:
        return (
            f"AccountSpec(label={self.label!r}, source={self.source!r}, "
            f"auth_method={self.auth_method!r}, access_token={mask_secret(self.access_token)!r}, "
            f"refresh_token={mask_secret(self.refresh_token)!r}, expires_at={self.expires_at!r}, "
            f"region={self.region!r}, token_file={self.token_file!r}, "
            f"proxy={mask_proxy(self.proxy)!r})"
        )

    __str__ = __repr__


# --- parsing -----------------------------------------------------------------------------------

_ALIASES: dict[str, tuple[str, ...]] = {
    "access_token": ("accessToken", "access_token", "token"),
    "refresh_token": ("refreshToken", "refresh_token"),
    "api_key": ("apiKey", "api_key"),
    "expires_at": ("expiresAt", "expires_at"),
    "expires_in": ("expiresIn", "expires_in"),
    "profile_arn": ("profileArn", "profile_arn"),
    "auth_method": ("authMethod", "auth_method"),
    "region": ("region",),
    "client_id": ("clientId", "client_id"),
    "client_secret": ("clientSecret", "client_secret"),
    "client_id_hash": ("clientIdHash", "client_id_hash"),
    "label": ("label", "name"),
    "token_file": ("tokenFile", "token_file"),
    "min_interval_ms": ("minIntervalMs", "min_interval_ms"),
    "proxy": ("proxy",),
}
MAX_MIN_INTERVAL_MS = 3_600_000.0  # an hour between requests is already no use


def _get(data: Mapping[str, Any], key: str) -> Any:
    for alias in _ALIASES[key]:
        value = data.get(alias)
        if value not in (None, ""):
            return value
    return None


def _text(data: Mapping[str, Any], key: str) -> str | None:
    value = _get(data, key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise CredentialError(f"field {_ALIASES[key][0]!r} must be a string")
    return value.strip() or None


def parse_time(value: Any) -> datetime | None:
    """ISO-8601 (``...Z`` included) or a Unix time in seconds or milliseconds."""
    if value in (None, ""):
        return None
    if isinstance(value, bool):
        raise CredentialError("expiresAt must be an ISO-8601 time or a Unix time")
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):  # past what a datetime holds
            raise CredentialError("expiresAt is out of range") from None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise CredentialError("expiresAt must be an ISO-8601 time") from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise CredentialError("expiresAt must be an ISO-8601 time or a Unix time")


def format_time(value: datetime) -> str:
    """The login file's own format: ISO-8601 in UTC with milliseconds and ``Z``."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _auth_method(raw: str | None, access_token: str | None, has_client: bool) -> AuthMethod:
    if access_token and access_token.startswith(API_KEY_PREFIX):
        return "api_key"
    if raw and raw.strip():
        method = auth_method_named(raw)
        if method is None:
            raise CredentialError(f"unknown authMethod {raw!r}: use social, idc or api_key")
        return method
    return "idc" if has_client else "social"


def spec_from_mapping(
    data: Mapping[str, Any],
    *,
    label: str,
    source: str,
    settings: Settings,
    token_file: Path | None = None,
    client: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> AccountSpec:
    """Build a spec from a login file's contents or one account's fields (camel or snake case).

    ``client`` is the OIDC client file's contents for IdC logins. profileArn: the account's own
    value, else ``KIRO_PROFILE_ARN``, else the well-known social one.
    """
    if not isinstance(data, Mapping):
        raise CredentialError("an account must be a JSON object")
    if client is None and isinstance(data.get("client"), Mapping):
        client = data["client"]  # an IdC login pasted together with its OIDC client file
    api_key = _text(data, "api_key")
    access_token = api_key or _text(data, "access_token")
    refresh_token = _text(data, "refresh_token")
    client_id = _text(data, "client_id")
    client_secret = _text(data, "client_secret")
    if client is not None:
        client_id = client_id or _text(client, "client_id")
        client_secret = client_secret or _text(client, "client_secret")
    if not access_token and not refresh_token:
        raise CredentialError("an account needs an accessToken, a refreshToken or an apiKey")
    method = _auth_method(
        _text(data, "auth_method"), access_token, bool(client_id and client_secret)
    )
    if method == "api_key":
        if not access_token:
            raise CredentialError("an API-key account needs the key (apiKey: ksk_...)")
        refresh_token = None
    expires_at = parse_time(_get(data, "expires_at"))
    expires_in = _get(data, "expires_in")
    if expires_at is None and isinstance(expires_in, int | float) and access_token:
        try:
            expires_at = (now or datetime.now(UTC)) + timedelta(seconds=float(expires_in))
        except OverflowError:  # past year 9999
            raise CredentialError("expiresIn is out of range") from None
    region = _text(data, "region") or settings.kiro_region
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", region):
        raise CredentialError(f"region {region!r} does not look like an AWS region")
    return AccountSpec(
        label=label,
        source=source,
        auth_method=method,
        access_token=access_token,
        refresh_token=refresh_token,
        expires_at=expires_at,
        profile_arn=_text(data, "profile_arn") or settings.kiro_profile_arn or SOCIAL_PROFILE_ARN,
        region=region,
        client_id=client_id,
        client_secret=client_secret,
        token_file=token_file,
        proxy=proxy_of(data),
    )


def spec_fields(spec: AccountSpec) -> dict[str, Any]:
    """The fields :func:`spec_from_mapping` reads back into ``spec`` (tokens and the account's
    own proxy included): how an account added at run time is stored. One kept in a login file
    is stored as that file."""
    fields: dict[str, Any]
    if spec.token_file is not None:
        fields = {"label": spec.label, "tokenFile": str(spec.token_file)}
    else:
        fields = {
            "label": spec.label,
            "authMethod": spec.auth_method,
            "accessToken": spec.access_token,
            "refreshToken": spec.refresh_token,
            "expiresAt": format_time(spec.expires_at) if spec.expires_at else None,
            "profileArn": spec.profile_arn,
            "region": spec.region,
            "clientId": spec.client_id,
            "clientSecret": spec.client_secret,
        }
    fields["proxy"] = spec.proxy
    return {k: v for k, v in fields.items() if v is not None}


def proxy_of(data: Mapping[str, Any]) -> str | None:
    """An account's ``proxy`` field, checked (``CredentialError`` if it cannot be used)."""
    value = _text(data, "proxy")
    if value is None:
        return None
    try:
        return check_account_proxy(value)
    except ValueError as exc:
        raise CredentialError(f"proxy: {exc}") from None


def spec_from_env(settings: Settings) -> AccountSpec | None:
    """``KIRO_ACCESS_TOKEN`` / ``KIRO_REFRESH_TOKEN`` (+ method, client, profile, region)."""
    if not (settings.kiro_access_token or settings.kiro_refresh_token):
        return None
    fields: dict[str, Any] = {
        "accessToken": settings.kiro_access_token,
        "refreshToken": settings.kiro_refresh_token,
        "authMethod": settings.kiro_auth_method,
        "clientId": settings.kiro_client_id,
        "clientSecret": settings.kiro_client_secret,
    }
    return spec_from_mapping(fields, label="env", source="env", settings=settings)


def label_of(data: Mapping[str, Any]) -> str | None:
    label = _get(data, "label")
    if label is None:
        return None
    if not isinstance(label, str) or not LABEL_PATTERN.match(label):
        raise CredentialError(
            "a label is 1-64 characters: letters, digits and . _ @ + - (not first)"
        )
    return label


def token_file_of(data: Mapping[str, Any]) -> Path | None:
    path = _get(data, "token_file")
    if path is None:
        return None
    if not isinstance(path, str):
        raise CredentialError("tokenFile must be a path")
    return Path(path).expanduser()


def min_interval_of(data: Mapping[str, Any]) -> float | None:
    """The account's own minimum interval between requests (``minIntervalMs``), if it has one."""
    value = _get(data, "min_interval_ms")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CredentialError("minIntervalMs must be a number of milliseconds")
    if not 0 <= value <= MAX_MIN_INTERVAL_MS:
        raise CredentialError(f"minIntervalMs must be between 0 and {MAX_MIN_INTERVAL_MS:.0f}")
    return float(value)


def client_id_hash_of(data: Mapping[str, Any]) -> str | None:
    value = _get(data, "client_id_hash")
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,128}", value):
        return value
    return None


def parse_pasted_token(text: str, settings: Settings, label: str = "session") -> AccountSpec:
    """A token a visitor pasted: a login file's JSON, one account's JSON, or a bare key / token.

    A bare ``ksk_...`` is an API key; another bare value starting with ``aor`` is taken as a
    (social) refresh token, anything else as an access token.
    """
    text = (text or "").strip()
    if not text:
        raise CredentialError("paste a Kiro login (kiro-auth-token.json), an API key or a token")
    if text[:1] in ("{", "["):
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise CredentialError(f"the pasted text is not valid JSON ({exc.msg})") from exc
        if not isinstance(data, dict):
            raise CredentialError("the pasted JSON must be an object")
        data.pop("tokenFile", None)  # a visitor may not make the server read its files
        data.pop("token_file", None)
        data.pop("proxy", None)  # nor make it connect where the visitor says
        return spec_from_mapping(data, label=label, source="pasted", settings=settings)
    if not _BARE_TOKEN.fullmatch(text):
        raise CredentialError("that does not look like a Kiro token (no spaces or quotes in one)")
    key = "refreshToken" if text.startswith("aor") else "accessToken"
    return spec_from_mapping({key: text}, label=label, source="pasted", settings=settings)
