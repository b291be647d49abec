"""A periodic backup of the database to a private Hugging Face dataset (``BACKUP_REPO``), for a
Space without persistent storage: its disk is wiped on restart, the dataset is not.

Every ``BACKUP_EVERY`` minutes ``huggingface_hub``'s ``CommitScheduler`` uploads a snapshot:
a consistent copy (SQLite's online backup) from which the accounts' rows are deleted and the
file rewritten (``secure_delete``, ``VACUUM``), so no Kiro token ever leaves the machine;
client keys are hashes already. At start, when the database file is missing, the last snapshot
is downloaded first. When the Hub cannot be asked at start, no backup runs in that process: an
empty database must never overwrite a good backup.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ki2api.store.sqlite import DB_NAME

log = logging.getLogger("ki2api.store")

FINAL_PUSH_TIMEOUT = 30.0  # seconds a clean shutdown waits for the last upload


def snapshot(db: Path, out: Path) -> None:
    """A copy of the database ``db`` at ``out`` without the accounts' tokens."""
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    source = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    copy = sqlite3.connect(partial, isolation_level=None)
    try:
        source.backup(copy)
        copy.execute("PRAGMA secure_delete = ON")
        copy.execute("DELETE FROM accounts")
        copy.execute("VACUUM")  # rewrites every page: nothing of the deleted rows remains
    finally:
        copy.close()
        source.close()
    os.replace(partial, out)


def _scheduler(db: Path, **kwargs: Any) -> Any:
    from huggingface_hub import CommitScheduler

    class Snapshots(CommitScheduler):
        def push_to_hub(self) -> Any:
            with self.lock:
                snapshot(db, self.folder_path / DB_NAME)
            return super().push_to_hub()

    return Snapshots(**kwargs)


class HubBackup:
    """``restore`` (before the store opens), ``start`` (after), ``aclose`` (a last upload)."""

    def __init__(
        self,
        repo: str,
        db: Path,
        *,
        every: float = 10.0,
        token: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.repo = repo
        self.db = db
        self.every = every
        self.token = token  # None: huggingface_hub's own (HF_TOKEN, or `hf auth login`)
        self.endpoint = endpoint
        self.enabled = True  # off once the Hub could not be asked at start
        self._scheduler: Any = None

    def _api(self) -> Any:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token)

    async def restore(self) -> bool:
        """Download the last snapshot when there is no database; True if one was restored."""
        if self.db.exists():
            return False
        try:
            return await asyncio.to_thread(self._download)
        except Exception as exc:  # the network, a bad token: no backup this time, say so
            self.enabled = False
            log.error(
                "could not read the backup in %s (%s): starting without it, and without backups "
                "in this run so that an empty database does not replace it",
                self.repo,
                type(exc).__name__,
            )
            return False

    def _download(self) -> bool:
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )

        with tempfile.TemporaryDirectory() as folder:
            try:
                # Into an empty folder: straight from the Hub, never an older cached copy.
                path = self._api().hf_hub_download(
                    self.repo, DB_NAME, repo_type="dataset", local_dir=folder
                )
            except LocalEntryNotFoundError:
                raise  # the Hub did not answer: not the same as "no backup yet"
            except (EntryNotFoundError, RepositoryNotFoundError):
                log.info("no backup in %s yet: starting with an empty database", self.repo)
                return False
            self.db.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copyfile(str(path), self.db)
        log.info("database restored from the backup in %s", self.repo)
        return True

    async def start(self) -> None:
        if not self.enabled:
            return
        try:
            self._scheduler = await asyncio.to_thread(
                _scheduler,
                self.db,
                repo_id=self.repo,
                repo_type="dataset",
                folder_path=self.db.parent / "backup",
                every=self.every,
                private=True,
                squash_history=True,  # one snapshot kept, not one per upload
                hf_api=self._api(),
            )
        except Exception as exc:
            log.error("backups to %s are off: %s", self.repo, type(exc).__name__)
            return
        log.info("the database is backed up to %s every %g min", self.repo, self.every)

    async def aclose(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is None:
            return
        last: Future[Any] = scheduler.trigger()
        try:
            await asyncio.to_thread(last.result, FINAL_PUSH_TIMEOUT)
        except Exception as exc:
            log.error("the last backup to %s failed: %s", self.repo, type(exc).__name__)
        scheduler.stop()
