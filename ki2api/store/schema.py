"""The SQLite schema, its migrations, and the checks that run before anything is read.

``PRAGMA user_version`` is the schema version; ``PRAGMA application_id`` marks the file as
Ki2API's. Opening a database runs every migration it lacks, in one transaction each. A file
that is not a SQLite database, fails SQLite's own check, belongs to another program, or was
written by a newer Ki2API is refused with :class:`StoreError` — never emptied or recreated.

To change the schema, append a migration; never edit one that has shipped (a database made by
it has already run it). ``tests/fixtures/store-v1.sql`` .. ``store-v3.sql`` are databases as
versions 1 to 3 left them. A table holding a secret in clear (an account's tokens, a proxy URL
with its password) is named ``secret_*``: the backup drops every such table
(:data:`ki2api.store.backup.SECRET_PREFIX`).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ki2api.store.base import StoreError

APPLICATION_ID = 0x4B693241  # "Ki2A"

MIGRATIONS: tuple[str, ...] = (
    # 1: client keys (hashes only) and usage by day, key and account
    """
    CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        digest TEXT NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_used_at REAL,
        expires_at REAL,
        revoked_at REAL,
        enabled INTEGER NOT NULL DEFAULT 1,
        models TEXT NOT NULL DEFAULT '[]',
        rpm INTEGER,
        tpm INTEGER,
        credits_per_day REAL,
        credits_per_month REAL
    );
    CREATE UNIQUE INDEX keys_live_name ON keys(name) WHERE revoked_at IS NULL;
    CREATE TABLE usage (
        day TEXT NOT NULL,
        key_id TEXT NOT NULL,
        account TEXT NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        errors INTEGER NOT NULL DEFAULT 0,
        refused INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cache_read_tokens INTEGER NOT NULL DEFAULT 0,
        credits REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (day, key_id, account)
    );
    """,
    # 2: cache writes and estimated credits apart; accounts added at run time, rotated tokens
    """
    ALTER TABLE usage ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage ADD COLUMN credits_estimated REAL NOT NULL DEFAULT 0;
    CREATE INDEX usage_key_day ON usage(key_id, day);
    CREATE TABLE accounts (
        label TEXT PRIMARY KEY,
        data TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 3: the accounts' tokens are in clear: their table is named secret_* so that the backup
    # (ki2api/store/backup.py) leaves it out
    """
    ALTER TABLE accounts RENAME TO secret_accounts;
    """,
    # 4: an account's proxy set at run time (admin API, page, CLI), which holds over the one its
    # configuration names; NULL: KIRO_PROXY. A proxy URL may carry a password: secret_*
    """
    CREATE TABLE secret_account_proxies (
        label TEXT PRIMARY KEY,
        proxy TEXT,
        updated_at REAL NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
# The secret_* tables as the migrations leave them. A copy from the backup has none of them (it
# drops them), so every open makes those that are missing; keep this in step with MIGRATIONS.
SECRET_TABLES: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS secret_accounts (
        label TEXT PRIMARY KEY,
        data TEXT NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS secret_account_proxies (
        label TEXT PRIMARY KEY,
        proxy TEXT,
        updated_at REAL NOT NULL
    )
    """,
)


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection to the database at ``path`` (``":memory:"`` for none), checked and migrated
    to :data:`SCHEMA_VERSION`. Raises :class:`StoreError` with what to do."""
    where = str(path)
    if where != ":memory:":
        _prepare_folder(Path(path))
    try:
        conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"Cannot open the database {where} ({exc}); check DATA_DIR.") from None
    try:
        conn.execute("PRAGMA busy_timeout = 5000")  # the CLI may write while the server runs
        _check(conn, where)
        _migrate(conn, where)
        for table in SECRET_TABLES:  # a database restored from a backup lacks them
            conn.execute(table)
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    if where != ":memory:":
        _owner_only(Path(path))
    return conn


def check(path: Path) -> None:
    """What :func:`connect` would refuse, without making a database that is not there (a
    backup may have to be restored into its place first)."""
    if path.exists():
        connect(path).close()
    else:
        _prepare_folder(path)


def _prepare_folder(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StoreError(
            f"Cannot create the data folder {path.parent} ({exc.strerror}); set DATA_DIR to a "
            "writable folder."
        ) from None


def _owner_only(path: Path) -> None:
    # The database holds account tokens (never client keys): like a Kiro login file, the
    # user's only. Windows has no such modes; its user folders are private already.
    if os.name != "nt":
        try:
            os.chmod(path, 0o600)
        except OSError:
            pass


def _damaged(where: str, detail: str) -> StoreError:
    detail = " ".join(detail.split())[:200]  # SQLite's own words, on one line
    return StoreError(
        f"The database {where} is damaged ({detail}): restore it from a backup, or move it "
        "away to start with an empty one; Ki2API will not overwrite it."
    )


def _check(conn: sqlite3.Connection, where: str) -> None:
    try:
        conn.execute("BEGIN")  # one snapshot: another process may be migrating the file now
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(1)")]
        finally:
            conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise _damaged(where, str(exc)) from None
    if problems != ["ok"]:
        raise _damaged(where, str(problems[0]))
    if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables and version == 0):
        raise StoreError(
            f"{where} is not a Ki2API database (another program's SQLite file?): point "
            "DATA_DIR at another folder, or move the file away."
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"The database {where} was written by a newer Ki2API (schema version {version}; "
            f"this one knows up to {SCHEMA_VERSION}): upgrade Ki2API, or point DATA_DIR "
            "elsewhere."
        )


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _migrate(conn: sqlite3.Connection, where: str) -> None:
    version = schema_version(conn)
    for number in range(version + 1, SCHEMA_VERSION + 1):
        try:
            conn.execute("BEGIN IMMEDIATE")
            if schema_version(conn) >= number:  # another process (the CLI) ran it meanwhile
                conn.execute("COMMIT")
                continue
            for statement in MIGRATIONS[number - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(
                f"Updating the database {where} to schema version {number} failed ({exc}); "
                "it is left as it was: check the disk, then start again."
            ) from None
