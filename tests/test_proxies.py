"""Outbound proxies, per account and for all (KIRO_PROXY), against real proxies on loopback
(tests/proxies.py): an HTTP CONNECT proxy (also over TLS: an https:// proxy) and a SOCKS5 proxy,
with credentials. The simulator speaks plain HTTP here so the proxies can see whose requests they
carried: each account's chats, token refresh, model list and usage call go through its own proxy
only."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import orjson
import pytest
import uvloop

from ki2api.kiro.accounts.credentials import parse_pasted_token
from ki2api.kiro.accounts.pool import AccountPool
from ki2api.kiro.accounts.proxy import DIRECT, check_account_proxy, mask_proxy, parse_proxy
from ki2api.kiro.http.client import UpstreamHttp
from ki2api.settings import Settings
from ki2api.simulator import SimulatorServer, text_answer
from tests.proxies import HttpConnectProxy, Socks5Proxy, _Proxy
from tests.stack import StackFactory
from tests.tls import TlsFiles

ADMIN = "admin-key-0123456789"
SECRET = "pr0xy-s3cret"


def test_proxy_urls_are_checked_and_shown_without_credentials() -> None:
    parsed = parse_proxy(f"socks5h://alice:{SECRET}@proxy.example:1080")
    assert (parsed.host, parsed.port, parsed.remote_dns) == ("proxy.example", 1080, True)
    assert parsed.masked() == "socks5h://***@proxy.example:1080"
    assert SECRET not in repr(parsed) and SECRET not in str(parsed)
    assert parse_proxy("socks5://10.0.0.1:9050").remote_dns is False
    assert parse_proxy("http://corp-proxy").port == 80
    tls = parse_proxy(f"https://alice:{SECRET}@corp-proxy")
    assert (tls.port, tls.tls, tls.remote_dns) == (443, True, True)
    assert tls.masked() == "https://***@corp-proxy:443" and SECRET not in repr(tls)
    assert mask_proxy(f"http://bob:{SECRET}@10.0.0.2:3128") == "http://***@10.0.0.2:3128"
    assert mask_proxy(None) is None and mask_proxy("direct") == DIRECT
    assert check_account_proxy(" Direct ") == DIRECT
    for bad, why in [
        (f"socks5s://u:{SECRET}@p:443", "unsupported proxy scheme"),
        (f"ftp://u:{SECRET}@p:21", "unsupported proxy scheme"),
        ("socks5://:1080", "no host"),
        (f"http://u:{SECRET}@p:3128/path", "without a path"),
        ("http://p:notaport", "not a valid URL"),
    ]:
        with pytest.raises(ValueError, match=why) as caught:
            parse_proxy(bad)
        assert SECRET not in str(caught.value)


def test_a_bad_kiro_proxy_is_named_at_start_up(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "KIRO_PROXY": f"ftp://u:{SECRET}@p:21"}
    with pytest.raises(ValueError, match="KIRO_PROXY must be a proxy URL") as caught:
        Settings.from_env(env)
    assert SECRET not in str(caught.value)
    # Past the settings (a Settings built in code), the client names it too.
    with pytest.raises(ValueError, match="KIRO_PROXY: unsupported proxy scheme 'ftp'"):
        UpstreamHttp(
            Settings.model_construct(**{**Settings().__dict__, "kiro_proxy": env["KIRO_PROXY"]})
        )


@pytest.fixture
def http_proxy() -> Iterator[_Proxy]:
    with HttpConnectProxy(username="alice", password=SECRET) as proxy:
        yield proxy


@pytest.fixture
def socks_proxy() -> Iterator[_Proxy]:
    with Socks5Proxy(username="bob", password=SECRET) as proxy:
        yield proxy


@pytest.fixture
def https_proxy(tls_files: TlsFiles) -> Iterator[_Proxy]:
    """TLS to the proxy itself, its certificate from the test CA (KIRO_CA_BUNDLE)."""
    with HttpConnectProxy(username="carol", password=SECRET, tls=tls_files.server_context()) as p:
        yield p


def carried(proxy: _Proxy, needle: bytes) -> bool:
    return any(needle in tunnel.sent for tunnel in proxy.tunnels)


def ask(base_url: str, api_key: str, n: int) -> list[str]:
    with openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0) as client:

        def one(n: int) -> str:
            # A conversation of its own each (one first message sticks to one account).
            answer = client.chat.completions.create(
                model="claude-sonnet-4-5", messages=[{"role": "user", "content": f"hi {n}"}]
            )
            return answer.choices[0].message.content or ""

        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(one, range(n)))


def test_each_account_goes_through_its_own_proxy(
    stack_factory: StackFactory, http_proxy: _Proxy, socks_proxy: _Proxy
) -> None:
    """a: no proxy of its own, so KIRO_PROXY (HTTP CONNECT); b: its own SOCKS5 (socks5h, the
    proxy resolves the name); c: ``direct``. Chats of all three at once, then each account's
    token refresh and usage call; the model lists were fetched at start-up."""
    accounts = [
        {"label": "a", "accessToken": "tok-a-000000001", "refreshToken": "rt-a-000000001"},
        {
            "label": "b",
            "accessToken": "tok-b-000000002",
            "refreshToken": "rt-b-000000002",
            "proxy": socks_proxy.url,
        },
        {"label": "c", "accessToken": "tok-c-000000003", "proxy": "direct"},
    ]
    env = {
        "KIRO_ACCESS_TOKEN": "",
        "KIRO_ACCOUNTS": orjson.dumps(accounts).decode(),
        "KIRO_PROXY": http_proxy.url,
        "ADMIN_KEY": ADMIN,
    }
    stack = stack_factory(env, kiro_pool_strategy="round_robin", uvloop=True)  # as in production
    for n, label in enumerate("abc"):
        stack.state.add_account(
            access_token=f"tok-{label}-00000000{n + 1}",
            refresh_token=f"rt-{label}-00000000{n + 1}" if label != "c" else None,
            label=label,
        )
    for _ in range(6):
        stack.state.enqueue(text_answer("proxied"))
    assert ask(stack.base_url, stack.api_key, 6) == ["proxied"] * 6
    admin = {"authorization": f"Bearer {ADMIN}"}
    for label in "ab":
        refreshed = httpx.post(f"{stack.url}/admin/accounts/{label}/refresh", headers=admin)
        assert refreshed.status_code == 200, refreshed.text
    for label in "abc":
        usage = httpx.get(f"{stack.url}/admin/accounts/{label}/usage", headers=admin)
        assert usage.status_code == 200, usage.text

    a_only, b_only = http_proxy, socks_proxy
    assert carried(a_only, b"Bearer tok-a-000000001")  # chats
    assert carried(a_only, b"rt-a-000000001")  # the refresh
    assert carried(a_only, b"ListAvailableModels") and carried(a_only, b"/getUsageLimits")
    assert carried(b_only, b"Bearer tok-b-000000002")
    assert carried(b_only, b"rt-b-000000002")
    assert carried(b_only, b"ListAvailableModels") and carried(b_only, b"/getUsageLimits")
    for proxy, others in ((a_only, (b"tok-b", b"rt-b", b"tok-c")), (b_only, (b"tok-a", b"rt-a"))):
        for other in (*others, b"tok-c"):
            assert not carried(proxy, other), (proxy.scheme, other)
    assert all(t.host == "127.0.0.1" for t in a_only.tunnels + b_only.tunnels)
    # Three requests each, the account's tokens known to the simulator: served by a, b and c.
    assert {r.account for r in stack.state.requests} == {"a", "b", "c"}

    listing = httpx.get(f"{stack.url}/admin/accounts", headers=admin)
    rows = {row["label"]: row for row in listing.json()["data"]}
    assert rows["a"]["proxy"] is None  # KIRO_PROXY's
    assert rows["b"]["proxy"] == f"socks5h://***@127.0.0.1:{socks_proxy.port}"
    assert rows["c"]["proxy"] == "direct"
    assert SECRET not in listing.text


@pytest.mark.parametrize(
    ("kind", "loop"),
    [("http", "uvloop"), ("socks5h", "uvloop"), ("https", "uvloop"), ("https", "asyncio")],
)
def test_tls_to_kiro_inside_the_proxy_tunnel(
    kind: str,
    loop: str,
    http_proxy: _Proxy,
    socks_proxy: _Proxy,
    https_proxy: _Proxy,
    tls_files: TlsFiles,
) -> None:
    """HTTPS to Kiro through a CONNECT tunnel, a SOCKS5 one and a CONNECT tunnel inside TLS to
    the proxy (TLS in TLS); the host name goes to the proxy unresolved (socks5h; CONNECT always
    names the host). Two requests: the second reuses the connection."""
    proxy = {"http": http_proxy, "socks5h": socks_proxy, "https": https_proxy}[kind]
    with SimulatorServer(ssl_certfile=tls_files.cert, ssl_keyfile=tls_files.key) as sim:
        url = sim.url.replace("127.0.0.1", "localhost")
        settings = Settings(kiro_proxy=proxy.url, kiro_ca_bundle=Path(tls_files.ca))

        async def fetch() -> list[int]:
            async with UpstreamHttp(settings) as upstream:
                return [(await upstream.default.get(f"{url}/nowhere")).status_code for _ in "ab"]

        assert (uvloop.run if loop == "uvloop" else asyncio.run)(fetch()) == [404, 404]
    assert [(t.host, t.by_name) for t in proxy.tunnels] == [("localhost", True)]
    assert b"GET /nowhere" not in proxy.sent_by_all()  # the proxy saw only TLS to Kiro


def test_an_account_behind_an_https_proxy(
    stack_factory: StackFactory, https_proxy: _Proxy, tls_files: TlsFiles
) -> None:
    """An account's own https:// proxy (KIRO_CA_BUNDLE trusts its certificate) carries its
    chats, its token refresh and its usage call, with the proxy's credentials checked."""
    accounts = [
        {
            "label": "t",
            "accessToken": "tok-t-000000001",
            "refreshToken": "rt-t-000000001",
            "proxy": https_proxy.url,
        }
    ]
    env = {
        "KIRO_ACCESS_TOKEN": "",
        "KIRO_ACCOUNTS": orjson.dumps(accounts).decode(),
        "KIRO_CA_BUNDLE": tls_files.ca,
        "ADMIN_KEY": ADMIN,
    }
    stack = stack_factory(env, uvloop=True)
    stack.state.add_account(
        access_token="tok-t-000000001", refresh_token="rt-t-000000001", label="t"
    )
    for _ in range(2):
        stack.state.enqueue(text_answer("over tls"))
    assert ask(stack.base_url, stack.api_key, 2) == ["over tls"] * 2
    admin = {"authorization": f"Bearer {ADMIN}"}
    refreshed = httpx.post(f"{stack.url}/admin/accounts/t/refresh", headers=admin)
    assert refreshed.status_code == 200, refreshed.text
    usage = httpx.get(f"{stack.url}/admin/accounts/t/usage", headers=admin)
    assert usage.status_code == 200, usage.text
    assert carried(https_proxy, b"Bearer tok-t-000000001")
    assert carried(https_proxy, b"rt-t-000000001")
    assert carried(https_proxy, b"/getUsageLimits")
    assert https_proxy.refused == []  # the credentials were sent, and right
    assert {r.account for r in stack.state.requests} == {"t"}
    listing = httpx.get(f"{stack.url}/admin/accounts", headers=admin)
    assert listing.json()["data"][0]["proxy"] == f"https://***@127.0.0.1:{https_proxy.port}"
    assert SECRET not in listing.text


def test_an_https_proxy_with_an_untrusted_certificate(
    stack_factory: StackFactory, tmp_path: Path
) -> None:
    """The proxy's certificate is checked as Kiro's is: from a CA the gateway does not know it
    is a clear 502 naming the proxy and KIRO_CA_BUNDLE; with that CA in KIRO_CA_BUNDLE it works."""
    own_ca = TlsFiles.make(tmp_path / "proxy-ca")
    with HttpConnectProxy(username="u", password=SECRET, tls=own_ca.server_context()) as proxy:
        refused = stack_factory({"KIRO_PROXY": proxy.url})
        r = httpx.post(
            f"{refused.base_url}/chat/completions",
            json={"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]},
            headers=refused.headers(),
            timeout=30,
        )
        assert r.status_code == 502, r.text
        assert SECRET not in r.text and "Traceback" not in r.text
        error = r.json()["error"]
        assert error["code"] == "upstream_proxy_error"
        message = error["message"]
        assert f"the TLS certificate of the proxy https://***@127.0.0.1:{proxy.port}" in message
        assert "KIRO_CA_BUNDLE" in message
        assert proxy.tunnels == [] and refused.state.requests == []

        trusted = stack_factory({"KIRO_PROXY": proxy.url, "KIRO_CA_BUNDLE": own_ca.ca})
        trusted.state.enqueue(text_answer("trusted now"))
        assert ask(trusted.base_url, trusted.api_key, 1) == ["trusted now"]
        assert carried(proxy, b"POST /generateAssistantResponse")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_an_https_proxy_that_never_answers_times_out_in_the_connect_timeout(
    loop: str, tls_files: TlsFiles
) -> None:
    """A proxy that takes the connection but never finishes TLS: a ConnectTimeout naming it,
    within the caller's connect timeout, the connection not left open."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes TCP; nobody ever answers the ClientHello
        port = silent.getsockname()[1]
        settings = Settings(
            kiro_proxy=f"https://u:{SECRET}@127.0.0.1:{port}", kiro_ca_bundle=Path(tls_files.ca)
        )

        async def fetch() -> float:
            started = time.monotonic()
            async with UpstreamHttp(settings) as upstream:
                with pytest.raises(httpx.ConnectTimeout) as caught:
                    await upstream.default.get("https://localhost:1/x", timeout=0.5)
            message = str(caught.value)
            assert f"through the proxy https://***@127.0.0.1:{port}" in message
            assert SECRET not in message
            return time.monotonic() - started

        assert (uvloop.run if loop == "uvloop" else asyncio.run)(fetch()) < 3


@pytest.mark.parametrize(
    "case",
    [
        "http-refuses",
        "https-refuses",
        "https-wrong-password",
        "socks-refuses",
        "wrong-password",
        "unreachable",
        "https-unreachable",
    ],
)
@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
def test_a_proxy_that_refuses_is_a_502_that_names_it(
    stack_factory: StackFactory, tls_files: TlsFiles, case: str, fmt: str
) -> None:
    env = {"KIRO_CA_BUNDLE": tls_files.ca}
    with contextlib.ExitStack() as running:
        if case == "http-refuses":
            proxy = running.enter_context(
                HttpConnectProxy(username="u", password=SECRET, refuse=True)
            )
            url, port = proxy.url, proxy.port
        elif case == "https-refuses":  # 403
            proxy = running.enter_context(
                HttpConnectProxy(refuse=True, tls=tls_files.server_context())
            )
            url, port = proxy.url, proxy.port
        elif case == "https-wrong-password":  # 407
            proxy = running.enter_context(
                HttpConnectProxy(username="u", password="right", tls=tls_files.server_context())
            )
            url, port = f"https://u:{SECRET}@127.0.0.1:{proxy.port}", proxy.port
        elif case == "socks-refuses":
            proxy = running.enter_context(Socks5Proxy(refuse=True))
            url, port = proxy.url, proxy.port
        elif case == "wrong-password":
            proxy = running.enter_context(Socks5Proxy(username="bob", password="the-right-one"))
            url, port = f"socks5h://bob:{SECRET}@127.0.0.1:{proxy.port}", proxy.port
        else:
            port = closed_port()
            scheme = "https" if case == "https-unreachable" else "http"
            url = f"{scheme}://u:{SECRET}@127.0.0.1:{port}"
        stack = stack_factory({**env, "KIRO_PROXY": url})
        path = "chat/completions" if fmt == "openai" else "messages"
        body = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "hi"}],
        }
        headers = {**stack.headers(), "anthropic-version": "2023-06-01"}
        r = httpx.post(f"{stack.base_url}/{path}", json=body, headers=headers, timeout=30)
    assert r.status_code == 502, r.text
    assert "Traceback" not in r.text and SECRET not in r.text
    message = r.json()["error"]["message"]
    assert f"127.0.0.1:{port}" in message and "proxy" in message
    if case.startswith("https-"):
        who = "" if case == "https-refuses" else "***@"  # that proxy wants no credentials
        assert f"https://{who}127.0.0.1:{port}" in message
    if case in ("https-refuses", "https-wrong-password"):  # as an http:// proxy's refusal
        assert "refused the connection" in message
        assert ("407" if "password" in case else "403") in message
    if fmt == "openai":
        assert r.json()["error"]["code"] == "upstream_proxy_error"
    assert stack.state.requests == []  # nothing reached Kiro


def test_the_admin_api_adds_an_account_with_its_own_proxy(
    stack_factory: StackFactory, socks_proxy: _Proxy
) -> None:
    stack = stack_factory({"ADMIN_KEY": ADMIN, "KIRO_ACCESS_TOKEN": ""})
    admin = {"authorization": f"Bearer {ADMIN}"}
    bad = httpx.post(
        f"{stack.url}/admin/accounts",
        headers=admin,
        json={"label": "x", "accessToken": "tok-x-000000009", "proxy": f"ftp://u:{SECRET}@h:1"},
    )
    assert bad.status_code == 400 and "proxy" in bad.text and SECRET not in bad.text
    added = httpx.post(
        f"{stack.url}/admin/accounts",
        headers=admin,
        json={"label": "d", "accessToken": "tok-d-000000004", "proxy": socks_proxy.url},
    )
    assert added.status_code in (200, 201), added.text
    assert SECRET not in added.text
    stack.state.enqueue(text_answer("via socks"))
    assert ask(stack.base_url, stack.api_key, 1) == ["via socks"]
    assert carried(socks_proxy, b"Bearer tok-d-000000004")
    listing = httpx.get(f"{stack.url}/admin/accounts", headers=admin).json()["data"]
    assert [row["proxy"] for row in listing] == [f"socks5h://***@127.0.0.1:{socks_proxy.port}"]


def test_a_pasted_token_cannot_name_a_proxy() -> None:
    """A visitor's pasted login may not make the server connect where the visitor says."""
    pasted = orjson.dumps({"accessToken": "tok-v-000000001", "proxy": "http://10.0.0.1:80"})
    assert parse_pasted_token(pasted.decode(), Settings()).proxy is None


async def test_a_login_file_entry_keeps_its_proxy_when_the_file_changes(tmp_path: Path) -> None:
    login = tmp_path / "kiro-auth-token.json"
    login.write_bytes(orjson.dumps({"accessToken": "tok-f-000000001", "refreshToken": "rt-f-1"}))
    proxy = f"socks5h://u:{SECRET}@10.0.0.7:1080"
    entries = [{"label": "f", "tokenFile": str(login), "proxy": proxy}]
    settings = Settings(kiro_accounts=orjson.dumps(entries).decode())
    async with httpx.AsyncClient() as http:
        pool = AccountPool.from_settings(settings, http)
        assert [s.proxy for s in pool.snapshot()] == ["socks5h://***@10.0.0.7:1080"]
        login.write_bytes(
            orjson.dumps({"accessToken": "tok-f-000000002", "refreshToken": "rt-f-2"})
        )
        await pool.refresh_account("f")  # reads the file again first: new tokens, same proxy
        lease = await pool.acquire()
        assert lease.credential.access_token == "tok-f-000000002"
        assert lease.credential.proxy == proxy
        assert SECRET not in repr(lease.credential)
        await pool.aclose()
