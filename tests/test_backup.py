"""The database backup to a private Hub dataset, and the page's warning on a Space that forgets.

The backup runs ``huggingface_hub``'s real ``CommitScheduler`` against the fake Hub of
tests/fake_hub.py on loopback: the dataset is created private, each commit carries a consistent
copy of the SQLite file, and no token ever reaches the Hub (tables ``secret_*`` are dropped from
the copy, and a copy that still holds a known secret is not uploaded). The gateway wires it to
its store (``Runtime.run``): restored before the store opens, a last copy when it stops, and no
backup in a run whose start could not ask the Hub.
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from ki2api import settings as settings_module
from ki2api.app import create_app
from ki2api.kiro.accounts.pool import AccountPool
from ki2api.settings import Settings
from ki2api.store import DB_NAME, StoredAccount, UsageCounts
from ki2api.store.backup import (
    BackupRefused,
    StorageState,
    restore,
    snapshot,
    start_backup,
    storage_state,
)
from ki2api.teams.gate import Teams
from ki2api.teams.keys import key_digest
from ki2api.teams.manage import KeyAdmin
from ki2api.ui.status import storage_notice
from tests.fake_hub import GOOD_TOKEN, FakeHub, FakeRepo, running_hub
from tests.servers import ServerThread
from tests.stack import StackFactory

DATASET = "alice/ki2api-state"
REFRESH_TOKEN = "aorAAAAAGrefresh-token-of-an-added-account-1234"
KEY_HASH = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
API_KEY = "space-api-key-0123456789"
ADMIN_KEY = "admin-key-backup-0123456789"


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with running_hub() as state:
        yield state


def make_database(path: Path) -> Path:
    """A store-like database in WAL mode: key hashes and usage, and a table of secrets."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE client_keys (name TEXT PRIMARY KEY, hash TEXT)")
        db.execute("CREATE TABLE usage (key TEXT, day TEXT, requests INTEGER)")
        db.execute("CREATE TABLE secret_account_tokens (label TEXT, refresh_token TEXT)")
        db.execute("INSERT INTO client_keys VALUES ('alice', ?)", (KEY_HASH,))
        db.execute("INSERT INTO usage VALUES ('alice', '2026-01-01', 3)")
        db.execute("INSERT INTO secret_account_tokens VALUES ('added', ?)", (REFRESH_TOKEN,))
        db.commit()
    return path


def write(path: Path, sql: str, *args: object) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute(sql, args)
        db.commit()


def tables_and_rows(data: bytes, tmp_path: Path) -> dict[str, list[tuple[object, ...]]]:
    copy = tmp_path / "uploaded.sqlite3"
    copy.write_bytes(data)
    with closing(sqlite3.connect(copy)) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {name: db.execute(f"SELECT * FROM {name}").fetchall() for name in names}


# --- the copy ---------------------------------------------------------------------------------


def test_a_copy_keeps_keys_and_usage_and_drops_every_secret_table(tmp_path: Path) -> None:
    database = make_database(tmp_path / "ki2api.sqlite3")
    target = tmp_path / "folder" / "ki2api.sqlite3"
    target.parent.mkdir()
    assert snapshot(database, target) is True
    data = target.read_bytes()
    assert REFRESH_TOKEN.encode() not in data  # not even in a freed page
    assert tables_and_rows(data, tmp_path) == {
        "client_keys": [("alice", KEY_HASH)],
        "usage": [("alice", "2026-01-01", 3)],
    }
    assert not list(target.parent.glob("*-wal")) and not list(target.parent.glob(".*partial*"))
    stamp = target.stat().st_mtime_ns
    assert snapshot(database, target) is False  # nothing changed: the file is left alone
    assert target.stat().st_mtime_ns == stamp
    write(database, "INSERT INTO usage VALUES ('alice', '2026-01-02', 5)")
    assert snapshot(database, target, exclude=["usage"]) is True  # named tables go too
    assert set(tables_and_rows(target.read_bytes(), tmp_path)) == {"client_keys"}


def test_a_copy_holding_a_known_secret_is_refused(tmp_path: Path) -> None:
    database = make_database(tmp_path / "ki2api.sqlite3")
    write(database, "INSERT INTO usage VALUES (?, 'leak', 1)", API_KEY)  # a bug in a store
    target = tmp_path / "ki2api.sqlite3.copy"
    with pytest.raises(BackupRefused) as refused:
        snapshot(database, target, secrets=lambda: [API_KEY, None, ""])
    assert API_KEY not in str(refused.value)
    assert not target.exists() and list(tmp_path.iterdir()) == [database]


async def test_the_pool_names_every_token_it_holds_for_the_leak_check(tmp_path: Path) -> None:
    accounts = [
        {
            "label": "added",
            "refreshToken": REFRESH_TOKEN,
            "accessToken": "aoa-0123456789",
            "proxy": "socks5://who:proxy-password-1@127.0.0.1:1080",
        }
    ]
    settings = Settings(kiro_accounts=json.dumps(accounts), kiro_token_file=tmp_path / "x.json")
    async with httpx.AsyncClient() as http:
        pool = AccountPool.from_settings(settings, http)
    assert set(pool.secrets()) == {REFRESH_TOKEN, "aoa-0123456789", "proxy-password-1"}
    pool.set_proxy("added", "http://who:proxy-password-2@127.0.0.1:3128")  # the configured stays
    assert set(pool.secrets()) >= {"proxy-password-1", "proxy-password-2"}
    database = make_database(tmp_path / "ki2api.sqlite3")
    write(database, "INSERT INTO usage VALUES (?, 'leak', 1)", REFRESH_TOKEN)
    with pytest.raises(BackupRefused):
        snapshot(database, tmp_path / "copy.sqlite3", secrets=pool.secrets)


async def test_a_copy_of_the_store_has_the_keys_hashes_and_no_account_token(
    tmp_path: Path,
) -> None:
    teams = Teams(Settings(data_dir=tmp_path / "data"))
    await teams.open()
    try:
        made = await KeyAdmin(teams).create({"name": "alice", "rpm": 5})
        store = teams.store
        store.record_usage(UsageCounts("2026-03-15", "operator", "acc", 4, input_tokens=40))
        await store.put_account(StoredAccount("kept", {"refreshToken": REFRESH_TOKEN}))
        await store.flush()
        assert teams.database == tmp_path / "data" / DB_NAME
        target = tmp_path / "copy.sqlite3"
        # The leak check passes: the account's token is in secret_accounts only.
        assert snapshot(teams.database, target, secrets=lambda: [REFRESH_TOKEN, made["secret"]])
        assert [a.label for a in await store.load_accounts()] == ["kept"]  # the store keeps it
    finally:
        await teams.aclose()
    data = target.read_bytes()
    assert REFRESH_TOKEN.encode() not in data and made["secret"].encode() not in data
    rows = tables_and_rows(data, tmp_path)
    assert not [name for name in rows if name.startswith("secret_")]
    assert [(row[1], row[2]) for row in rows["keys"]] == [("alice", key_digest(made["secret"]))]
    assert [(row[1], row[3]) for row in rows["usage"]] == [("operator", 4)]


def test_no_database_or_a_broken_one_makes_no_copy(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        snapshot(tmp_path / "missing.sqlite3", tmp_path / "copy.sqlite3")
    assert list(tmp_path.iterdir()) == []
    broken = tmp_path / "broken.sqlite3"
    broken.write_bytes(b"not a database, " * 512)
    with pytest.raises(sqlite3.DatabaseError):
        snapshot(broken, tmp_path / "copy.sqlite3")
    assert list(tmp_path.iterdir()) == [broken]  # no half-made copy left behind


# --- the scheduled commits --------------------------------------------------------------------


def settings_for_backup(**overrides: object) -> Settings:
    values: dict[str, object] = dict(
        backup_dataset=DATASET, hf_token=GOOD_TOKEN, backup_every=60.0, api_key=API_KEY
    )
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def test_the_backup_commits_a_copy_to_a_private_dataset(hub: FakeHub, tmp_path: Path) -> None:
    database = make_database(tmp_path / "ki2api.sqlite3")
    secrets = [API_KEY, GOOD_TOKEN, REFRESH_TOKEN]
    backup = await start_backup(
        settings_for_backup(),
        database,
        secrets=lambda: secrets,
        endpoint=hub.url,
        folder=tmp_path / "outbox",
    )
    assert backup is not None
    try:
        backup.trigger().result(timeout=30)  # queued behind the push made at start
        dataset = hub.datasets[DATASET]
        assert dataset.private and len(dataset.commits) == 1
        rows = tables_and_rows(dataset.files["ki2api.sqlite3"], tmp_path)
        assert rows["client_keys"] == [("alice", KEY_HASH)] and "secret_account_tokens" not in rows
        backup.trigger().result(timeout=30)
        assert len(dataset.commits) == 1  # nothing changed: no commit
        write(database, "INSERT INTO usage VALUES ('alice', '2026-01-02', 5)")
        backup.trigger().result(timeout=30)
        assert len(dataset.commits) == 2
        rows = tables_and_rows(dataset.files["ki2api.sqlite3"], tmp_path)
        assert len(rows["usage"]) == 2
        write(database, "INSERT INTO usage VALUES ('bob', '2026-01-02', 1)")
    finally:
        await backup.close()  # the last backup: what changed since the previous one
    assert len(hub.datasets[DATASET].commits) == 3
    assert set(hub.datasets[DATASET].files) == {".gitattributes", "ki2api.sqlite3"}
    sent = repr(hub.calls).encode() + b"".join(hub.datasets[DATASET].files.values())
    assert REFRESH_TOKEN.encode() not in sent and API_KEY.encode() not in sent
    create = next(p for m, path, p in hub.calls if path == "/api/repos/create")
    assert create["type"] == "dataset" and create["visibility"] == "private"


async def test_a_restarted_space_gets_its_last_backup_back(hub: FakeHub, tmp_path: Path) -> None:
    settings = settings_for_backup()
    fresh = tmp_path / "restarted" / "ki2api.sqlite3"
    assert await restore(settings, fresh, endpoint=hub.url) is False  # no dataset yet
    hub.datasets[DATASET] = FakeRepo(private=True, sdk="")
    assert await restore(settings, fresh, endpoint=hub.url) is False  # nothing backed up yet
    database = make_database(tmp_path / "ki2api.sqlite3")
    backup = await start_backup(settings, database, endpoint=hub.url)
    assert backup is not None
    await backup.close()
    assert await restore(settings, fresh, endpoint=hub.url) is True
    rows = tables_and_rows(fresh.read_bytes(), tmp_path)
    assert rows == {"client_keys": [("alice", KEY_HASH)], "usage": [("alice", "2026-01-01", 3)]}
    calls = len(hub.calls)
    assert await restore(settings, fresh, endpoint=hub.url) is False  # never over a database
    assert len(hub.calls) == calls and list(fresh.parent.iterdir()) == [fresh]


async def test_a_copy_with_a_secret_in_clear_is_not_uploaded(
    hub: FakeHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = make_database(tmp_path / "ki2api.sqlite3")
    write(database, "INSERT INTO client_keys VALUES ('leaky', ?)", API_KEY)
    backup = await start_backup(
        settings_for_backup(), database, secrets=lambda: [API_KEY], endpoint=hub.url
    )
    assert backup is not None
    with caplog.at_level(logging.ERROR, "ki2api.backup"):
        backup.trigger().result(timeout=30)
        await backup.close()
    assert hub.datasets[DATASET].commits == []
    assert "secret(s) in clear" in caplog.text and API_KEY not in caplog.text


async def test_a_public_dataset_is_never_used(
    hub: FakeHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub.datasets[DATASET] = FakeRepo(private=False, sdk="")
    database = make_database(tmp_path / "ki2api.sqlite3")
    with caplog.at_level(logging.ERROR, "ki2api.backup"):
        backup = await start_backup(settings_for_backup(), database, endpoint=hub.url)
    assert backup is None and hub.datasets[DATASET].commits == []
    assert "is public" in caplog.text


async def test_without_a_dataset_or_a_reachable_hub_the_gateway_runs_on(
    hub: FakeHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = make_database(tmp_path / "ki2api.sqlite3")
    no_dataset = settings_for_backup(backup_dataset=None)
    assert await start_backup(no_dataset, database, endpoint=hub.url) is None
    assert hub.calls == []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nobody listens there
    with caplog.at_level(logging.ERROR, "ki2api.backup"):
        assert await start_backup(settings_for_backup(), database, endpoint=closed) is None
    assert "cannot be used" in caplog.text and GOOD_TOKEN not in caplog.text


# --- the warning on a Space without persistent storage ----------------------------------------


def test_a_space_without_data_mount_is_ephemeral(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = {"SPACE_ID": "alice/ki2api"}
    monkeypatch.setattr(settings_module, "SPACE_DATA", tmp_path / "no-data")
    assert storage_state(Settings.from_env(space)).ephemeral
    assert not storage_state(Settings.from_env({})).ephemeral  # not a Space
    # DATA_DIR set: the operator keeps it (a mounted volume); nothing says otherwise
    assert not storage_state(Settings.from_env({**space, "DATA_DIR": str(tmp_path)})).ephemeral
    backed = Settings.from_env({**space, "BACKUP_DATASET": DATASET, "BACKUP_EVERY_MINUTES": "5"})
    state = storage_state(backed)
    assert state == StorageState(ephemeral=True, backup_dataset=DATASET, backup_every=5.0)
    monkeypatch.setattr(settings_module, "SPACE_DATA", tmp_path)  # storage attached: /data
    mounted = Settings.from_env(space)
    assert not storage_state(mounted).ephemeral and mounted.data_dir == tmp_path


def test_the_notice_says_what_is_lost_and_how_to_keep_it() -> None:
    bare = StorageState(ephemeral=True, backup_dataset=None, backup_every=10.0)
    assert storage_notice(StorageState(False, None, 10.0), "en") == ""
    english = storage_notice(bare, "en")
    assert "lost when the Space restarts" in english
    assert "BACKUP_DATASET" in english and "HF_TOKEN" in english and "/data" in english
    assert "BACKUP_DATASET" in storage_notice(bare, "zh") and "重启" in storage_notice(bare, "zh")
    backed = storage_notice(StorageState(True, DATASET, 5.0), "en")
    assert DATASET in backed and "every 5 min" in backed and "not part of the backup" in backed


def test_the_page_of_a_space_without_storage_shows_the_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(settings_module, "SPACE_DATA", tmp_path / "no-data")
    env = {"SPACE_ID": "alice/ki2api", "KI2API_DEMO": "1", "API_KEY": API_KEY}
    settings = Settings.from_env(env, kiro_token_file=tmp_path / "no-login.json")
    with ServerThread(create_app(settings, with_ui=True)) as server:
        config = httpx.get(f"{server.url}/config", timeout=30).json()
    [banner] = [c for c in config["components"] if c["props"].get("elem_id") == "ki-storage"]
    assert banner["props"]["visible"] is True
    assert "lost when the Space restarts" in banner["props"]["value"]


# --- the gateway's own store, backed up and restored ------------------------------------------


def backed_up_env(hub: FakeHub, data: Path) -> dict[str, str]:
    return {
        "ADMIN_KEY": ADMIN_KEY,
        "BACKUP_DATASET": DATASET,
        "HF_TOKEN": GOOD_TOKEN,
        "HF_ENDPOINT": hub.url,
        "DATA_DIR": str(data),
    }


def test_a_gateway_gets_its_keys_back_after_losing_its_disk_but_no_account_token(
    hub: FakeHub, stack_factory: StackFactory, tmp_path: Path
) -> None:
    first = stack_factory(backed_up_env(hub, tmp_path / "before"))
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    made = httpx.post(f"{first.url}/admin/keys", headers=admin, json={"name": "alice"}, timeout=10)
    secret = made.json()["secret"]
    added = httpx.post(
        f"{first.url}/admin/accounts",
        headers=admin,
        json={"label": "added", "refreshToken": REFRESH_TOKEN, "accessToken": "aoa-added-0123456"},
        timeout=10,
    )
    assert added.status_code == 201, added.text
    first.server.stop()  # a clean stop: the last copy goes up, with everything written

    uploaded = hub.datasets[DATASET].files[DB_NAME]
    assert REFRESH_TOKEN.encode() not in uploaded and secret.encode() not in uploaded
    rows = tables_and_rows(uploaded, tmp_path)
    assert [row[2] for row in rows["keys"]] == [key_digest(secret)]
    assert not [name for name in rows if name.startswith("secret_")]

    second = stack_factory(backed_up_env(hub, tmp_path / "after"))  # an empty disk
    answer = httpx.get(
        f"{second.base_url}/models", headers={"authorization": f"Bearer {secret}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    listed = httpx.get(f"{second.url}/admin/accounts", headers=admin, timeout=10).json()
    assert "added" not in repr(listed)  # its tokens never left the first machine


async def test_a_hub_that_cannot_be_asked_at_start_restores_nothing(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.down = True
    fresh = tmp_path / "restarted" / DB_NAME
    assert await restore(settings_for_backup(), fresh, endpoint=hub.url) is None
    assert not fresh.exists()


def test_a_start_that_could_not_ask_the_hub_makes_no_backup_in_that_run(
    hub: FakeHub, stack_factory: StackFactory, tmp_path: Path
) -> None:
    hub.datasets[DATASET] = FakeRepo(private=True, sdk="")
    hub.datasets[DATASET].files[DB_NAME] = b"the good copy"
    hub.down = True  # the start cannot tell whether there is a backup
    stack = stack_factory(backed_up_env(hub, tmp_path / "data"))
    made = httpx.post(
        f"{stack.url}/admin/keys",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        json={"name": "alice"},
        timeout=10,
    )
    assert made.status_code == 201
    hub.down = False  # back while the gateway runs: its empty start must not replace the copy
    stack.server.stop()
    assert hub.datasets[DATASET].files[DB_NAME] == b"the good copy"
    assert hub.datasets[DATASET].commits == []
