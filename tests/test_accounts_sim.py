"""Accounts end to end: the real gateway, the pool and the Kiro simulator's chat and refresh
endpoints (issue 3's acceptance). Tokens are the simulator's; the login files live in tmp."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ki2api.kiro.accounts.pool import AccountPool
from ki2api.kiro.http.client import KiroClient, UpstreamHttp
from ki2api.kiro.wire.models import ModelCatalog
from ki2api.model.errors import NoHealthyAccount, QuotaExceeded, UpstreamAuthFailed
from ki2api.model.request import ChatRequest, Message, TextPart
from ki2api.pipeline.gateway import Gateway, collect
from ki2api.settings import Settings
from ki2api.simulator import SimulatorServer
from ki2api.simulator.faults import get_fault


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        server.state.require_known_tokens = True
        yield server


@pytest.fixture
async def http() -> AsyncIterator[UpstreamHttp]:
    async with UpstreamHttp(Settings()) as upstream:
        yield upstream


def settings_for(sim: SimulatorServer, tmp_path: Path, **kw: Any) -> Settings:
    return Settings(
        kiro_api_url=sim.url + "/generateAssistantResponse",
        kiro_refresh_url=sim.url + "/refreshToken",
        kiro_oidc_url=sim.url + "/token",
        kiro_token_file=kw.pop("kiro_token_file", tmp_path / "kiro-auth-token.json"),
        upstream_attempts=kw.pop("upstream_attempts", 3),
        **kw,
    )


def iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat().replace("+00:00", "Z")


def write_login(path: Path, **fields: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps({"authMethod": "social", "provider": "Github", **fields}))
    path.chmod(0o600)
    return path


def hello() -> ChatRequest:
    return ChatRequest(model="claude-sonnet-4-5", messages=[Message("user", [TextPart("Hello")])])


async def ask(gateway: Gateway) -> str:
    completion = await collect(await gateway.open(hello()))
    return completion.text


def gateway_for(settings: Settings, http: UpstreamHttp, pool: AccountPool) -> Gateway:
    return Gateway(settings, KiroClient(http, settings), pool, ModelCatalog())


async def test_50_requests_on_a_stale_token_refresh_once_and_all_succeed(sim, http, tmp_path):
    state = sim.state
    account = state.add_account(refresh_token="aorSim-refresh-0001", rotate_refresh=True)
    state.expire_access_token(account.access_token)  # the service says stale; expiresAt does not
    state.refresh_latency = 0.2
    path = write_login(
        tmp_path / "kiro-auth-token.json",
        accessToken=account.access_token,
        refreshToken="aorSim-refresh-0001",
        expiresAt=iso(timedelta(hours=1)),
        futureField="kept",
    )
    settings = settings_for(sim, tmp_path, kiro_token_file=path)
    pool = AccountPool.from_settings(settings, http)
    gateway = gateway_for(settings, http, pool)
    texts = await asyncio.gather(*(ask(gateway) for _ in range(50)))
    assert all(texts) and len(texts) == 50
    assert len(state.refresh_calls) == 1
    assert state.refresh_calls[0].body == {"refreshToken": "aorSim-refresh-0001"}
    saved = orjson.loads(path.read_bytes())
    assert saved["refreshToken"] == account.refresh_token != "aorSim-refresh-0001"  # rotated
    assert saved["accessToken"] == account.access_token and saved["futureField"] == "kept"
    assert pool.snapshot()[0].requests == 50


async def test_50_requests_on_an_expired_login_refresh_once_before_sending(sim, http, tmp_path):
    state = sim.state
    state.add_account(refresh_token="aorSim-refresh-0002")
    state.refresh_latency = 0.2
    path = write_login(
        tmp_path / "kiro-auth-token.json",
        accessToken="aoaSim-long-gone-0002",
        refreshToken="aorSim-refresh-0002",
        expiresAt=iso(timedelta(minutes=-1)),
    )
    settings = settings_for(sim, tmp_path, kiro_token_file=path)
    gateway = gateway_for(settings, http, AccountPool.from_settings(settings, http))
    texts = await asyncio.gather(*(ask(gateway) for _ in range(50)))
    assert all(texts)
    assert len(state.refresh_calls) == 1
    assert state.wait_idle()
    assert all(r.status == 200 for r in state.requests)  # nobody sent the expired token


async def test_idc_login_refreshes_with_its_client_file(sim, http, tmp_path):
    state = sim.state
    state.add_account(
        auth="idc",
        refresh_token="aorSim-idc-0001",
        client_id="sim-client-id",
        client_secret="sim-client-secret-0001",
        rotate_refresh=True,
    )
    client_hash = hashlib.sha1(b"sim-client-id").hexdigest()
    folder = tmp_path / "cache"
    write_login(
        folder / "kiro-auth-token.json",
        authMethod="IdC",
        provider="BuilderId",
        accessToken="aoaSim-idc-expired",
        refreshToken="aorSim-idc-0001",
        expiresAt=iso(timedelta(minutes=-1)),
        clientIdHash=client_hash,
        region="us-east-1",
    )
    (folder / f"{client_hash}.json").write_bytes(
        orjson.dumps(
            {
                "clientId": "sim-client-id",
                "clientSecret": "sim-client-secret-0001",
                "expiresAt": iso(timedelta(days=60)),
            }
        )
    )
    settings = settings_for(sim, tmp_path, kiro_token_file=folder / "kiro-auth-token.json")
    gateway = gateway_for(settings, http, AccountPool.from_settings(settings, http))
    assert await ask(gateway)
    (call,) = state.refresh_calls
    assert call.path == "/token" and call.status == 200
    assert call.body == {
        "clientId": "sim-client-id",
        "clientSecret": "sim-client-secret-0001",
        "grantType": "refresh_token",
        "refreshToken": "aorSim-idc-0001",
    }
    saved = orjson.loads((folder / "kiro-auth-token.json").read_bytes())
    assert saved["refreshToken"] != "aorSim-idc-0001" and saved["clientIdHash"] == client_hash


async def test_a_login_refreshed_by_another_program_is_used_without_restart(sim, http, tmp_path):
    state = sim.state
    account = state.add_account(refresh_token="aorSim-refresh-0003", rotate_refresh=True)
    path = write_login(
        tmp_path / "kiro-auth-token.json",
        accessToken=account.access_token,
        refreshToken="aorSim-refresh-0003",
        expiresAt=iso(timedelta(hours=1)),
    )
    settings = settings_for(sim, tmp_path, kiro_token_file=path)
    gateway = gateway_for(settings, http, AccountPool.from_settings(settings, http))
    assert await ask(gateway)
    # The IDE refreshes the same account (rotating the refresh token) and saves its login.
    ide = httpx.post(sim.url + "/refreshToken", json={"refreshToken": "aorSim-refresh-0003"})
    write_login(
        path,
        accessToken=ide.json()["accessToken"],
        refreshToken=ide.json()["refreshToken"],
        expiresAt=iso(timedelta(hours=1)),
    )
    state.expire_access_token(state.accounts.accounts[0].previous_access_tokens[-1])
    state.reset_logs()
    assert await ask(gateway)
    assert state.refresh_calls == []  # picked up from the file, no refresh of our own
    assert state.requests[-1].headers["authorization"] == f"Bearer {ide.json()['accessToken']}"


async def test_revoked_refresh_token_needs_login_and_is_not_retried(sim, http, tmp_path):
    state = sim.state
    account = state.add_account(refresh_token="aorSim-refresh-0004")
    state.expire_access_token(account.access_token)
    state.revoke_refresh_token("aorSim-refresh-0004")
    settings = settings_for(
        sim,
        tmp_path,
        kiro_access_token=account.access_token,
        kiro_refresh_token="aorSim-refresh-0004",
    )
    pool = AccountPool.from_settings(settings, http)
    gateway = gateway_for(settings, http, pool)
    with pytest.raises(UpstreamAuthFailed):
        await ask(gateway)
    assert pool.snapshot()[0].state == "needs_login"
    with pytest.raises(NoHealthyAccount) as info:
        await ask(gateway)
    assert "needs login" in info.value.message
    assert len(state.refresh_calls) == 1


# --- failover in a two-account pool -------------------------------------------------------------


def two_account_pool(
    sim: SimulatorServer, http: httpx.AsyncClient, tmp_path: Path
) -> tuple[Gateway, AccountPool, Any, Any]:
    state = sim.state
    a = state.add_account(label="sim-a", refresh_token="aorSim-a-000001")
    b = state.add_account(label="sim-b", refresh_token="aorSim-b-000001")
    accounts = [
        {"label": "a", "accessToken": a.access_token, "refreshToken": "aorSim-a-000001"},
        {"label": "b", "accessToken": b.access_token, "refreshToken": "aorSim-b-000001"},
    ]
    settings = settings_for(
        sim,
        tmp_path,
        kiro_accounts=orjson.dumps(accounts).decode(),
        kiro_pool_strategy="first",
        kiro_token_file=tmp_path / "none.json",
    )
    pool = AccountPool.from_settings(settings, http)
    return gateway_for(settings, http, pool), pool, a, b


def rows(pool: AccountPool) -> dict[str, Any]:
    return {s.label: s for s in pool.snapshot()}


@pytest.mark.parametrize(
    ("fault", "state"),
    [("quota_exceeded", "cooling_down"), ("suspended", "disabled"), ("throttled", "cooling_down")],
)
async def test_a_failing_account_moves_traffic_to_the_other(sim, http, tmp_path, fault, state):
    gateway, pool, a, _b = two_account_pool(sim, http, tmp_path)
    a.fault = get_fault(fault)
    for _ in range(3):
        assert await ask(gateway)
    assert sim.state.wait_idle()
    assert [r.account for r in sim.state.requests if r.status == 200] == ["sim-b"] * 3
    assert rows(pool)["a"].state == state
    assert rows(pool)["b"].state == "healthy"
    if fault == "suspended":
        assert "suspended" in (rows(pool)["a"].reason or "")


async def test_server_errors_are_retried_and_do_not_take_accounts_out(sim, http, tmp_path):
    gateway, pool, _a, _b = two_account_pool(sim, http, tmp_path)
    sim.state.fail_next(1, "server_error")
    assert await ask(gateway)
    assert sim.state.wait_idle()
    assert [r.status for r in sim.state.requests] == [500, 200]
    assert rows(pool)["a"].state == "healthy" and rows(pool)["a"].errors == 1


async def test_all_accounts_down_fails_immediately_with_retry_after(sim, http, tmp_path):
    gateway, pool, a, b = two_account_pool(sim, http, tmp_path)
    a.fault = get_fault("quota_exceeded")
    b.fault = get_fault("quota_exceeded")
    with pytest.raises(QuotaExceeded):
        await ask(gateway)
    sent = len(sim.state.requests)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(QuotaExceeded) as info:  # Kiro's word for both, 429 insufficient_quota
        await ask(gateway)
    assert loop.time() - started < 0.1
    assert len(sim.state.requests) == sent  # nothing sent upstream
    assert info.value.retry_after is not None and 3500 < info.value.retry_after <= 3600
    assert "used up its quota" in info.value.message
    assert pool.usable_count() == 0


async def test_usage_limits_from_the_simulator(sim, http, tmp_path):
    _gateway, pool, a, _b = two_account_pool(sim, http, tmp_path)
    a.current_usage = 10.0
    usage = await pool.fetch_usage("a")
    assert usage.remaining == pytest.approx(40.0 + 500.0)
    assert usage.subscription == "KIRO FREE" and usage.resets_at is not None
    assert rows(pool)["a"].usage == usage


async def test_no_token_in_any_log_line(sim, http, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    state = sim.state
    gateway, pool, a, b = two_account_pool(sim, http, tmp_path)
    state.expire_access_token(a.access_token)
    b.fault = get_fault("suspended")
    for _ in range(3):
        assert await ask(gateway)
    await pool.fetch_usage("a")
    tokens = {a.access_token, b.access_token, "aorSim-a-000001", "aorSim-b-000001"}
    tokens.update(a.previous_access_tokens)
    assert len(tokens) == 5
    text = "\n".join(r.getMessage() for r in caplog.records)
    text += "\n" + orjson.dumps([s.to_dict() for s in pool.snapshot()]).decode()
    for token in tokens:
        assert token not in text
