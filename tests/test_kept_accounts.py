"""Accounts added at run time come back after a restart, with the tokens Kiro rotated and their
own proxy; every account's remaining credits are asked for in the background
(``KIRO_USAGE_REFRESH``, ki2api/kiro/accounts/credits.py)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import openai

from ki2api.simulator import SimulatorState, text_answer
from ki2api.store import DB_NAME
from tests.proxies import Socks5Proxy
from tests.stack import Stack, StackFactory

ADMIN_KEY = "admin-key-kept-0123456789"
FIRST_REFRESH = "aorKeptFirst-0123456789"


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
