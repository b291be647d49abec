"""The embedded store: one SQLite file in ``DATA_DIR`` (``ki2api.db``), for one process.

The event loop never waits on SQLite: every statement runs on one thread of the store's own,
which owns the connection. The request path does not touch the database at all: keys are
answered from memory (reloaded when another process — the CLI — changes the file), limits are
counted in memory (:mod:`ki2api.store.counters`, seeded from the stored usage at start), and
usage is summed in memory and written in one transaction every ``flush_interval`` seconds.

What a crash can lose: the usage and last-used times of the last ``flush_interval`` seconds
(a clean shutdown writes them), and the request and token buckets (they refill within a
minute anyway). A key created, changed or revoked is written before the call returns.

Another process's writes (the CLI's keys, accounts and proxies) are noticed by the flush loop
(``PRAGMA data_version``): the keys are reloaded and the change listeners told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ki2api.store.base import ChangeListener, KeyNameTaken, StoreError
from ki2api.store.counters import Counters
from ki2api.store.records import (
    USAGE_COLUMNS,
    KeyRecord,
    Limits,
    Refusal,
    StoredAccount,
    UsageCounts,
    UsageQuery,
    day_of,
)
from ki2api.store.schema import connect

log = logging.getLogger("ki2api.store")
T = TypeVar("T")

DB_NAME = "ki2api.db"
_REPEAT_FAILURE_LOG = 60.0  # seconds between two log lines while writes keep failing
_KEY_COLUMNS = (
    "id, name, digest, hint, created_at, last_used_at, expires_at, revoked_at, enabled, models, "
    "rpm, tpm, credits_per_day, credits_per_month"
)
_UPSERT_USAGE = (
    f"INSERT INTO usage (day, key_id, account, {', '.join(USAGE_COLUMNS)}) "
    f"VALUES (?, ?, ?, {', '.join('?' for _ in USAGE_COLUMNS)}) "
    "ON CONFLICT (day, key_id, account) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in USAGE_COLUMNS)
)


def _key_row(key: KeyRecord) -> tuple[Any, ...]:
    return (
        key.id,
        key.name,
        key.digest,
        key.hint,
        key.created_at,
        key.last_used_at,
        key.expires_at,
        key.revoked_at,
        int(key.enabled),
        orjson.dumps(list(key.models)).decode(),
        key.rpm,
        key.tpm,
        key.credits_per_day,
        key.credits_per_month,
    )


def _key_from(row: tuple[Any, ...]) -> KeyRecord:
    models = orjson.loads(row[9] or "[]")
    return KeyRecord(
        id=row[0],
        name=row[1],
        digest=row[2],
        hint=row[3],
        created_at=row[4],
        last_used_at=row[5],
        expires_at=row[6],
        revoked_at=row[7],
        enabled=bool(row[8]),
        models=tuple(str(m) for m in models) if isinstance(models, list) else (),
        rpm=row[10],
        tpm=row[11],
        credits_per_day=row[12],
        credits_per_month=row[13],
    )


class SqliteStore:
    """:class:`ki2api.store.base.Store` on SQLite. ``path``: the database file, or
    ``":memory:"`` (nothing kept: tests, throw-away runs)."""

    def __init__(
        self,
        path: Path | str,
        *,
        persistent: bool = True,
        flush_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.location = str(path)
        self.persistent = persistent and str(path) != ":memory:"
        self.flush_interval = flush_interval
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._keys: dict[str, KeyRecord] = {}  # by id
        self._by_digest: dict[str, KeyRecord] = {}
        self._counters = Counters()
        self._pending: dict[tuple[str, str, str], UsageCounts] = {}
        self._touched: dict[str, float] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._data_version = 0
        self._listeners: list[ChangeListener] = []

    @property
    def file(self) -> Path | None:
        """The database file; None for an in-memory store."""
        return None if str(self.path) == ":memory:" else Path(self.path)

    @classmethod
    def in_folder(cls, folder: Path, **kwargs: Any) -> SqliteStore:
        return cls(folder / DB_NAME, **kwargs)

    # --- the thread ----------------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn, thread = self._conn, self._thread
        if conn is None or thread is None:
            raise StoreError("The store is not open.")
        return await asyncio.get_running_loop().run_in_executor(thread, work, conn)

    async def open(self) -> None:
        if self._conn is not None:
            return
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ki2api-store")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._thread, connect, self.path)
        except BaseException:
            self._thread.shutdown(wait=False)
            self._thread = None
            raise
        await self._reload_keys()
        await self._seed_counters()
        self._flusher = asyncio.create_task(self._flush_loop(), name="ki2api store flush")

    async def aclose(self) -> None:
        if self._conn is None:
            return
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        try:
            await self.flush()
        finally:
            await self._run(lambda conn: conn.close())
            self._conn = None
            assert self._thread is not None
            self._thread.shutdown(wait=True)
            self._thread = None

    async def _flush_loop(self) -> None:
        failing_since: float | None = None
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
                if await self._run(_data_version) != self._data_version:
                    await self._reload_keys()  # another process (the CLI) changed the file
                    await self._tell_listeners()
            except Exception as exc:  # a full disk must not end the loop: the batch waits
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.exception("could not write usage to %s; trying again", self.location)
                elif time.monotonic() - failing_since > _REPEAT_FAILURE_LOG:
                    failing_since = time.monotonic()  # once a minute, not once a second
                    log.error("still cannot write usage to %s: %s", self.location, exc)
            else:
                if failing_since is not None:
                    log.info("usage written to %s again", self.location)
                failing_since = None

    def add_change_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    async def _tell_listeners(self) -> None:
        for listener in list(self._listeners):
            try:
                await listener()
            except Exception:  # one listener's failure is no reason to stop telling the others
                log.exception("a listener of %s failed", self.location)

    # --- keys ----------------------------------------------------------------------------

    async def _reload_keys(self) -> None:
        def read(conn: sqlite3.Connection) -> tuple[int, list[KeyRecord]]:
            rows = conn.execute(f"SELECT {_KEY_COLUMNS} FROM keys").fetchall()
            return _data_version(conn), [_key_from(r) for r in rows]

        self._data_version, keys = await self._run(read)
        self._keys = {k.id: k for k in keys}
        self._by_digest = {k.digest: k for k in keys}

    def _cache(self, key: KeyRecord) -> None:
        old = self._keys.get(key.id)
        if old is not None:
            self._by_digest.pop(old.digest, None)
        self._keys[key.id] = key
        self._by_digest[key.digest] = key

    async def add_key(self, key: KeyRecord) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES ({', '.join('?' * 14)})",
                    _key_row(key),
                )
            except sqlite3.IntegrityError:
                raise KeyNameTaken(f"A key named {key.name!r} exists.") from None

        await self._run(insert)
        self._cache(key)

    async def find_key(self, digest: str) -> KeyRecord | None:
        return self._by_digest.get(digest)

    async def list_keys(self) -> list[KeyRecord]:
        await self.flush()  # last-used times still in the batch
        keys = list(self._keys.values())
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    async def put_key(self, key: KeyRecord) -> None:
        def update(conn: sqlite3.Connection) -> None:
            columns = _KEY_COLUMNS.split(", ")[1:]
            try:
                conn.execute(
                    f"UPDATE keys SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
                    (*_key_row(key)[1:], key.id),
                )
            except sqlite3.IntegrityError:
                raise KeyNameTaken(f"A key named {key.name!r} exists.") from None

        await self._run(update)
        self._cache(key)

    def touch_key(self, key_id: str, when: float) -> None:
        self._touched[key_id] = when

    async def replace_keys(self, keys: list[KeyRecord]) -> None:
        """Make the stored keys exactly ``keys`` (a copy of another store's, kept here as
        the last known ones), in one transaction."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM keys")
                conn.executemany(
                    f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES ({', '.join('?' * 14)})",
                    [_key_row(k) for k in keys],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._run(write)
        self._keys = {k.id: k for k in keys}
        self._by_digest = {k.digest: k for k in keys}

    # --- limits and usage ----------------------------------------------------------------

    async def _seed_counters(self) -> None:
        now = self._clock()
        day = day_of(now)

        def read(conn: sqlite3.Connection) -> list[tuple[str, float, float]]:
            rows = conn.execute(
                "SELECT key_id, sum(CASE WHEN day = ? THEN credits ELSE 0 END), sum(credits) "
                "FROM usage WHERE day >= ? GROUP BY key_id",
                (day, day[:7] + "-01"),
            ).fetchall()
            return [(r[0], float(r[1] or 0), float(r[2] or 0)) for r in rows]

        for key_id, today, month in await self._run(read):
            self._counters.seed(key_id, now, today, month)

    async def admit(self, key_id: str, limits: Limits, now: float) -> Refusal | None:
        return self._counters.admit(key_id, limits, now)

    def record_usage(self, usage: UsageCounts, *, tpm: int | None = None) -> None:
        if usage.credits or usage.tokens:
            self._counters.spend(usage.key_id, usage.tokens, usage.credits, self._clock(), tpm)
        self._queue(usage)

    def _queue(self, usage: UsageCounts) -> None:
        slot = (usage.day, usage.key_id, usage.account)
        pending = self._pending.get(slot)
        if pending is None:
            self._pending[slot] = replace(usage)  # the batch sums into its own copy
        else:
            pending.add(usage)

    async def spent(self, key_id: str, now: float) -> tuple[float, float]:
        return self._counters.spent(key_id, now)

    async def flush(self) -> None:
        if not self._pending and not self._touched:
            return
        pending, self._pending = self._pending, {}
        touched, self._touched = self._touched, {}

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_UPSERT_USAGE, [_usage_row(u) for u in pending.values()])
                conn.executemany(
                    "UPDATE keys SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?",
                    [(when, key_id) for key_id, when in touched.items()],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        try:
            await self._run(write)
        except BaseException:
            # Not written: back into the batch (merged with what came meanwhile).
            for usage in pending.values():
                self._queue(usage)  # counted against the limits already
            for key_id, when in touched.items():
                self._touched[key_id] = max(when, self._touched.get(key_id, 0.0))
            raise
        for key_id, when in touched.items():
            key = self._keys.get(key_id)
            if key is not None and (key.last_used_at or 0) < when:
                self._cache(replace(key, last_used_at=when))

    async def write_usage(self, rows: list[UsageCounts]) -> None:
        """Add ``rows`` to the stored usage now, in one transaction, or raise: nothing kept
        for a later try (the caller still holds them), nothing counted against the limits."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_UPSERT_USAGE, [_usage_row(u) for u in rows])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._run(write)

    async def usage(self, query: UsageQuery) -> list[UsageCounts]:
        await self.flush()
        where, args = [], []
        for column, op, value in (
            ("key_id", "=", query.key_id),
            ("account", "=", query.account),
            ("day", ">=", query.since),
            ("day", "<=", query.until),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                args.append(value)
        sql = f"SELECT day, key_id, account, {', '.join(USAGE_COLUMNS)} FROM usage"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY day, key_id, account"

        def read(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(sql, args).fetchall()

        return [UsageCounts(*row) for row in await self._run(read)]

    # --- accounts ------------------------------------------------------------------------

    async def load_accounts(self) -> list[StoredAccount]:
        def read(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                "SELECT label, data, updated_at FROM secret_accounts ORDER BY rowid"
            ).fetchall()

        accounts = []
        for label, data, updated in await self._run(read):
            try:
                fields = orjson.loads(data)
            except orjson.JSONDecodeError:
                log.error("stored account %s is unreadable; skipped", label)
                continue
            if isinstance(fields, dict):
                accounts.append(StoredAccount(label, fields, updated))
        return accounts

    async def put_account(self, account: StoredAccount, *, existing_only: bool = False) -> None:
        data = orjson.dumps(account.data).decode()
        updated = account.updated_at or self._clock()
        if existing_only:
            sql = "UPDATE secret_accounts SET data = ?2, updated_at = ?3 WHERE label = ?1"
        else:
            sql = (
                "INSERT INTO secret_accounts (label, data, updated_at) VALUES (?1, ?2, ?3) "
                "ON CONFLICT (label) DO UPDATE SET data = excluded.data, "
                "updated_at = excluded.updated_at"
            )
        await self._run(lambda conn: conn.execute(sql, (account.label, data, updated)))

    async def delete_account(self, label: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM secret_accounts WHERE label = ?", (label,))
                conn.execute("DELETE FROM secret_account_proxies WHERE label = ?", (label,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._run(delete)

    async def load_account_proxies(self) -> dict[str, str | None]:
        def read(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                "SELECT label, proxy FROM secret_account_proxies ORDER BY rowid"
            ).fetchall()

        return {str(label): proxy for label, proxy in await self._run(read)}

    async def put_account_proxy(self, label: str, proxy: str | None) -> None:
        updated = self._clock()
        await self._run(
            lambda conn: conn.execute(
                "INSERT INTO secret_account_proxies (label, proxy, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (label) DO UPDATE SET proxy = excluded.proxy, "
                "updated_at = excluded.updated_at",
                (label, proxy, updated),
            )
        )

    async def delete_account_proxy(self, label: str) -> None:
        await self._run(
            lambda conn: conn.execute(
                "DELETE FROM secret_account_proxies WHERE label = ?", (label,)
            )
        )


def _usage_row(u: UsageCounts) -> tuple[Any, ...]:
    return (u.day, u.key_id, u.account, *(getattr(u, c) for c in USAGE_COLUMNS))


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])
