"""The embedded store: schema and migrations, damaged and newer databases, state across a
restart, batched usage, and the limits' arithmetic."""

from __future__ import annotations

import asyncio
import calendar
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ki2api import settings as settings_module
from ki2api.settings import Settings, default_data_dir, user_data_dir
from ki2api.store import (
    DB_NAME,
    KeyRecord,
    Limits,
    Rate,
    SqliteStore,
    StoredAccount,
    StoreError,
    UsageCounts,
    UsageQuery,
)
from ki2api.store.counters import Counters
from ki2api.store.schema import APPLICATION_ID, SCHEMA_VERSION, connect
from ki2api.teams.keys import key_digest

V1_FIXTURE = Path(__file__).parent / "fixtures" / "store-v1.sql"
V1_KEY = "ki2-v1-fixture-key-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
V2_FIXTURE = Path(__file__).parent / "fixtures" / "store-v2.sql"
V2_REFRESH_TOKEN = "aorV2FixtureRefreshToken0123456789"
V3_FIXTURE = Path(__file__).parent / "fixtures" / "store-v3.sql"
NOON = calendar.timegm((2026, 3, 15, 12, 0, 0))  # a Sunday in March, UTC


def _key(name: str = "alice", secret: str = "ki2-secret-for-tests-0000", **limits: object):
    return KeyRecord(
        id=f"key_{name}",
        name=name,
        digest=key_digest(secret),
        hint=secret[-4:],
        created_at=NOON,
        **limits,  # type: ignore[arg-type]
    )


async def _opened_from(fixture: Path, path: Path, version: int) -> SqliteStore:
    """A store opened (so migrated) on a database made from ``fixture``, at ``version``."""
    conn = sqlite3.connect(path)
    conn.executescript(fixture.read_text())
    conn.close()
    assert _version(path) == (version, APPLICATION_ID)
    store = SqliteStore(path, clock=lambda: NOON)
    await store.open()
    return store


def _version(path: Path) -> tuple[int, int]:
    conn = sqlite3.connect(path)
    try:
        return (
            conn.execute("PRAGMA user_version").fetchone()[0],
            conn.execute("PRAGMA application_id").fetchone()[0],
        )
    finally:
        conn.close()


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def test_a_new_database_is_made_at_the_current_schema_and_only_its_owner_may_read_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data" / DB_NAME
    connect(path).close()
    assert _version(path) == (SCHEMA_VERSION, APPLICATION_ID)
    if sys.platform != "win32":
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
    connect(path).close()  # opening it again changes nothing
    assert _version(path) == (SCHEMA_VERSION, APPLICATION_ID)


async def test_a_version_1_database_is_migrated_with_its_keys_and_usage_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / DB_NAME
    store = await _opened_from(V1_FIXTURE, path, 1)
    try:
        key = await store.find_key(key_digest(V1_KEY))
        assert key is not None and key.name == "alice" and key.models == ("claude-sonnet-*",)
        assert key.rpm == 30 and key.credits_per_day == 50.0 and key.tpm is None
        (row,) = await store.usage(UsageQuery())
        assert (row.day, row.key_id, row.account) == ("2026-01-01", key.id, "account-1")
        assert (row.requests, row.errors, row.refused) == (3, 1, 2)
        assert (row.input_tokens, row.output_tokens, row.cache_read_tokens) == (1200, 300, 100)
        assert row.credits == pytest.approx(0.0174)
        assert (row.cache_write_tokens, row.credits_estimated) == (0, 0.0)  # the new columns
        await store.put_account(StoredAccount("added", {"accessToken": "x"}))  # the new table
        assert [a.label for a in await store.load_accounts()] == ["added"]
    finally:
        await store.aclose()
    assert _version(path) == (SCHEMA_VERSION, APPLICATION_ID)


async def test_a_version_2_database_keeps_its_accounts_in_a_secret_table(
    tmp_path: Path,
) -> None:
    path = tmp_path / DB_NAME
    store = await _opened_from(V2_FIXTURE, path, 2)
    try:
        (account,) = await store.load_accounts()  # the stored account, tokens and all
        assert account.label == "added" and account.data["refreshToken"] == V2_REFRESH_TOKEN
        key = await store.find_key(key_digest(V1_KEY))
        assert key is not None and key.name == "alice"
        (row,) = await store.usage(UsageQuery())
        assert (row.requests, row.cache_write_tokens) == (3, 50)
    finally:
        await store.aclose()
    assert _version(path) == (SCHEMA_VERSION, APPLICATION_ID)
    tables = _tables(path)
    # The backup drops every secret_* table (ki2api/store/backup.py): the tokens live in one.
    assert "accounts" not in tables and {"keys", "usage", "secret_accounts"} <= tables


async def test_a_version_3_database_gets_a_secret_table_for_the_proxies_set_at_run_time(
    tmp_path: Path,
) -> None:
    path = tmp_path / DB_NAME
    store = await _opened_from(V3_FIXTURE, path, 3)
    try:
        (account,) = await store.load_accounts()  # its own proxy is one of its fields
        assert account.data["proxy"] == "socks5h://u:v3-fixture-pass@10.0.0.3:1080"
        assert await store.load_account_proxies() == {}
        await store.put_account_proxy("added", "direct")
        await store.put_account_proxy("env", None)  # a configured account, on KIRO_PROXY
        await store.put_account_proxy("added", "socks5://10.0.0.4:1080")
        assert await store.load_account_proxies() == {
            "added": "socks5://10.0.0.4:1080",
            "env": None,
        }
        await store.delete_account("added")  # the proxy set on it goes with it
        assert await store.load_accounts() == []
        assert await store.load_account_proxies() == {"env": None}
        await store.delete_account_proxy("env")
        assert await store.load_account_proxies() == {}
        key = await store.find_key(key_digest(V1_KEY))
        assert key is not None and key.name == "alice"
    finally:
        await store.aclose()
    assert _version(path) == (SCHEMA_VERSION, APPLICATION_ID)
    tables = _tables(path)
    # A proxy URL may hold a password: its table is one the backup drops.
    assert {"secret_accounts", "secret_account_proxies"} <= tables


async def test_a_refreshs_write_never_brings_back_an_account_another_process_deleted(
    tmp_path: Path,
) -> None:
    server = SqliteStore.in_folder(tmp_path)
    cli = SqliteStore.in_folder(tmp_path)
    await server.open()
    await cli.open()
    try:
        await server.put_account(StoredAccount("a", {"accessToken": "one"}, 1.0))
        await cli.delete_account("a")
        await server.put_account(
            StoredAccount("a", {"accessToken": "two"}, 2.0), existing_only=True
        )
        assert await server.load_accounts() == []
        await server.put_account(StoredAccount("a", {"accessToken": "three"}, 3.0))
        await server.put_account(
            StoredAccount("a", {"accessToken": "four"}, 4.0), existing_only=True
        )
        assert await cli.load_accounts() == [StoredAccount("a", {"accessToken": "four"}, 4.0)]
    finally:
        await cli.aclose()
        await server.aclose()


async def test_a_running_store_tells_its_listeners_what_another_process_wrote(
    tmp_path: Path,
) -> None:
    server = SqliteStore.in_folder(tmp_path, flush_interval=0.05)
    cli = SqliteStore.in_folder(tmp_path)
    told = asyncio.Event()

    async def failing() -> None:
        raise RuntimeError("a listener that fails does not stop the others")

    async def listener() -> None:
        told.set()

    await server.open()
    await cli.open()
    try:
        server.add_change_listener(failing)
        server.add_change_listener(listener)
        await server.put_account_proxy("a", "direct")  # its own write: nothing to tell
        await asyncio.sleep(0.3)
        assert not told.is_set()
        await cli.put_account_proxy("a", None)
        await asyncio.wait_for(told.wait(), 5)
        told.clear()
        await cli.delete_account_proxy("a")
        await asyncio.wait_for(told.wait(), 5)  # and again, for each change
    finally:
        await cli.aclose()
        await server.aclose()


def test_processes_opening_a_new_database_at_once_migrate_it_once(tmp_path: Path) -> None:
    """Replicas (or the CLI and the server) starting together on one file: each migration runs
    once, inside the lock; the others find it done."""
    failures: list[BaseException] = []

    def open_it(path: Path, start: threading.Barrier) -> None:
        start.wait()
        try:
            connect(path).close()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            failures.append(exc)

    for attempt in range(5):  # a race: several tries make a lost one show
        path = tmp_path / f"{attempt}" / DB_NAME
        start = threading.Barrier(8)
        threads = [threading.Thread(target=open_it, args=(path, start)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == [] and _version(path) == (SCHEMA_VERSION, APPLICATION_ID)


def test_a_copy_without_its_secret_tables_gets_them_back_as_the_migrations_made_them(
    tmp_path: Path,
) -> None:
    made = tmp_path / "made.db"
    connect(made).close()
    restored = tmp_path / DB_NAME  # a copy from the backup: no secret_* table in it
    source, copy = sqlite3.connect(made), sqlite3.connect(restored)
    source.backup(copy)
    source.close()
    copy.execute("DROP TABLE secret_accounts")
    copy.execute("DROP TABLE secret_account_proxies")
    copy.commit()
    copy.close()
    connect(restored).close()

    def columns(path: Path, table: str) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(path)
        try:
            return conn.execute(f"PRAGMA table_info({table})").fetchall()
        finally:
            conn.close()

    for table in ("secret_accounts", "secret_account_proxies"):
        assert columns(restored, table) == columns(made, table) != []


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda path: path.write_bytes(b"not a database at all" * 200), id="garbage"),
        pytest.param(lambda path: _scribble_over_pages(path), id="damaged-pages"),
    ],
)
def test_a_damaged_database_is_refused_and_left_as_it_is(tmp_path: Path, damage) -> None:
    path = tmp_path / DB_NAME
    connect(path).close()
    damage(path)
    before = path.read_bytes()
    with pytest.raises(StoreError) as refused:
        connect(path)
    message = str(refused.value)
    assert "is damaged" in message and str(path) in message and "\n" not in message
    assert path.read_bytes() == before  # never emptied or recreated


def _scribble_over_pages(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO usage (day, key_id, account, requests) VALUES (?, ?, ?, 1)",
        [(f"2026-01-{i % 28 + 1:02d}", f"key_{i}", "a") for i in range(2000)],
    )
    conn.commit()
    conn.close()
    data = bytearray(path.read_bytes())
    for offset in range(4096 * 3, len(data), 4096):  # past the header page: the b-tree pages
        data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def test_a_database_from_a_newer_ki2api_is_refused(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    connect(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer Ki2API"):
        connect(path)
    assert _version(path) == (SCHEMA_VERSION + 1, APPLICATION_ID)


def test_another_programs_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    with pytest.raises(StoreError, match="not a Ki2API database"):
        connect(path)


def test_the_server_stops_at_start_on_a_damaged_database_with_one_sentence_and_code_2(
    tmp_path: Path, isolated_env: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / DB_NAME).write_bytes(b"\x00garbage" * 100)
    env = {"HOME": str(isolated_env), "DATA_DIR": str(data), "PATH": "/usr/bin:/bin"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    with socket.socket() as sock:  # a port that is free: the store's check comes after it
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    done = subprocess.run(
        [sys.executable, "-m", "ki2api", "serve", "--port", port],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "is damaged" in errors[0], done.stderr
    assert "Traceback" not in done.stderr


async def test_keys_usage_and_spent_credits_survive_a_restart(tmp_path: Path) -> None:
    now = [NOON]
    store = SqliteStore.in_folder(tmp_path, clock=lambda: now[0])
    await store.open()
    await store.add_key(_key(credits_per_day=1.0))
    store.record_usage(UsageCounts("2026-03-15", "key_alice", "acc", 1, 0, 0, 10, 20, credits=0.7))
    store.touch_key("key_alice", NOON + 5)
    await store.aclose()

    again = SqliteStore.in_folder(tmp_path, clock=lambda: now[0])
    await again.open()
    try:
        key = await again.find_key(key_digest("ki2-secret-for-tests-0000"))
        assert key is not None and key.last_used_at == NOON + 5
        (row,) = await again.usage(UsageQuery(key_id="key_alice"))
        assert (row.requests, row.input_tokens, row.output_tokens) == (1, 10, 20)
        assert await again.spent("key_alice", now[0]) == pytest.approx((0.7, 0.7))
        budget = Limits(credits_per_day=0.5)
        refusal = await again.admit("key_alice", budget, now[0])
        assert refusal is not None and refusal.limit == "credits_per_day"
    finally:
        await again.aclose()


async def test_usage_waits_in_its_batch_and_a_clean_shutdown_writes_it(tmp_path: Path) -> None:
    store = SqliteStore.in_folder(tmp_path, flush_interval=3600, clock=lambda: NOON)
    await store.open()
    for _ in range(3):
        store.record_usage(UsageCounts("2026-03-15", "operator", "acc", 1, 0, 0, 5, 7))
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("SELECT count(*) FROM usage").fetchone()[0] == 0  # still in the batch
    await store.aclose()
    assert conn.execute("SELECT requests, input_tokens FROM usage").fetchall() == [(3, 15)]
    conn.close()


async def test_a_key_changed_by_another_process_is_seen_by_a_running_store(
    tmp_path: Path,
) -> None:
    server = SqliteStore.in_folder(tmp_path, flush_interval=0.05)
    cli = SqliteStore.in_folder(tmp_path)
    await server.open()
    await cli.open()
    try:
        await cli.add_key(_key())
        digest = key_digest("ki2-secret-for-tests-0000")
        for _ in range(100):
            if await server.find_key(digest) is not None:
                break
            await asyncio.sleep(0.02)
        found = await server.find_key(digest)
        assert found is not None and found.revoked_at is None
        await cli.put_key(_key(revoked_at=NOON))
        for _ in range(100):
            found = await server.find_key(digest)
            if found is not None and found.revoked_at is not None:
                break
            await asyncio.sleep(0.02)
        assert found is not None and found.revoked_at == NOON
    finally:
        await cli.aclose()
        await server.aclose()


def test_the_request_bucket_refuses_past_the_rate_and_refills() -> None:
    counters = Counters()
    limits = Limits(rate=Rate(2, 60.0))
    assert counters.admit("k", limits, NOON) is None
    assert counters.admit("k", limits, NOON) is None
    refused = counters.admit("k", limits, NOON)
    assert refused is not None and refused.limit == "rpm"
    assert refused.retry_after == pytest.approx(30.0)
    assert counters.admit("k", limits, NOON + 29) is not None  # a refusal takes nothing
    assert counters.admit("k", limits, NOON + 30) is None
    assert counters.admit("other", limits, NOON) is None  # each key its own bucket


def test_the_token_bucket_lets_a_long_answer_finish_and_the_key_wait_after_it() -> None:
    counters = Counters()
    limits = Limits(tpm=600)  # 10 tokens a second
    assert counters.admit("k", limits, NOON) is None
    counters.spend("k", 1600, 0.0, NOON, 600)  # one answer past the minute's tokens
    refused = counters.admit("k", limits, NOON)
    assert refused is not None and refused.limit == "tpm"
    assert refused.retry_after == pytest.approx(100.1)  # 1,000 over, and one token to go
    assert counters.admit("k", limits, NOON + 100.2) is None


def test_credit_budgets_reset_at_midnight_and_on_the_first_of_the_month_utc() -> None:
    counters = Counters()
    day = Limits(credits_per_day=1.0)
    month = Limits(credits_per_month=1.5)
    counters.spend("k", 0, 1.0, NOON, None)
    refused = counters.admit("k", day, NOON)
    assert refused is not None and refused.limit == "credits_per_day"
    assert refused.retry_after == pytest.approx(12 * 3600)
    assert counters.admit("k", month, NOON) is None  # 1.0 of the month's 1.5
    tomorrow = NOON + 12 * 3600
    assert counters.admit("k", day, tomorrow) is None
    counters.spend("k", 0, 0.6, tomorrow, None)
    refused = counters.admit("k", month, tomorrow)
    assert refused is not None and refused.limit == "credits_per_month"
    april = calendar.timegm((2026, 4, 1, 0, 0, 0))
    assert refused.retry_after == pytest.approx(april - tomorrow)
    assert counters.admit("k", month, april) is None


def test_data_dir_is_the_users_data_folder_or_a_spaces_persistent_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = {"HOME": str(tmp_path), "USERPROFILE": str(tmp_path)}
    assert default_data_dir(home) == (user_data_dir(home), True)
    given = Settings.from_env({**home, "DATA_DIR": "/srv/ki2"})
    assert (given.data_dir, given.data_dir_persistent) == (Path("/srv/ki2"), True)
    mounted = tmp_path / "data"
    mounted.mkdir()
    space = {**home, "SPACE_ID": "me/ki2api"}
    monkeypatch.setattr(settings_module, "SPACE_DATA", mounted)
    assert default_data_dir(space) == (mounted, True)
    monkeypatch.setattr(settings_module, "SPACE_DATA", tmp_path / "absent")
    assert default_data_dir(space) == (user_data_dir(home), False)  # a restart wipes it
    lost = Settings.from_env(space)
    assert (lost.data_dir, lost.data_dir_persistent) == (user_data_dir(home), False)
    if sys.platform.startswith("linux"):
        assert user_data_dir(home) == tmp_path / ".local" / "share" / "ki2api"
        assert user_data_dir({**home, "XDG_DATA_HOME": "/x"}) == Path("/x/ki2api")
    settings = Settings.from_env({**home, "DATA_DIR": str(mounted), "USAGE_FLUSH_SECONDS": "5"})
    assert (settings.data_dir, settings.usage_flush_seconds) == (mounted, 5.0)


def test_the_start_up_check_makes_no_database_so_a_backup_can_be_restored_first(
    tmp_path: Path,
) -> None:
    from ki2api.teams.gate import check_store

    folder = tmp_path / "data"
    check_store(Settings(data_dir=folder))
    assert folder.is_dir() and not (folder / DB_NAME).exists()
