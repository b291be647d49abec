"""Turn the local Kiro login into the Space secrets the gateway reads (``KIRO_*``).

Sources, first match wins: an explicit ``--kiro-token-file``; ``KIRO_ACCOUNTS`` or
``KIRO_REFRESH_TOKEN`` / ``KIRO_ACCESS_TOKEN`` in the environment; the Kiro IDE's login file
(``~/.aws/sso/cache/kiro-auth-token.json``, plus ``<clientIdHash>.json`` beside it for IdC /
Builder ID logins). Failures raise :class:`KiroLoginError` with one sentence saying what to do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ki2api.settings import default_token_file

# Environment variables copied as-is when the login comes from the environment.
_ENV_SECRETS = (
    "KIRO_ACCESS_TOKEN",
    "KIRO_REFRESH_TOKEN",
    "KIRO_AUTH_METHOD",
    "KIRO_CLIENT_ID",
    "KIRO_CLIENT_SECRET",
    "KIRO_PROFILE_ARN",
    "KIRO_REGION",
)


class KiroLoginError(Exception):
    """No usable Kiro login; the message says what to do."""


@dataclass(frozen=True, slots=True)
class KiroLogin:
    secrets: dict[str, str] = field(repr=False)
    source: str  # where it came from, for the progress line (never a secret)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KiroLoginError(f"Cannot read the Kiro login file {path} ({exc.strerror}).") from exc
    except ValueError as exc:
        raise KiroLoginError(
            f"The Kiro login file {path} is not valid JSON: sign in to the Kiro IDE again."
        ) from exc
    if not isinstance(data, dict):
        raise KiroLoginError(f"The Kiro login file {path} is not a JSON object.")
    return data


def secrets_from_login_file(path: Path) -> dict[str, str]:
    """The ``KIRO_*`` secrets held by a Kiro IDE login file (and its IdC client file)."""
    if not path.is_file():
        raise KiroLoginError(
            f"No Kiro login found at {path}: sign in to the Kiro IDE on this machine, "
            "or pass --kiro-token-file PATH."
        )
    data = _read_json(path)
    refresh = data.get("refreshToken")
    access = data.get("accessToken")
    is_api_key = isinstance(access, str) and access.startswith("ksk_")  # never refreshed
    if not is_api_key and (not isinstance(refresh, str) or not refresh):
        raise KiroLoginError(
            f"The Kiro login file {path} has no refreshToken: sign in to the Kiro IDE again."
        )
    method = str(data.get("authMethod") or "social").lower()
    secrets = {
        "KIRO_REFRESH_TOKEN": str(refresh or ""),
        "KIRO_ACCESS_TOKEN": str(data.get("accessToken") or ""),
        "KIRO_AUTH_METHOD": method,
        "KIRO_PROFILE_ARN": str(data.get("profileArn") or ""),
        "KIRO_REGION": str(data.get("region") or ""),
    }
    if method == "idc" and not is_api_key:
        client_file = path.parent / f"{data.get('clientIdHash') or ''}.json"
        if not data.get("clientIdHash") or not client_file.is_file():
            raise KiroLoginError(
                f"{path} is an IdC / Builder ID login but its client file {client_file.name} is "
                "missing beside it: sign in to the Kiro IDE again."
            )
        client = _read_json(client_file)
        secrets["KIRO_CLIENT_ID"] = str(client.get("clientId") or "")
        secrets["KIRO_CLIENT_SECRET"] = str(client.get("clientSecret") or "")
        if not secrets["KIRO_CLIENT_ID"] or not secrets["KIRO_CLIENT_SECRET"]:
            raise KiroLoginError(
                f"The IdC client file {client_file} has no clientId / clientSecret: "
                "sign in to the Kiro IDE again."
            )
    return {key: value for key, value in secrets.items() if value}


def secrets_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """The ``KIRO_*`` secrets given in the environment (empty when none are)."""
    secrets: dict[str, str] = {}
    accounts = (env.get("KIRO_ACCOUNTS") or "").strip()
    if accounts:
        # A local path means nothing on the Space: ship the file's JSON instead.
        if accounts.startswith("["):
            secrets["KIRO_ACCOUNTS"] = accounts
        else:
            path = Path(accounts).expanduser()
            try:
                secrets["KIRO_ACCOUNTS"] = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise KiroLoginError(
                    f"KIRO_ACCOUNTS points at {path}, which cannot be read ({exc.strerror})."
                ) from exc
    if env.get("KIRO_REFRESH_TOKEN") or env.get("KIRO_ACCESS_TOKEN"):
        secrets.update({name: env[name] for name in _ENV_SECRETS if env.get(name)})
    return secrets


def kiro_login(env: Mapping[str, str], token_file: Path | None = None) -> KiroLogin:
    """Pick the login to ship to the Space, in the order given in the module docstring."""
    if token_file is not None:
        path = token_file.expanduser()
        return KiroLogin(secrets_from_login_file(path), str(path))
    from_env = secrets_from_env(env)
    if from_env:
        names = sorted(name for name in from_env if name in ("KIRO_ACCOUNTS", "KIRO_REFRESH_TOKEN"))
        return KiroLogin(from_env, "the environment (" + ", ".join(names or from_env) + ")")
    configured = env.get("KIRO_TOKEN_FILE")
    path = Path(configured).expanduser() if configured else default_token_file(env)
    return KiroLogin(secrets_from_login_file(path), str(path))
