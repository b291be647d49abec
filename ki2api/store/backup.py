"""A periodic backup of the gateway's SQLite database to a private Hugging Face dataset.

For a Space without persistent storage (nothing mounted at ``/data``): its disk is wiped on each
restart, and with it the client keys and usage the gateway stores. With ``BACKUP_DATASET``
(``owner/name``) and ``HF_TOKEN`` set, :func:`start_backup` creates the dataset (private) if
needed and, every ``BACKUP_EVERY_MINUTES``, uploads a consistent copy of the database with
``huggingface_hub``'s ``CommitScheduler`` (a last one when the gateway stops); :func:`restore`
puts the latest copy back in place before the store opens, when the database is missing.

No token in clear ever leaves the machine. The decision, for the store's schema:

- client API keys are stored as hashes only: they are backed up;
- account tokens (accounts added at run time, rotated refresh tokens) live in tables whose name
  starts with ``secret_`` (:data:`SECRET_PREFIX`): every such table is dropped from the copy,
  which is then rewritten (``VACUUM``) so that no freed page keeps their bytes. After a restore,
  accounts from the Space's secrets come back by themselves; accounts added at run time must be
  added again;
- before a copy is uploaded it is searched for every secret the gateway knows (its keys, the HF
  token, each account's current tokens: ``secrets``); a copy holding one is not uploaded, and the
  log says so.

A copy is made with SQLite's online backup API (a consistent snapshot while the gateway keeps
writing), and replaces the previous one in the scheduler's folder only when its contents
changed, so an idle gateway makes no commits.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitScheduler, HfApi
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from ki2api.settings import Settings

log = logging.getLogger("ki2api.backup")

SECRET_PREFIX = "secret_"  # tables whose rows hold a secret in clear: never backed up
FINAL_PUSH_TIMEOUT = 30.0  # seconds the last backup may take when the gateway stops

Secrets = Callable[[], Iterable[str | None]]


class BackupRefused(Exception):
    """A copy of the database still holds a known secret: it is not uploaded."""


@dataclass(frozen=True, slots=True)
class StorageState:
    """Whether stored state survives a restart, and the backup that makes up for it if not."""

    ephemeral: bool  # DATA_DIR is wiped on restart (a Space without persistent storage)
    backup_dataset: str | None
    backup_every: float  # minutes


def storage_state(settings: Settings) -> StorageState:
    """From the settings: ``DATA_DIR``'s persistence was decided when they were read."""
    return StorageState(
        ephemeral=not settings.data_dir_persistent,
        backup_dataset=settings.backup_dataset,
        backup_every=settings.backup_every,
    )


def snapshot(
    database: Path, target: Path, *, exclude: Iterable[str] = (), secrets: Secrets = tuple
) -> bool:
    """Write a consistent copy of ``database`` to ``target``, without the ``secret_*`` tables
    and those named in ``exclude``; True when ``target`` changed.

    Raises ``FileNotFoundError`` when there is no database (yet), :class:`BackupRefused` when
    the copy still holds one of ``secrets``, ``sqlite3.Error`` for a database that cannot be read.
    """
    if not database.is_file():
        raise FileNotFoundError(database)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        # mode=rw: never create an empty database where the store has not made one.
        with closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=rw", uri=True)) as src:
            with closing(sqlite3.connect(partial)) as copy:
                src.backup(copy)
                _strip(copy, set(exclude))
        data = partial.read_bytes()
        leaked = [s for s in secrets() if s and len(s) >= 8 and s.encode() in data]
        if leaked:
            raise BackupRefused(
                f"the copy of {database.name} still holds {len(leaked)} secret(s) in clear; "
                f"keep them in tables named {SECRET_PREFIX}*"
            )
        if target.is_file() and _digest(target.read_bytes()) == _digest(data):
            return False
        os.replace(partial, target)
        return True
    finally:
        partial.unlink(missing_ok=True)


def _strip(copy: sqlite3.Connection, exclude: set[str]) -> None:
    names = [row[0] for row in copy.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for name in names:
        if name.startswith(SECRET_PREFIX) or name in exclude:
            copy.execute(f'DROP TABLE "{name.replace(chr(34), chr(34) * 2)}"')
    copy.commit()
    copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
    copy.execute("VACUUM")  # rewrites the file: no freed page keeps a dropped row's bytes


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DatabaseBackup(CommitScheduler):
    """``CommitScheduler`` that makes a fresh copy of the database before each push (the
    scheduler's own push uploads the files of its folder that changed)."""

    def __init__(
        self,
        *,
        database: Path,
        repo_id: str,
        every: float,
        folder: Path,
        exclude: Iterable[str] = (),
        secrets: Secrets = tuple,
        hf_api: HfApi | None = None,
        token: str | None = None,
    ) -> None:
        # Set before the scheduler starts: its thread pushes (so copies) at once.
        self.database = database
        self.exclude = tuple(exclude)
        self.secrets = secrets
        self.copy_name = database.name
        super().__init__(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=folder,
            every=every,
            private=True,
            token=token,
            hf_api=hf_api,
            allow_patterns=[self.copy_name],
        )

    def push_to_hub(self) -> Any:
        try:
            snapshot(
                self.database,
                self.folder_path / self.copy_name,
                exclude=self.exclude,
                secrets=self.secrets,
            )
        except FileNotFoundError:
            return None  # nothing stored yet
        except (BackupRefused, sqlite3.Error) as exc:
            log.error("backup of %s to %s skipped: %s", self.database.name, self.repo_id, exc)
            return None
        return super().push_to_hub()

    async def close(self) -> None:
        """A last backup (what changed since the previous one), then stop."""
        try:
            await asyncio.to_thread(self.trigger().result, FINAL_PUSH_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - stopping must not fail on the network
            log.error("the last backup to %s failed: %s", self.repo_id, exc)
        self.stop()


async def start_backup(
    settings: Settings,
    database: Path,
    *,
    secrets: Secrets = tuple,
    exclude: Iterable[str] = (),
    endpoint: str | None = None,
    folder: Path | None = None,
) -> DatabaseBackup | None:
    """Start backing ``database`` up to ``BACKUP_DATASET``; None when no dataset is set or the
    Hub cannot be reached (logged: the gateway runs on without a backup)."""
    if not settings.backup_dataset:
        return None
    folder = folder or Path(tempfile.mkdtemp(prefix="ki2api-backup-"))
    api = HfApi(endpoint=endpoint or settings.hf_endpoint, token=settings.hf_token)
    try:
        if not await asyncio.to_thread(_private_dataset, api, settings.backup_dataset):
            log.error(
                "no backup: the dataset %s is public; make it private (its settings page on "
                "the Hub) or name another one in BACKUP_DATASET",
                settings.backup_dataset,
            )
            return None
        backup = await asyncio.to_thread(
            DatabaseBackup,
            database=database,
            repo_id=settings.backup_dataset,
            every=settings.backup_every,
            folder=folder,
            exclude=exclude,
            secrets=secrets,
            hf_api=api,
        )
    except Exception as exc:  # noqa: BLE001 - any Hub failure: run on, without a backup
        log.error("no backup: the dataset %s cannot be used: %s", settings.backup_dataset, exc)
        return None
    log.info(
        "the database is backed up to the private dataset %s every %g min",
        settings.backup_dataset,
        settings.backup_every,
    )
    return backup


async def restore(
    settings: Settings, database: Path, *, endpoint: str | None = None
) -> bool | None:
    """Put the latest backed-up copy at ``database`` when there is none (a Space that just
    restarted); True when it did. Call it before the store opens the database. Nothing backed
    up yet, or a damaged copy: False, and the store starts empty. A Hub that could not be
    asked: None, logged; the store starts empty and must not be backed up in this run, or its
    empty copy would replace the good one."""
    if not settings.backup_dataset or database.exists():
        return False
    api = HfApi(endpoint=endpoint or settings.hf_endpoint, token=settings.hf_token)
    try:
        await asyncio.to_thread(_download, api, settings.backup_dataset, database)
    except LocalEntryNotFoundError as exc:  # the Hub did not answer: not "nothing backed up"
        problem: Exception = exc
    except (EntryNotFoundError, RepositoryNotFoundError):
        log.info("no backup in %s yet: the store starts empty", settings.backup_dataset)
        return False
    except sqlite3.DatabaseError as exc:  # a damaged copy: the next backup replaces it
        log.error(
            "the backup in %s is unusable (%s): the store starts empty",
            settings.backup_dataset,
            exc,
        )
        return False
    except Exception as exc:  # noqa: BLE001 - the gateway starts anyway, with an empty store
        problem = exc
    else:
        log.info("restored %s from the dataset %s", database.name, settings.backup_dataset)
        return True
    log.error(
        "could not restore the backup from %s: %s; starting with an empty store, and "
        "without backups in this run so that it does not replace the backup",
        settings.backup_dataset,
        problem,
    )
    return None


def _download(api: HfApi, repo_id: str, database: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="ki2api-restore-") as folder:
        path = api.hf_hub_download(repo_id, database.name, repo_type="dataset", local_dir=folder)
        with closing(sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)) as db:
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
        if verdict != "ok":
            raise sqlite3.DatabaseError(f"the backed-up copy is damaged ({verdict})")
        database.parent.mkdir(parents=True, exist_ok=True)
        partial = database.with_name(f".{database.name}.partial")
        shutil.copyfile(path, partial)
        os.replace(partial, database)


def _private_dataset(api: HfApi, repo_id: str) -> bool:
    """Create the dataset, private, unless it exists; whether it is private (an existing one
    keeps its visibility: a public one would publish the key hashes and the usage)."""
    api.create_repo(repo_id, repo_type="dataset", private=True, exist_ok=True)
    return bool(api.repo_info(repo_id, repo_type="dataset").private)
