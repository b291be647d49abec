"""Accounts added at run time come back after a restart, with the tokens Kiro rotated and their
own proxy; every account's remaining credits are asked for in the background
(``KIRO_USAGE_REFRESH``, ki2api/kiro/accounts/credits.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from ki2api.kiro.accounts.account import Refresher
from ki2api.kiro.accounts.credentials import AccountSpec
from ki2api.kiro.accounts.kept import StoredAccounts
from ki2api.kiro.accounts.pool import AccountPool
from ki2api.kiro.accounts.refresh import RefreshResult
from ki2api.settings import Settings
from ki2api.simulator import SimulatorState, text_answer
from ki2api.store import DB_NAME, SqliteStore, StoredAccount
from tests.proxies import Socks5Proxy
from tests.stack import Stack, StackFactory

ADMIN_KEY = "admin-key-kept-0123456789"
FIRST_REFRESH = "aorKeptFirst-0123456789"
NEXT_HOUR = datetime.now(UTC) + timedelta(hours=1)


def _admin(stack: Stack, method: str, path: str, **kw: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    return httpx.request(method, f"{stack.url}{path}", headers=headers, timeout=10, **kw)  # type: ignore[arg-type]


def _labels(stack: Stack) -> list[str]:
    return [a["label"] for a in _admin(stack, "GET", "/admin/accounts").json()["data"]]


def _stored(data: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(data / DB_NAME)
    try:
        return conn.execute("SELECT label, data FROM secret_accounts").fetchall()
    finally:
        conn.close()


def test_an_account_added_at_run_time_is_kept_with_its_rotated_token_until_removed(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    state = SimulatorState()
    state.accounts.add(refresh_token=FIRST_REFRESH, rotate_refresh=True, label="sim-kept")
    env = {"ADMIN_KEY": ADMIN_KEY, "DATA_DIR": str(data), "KIRO_ACCESS_TOKEN": ""}
    first = stack_factory(env, state=state)
    added = _admin(
        first, "POST", "/admin/accounts", json={"label": "kept", "refreshToken": FIRST_REFRESH}
    )
    assert added.status_code == 201, added.text
    assert _admin(first, "POST", "/admin/accounts/kept/refresh").status_code == 200
    rotated = state.accounts.accounts[0].refresh_token
    assert rotated and rotated != FIRST_REFRESH  # Kiro rotated it; the first one is dead now
    first.server.stop()  # the writes are done by the time it has stopped
    ((label, stored),) = _stored(data)
    assert label == "kept" and rotated in stored and FIRST_REFRESH not in stored

    # The next start (a simulator that knows the account by its rotated token only).
    state = SimulatorState(require_known_tokens=True)
    state.accounts.add(refresh_token=rotated, label="sim-kept")
    second = stack_factory(env, state=state)
    assert _labels(second) == ["kept"]
    assert _admin(second, "POST", "/admin/accounts/kept/refresh").status_code == 200
    assert state.refresh_calls[-1].body == {"refreshToken": rotated}
    chat = httpx.post(
        f"{second.base_url}/chat/completions",
        headers=second.headers(),
        json={"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]},
        timeout=20,
    )
    assert chat.status_code == 200, chat.text
    assert _admin(second, "DELETE", "/admin/accounts/kept").status_code == 200
    second.server.stop()
    assert _stored(data) == []

    third = stack_factory(env)
    assert _labels(third) == []


def test_a_configured_account_is_never_stored(stack_factory: StackFactory, tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"ADMIN_KEY": ADMIN_KEY, "DATA_DIR": str(data), "KIRO_REFRESH_TOKEN": "aorEnv-0123456"}
    stack = stack_factory(env)
    assert _labels(stack) == ["env"]
    assert _admin(stack, "POST", "/admin/accounts/env/refresh").status_code == 200
    stack.server.stop()
    assert _stored(data) == []


def test_each_accounts_remaining_credits_are_asked_for_in_the_background(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory({"ADMIN_KEY": ADMIN_KEY, "KIRO_USAGE_REFRESH": "0.2"})
    usage = None
    for _ in range(100):
        (account,) = _admin(stack, "GET", "/admin/accounts").json()["data"]
        usage = account["usage"]
        if usage is not None:
            break
        time.sleep(0.05)
    assert usage is not None and usage["remaining"] > 0 and usage["resets_at"]

    quiet = stack_factory({"ADMIN_KEY": ADMIN_KEY, "KIRO_USAGE_REFRESH": "0"})
    time.sleep(0.5)
    (account,) = _admin(quiet, "GET", "/admin/accounts").json()["data"]
    assert account["usage"] is None


def test_an_account_added_at_run_time_comes_back_with_its_own_proxy(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    env = {"ADMIN_KEY": ADMIN_KEY, "DATA_DIR": str(data), "KIRO_ACCESS_TOKEN": ""}
    with Socks5Proxy(username="carol", password="pr0xy-kept-s3cret") as proxy:
        first = stack_factory(env)
        added = _admin(
            first,
            "POST",
            "/admin/accounts",
            json={"label": "proxied", "accessToken": "tok-proxied-0000001", "proxy": proxy.url},
        )
        assert added.status_code == 201, added.text
        first.server.stop()
        ((label, stored),) = _stored(data)
        assert label == "proxied" and proxy.url in stored

        second = stack_factory(env)
        (row,) = _admin(second, "GET", "/admin/accounts").json()["data"]
        assert (row["label"], row["proxy"]) == ("proxied", f"socks5h://***@127.0.0.1:{proxy.port}")
        second.state.enqueue(text_answer("through the kept proxy"))
        client = openai.OpenAI(base_url=second.base_url, api_key=second.api_key, max_retries=0)
        answer = client.chat.completions.create(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content == "through the kept proxy"
        assert any(b"Bearer tok-proxied-0000001" in tunnel.sent for tunnel in proxy.tunnels)


# --- proxies set at run time, and the store changed by another process (the CLI) -------------


def _settings(tmp_path: Path, accounts: list[dict[str, object]]) -> Settings:
    return Settings(
        kiro_accounts=orjson.dumps(accounts).decode(),
        kiro_token_file=tmp_path / "no-login.json",
        data_dir=tmp_path / "data",
    )


@contextlib.asynccontextmanager
async def _running(
    settings: Settings, *, flush_interval: float = 0.05, refresher: Refresher | None = None
) -> AsyncIterator[tuple[AccountPool, StoredAccounts]]:
    """A pool kept in the store in DATA_DIR, as the runtime wires it."""
    store = SqliteStore.in_folder(settings.data_dir, flush_interval=flush_interval)
    await store.open()
    async with httpx.AsyncClient() as http:
        pool = AccountPool.from_settings(settings, http, refresher=refresher)
        kept = StoredAccounts(store, pool)
        try:
            await kept.restore()
            kept.follow()
            pool.keeper = kept
            yield pool, kept
        finally:
            kept.stop_following()
            await pool.aclose()
            await kept.aclose()
            await store.aclose()


@contextlib.asynccontextmanager
async def _other_process(settings: Settings) -> AsyncIterator[SqliteStore]:
    store = SqliteStore.in_folder(settings.data_dir)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.02)


def _proxy_of(pool: AccountPool, label: str) -> str | None:
    account = pool.account(label)
    assert account is not None
    return account.spec.proxy


async def test_a_proxy_set_at_run_time_holds_over_the_configuration_across_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    configured = "socks5h://u:conf-s3cret@10.0.0.1:1080"
    set_later = "http://u:run-s3cret@10.0.0.2:3128"
    settings = _settings(
        tmp_path,
        [
            {"label": "a", "accessToken": "tok-a-000000001", "proxy": configured},
            {"label": "b", "accessToken": "tok-b-000000002"},
        ],
    )
    async with _running(settings) as (pool, kept):
        pool.set_proxy("a", "direct")
        pool.set_proxy("b", None)  # KIRO_PROXY, kept as a choice of its own
        pool.add_account({"label": "c", "accessToken": "tok-c-000000003", "proxy": "direct"})
        pool.set_proxy("c", set_later)
        pool.add_account({"label": "gone", "accessToken": "tok-g-000000004"})
        pool.set_proxy("gone", "direct")
        await kept.settled()
    async with _other_process(settings) as other:  # an account removed elsewhere, proxy kept
        await other.delete_account("gone")
        await other.put_account_proxy("gone", "direct")

    caplog.set_level(logging.WARNING, "ki2api.accounts")
    async with _running(settings) as (pool, kept):
        assert pool.labels() == ["a", "b", "c"]
        a, c = pool.account("a"), pool.account("c")
        assert a is not None and c is not None
        assert (a.spec.proxy, a.configured_proxy) == ("direct", configured)
        assert (c.spec.proxy, c.configured_proxy) == (set_later, "direct")
        assert _proxy_of(pool, "b") is None
        assert "a proxy is stored for account gone, which is not configured" in caplog.text
        status = pool.set_proxy("a", "configured")
        assert status.proxy == "socks5h://***@10.0.0.1:1080"
        assert _proxy_of(pool, "a") == configured
        await kept.settled()
        proxies = await kept.store.load_account_proxies()
        assert proxies == {"b": None, "c": set_later, "gone": "direct"}
        # The run-time account's own fields keep the proxy it was added with.
        (row,) = await kept.store.load_accounts()
        assert row.label == "c" and row.data["proxy"] == "direct"
    assert "s3cret" not in caplog.text


async def test_a_refresh_never_brings_back_an_account_another_process_removed(
    tmp_path: Path,
) -> None:
    async def refresher(spec: AccountSpec) -> RefreshResult:
        return RefreshResult("tok-z-refreshed-02", "aorZRotated-000002", NEXT_HOUR, None)

    settings = _settings(tmp_path, [])
    # No catch-up on its own (a minute between looks): the refresh's write comes first.
    async with _running(settings, flush_interval=60, refresher=refresher) as (pool, kept):
        pool.add_account({"label": "z", "accessToken": "tok-z-000000001", "refreshToken": "aorZ1"})
        await kept.settled()
        async with _other_process(settings) as other:
            await other.delete_account("z")
        await pool.refresh_account("z")
        await kept.settled()
        assert await kept.store.load_accounts() == []
        await kept.changed()  # what the store's look at the file would do
        await kept.settled()
        assert pool.labels() == []


async def test_a_running_pool_follows_the_accounts_and_proxies_another_process_changes(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, [{"label": "a", "accessToken": "tok-a-000000001"}])
    async with _running(settings) as (pool, kept), _other_process(settings) as cli:
        fields = {"source": "cli", "label": "x", "accessToken": "tok-x-000000001"}
        await cli.put_account(StoredAccount("x", {**fields, "proxy": "direct"}, time.time()))
        await cli.put_account_proxy("a", "socks5://10.0.0.5:1080")
        await _eventually(lambda: "x" in pool.labels())
        await _eventually(lambda: _proxy_of(pool, "a") == "socks5://10.0.0.5:1080")
        assert pool.kept("x") and _proxy_of(pool, "x") == "direct"

        await cli.put_account_proxy("x", None)  # set elsewhere on an account added elsewhere
        await _eventually(lambda: _proxy_of(pool, "x") is None)
        await cli.delete_account_proxy("x")  # undone: back to its own field's
        await cli.delete_account_proxy("a")
        await _eventually(lambda: _proxy_of(pool, "x") == "direct")
        await _eventually(lambda: _proxy_of(pool, "a") is None)

        newer = {**fields, "accessToken": "tok-x-000000002"}  # removed and added again there
        await cli.put_account(StoredAccount("x", newer, time.time() + 1))
        await _eventually(lambda: pool.snapshot()[-1].token == "…0002")

        await cli.delete_account("x")
        await _eventually(lambda: pool.labels() == ["a"])

        # This process's own changes, with a catch-up queued ahead of their writes: an account
        # being removed is not added back, one being added is not removed.
        pool.add_account({"label": "y", "accessToken": "tok-y-000000001"})
        await kept.settled()
        await kept.changed()
        pool.remove_account("y")
        pool.add_account({"label": "w", "accessToken": "tok-w-000000001"})
        await kept.settled()
        assert pool.labels() == ["a", "w"]
        assert [row.label for row in await cli.load_accounts()] == ["w"]
        await asyncio.sleep(0.3)  # and later looks at the file change nothing
        assert pool.labels() == ["a", "w"]
        # A configured account is never removed for a row that is not there.
        await cli.put_account(StoredAccount("a", fields, time.time()))
        await cli.delete_account("a")
        await asyncio.sleep(0.3)
        assert pool.labels() == ["a", "w"]
