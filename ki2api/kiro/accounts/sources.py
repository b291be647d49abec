"""Where accounts come from at start-up, in pool order: environment, ``KIRO_ACCOUNTS``, login file.

- ``env``: ``KIRO_ACCESS_TOKEN`` / ``KIRO_REFRESH_TOKEN`` (+ ``KIRO_AUTH_METHOD``, client, ...);
- ``KIRO_ACCOUNTS[i]``: a JSON list of accounts (or a path to a file holding one); an entry is
  the fields of one account, or ``{"tokenFile": path}`` for another Kiro login file;
- ``file:<path>``: the Kiro login file (``KIRO_TOKEN_FILE`` or the IDE's default path).

A broken source is reported (``problems``, shown by the admin API) and skipped; it never stops
the app from starting, and no message contains a secret.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from ki2api.kiro.accounts.credentials import (
    AccountSpec,
    CredentialError,
    label_of,
    min_interval_of,
    proxy_of,
    spec_from_env,
    spec_from_mapping,
    token_file_of,
)
from ki2api.kiro.accounts.tokenfile import LoginFile, load_login_file
from ki2api.settings import Settings

log = logging.getLogger("ki2api.accounts")

FILE_LABEL = "kiro-login"


@dataclass(slots=True)
class Source:
    spec: AccountSpec
    login_file: LoginFile | None = None
    missing_reason: str | None = None  # a login file that is not there (yet)
    min_interval_ms: float | None = None  # the account's own pacing (None: KIRO_MIN_INTERVAL_MS)


@dataclass(slots=True)
class Sources:
    accounts: list[Source] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # The IDE's default login file when it is absent: adopted if the user logs in later.
    pending_default_file: Path | None = None


def unique_label(base: str, taken: set[str]) -> str:
    label, n = base, 2
    while label in taken:
        label, n = f"{base}-{n}", n + 1
    return label


def file_source(path: Path, *, label: str, settings: Settings) -> Source:
    """A login file as a source; an unusable file becomes a placeholder that waits for a login."""
    source = f"file:{path}"
    try:
        login = load_login_file(path, label=label, source=source, settings=settings)
    except CredentialError as exc:
        # Missing, or caught half-written: keep watching it (it is re-read once it changes).
        placeholder = AccountSpec(
            label=label,
            source=source,
            auth_method="social",
            region=settings.kiro_region,
            token_file=path,
        )
        return Source(placeholder, missing_reason=str(exc))
    return Source(login.spec, login_file=login)


def token_file_in_allowed_dirs(path: Path, settings: Settings) -> Path | None:
    """The real path of ``path`` (symlinks and ``..`` resolved) when it lies in one of the
    folders login files may be adopted from (``settings.kiro_token_dirs``), else ``None``."""
    try:
        real = Path(os.path.realpath(path.expanduser()))
        for folder in settings.kiro_token_dirs:
            if real.is_relative_to(os.path.realpath(folder.expanduser())):
                return real
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop, no home ...
        return None
    return None


def _accounts_json(settings: Settings) -> tuple[Any, str]:
    raw = (settings.kiro_accounts or "").strip()
    if raw[:1] in ("[", "{"):
        try:
            return orjson.loads(raw), "KIRO_ACCOUNTS"
        except orjson.JSONDecodeError as exc:
            raise CredentialError(f"KIRO_ACCOUNTS is not valid JSON ({exc.msg})") from exc
    path = Path(raw).expanduser()
    try:
        return orjson.loads(path.read_bytes()), str(path)
    except FileNotFoundError as exc:
        raise CredentialError(
            f"KIRO_ACCOUNTS is neither JSON nor an existing file ({path})"
        ) from exc
    except OSError as exc:
        raise CredentialError(f"cannot read KIRO_ACCOUNTS file {path}: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise CredentialError(f"{path} (KIRO_ACCOUNTS) is not valid JSON ({exc.msg})") from exc


def account_source(
    entry: Any, *, default_label: str, source: str, settings: Settings, taken: set[str]
) -> Source:
    """One account given as fields, or as ``{"tokenFile": path, "label": ...}``."""
    if not isinstance(entry, dict):
        raise CredentialError("each account must be a JSON object")
    label = unique_label(label_of(entry) or default_label, taken)
    interval = min_interval_of(entry)
    path = token_file_of(entry)
    if path is not None:
        found = file_source(path, label=label, settings=settings)
        found.spec = replace(found.spec, proxy=proxy_of(entry))  # the entry's, not the file's
    else:
        found = Source(spec_from_mapping(entry, label=label, source=source, settings=settings))
    found.min_interval_ms = interval
    return found


def load_sources(settings: Settings) -> Sources:
    found = Sources()
    taken: set[str] = set()
    seen: set[str] = set()

    def add(src: Source) -> None:
        identity = src.spec.identity()
        if identity is not None and identity in seen:
            log.info("account %s duplicates another source; skipped", src.spec.label)
            return
        if identity is not None:
            seen.add(identity)
        taken.add(src.spec.label)
        found.accounts.append(src)

    def problem(text: str) -> None:
        log.error("credentials: %s", text)
        found.problems.append(text)

    try:
        env = spec_from_env(settings)
    except CredentialError as exc:
        problem(f"KIRO_ACCESS_TOKEN / KIRO_REFRESH_TOKEN: {exc}")
    else:
        if env is not None:
            add(Source(env))

    if settings.kiro_accounts:
        try:
            data, where = _accounts_json(settings)
        except CredentialError as exc:
            problem(str(exc))
        else:
            if isinstance(data, dict) and isinstance(data.get("accounts"), list):
                data = data["accounts"]
            if not isinstance(data, list):
                data = [data]
            for i, entry in enumerate(data):
                ref = f"KIRO_ACCOUNTS[{i}]" if where == "KIRO_ACCOUNTS" else f"{where}[{i}]"
                try:
                    add(
                        account_source(
                            entry,
                            default_label=f"account-{i + 1}",
                            source=ref,
                            settings=settings,
                            taken=taken,
                        )
                    )
                except CredentialError as exc:
                    problem(f"{ref}: {exc}")

    path = settings.kiro_token_file
    if settings.kiro_token_file_explicit or path.exists():
        try:
            add(file_source(path, label=unique_label(FILE_LABEL, taken), settings=settings))
        except CredentialError as exc:
            problem(f"KIRO_TOKEN_FILE {path}: {exc}")
    else:
        found.pending_default_file = path
    return found
