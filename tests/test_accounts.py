"""The account pool: sources, proactive and on-demand refresh, login-file sync, failover.

Refresh calls go to a real loopback server (``FakeAuth``); time for cooldowns is a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ki2api.kiro.accounts.credentials import (
    AccountSpec,
    Credential,
    CredentialError,
    mask_secret,
    parse_pasted_token,
)
from ki2api.kiro.accounts.pool import NO_ACCOUNT_NOW, AccountPool
from ki2api.model.errors import (
    AccountsCoolingDown,
    ModelCapacity,
    NoHealthyAccount,
    NotConfigured,
    QuotaExceeded,
    TokenExpired,
    UpstreamAuthFailed,
    UpstreamThrottled,
    UpstreamUnavailable,
)
from ki2api.settings import Settings
from tests.servers import ServerThread
from tests.test_refresh import FakeAuth, auth_settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def auth() -> Iterator[tuple[FakeAuth, str]]:
    fake = FakeAuth()
    with ServerThread(fake.app()) as server:
        yield fake, server.url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat().replace("+00:00", "Z")


EXPIRED = timedelta(minutes=-5)
FRESH = timedelta(hours=1)


def account(
    label: str, *, at: str | None = None, rt: str | None = None, **extra: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {"label": label, "expiresAt": iso(extra.pop("expires", FRESH))}
    if at:
        data["accessToken"] = at
    if rt:
        data["refreshToken"] = rt
    data.update(extra)
    return data


def pool_of(
    settings: Settings, http: httpx.AsyncClient, *accounts: dict[str, Any], **kw: Any
) -> AccountPool:
    if accounts:
        settings = settings.replace(kiro_accounts=orjson.dumps(list(accounts)).decode())
    return AccountPool.from_settings(settings, http, **kw)


def login_file(path: Path, **fields: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "accessToken": "access-token-file-0001",
        "refreshToken": "refresh-token-file-0001",
        "expiresAt": iso(FRESH),
        "authMethod": "social",
        "provider": "Github",
        "unknownField": [1, 2, 3],
    }
    data.update(fields)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    path.chmod(0o600)
    return path


# --- sources ------------------------------------------------------------------------------------


async def test_no_credentials_at_all_says_how_to_configure(http, tmp_path):
    pool = AccountPool.from_settings(Settings(kiro_token_file=tmp_path / "absent.json"), http)
    with pytest.raises(NotConfigured) as info:
        await pool.acquire()
    for hint in ("KIRO_ACCESS_TOKEN", "KIRO_REFRESH_TOKEN", "KIRO_TOKEN_FILE", "KIRO_ACCOUNTS"):
        assert hint in info.value.message
    assert "log in to Kiro" in info.value.message
    # API clients and the page's visitors see this: the file is named, its folder is not.
    assert "absent.json" in info.value.message and str(tmp_path) not in info.value.message
    assert pool.usable_count() == 0 and pool.snapshot() == []


async def test_every_source_is_labelled(http, tmp_path):
    token_file = login_file(tmp_path / ".aws/sso/cache/kiro-auth-token.json")
    other_file = login_file(
        tmp_path / "other.json", accessToken="access-other-0001", refreshToken="refresh-other-0001"
    )
    accounts_file = tmp_path / "accounts.json"
    accounts_file.write_bytes(
        orjson.dumps(
            [
                {"label": "work", "refreshToken": "refresh-work-00001"},
                {"apiKey": "ksk_0123456789abcdef"},
                {"tokenFile": str(other_file), "label": "laptop"},
                {"refreshToken": "refresh-env-000001"},  # the same account as env: skipped
                {"nothing": "useful"},
            ]
        )
    )
    settings = Settings.from_env(
        {
            "HOME": str(tmp_path),
            "KIRO_REFRESH_TOKEN": "refresh-env-000001",
            "KIRO_ACCOUNTS": str(accounts_file),
        }
    )
    assert settings.kiro_token_file == token_file
    pool = AccountPool.from_settings(settings, http)
    rows = {s.label: s for s in pool.snapshot()}
    assert list(rows) == ["env", "work", "account-2", "laptop", "kiro-login"]
    assert rows["env"].source == "env"
    assert rows["work"].source == f"{accounts_file}[0]"
    assert rows["account-2"].auth_method == "api_key" and not rows["account-2"].can_refresh
    assert rows["laptop"].source == f"file:{other_file}"
    assert rows["kiro-login"].source == f"file:{token_file}"
    assert len(pool.problems) == 1 and "[4]" in pool.problems[0]


async def test_kiro_accounts_inline_json_and_bad_json(http, tmp_path):
    settings = Settings(
        kiro_token_file=tmp_path / "absent.json",
        kiro_accounts='[{"accessToken": "access-inline-0001", "region": "eu-central-1"}]',
    )
    pool = AccountPool.from_settings(settings, http)
    lease = await pool.acquire()
    assert lease.credential.region == "eu-central-1"
    assert lease.credential.label == "account-1"

    broken = Settings(kiro_token_file=tmp_path / "absent.json", kiro_accounts='[{"a": "sk-')
    pool = AccountPool.from_settings(broken, http)
    assert "not valid JSON" in pool.problems[0] and "sk-" not in pool.problems[0]
    with pytest.raises(NotConfigured):
        await pool.acquire()


async def test_api_key_account_is_never_refreshed(auth, http, tmp_path):
    fake, url = auth
    settings = auth_settings(url, kiro_access_token="ksk_live_key_000000000001")
    pool = AccountPool.from_settings(settings, http)
    lease = await pool.acquire()
    assert lease.credential.is_api_key
    assert await lease.token_rejected() is None
    assert fake.calls == []
    assert pool.snapshot()[0].state == "needs_login"


async def test_profile_arn_precedence(http, tmp_path):
    settings = Settings(
        kiro_token_file=tmp_path / "absent.json",
        kiro_profile_arn="arn:aws:codewhisperer:us-east-1:2:profile/CONFIGURED",
    )
    pool = pool_of(
        settings,
        http,
        account("own", at="access-own-000001", profileArn="arn:own"),
        account("configured", at="access-cfg-000001"),
        strategy="first",
    )
    assert (await pool.acquire()).credential.profile_arn == "arn:own"
    lease = await pool.acquire(exclude=frozenset({"own"}))
    assert (lease.credential.profile_arn or "").endswith("/CONFIGURED")


async def test_a_login_made_after_start_up_is_picked_up(auth, http, tmp_path):
    settings = Settings.from_env({"HOME": str(tmp_path)})
    pool = AccountPool.from_settings(settings, http)
    with pytest.raises(NotConfigured):
        await pool.acquire()
    login_file(settings.kiro_token_file)
    lease = await pool.acquire()
    assert lease.credential.access_token == "access-token-file-0001"
    assert lease.credential.label == "kiro-login"


async def test_explicit_token_file_that_does_not_exist_yet(http, tmp_path):
    path = tmp_path / "later.json"
    settings = Settings.from_env({"HOME": str(tmp_path), "KIRO_TOKEN_FILE": str(path)})
    pool = AccountPool.from_settings(settings, http)
    (row,) = pool.snapshot()
    assert row.state == "needs_login" and "no Kiro login file" in (row.reason or "")
    with pytest.raises(NoHealthyAccount):
        await pool.acquire()
    login_file(path)
    assert (await pool.acquire()).credential.access_token == "access-token-file-0001"


# --- refresh ------------------------------------------------------------------------------------


async def test_expired_file_token_is_refreshed_and_rotation_written_back(auth, http, tmp_path):
    fake, url = auth
    fake.valid.add("refresh-token-file-0001")
    fake.rotate = True
    path = login_file(tmp_path / "kiro-auth-token.json", expiresAt=iso(EXPIRED))
    pool = AccountPool.from_settings(auth_settings(url, kiro_token_file=path), http)
    lease = await pool.acquire()
    assert lease.credential.access_token == "access-token-issued-0001-xyz"
    saved = orjson.loads(path.read_bytes())
    assert saved["accessToken"] == "access-token-issued-0001-xyz"
    assert saved["refreshToken"] == "refresh-token-rotated-0001-xyz"
    assert saved["unknownField"] == [1, 2, 3] and saved["provider"] == "Github"
    assert datetime.fromisoformat(saved["expiresAt"]) > datetime.now(UTC) + timedelta(minutes=55)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # The next refresh uses the rotated token (the old one is dead on the fake server).
    assert await lease.token_rejected() is not None
    assert fake.calls[-1]["body"] == {"refreshToken": "refresh-token-rotated-0001-xyz"}


async def test_token_near_expiry_is_refreshed_before_use(auth, http, tmp_path):
    fake, url = auth
    fake.valid.add("refresh-near-000001")
    settings = auth_settings(url, kiro_token_file=tmp_path / "absent.json")
    near = account(
        "a", at="access-near-000001", rt="refresh-near-000001", expires=timedelta(minutes=2)
    )
    pool = pool_of(settings, http, near)
    assert (await pool.acquire()).credential.access_token == "access-token-issued-0001-xyz"
    assert len(fake.calls) == 1
    await pool.acquire()
    assert len(fake.calls) == 1  # fresh now: no second call


async def test_50_concurrent_requests_with_an_expired_token_refresh_once(auth, http, tmp_path):
    fake, url = auth
    fake.valid.add("refresh-conc-000001")
    fake.delay = 0.2  # every request arrives while the refresh is in flight
    settings = auth_settings(url, kiro_token_file=tmp_path / "absent.json")
    pool = pool_of(
        settings,
        http,
        account("a", rt="refresh-conc-000001", at="access-old-00001", expires=EXPIRED),
    )

    async def one() -> Credential:
        lease = await pool.acquire()
        lease.succeeded()
        return lease.credential

    results = await asyncio.gather(*(one() for _ in range(50)))
    assert len(fake.calls) == 1
    assert {c.access_token for c in results} == {"access-token-issued-0001-xyz"}


async def test_50_concurrent_token_rejected_refresh_once(auth, http, tmp_path):
    fake, url = auth
    fake.valid.add("refresh-conc-000002")
    fake.delay = 0.2
    settings = auth_settings(url, kiro_token_file=tmp_path / "absent.json")
    # expiresAt says fresh, but the service refuses the token (revoked, or refreshed elsewhere).
    pool = pool_of(settings, http, account("a", rt="refresh-conc-000002", at="access-old-00002"))
    leases = [await pool.acquire() for _ in range(50)]
    assert all(le.credential.access_token == "access-old-00002" for le in leases)
    results = await asyncio.gather(*(le.token_rejected() for le in leases))
    assert len(fake.calls) == 1
    assert {c.access_token for c in results if c} == {"access-token-issued-0001-xyz"}
    assert all(c is not None for c in results)
    assert all(le.credential.access_token == "access-token-issued-0001-xyz" for le in leases)


async def test_a_cancelled_waiter_does_not_abort_the_shared_refresh(auth, http, tmp_path):
    fake, url = auth
    fake.valid.add("refresh-canc-000001")
    fake.delay = 0.3
    settings = auth_settings(url, kiro_token_file=tmp_path / "absent.json")
    pool = pool_of(settings, http, account("a", rt="refresh-canc-000001", expires=EXPIRED))
    first = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.1)
    first.cancel()  # the client who triggered the refresh went away
    second = await pool.acquire()
    assert second.credential.access_token == "access-token-issued-0001-xyz"
    assert len(fake.calls) == 1


async def test_invalid_grant_means_needs_login_and_is_never_retried(auth, http, tmp_path):
    fake, url = auth
    settings = auth_settings(url, kiro_token_file=tmp_path / "absent.json")
    pool = pool_of(settings, http, account("a", rt="refresh-dead-000001", expires=EXPIRED))
    with pytest.raises(NoHealthyAccount) as info:
        await pool.acquire()
    assert info.value.retry_after is None
    assert "needs login" in info.value.message and "Log in to Kiro again" in info.value.message
    with pytest.raises(NoHealthyAccount):
        await pool.acquire()
    assert len(fake.calls) == 1
    (row,) = pool.snapshot()
    assert row.state == "needs_login" and row.errors == 1


async def test_rejected_token_without_refresh_token_needs_login(http, tmp_path):
    settings = Settings(kiro_token_file=tmp_path / "a.json", kiro_access_token="access-only-00001")
    pool = AccountPool.from_settings(settings, http)
    lease = await pool.acquire()
    assert await lease.token_rejected() is None
    # The gateway then reports UpstreamAuthFailed on the lease: the state stays "needs login".
    lease.failed(UpstreamAuthFailed("refreshing the account's token did not help"))
    assert pool.snapshot()[0].state == "needs_login"


async def test_refresh_outage_with_a_still_valid_token_keeps_serving(http, tmp_path):
    settings = auth_settings("http://127.0.0.1:9", kiro_token_file=tmp_path / "absent.json")
    near = account(
        "a", at="access-valid-00001", rt="refresh-x-0000001", expires=timedelta(minutes=3)
    )
    clock = FakeClock()
    pool = pool_of(settings, http, near, clock=clock)
    for _ in range(3):  # one failed attempt, then a pause before the next
        assert (await pool.acquire()).credential.access_token == "access-valid-00001"
    (row,) = pool.snapshot()
    assert row.state == "healthy" and row.errors == 1
    clock.advance(16)
    await pool.acquire()
    assert pool.snapshot()[0].errors == 2  # tried again after the pause


async def test_refresh_outage_with_an_expired_token_is_a_short_cooldown(http, tmp_path):
    clock = FakeClock()
    settings = auth_settings("http://127.0.0.1:9", kiro_token_file=tmp_path / "absent.json")
    pool = pool_of(
        settings, http, account("a", rt="refresh-x-0000002", expires=EXPIRED), clock=clock
    )
    with pytest.raises(NoHealthyAccount) as info:
        await pool.acquire()
    assert info.value.retry_after == pytest.approx(15.0)
    assert "refresh failed" in info.value.message
    (row,) = pool.snapshot()
    assert row.state == "cooling_down"


async def test_token_rejected_on_an_expired_token_that_cannot_be_refreshed(auth, http, tmp_path):
    fake, url = auth
    fake.status = 503
    settings = auth_settings(url, kiro_token_file=tmp_path / "absent.json")
    pool = pool_of(settings, http, account("a", at="access-a-0000001", rt="refresh-a-000001"))
    lease = await pool.acquire()
    assert await lease.token_rejected() is None
    lease.failed(UpstreamAuthFailed("refreshing did not help"))
    (row,) = pool.snapshot()
    assert row.state == "cooling_down"  # a refresh outage is not a suspension


# --- the login file and other programs ---------------------------------------------------------


async def test_file_changed_by_another_program_is_picked_up(auth, http, tmp_path):
    fake, url = auth
    path = login_file(tmp_path / "kiro-auth-token.json")
    pool = AccountPool.from_settings(auth_settings(url, kiro_token_file=path), http)
    assert (await pool.acquire()).credential.access_token == "access-token-file-0001"
    login_file(path, accessToken="access-by-the-ide-0002", refreshToken="refresh-by-ide-0002")
    lease = await pool.acquire()
    assert lease.credential.access_token == "access-by-the-ide-0002"
    assert fake.calls == []


async def test_token_rejected_rereads_the_file_before_refreshing(auth, http, tmp_path, monkeypatch):
    fake, url = auth
    path = login_file(tmp_path / "kiro-auth-token.json")
    pool = AccountPool.from_settings(auth_settings(url, kiro_token_file=path), http)
    lease = await pool.acquire()
    stat = path.stat()
    # The IDE refreshed; same size and mtime, so only the contents tell.
    login_file(path, accessToken="access-token-file-0002")
    import os

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    new = await lease.token_rejected()
    assert new is not None and new.access_token == "access-token-file-0002"
    assert fake.calls == []


async def test_a_new_login_revives_an_account_that_needed_one(auth, http, tmp_path):
    fake, url = auth
    path = login_file(tmp_path / "kiro-auth-token.json", expiresAt=iso(EXPIRED))
    pool = AccountPool.from_settings(auth_settings(url, kiro_token_file=path), http)
    with pytest.raises(NoHealthyAccount):
        await pool.acquire()  # invalid_grant
    assert pool.snapshot()[0].state == "needs_login"
    login_file(path, accessToken="access-after-login-1", refreshToken="refresh-after-login1")
    assert (await pool.acquire()).credential.access_token == "access-after-login-1"
    assert pool.snapshot()[0].state == "healthy"


async def test_invalid_grant_after_the_ide_rotated_the_refresh_token(auth, http, tmp_path):
    fake, url = auth
    path = login_file(tmp_path / "kiro-auth-token.json", expiresAt=iso(EXPIRED))
    pool = AccountPool.from_settings(auth_settings(url, kiro_token_file=path), http)
    lease_task = asyncio.create_task(pool.acquire())
    # Meanwhile the IDE refreshes (rotating the refresh token) and writes the file.
    fake.valid.add("refresh-rotated-by-ide")
    login_file(path, accessToken="access-by-the-ide-0009", refreshToken="refresh-rotated-by-ide")
    lease = await lease_task
    assert lease.credential.access_token == "access-by-the-ide-0009"
    assert pool.snapshot()[0].state == "healthy"


# --- failover -----------------------------------------------------------------------------------


def two_accounts(http: httpx.AsyncClient, tmp_path: Path, clock: FakeClock) -> AccountPool:
    settings = Settings(kiro_token_file=tmp_path / "absent.json")
    return pool_of(
        settings,
        http,
        account("a", at="access-a-00000001"),
        account("b", at="access-b-00000001"),
        strategy="first",
        clock=clock,
    )


async def test_quota_takes_an_account_out_until_its_reset(http, tmp_path):
    clock = FakeClock()
    pool = two_accounts(http, tmp_path, clock)
    lease = await pool.acquire()
    assert lease.credential.label == "a"
    lease.failed(QuotaExceeded("used up", retry_after=600))
    for _ in range(3):
        assert (await pool.acquire()).credential.label == "b"
    row = {s.label: s for s in pool.snapshot()}["a"]
    assert (row.state, row.cause, row.reason) == ("cooling_down", "quota", "used up")
    assert "cooling down until" in row.description and "(quota: used up)" in row.description
    clock.advance(601)
    assert (await pool.acquire()).credential.label == "a"


async def test_quota_without_retry_after_uses_the_default(http, tmp_path):
    clock = FakeClock()
    pool = two_accounts(http, tmp_path, clock)
    (await pool.acquire()).failed(QuotaExceeded("used up"))
    clock.advance(3599)
    assert (await pool.acquire()).credential.label == "b"
    clock.advance(2)
    assert (await pool.acquire()).credential.label == "a"


async def test_suspension_disables_with_the_reason(http, tmp_path):
    clock = FakeClock()
    pool = two_accounts(http, tmp_path, clock)
    (await pool.acquire()).failed(UpstreamAuthFailed("Kiro refused the account: suspended"))
    clock.advance(10**6)
    assert (await pool.acquire()).credential.label == "b"
    row = {s.label: s for s in pool.snapshot()}["a"]
    assert row.state == "disabled" and row.description == (
        "disabled: Kiro refused the account: suspended"
    )
    assert pool.usable_count() == 1


async def test_throttling_backs_off_only_when_it_repeats_and_then_doubles(http, tmp_path):
    clock = FakeClock()
    pool = two_accounts(http, tmp_path, clock)
    (await pool.acquire()).failed(UpstreamThrottled("slow down"))
    assert (await pool.acquire()).credential.label == "a"  # one throttle cools nothing
    (await pool.acquire()).failed(UpstreamThrottled("slow down"))  # the second in a row: 1 s
    assert (await pool.acquire()).credential.label == "b"
    clock.advance(1.01)
    lease = await pool.acquire()
    assert lease.credential.label == "a"
    lease.failed(UpstreamThrottled("slow down"))
    clock.advance(1.01)
    assert (await pool.acquire()).credential.label == "b"  # 2 s the third time
    clock.advance(1.0)
    lease = await pool.acquire()
    assert lease.credential.label == "a"
    lease.succeeded()  # the streak resets
    (await pool.acquire()).failed(UpstreamThrottled("slow down"))
    assert (await pool.acquire()).credential.label == "a"
    clock.advance(61)  # a minute later it is not "in a row" any more
    (await pool.acquire()).failed(UpstreamThrottled("slow down"))
    assert (await pool.acquire()).credential.label == "a"
    (await pool.acquire()).failed(UpstreamThrottled("slow down", retry_after=5))
    clock.advance(4.9)  # Kiro's Retry-After is honoured even the first time
    assert (await pool.acquire()).credential.label == "b"
    clock.advance(0.2)
    assert (await pool.acquire()).credential.label == "a"


async def test_throttles_answered_during_a_cooldown_do_not_lengthen_it(http, tmp_path):
    clock = FakeClock()
    pool = two_accounts(http, tmp_path, clock)
    leases = [await pool.acquire(exclude=frozenset({"b"})) for _ in range(7)]  # sent at once
    for lease in leases[:6]:
        lease.failed(UpstreamThrottled("slow down"))
    clock.advance(1.01)  # the second throttle cooled 1 s; the four after it changed nothing
    assert (await pool.acquire()).credential.label == "a"
    (await pool.acquire()).failed(UpstreamThrottled("slow down"))  # the third in a row: 2 s
    leases[6].failed(UpstreamThrottled("slow down", retry_after=10))  # but Kiro says 10 s
    clock.advance(9.9)
    assert (await pool.acquire()).credential.label == "b"
    clock.advance(0.2)
    assert (await pool.acquire()).credential.label == "a"


async def test_model_capacity_cools_that_model_only(http, tmp_path):
    clock = FakeClock()
    pool = two_accounts(http, tmp_path, clock)
    lease = await pool.acquire(model="m1")
    lease.failed(ModelCapacity("no capacity (Kiro 429 INSUFFICIENT_MODEL_CAPACITY)"))
    assert (await pool.acquire(model="m2")).credential.label == "a"
    assert (await pool.acquire(model="m1")).credential.label == "b"
    [cooldown] = pool.snapshot()[0].cooldowns
    assert (cooldown.model, cooldown.cause) == ("m1", "capacity")
    assert "INSUFFICIENT_MODEL_CAPACITY" in cooldown.reason
    assert pool.snapshot()[0].state == "healthy"
    clock.advance(0.51)
    assert (await pool.acquire(model="m1")).credential.label == "a"
    assert pool.snapshot()[0].cooldowns == ()


async def test_server_errors_are_only_counted(http, tmp_path):
    pool = two_accounts(http, tmp_path, FakeClock())
    (await pool.acquire()).failed(UpstreamUnavailable("Kiro is temporarily unavailable"))
    assert (await pool.acquire()).credential.label == "a"
    row = pool.snapshot()[0]
    assert (row.state, row.errors, row.requests) == ("healthy", 1, 2)
    assert row.last_error == "Kiro is temporarily unavailable"


async def test_expired_token_error_marks_the_token_for_refresh(auth, http, tmp_path):
    fake, url = auth
    fake.valid.add("refresh-susp-000001")
    settings = auth_settings(url, kiro_token_file=tmp_path / "absent.json")
    pool = pool_of(settings, http, account("a", at="access-susp-00001", rt="refresh-susp-000001"))
    (await pool.acquire()).failed(TokenExpired("The Kiro access token has expired"))
    assert pool.snapshot()[0].state == "healthy"  # not disabled
    assert (await pool.acquire()).credential.access_token == "access-token-issued-0001-xyz"


async def test_all_accounts_down_is_immediate_with_retry_after(http, tmp_path):
    clock = FakeClock()
    pool = two_accounts(http, tmp_path, clock)
    (await pool.acquire()).failed(QuotaExceeded("used up", retry_after=120))
    (await pool.acquire()).failed(UpstreamThrottled("slow", retry_after=7))
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(AccountsCoolingDown) as info:  # the first way out is the throttle's end
        await pool.acquire()
    assert loop.time() - start < 0.05
    assert info.value.retry_after == pytest.approx(7.0) and info.value.status == 429
    assert "a: cooling down for 120 s more (quota: used up)" in info.value.message
    assert "b: cooling down for 7 s more (rate limit: slow)" in info.value.message
    assert pool.usable_count() == 0
    clock.advance(8)
    (await pool.acquire()).failed(UpstreamAuthFailed("suspended"))
    with pytest.raises(QuotaExceeded) as quota:
        await pool.acquire()
    assert quota.value.retry_after == pytest.approx(112.0) and quota.value.status == 429
    assert "b: disabled: suspended" in quota.value.message


async def test_excluded_accounts_are_skipped(http, tmp_path):
    pool = two_accounts(http, tmp_path, FakeClock())
    assert (await pool.acquire(exclude=frozenset({"a"}))).credential.label == "b"
    with pytest.raises(NoHealthyAccount) as info:
        await pool.acquire(exclude=frozenset({"a", "b"}))
    assert "already tried" in info.value.message and info.value.retry_after is None


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("lru", "abcabc"), ("round_robin", "abcabc"), ("first", "aaaaaa")],
)
async def test_strategies(http, tmp_path, strategy, expected):
    clock = FakeClock()
    settings = Settings(kiro_token_file=tmp_path / "absent.json")
    pool = pool_of(
        settings,
        http,
        *(account(x, at=f"access-{x}-000001") for x in "abc"),
        strategy=strategy,
        clock=clock,
    )
    got = ""
    for _ in range(6):
        clock.advance(1)
        got += (await pool.acquire()).credential.label
    assert got == expected


async def test_strategy_from_the_environment(http):
    settings = Settings.from_env({"KIRO_POOL_STRATEGY": "Round_Robin"})
    assert AccountPool.from_settings(settings, http).strategy == "round_robin"


# --- one-off credentials -----------------------------------------------------------------------


async def test_ephemeral_lease_refreshes_in_memory_only(auth, http, tmp_path):
    fake, url = auth
    fake.valid.add("refresh-pasted-00001")
    fake.rotate = True
    path = login_file(tmp_path / "kiro-auth-token.json")
    before = path.read_bytes()
    settings = auth_settings(url, kiro_token_file=path)
    pool = AccountPool.from_settings(settings, http)
    pasted = orjson.dumps(
        {"refreshToken": "refresh-pasted-00001", "expiresAt": iso(EXPIRED), "tokenFile": str(path)}
    ).decode()
    spec = parse_pasted_token(pasted, settings)
    assert spec.token_file is None  # a visitor cannot make the server read or write files
    lease = await pool.ephemeral_lease(spec)
    assert lease.credential.access_token == "access-token-issued-0001-xyz"
    assert lease.spec.refresh_token == "refresh-token-rotated-0001-xyz"  # for the session
    assert path.read_bytes() == before
    assert [s.label for s in pool.snapshot()] == ["kiro-login"]  # not added to the pool


async def test_ephemeral_lease_from_text(http):
    pool = AccountPool.from_settings(Settings(), http)
    lease = await pool.ephemeral_lease("ksk_pasted_api_key_0001")
    assert lease.credential.is_api_key and lease.credential.label == "session"


def test_pasted_token_shapes():
    settings = Settings()
    assert parse_pasted_token("ksk_abcdefghijkl", settings).auth_method == "api_key"
    assert parse_pasted_token("aorAAAAAGaaa", settings).refresh_token == "aorAAAAAGaaa"
    assert parse_pasted_token("aoaAAAAAGaaa", settings).access_token == "aoaAAAAAGaaa"
    for bad in ("", "two words", "{oops", "[1]", '{"provider": "x"}'):
        with pytest.raises(ValueError) as info:
            parse_pasted_token(bad, settings)
        assert "oops" not in str(info.value)


@pytest.mark.parametrize(
    "times",
    [
        {"expiresAt": 99999999999999999},  # year 3,170,843
        {"expiresAt": -99999999999999999},
        {"expiresAt": "99999-01-01T00:00:00Z"},
        {"expiresIn": 1e300},  # past what a timedelta holds
        {"expiresIn": 1e15},  # a timedelta, but now + it is past year 9999
    ],
)
def test_a_time_no_datetime_can_hold_is_a_credential_error(times: dict[str, Any]) -> None:
    """A pasted login (the page's own-token box: anyone may paste) or one added through the
    admin API whose expiry no datetime can hold is refused as bad input, not a crash."""
    text = orjson.dumps({"accessToken": "aoaAAAAAGaaa", **times}).decode()
    with pytest.raises(CredentialError):
        parse_pasted_token(text, Settings())


# --- secrets stay secret ------------------------------------------------------------------------


async def test_no_token_in_logs_reprs_or_snapshots(auth, http, tmp_path, caplog):
    fake, url = auth
    secrets = [
        "refresh-token-file-0001",
        "access-token-file-0001",
        "access-token-issued-0001-xyz",
        "refresh-token-rotated-0001-xyz",
        "access-token-issued-0002-xyz",
        "refresh-token-rotated-0002-xyz",
        "refresh-dead-secret-9999",
        "ksk_secret_key_999999999",
    ]
    fake.valid.add("refresh-token-file-0001")
    fake.rotate = True
    caplog.set_level(logging.DEBUG)
    path = login_file(tmp_path / "kiro-auth-token.json", expiresAt=iso(EXPIRED))
    settings = auth_settings(
        url,
        kiro_token_file=path,
        kiro_accounts=orjson.dumps(
            [
                {"label": "dead", "refreshToken": "refresh-dead-secret-9999"},
                {"label": "key", "apiKey": "ksk_secret_key_999999999"},
            ]
        ).decode(),
    )
    pool = AccountPool.from_settings(settings, http, strategy="first")
    await pool.start()
    seen = []
    for _ in range(3):
        try:
            lease = await pool.acquire()
        except NO_ACCOUNT_NOW as exc:
            seen.append(exc.message)
            break
        seen += [repr(lease), str(lease.credential), repr(lease.spec)]
        await lease.token_rejected()
        lease.failed(QuotaExceeded("used up"))
    else:
        raise AssertionError("the pool should have run out of accounts")
    seen += [repr(s) for s in pool.snapshot()]
    seen += [orjson.dumps([s.to_dict() for s in pool.snapshot()]).decode()]
    text = "\n".join(seen + [r.getMessage() for r in caplog.records])
    assert len(fake.calls) == 3  # the dead refresh, the proactive one, the one after rejection
    for secret in secrets:
        assert secret not in text, secret
    assert mask_secret("access-token-issued-0002-xyz") in text


def test_mask_secret():
    assert mask_secret("abcdefghijklmnop") == "…mnop"
    assert mask_secret("short") == "…"
    assert mask_secret(None) == ""
    spec = AccountSpec(label="x", source="t", auth_method="social", access_token="t" * 30)
    assert "t" * 8 not in repr(spec)


# --- more ways the field goes wrong -------------------------------------------------------------


async def test_an_older_login_saved_by_another_program_does_not_replace_ours(auth, http, tmp_path):
    fake, url = auth
    fake.valid.add("refresh-token-file-0001")
    fake.rotate = True
    path = login_file(tmp_path / "kiro-auth-token.json", expiresAt=iso(EXPIRED))
    pool = AccountPool.from_settings(auth_settings(url, kiro_token_file=path), http)
    assert (await pool.acquire()).credential.access_token == "access-token-issued-0001-xyz"
    # The IDE, unaware of our refresh, saves the login it had (older expiry, dead refresh token).
    login_file(path, expiresAt=iso(timedelta(minutes=20)))
    lease = await pool.acquire()
    assert lease.credential.access_token == "access-token-issued-0001-xyz"
    assert pool.snapshot()[0].state == "healthy"


async def test_after_a_failed_refresh_more_rejections_do_not_hammer_the_endpoint(
    auth, http, tmp_path
):
    fake, url = auth
    fake.valid.add("refresh-hammer-0001")
    settings = auth_settings(url, kiro_token_file=tmp_path / "absent.json")
    pool = pool_of(settings, http, account("a", at="access-hammer-001", rt="refresh-hammer-0001"))
    first, late = await pool.acquire(), await pool.acquire()
    fake.status = 503
    assert await first.token_rejected() is None
    assert await late.token_rejected() is None  # arrives after the failure: no second call
    assert len(fake.calls) == 1


async def test_a_broken_login_file_is_reported_once_not_per_request(auth, http, tmp_path, caplog):
    _fake, url = auth
    path = login_file(tmp_path / "kiro-auth-token.json")
    settings = auth_settings(url, kiro_token_file=path, kiro_access_token="access-env-0000001")
    pool = AccountPool.from_settings(settings, http, strategy="first")
    path.write_bytes(b'{"accessToken": "half-writ')
    caplog.set_level(logging.WARNING, logger="ki2api.accounts")
    for _ in range(5):  # meanwhile the tokens read before keep serving
        lease = await pool.acquire(exclude=frozenset({"env"}))
        assert lease.credential.access_token == "access-token-file-0001"
    assert sum("cannot use" in r.getMessage() for r in caplog.records) == 1
    assert "half-writ" not in caplog.text
    login_file(path, accessToken="access-repaired-0001")
    lease = await pool.acquire(exclude=frozenset({"env"}))
    assert lease.credential.access_token == "access-repaired-0001"


async def test_shutdown_lets_a_refresh_in_flight_save_its_rotated_token(auth, http, tmp_path):
    fake, url = auth
    fake.valid.add("refresh-token-file-0001")
    fake.rotate = True
    fake.delay = 0.3
    path = login_file(tmp_path / "kiro-auth-token.json", expiresAt=iso(EXPIRED))
    pool = AccountPool.from_settings(auth_settings(url, kiro_token_file=path), http)
    request = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.1)
    request.cancel()  # the server is shutting down: requests are cancelled first
    await pool.aclose()
    assert orjson.loads(path.read_bytes())["refreshToken"] == "refresh-token-rotated-0001-xyz"


async def test_removing_an_account_while_it_refreshes(auth, http, tmp_path):
    fake, url = auth
    fake.valid.add("refresh-remove-0001")
    fake.delay = 0.2
    settings = auth_settings(url, kiro_token_file=tmp_path / "absent.json")
    pool = pool_of(settings, http, account("a", rt="refresh-remove-0001", expires=EXPIRED))
    request = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.05)
    pool.remove_account("a")
    lease = await request  # the request that was already waiting still gets its token
    assert lease.credential.access_token == "access-token-issued-0001-xyz"
    with pytest.raises(NotConfigured):
        await pool.acquire()
    await pool.aclose()


async def test_a_rotated_refresh_token_from_a_secret_is_flagged(auth, http, tmp_path, caplog):
    fake, url = auth
    fake.valid.add("refresh-secret-00001")
    fake.rotate = True
    caplog.set_level(logging.WARNING, logger="ki2api.accounts")
    settings = auth_settings(
        url, kiro_token_file=tmp_path / "absent.json", kiro_refresh_token="refresh-secret-00001"
    )
    pool = AccountPool.from_settings(settings, http)
    lease = await pool.acquire()
    assert await lease.token_rejected() is not None  # a second rotation: still one warning
    (warning,) = [r.getMessage() for r in caplog.records if "rotated" in r.getMessage()]
    assert "account env" in warning and "KIRO_TOKEN_FILE" in warning
    assert "refresh-token-rotated" not in caplog.text


async def test_a_failed_manual_refresh_leaves_a_valid_token_in_service(http, tmp_path):
    settings = auth_settings("http://127.0.0.1:9", kiro_token_file=tmp_path / "absent.json")
    pool = pool_of(settings, http, account("a", at="access-manual-0001", rt="refresh-manual-001"))
    with pytest.raises(UpstreamUnavailable):
        await pool.refresh_account("a")
    assert pool.snapshot()[0].state == "healthy"
    assert (await pool.acquire()).credential.access_token == "access-manual-0001"
