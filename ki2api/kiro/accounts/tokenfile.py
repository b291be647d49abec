"""The Kiro login file: read it (with its OIDC client file), notice changes, write it back safely.

Write-back merges into the file's current contents (unknown fields and whatever another program
wrote are kept), goes to a temporary file in the same folder (the target's, for a symlinked
file) and replaces the original with one ``os.replace``: a crash at any point leaves either the
old file or the new one, never half of it. The written file is private (0600).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from ki2api.kiro.accounts.credentials import (
    AccountSpec,
    CredentialError,
    client_id_hash_of,
    spec_from_mapping,
)
from ki2api.settings import Settings

MAX_FILE_BYTES = 1024 * 1024  # a login file is a few KB; refuse to slurp anything huge


class TokenFileError(CredentialError):
    """The file is missing, unreadable or not a JSON object (the message has no secret in it)."""


@dataclass(frozen=True, slots=True)
class FileStamp:
    """Cheap change detection: any write by another program changes one of these."""

    mtime_ns: int
    size: int
    inode: int


@dataclass(frozen=True, slots=True)
class LoginFile:
    """One read of a login file: the parsed spec plus what is needed to notice the next change."""

    spec: AccountSpec
    stamp: FileStamp
    digest: str


def stamp_of(path: Path) -> FileStamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return FileStamp(st.st_mtime_ns, st.st_size, st.st_ino)


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise TokenFileError(f"no Kiro login file at {path}") from exc
    except OSError as exc:
        raise TokenFileError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from exc
    if len(raw) > MAX_FILE_BYTES:
        raise TokenFileError(f"{path} is too large to be a Kiro login file")
    return raw


def _parse_object(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise TokenFileError(f"{path} is not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise TokenFileError(f"{path} must hold a JSON object")
    return data


def read_json_object(path: Path) -> dict[str, Any]:
    return _parse_object(_read_bytes(path), path)


def client_file_for(token_file: Path, data: Mapping[str, Any]) -> Path | None:
    """IdC / Builder ID logins keep the OIDC client in ``<clientIdHash>.json`` beside the login."""
    client_hash = client_id_hash_of(data)
    return token_file.parent / f"{client_hash}.json" if client_hash else None


def load_login_file(path: Path, *, label: str, source: str, settings: Settings) -> LoginFile:
    """Read and parse a login file; raises :class:`TokenFileError` / ``CredentialError``."""
    stamp = stamp_of(path)
    raw = _read_bytes(path)
    data = _parse_object(raw, path)
    client_file = client_file_for(path, data)
    client: dict[str, Any] | None = None
    if client_file is not None and client_file.exists():
        client = read_json_object(client_file)
    spec = spec_from_mapping(
        data, label=label, source=source, settings=settings, token_file=path, client=client
    )
    spec = replace(spec, client_file=client_file)
    return LoginFile(
        spec=spec,
        stamp=stamp or FileStamp(0, len(raw), 0),
        digest=hashlib.sha256(raw).hexdigest(),
    )


def digest_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(_read_bytes(path)).hexdigest()
    except TokenFileError:
        return None


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix.

    A symlinked login file is written through to its target (replacing the link would leave
    the target, which other programs read, with a stale refresh token). The temporary file
    lives in the target's folder (``os.replace`` is atomic only within one file system), and
    the result is 0600 whatever the old mode was: it holds secrets.
    """
    target = Path(os.path.realpath(path))
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(dict(data), option=orjson.OPT_INDENT_2))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o600)
        os.replace(tmp_name, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on every platform.
    with suppress(OSError, AttributeError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def update_login_file(path: Path, updates: Mapping[str, Any]) -> tuple[FileStamp, str]:
    """Merge ``updates`` into the file's current contents (keeping unknown fields), atomically.

    Returns the new stamp and digest so the caller does not mistake its own write for a change
    made by another program.
    """
    try:
        current = read_json_object(path)
    except TokenFileError:
        if path.exists():
            raise  # never replace a file we could not parse: it may be another program's
        current = {}
    current.update(updates)
    write_json_atomic(path, current)
    stamp = stamp_of(path) or FileStamp(0, 0, 0)
    return stamp, digest_of(path) or ""
