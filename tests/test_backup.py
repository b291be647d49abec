"""The database's backup to a Hub dataset (``BACKUP_REPO``), against a fake Hub on loopback:
snapshots carry keys and usage but no account token, and a fresh start restores the last one."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ki2api.settings import Settings
from ki2api.store import DB_NAME, SqliteStore, StoredAccount, UsageCounts, UsageQuery
from ki2api.store.backup import HubBackup, snapshot
from ki2api.teams.gate import Teams
from ki2api.teams.manage import KeyAdmin
from tests.stack import StackFactory

TOKEN = "hf_backup_token_0123456789"
ADMIN_KEY = "admin-key-backup-0123456789"
ACCOUNT_TOKEN = "aorSecretRefreshToken-0123456789"


@dataclass
class FakeDatasets:
    url: str = ""
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo -> path -> bytes
    private: dict[str, bool] = field(default_factory=dict)
    commits: int = 0
    down: bool = False  # every call answers 403 (a Hub that will not serve this machine)


def _app(hub: FakeDatasets) -> Starlette:
    def repo_of(request: Request) -> str:
        return f"{request.path_params['owner']}/{request.path_params['name']}"

    def refused(request: Request) -> Response | None:
        if hub.down:
            return JSONResponse({"error": "down"}, 403)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"error": "Invalid credentials"}, 401)
        return None

    async def create(request: Request) -> Response:
        if (no := refused(request)) is not None:
            return no
        body = await request.json()
        repo = f"{body['organization']}/{body['name']}"
        if repo in hub.files:
            return JSONResponse({"error": "exists", "url": f"{hub.url}/datasets/{repo}"}, 409)
        hub.files[repo] = {}
        hub.private[repo] = body.get("private", False) or body.get("visibility") == "private"
        return JSONResponse({"url": f"{hub.url}/datasets/{repo}", "name": repo})

    async def preupload(request: Request) -> Response:
        if (no := refused(request)) is not None:
            return no
        body = await request.json()
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
            for f in body["files"]
        ]
        return JSONResponse({"files": files})

    async def commit(request: Request) -> Response:
        if (no := refused(request)) is not None:
            return no
        repo = repo_of(request)
        for line in (await request.body()).decode().splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                value = item["value"]
                hub.files[repo][value["path"]] = base64.b64decode(value["content"])
        hub.commits += 1
        oid = f"{hub.commits:040x}"
        return JSONResponse(
            {"commitUrl": f"{hub.url}/datasets/{repo}/commit/{oid}", "commitOid": oid}
        )

    async def squash(request: Request) -> Response:
        return refused(request) or JSONResponse({"commitId": f"{hub.commits:040x}"})

    async def resolve(request: Request) -> Response:
        if (no := refused(request)) is not None:
            return no
        repo = repo_of(request)
        if repo not in hub.files:
            return JSONResponse({"error": "no repo"}, 404, headers={"x-error-code": "RepoNotFound"})
        data = hub.files[repo].get(request.path_params["path"])
        if data is None:
            return JSONResponse(
                {"error": "no file"}, 404, headers={"x-error-code": "EntryNotFound"}
            )
        headers = {
            "x-repo-commit": f"{hub.commits:040x}",
            "etag": f'"{hashlib.sha256(data).hexdigest()}"',
            "content-length": str(len(data)),
        }
        body = b"" if request.method == "HEAD" else data
        return Response(body, headers=headers, media_type="application/octet-stream")

    repo_path = "/api/datasets/{owner}/{name}"
    return Starlette(
        routes=[
            Route("/api/repos/create", create, methods=["POST"]),
            Route(repo_path + "/preupload/{rev}", preupload, methods=["POST"]),
            Route(repo_path + "/commit/{rev}", commit, methods=["POST"]),
            Route(repo_path + "/super-squash/{rev}", squash, methods=["POST"]),
            Route(
                "/datasets/{owner}/{name}/resolve/{rev}/{path:path}",
                resolve,
                methods=["GET", "HEAD"],
            ),
        ]
    )


@pytest.fixture
def hub() -> Iterator[FakeDatasets]:
    state = FakeDatasets()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(_app(state), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield state
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


async def _store_with_secrets(folder: Path) -> tuple[SqliteStore, str]:
    store = SqliteStore.in_folder(folder)
    teams = Teams(Settings(), store)
    await teams.open()
    secret = (await KeyAdmin(teams).create({"name": "alice", "rpm": 5}))["secret"]
    store.record_usage(UsageCounts("2026-03-15", "operator", "acc", 4, input_tokens=40))
    await store.put_account(StoredAccount("kept", {"refreshToken": ACCOUNT_TOKEN}))
    await store.flush()
    return store, secret


async def test_a_snapshot_keeps_keys_and_usage_and_no_account_token(tmp_path: Path) -> None:
    store, secret = await _store_with_secrets(tmp_path / "data")
    try:
        out = tmp_path / "snap.db"
        snapshot(tmp_path / "data" / DB_NAME, out)
    finally:
        await store.aclose()
    raw = out.read_bytes()
    assert ACCOUNT_TOKEN.encode() not in raw and secret.encode() not in raw
    conn = sqlite3.connect(out)
    try:
        assert conn.execute("SELECT name FROM keys").fetchall() == [("alice",)]
        assert conn.execute("SELECT sum(requests) FROM usage").fetchone() == (4,)
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (0,)
    finally:
        conn.close()


async def test_the_database_goes_to_a_private_dataset_and_comes_back_on_a_fresh_start(
    hub: FakeDatasets, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    store, secret = await _store_with_secrets(first)
    backup = HubBackup("alice/ki2api-backup", first / DB_NAME, token=TOKEN, endpoint=hub.url)
    await backup.start()
    await store.aclose()
    await backup.aclose()  # the last snapshot
    uploaded = hub.files["alice/ki2api-backup"][DB_NAME]
    assert hub.private["alice/ki2api-backup"] is True
    assert ACCOUNT_TOKEN.encode() not in uploaded and secret.encode() not in uploaded

    fresh = tmp_path / "fresh"  # a Space after a restart: an empty disk
    again = HubBackup("alice/ki2api-backup", fresh / DB_NAME, token=TOKEN, endpoint=hub.url)
    assert await again.restore() is True
    restored = SqliteStore.in_folder(fresh)
    await restored.open()
    try:
        assert [k.name for k in await restored.list_keys()] == ["alice"]
        assert sum(r.requests for r in await restored.usage(UsageQuery())) == 4
        assert await restored.load_accounts() == []
    finally:
        await restored.aclose()
    assert await again.restore() is False  # a database is there: left alone


async def test_an_unreachable_hub_at_start_means_no_backup_in_this_run(
    hub: FakeDatasets, tmp_path: Path
) -> None:
    hub.down = True
    backup = HubBackup("alice/ki2api-backup", tmp_path / DB_NAME, token=TOKEN, endpoint=hub.url)
    assert await backup.restore() is False
    assert backup.enabled is False
    await backup.start()  # does nothing: an empty database must not replace the backup
    hub.down = False
    await backup.aclose()
    assert hub.files == {}


@pytest.mark.slow  # huggingface_hub retries for about 20 s before it gives up
async def test_a_hub_that_cannot_be_reached_at_start_means_no_backup_either(
    tmp_path: Path,
) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    backup = HubBackup("alice/ki2api-backup", tmp_path / DB_NAME, token=TOKEN, endpoint=url)
    assert await backup.restore() is False and backup.enabled is False


async def test_no_backup_yet_starts_empty_and_backs_up(hub: FakeDatasets, tmp_path: Path) -> None:
    backup = HubBackup("alice/ki2api-backup", tmp_path / DB_NAME, token=TOKEN, endpoint=hub.url)
    assert await backup.restore() is False and backup.enabled
    store = SqliteStore(tmp_path / DB_NAME)
    await store.open()
    await backup.start()
    await store.aclose()
    await backup.aclose()
    assert DB_NAME in hub.files["alice/ki2api-backup"]


def test_a_gateway_with_backup_repo_gets_its_keys_back_after_losing_its_disk(
    hub: FakeDatasets,
    stack_factory: StackFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # huggingface_hub's own way to the token
    env = {"ADMIN_KEY": ADMIN_KEY, "BACKUP_REPO": "alice/ki2api-backup", "HF_ENDPOINT": hub.url}
    first = stack_factory({**env, "DATA_DIR": str(tmp_path / "before")})
    made = httpx.post(
        f"{first.url}/admin/keys",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        json={"name": "alice"},
        timeout=10,
    )
    secret = made.json()["secret"]
    first.server.stop()  # a clean stop: the last snapshot goes up

    second = stack_factory({**env, "DATA_DIR": str(tmp_path / "after")})  # an empty disk
    answer = httpx.get(
        f"{second.base_url}/models", headers={"authorization": f"Bearer {secret}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
