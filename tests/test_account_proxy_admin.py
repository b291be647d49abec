"""``PATCH /admin/accounts/{label}``: an account's outbound proxy changed while the gateway runs,
on a real server, against real proxies on loopback (tests/proxies.py): its chats and its token
refresh go through the new proxy from the next call on, ``configured`` undoes the change, and
the choice survives a restart (it is kept in ``DATA_DIR``)."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import orjson

from ki2api.simulator import SimulatorState, text_answer
from tests.proxies import _Proxy
from tests.stack import Stack, StackFactory
from tests.test_proxies import SECRET, carried, http_proxy, socks_proxy  # noqa: F401 (fixtures)

ADMIN = "admin-key-proxy-0123456789"
ACCESS = "tok-patch-000000001"
REFRESH = "aorPatchRefresh-000000001"


def patch(stack: Stack, label: str, body: object, key: str | None = ADMIN) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.patch(
        f"{stack.url}/admin/accounts/{label}", headers=headers, json=body, timeout=10
    )


def chat(stack: Stack, text: str) -> str:
    stack.state.enqueue(text_answer(f"answer to {text}"))
    client = openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)
    with client:
        answer = client.chat.completions.create(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": text}]
        )
    return answer.choices[0].message.content or ""


def listed_proxy(stack: Stack) -> str | None:
    headers = {"authorization": f"Bearer {ADMIN}"}
    listing = httpx.get(f"{stack.url}/admin/accounts", headers=headers, timeout=10)
    assert SECRET not in listing.text
    (row,) = listing.json()["data"]
    return row["proxy"]  # type: ignore[no-any-return]


def start(stack_factory: StackFactory, data: Path, configured: _Proxy) -> Stack:
    state = SimulatorState()
    state.add_account(access_token=ACCESS, refresh_token=REFRESH, label="sim")
    account = {"label": "a", "accessToken": ACCESS, "refreshToken": REFRESH}
    env = {
        "ADMIN_KEY": ADMIN,
        "DATA_DIR": str(data),
        "KIRO_ACCESS_TOKEN": "",
        "KIRO_ACCOUNTS": orjson.dumps([{**account, "proxy": configured.url}]).decode(),
    }
    return stack_factory(env, state=state)


def test_patch_moves_an_accounts_chats_and_refresh_to_another_proxy_until_undone(
    stack_factory: StackFactory,
    tmp_path: Path,
    http_proxy: _Proxy,  # noqa: F811  (the account's configured proxy)
    socks_proxy: _Proxy,  # noqa: F811
) -> None:
    data = tmp_path / "data"
    stack = start(stack_factory, data, http_proxy)
    assert chat(stack, "first-via-configured") == "answer to first-via-configured"
    assert carried(http_proxy, b"first-via-configured")

    changed = patch(stack, "a", {"proxy": socks_proxy.url})
    assert changed.status_code == 200, changed.text
    masked = f"socks5h://***@127.0.0.1:{socks_proxy.port}"
    assert changed.json()["account"]["proxy"] == masked and SECRET not in changed.text
    assert changed.json()["account"]["label"] == "a"
    assert chat(stack, "second-via-socks") == "answer to second-via-socks"
    refreshed = httpx.post(
        f"{stack.url}/admin/accounts/a/refresh",
        headers={"authorization": f"Bearer {ADMIN}"},
        timeout=10,
    )
    assert refreshed.status_code == 200, refreshed.text
    assert carried(socks_proxy, b"second-via-socks") and carried(
        socks_proxy, b"Bearer " + ACCESS.encode()
    )
    assert carried(socks_proxy, REFRESH.encode())  # the refresh, through the new proxy too
    assert not carried(http_proxy, b"second-via-socks")
    assert not carried(http_proxy, REFRESH.encode())

    undone = patch(stack, "a", {"proxy": "configured"})
    assert undone.status_code == 200, undone.text
    assert undone.json()["account"]["proxy"] == f"http://***@127.0.0.1:{http_proxy.port}"
    assert chat(stack, "third-via-configured") == "answer to third-via-configured"
    assert carried(http_proxy, b"third-via-configured")
    assert not carried(socks_proxy, b"third-via-configured")

    direct = patch(stack, "a", {"proxy": "direct"})
    assert direct.status_code == 200 and direct.json()["account"]["proxy"] == "direct"
    assert chat(stack, "fourth-direct") == "answer to fourth-direct"
    assert not carried(http_proxy, b"fourth-direct")
    assert not carried(socks_proxy, b"fourth-direct")
    default = patch(stack, "a", {"proxy": None})  # KIRO_PROXY (none here)
    assert default.status_code == 200 and default.json()["account"]["proxy"] is None

    # Kept in DATA_DIR: the next start (same configuration) goes through the proxy set last.
    assert patch(stack, "a", {"proxy": socks_proxy.url}).status_code == 200
    stack.server.stop()
    again = start(stack_factory, data, http_proxy)
    assert listed_proxy(again) == masked
    assert chat(again, "fifth-after-restart") == "answer to fifth-after-restart"
    assert carried(socks_proxy, b"fifth-after-restart")
    assert not carried(http_proxy, b"fifth-after-restart")
    assert patch(again, "a", {"proxy": "configured"}).status_code == 200
    again.server.stop()
    third = start(stack_factory, data, http_proxy)
    assert listed_proxy(third) == f"http://***@127.0.0.1:{http_proxy.port}"


def test_patch_refuses_what_it_cannot_do_in_openais_format_without_echoing_credentials(
    stack_factory: StackFactory,
    tmp_path: Path,
    http_proxy: _Proxy,  # noqa: F811
) -> None:
    stack = start(stack_factory, tmp_path / "data", http_proxy)
    bad = patch(stack, "a", {"proxy": f"ftp://u:{SECRET}@h:21"})
    assert bad.status_code == 400 and SECRET not in bad.text
    error = bad.json()["error"]
    assert error["param"] == "proxy" and error["type"] == "invalid_request_error"
    assert "unsupported proxy scheme" in error["message"]
    for body, param in (
        ({"proxy": 1080}, "proxy"),
        ({"proxy": "direct", "label": "b"}, "label"),
        ({"refreshToken": "aor-not-here"}, "refreshToken"),
        ({}, None),
        (["direct"], None),
        ("direct", None),
    ):
        refused = patch(stack, "a", body)
        assert refused.status_code == 400, (body, refused.text)
        assert refused.json()["error"]["param"] == param, body
    unknown = patch(stack, "nobody", {"proxy": "direct"})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "invalid_request_error"
    assert patch(stack, "a", {"proxy": "direct"}, key=None).status_code == 401
    assert patch(stack, "a", {"proxy": "direct"}, key="wrong-key").status_code == 401
    assert patch(stack, "a", {"proxy": "direct"}, key=stack.api_key).status_code == 403
    assert listed_proxy(stack) == f"http://***@127.0.0.1:{http_proxy.port}"  # unchanged


def test_patch_is_off_without_admin_key(stack_factory: StackFactory) -> None:
    stack = stack_factory()
    refused = patch(stack, "env", {"proxy": "direct"}, key=stack.api_key)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_disabled"
