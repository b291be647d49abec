"""Client keys, their limits and usage shared through a real ``redis-server``
(:mod:`ki2api.shared.keystore`): each "replica" here is a :class:`RedisStore` on its own link
(tests/test_replicas_keys.py runs whole gateways)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ki2api.settings import Rate
from ki2api.shared import keystore
from ki2api.shared.keystore import RedisStore
from ki2api.shared.link import RedisLink, SharedUnavailable
from ki2api.shared.usage import RedisUsage
from ki2api.store import (
    KeyNameTaken,
    KeyRecord,
    Limits,
    SqliteStore,
    StoredAccount,
    StoreError,
    UsageCounts,
    UsageQuery,
    day_of,
)
from ki2api.teams.keys import key_digest, new_key_id, new_secret
from tests.redis_server import RedisServer
from tests.test_shared import redis_server  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(
    not RedisServer.available(), reason="redis-server is not installed (.ci/run installs it)"
)
MINUTE = Rate(30, 60.0)


def a_key(name: str = "alice", **fields: object) -> KeyRecord:
    secret = new_secret()
    values: dict[str, object] = dict(
        id=new_key_id(),
        name=name,
        digest=key_digest(secret),
        hint=secret[-4:],
        created_at=time.time(),
    )
    values.update(fields)
    return KeyRecord(**values)  # type: ignore[arg-type]


class Replicas:
    """Stores on their own links to one Redis, each with its own SQLite file."""

    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder
        self.stores: list[RedisStore] = []

    async def add(self, n: int = 1, **options: object) -> list[RedisStore]:
        made = []
        for _ in range(n):
            i = len(self.stores)
            link = RedisLink(self.url, replica=f"replica-{i}", ping_every=0.1, replica_ttl=0.5)
            local = SqliteStore(self.folder / f"replica-{i}.db", flush_interval=0.1)
            store = RedisStore(link, local, RedisUsage(link), **options)  # type: ignore[arg-type]
            await store.open()
            assert await link.start()
            self.stores.append(store)
            made.append(store)
        return made

    async def close(self) -> None:
        for store in self.stores:
            await store.aclose()
            await store.link.aclose()


@pytest.fixture
async def replicas(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> AsyncIterator[Replicas]:
    group = Replicas(redis_server.url, tmp_path)
    yield group
    await group.close()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 2.0) -> float:
    """Seconds until ``check()`` holds."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError("did not hold in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@contextlib.contextmanager
def calls_to_redis(store: RedisStore) -> Iterator[list[object]]:
    """The calls ``store`` makes to Redis inside the block."""
    calls: list[object] = []
    real = store.link.call

    async def counting(fn: object) -> object:
        calls.append(fn)
        return await real(fn)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store.link, "call", counting)
        yield calls


# --- accounts: each replica's own, in its file ---------------------------------------------


async def test_accounts_and_their_proxies_stay_in_the_replicas_file_and_its_cli_is_heard(
    replicas: Replicas,
) -> None:
    (store, other) = await replicas.add(2)
    told = asyncio.Event()

    async def listener() -> None:
        told.set()

    store.add_change_listener(listener)
    with calls_to_redis(store) as calls:
        await store.put_account(StoredAccount("a", {"accessToken": "tok-a-1"}, 1.0))
        await store.put_account(
            StoredAccount("a", {"accessToken": "tok-a-2"}, 2.0), existing_only=True
        )
        await store.put_account_proxy("a", "direct")
        await store.put_account_proxy("env", None)
        await store.delete_account_proxy("env")
        assert [a.data for a in await store.load_accounts()] == [{"accessToken": "tok-a-2"}]
        assert await store.load_account_proxies() == {"a": "direct"}
    assert calls == []  # nothing of it in Redis
    assert await other.load_accounts() == [] and await other.load_account_proxies() == {}
    cli = SqliteStore(replicas.folder / "replica-0.db")  # the CLI on this replica's file
    await cli.open()
    try:
        await cli.delete_account("a")  # and the proxy set on it
    finally:
        await cli.aclose()
    await asyncio.wait_for(told.wait(), 5)
    assert await store.load_accounts() == [] and await store.load_account_proxies() == {}


# --- keys -----------------------------------------------------------------------------------


async def test_a_key_made_changed_and_revoked_on_one_replica_is_seen_by_the_others(
    replicas: Replicas,
) -> None:
    a, b, c = await replicas.add(3)
    key = a_key(rpm=30, models=("claude-sonnet-*",), credits_per_day=1.5)
    await a.add_key(key)
    assert await b.find_key(key.digest) == key  # not heard of yet: asked once
    assert await c.list_keys() == [key]

    revoked = replace(key, revoked_at=time.time())
    await a.put_key(revoked)

    async def revoked_everywhere() -> bool:
        found = [await s.find_key(key.digest) for s in (b, c)]
        return all(k is not None and k.revoked_at is not None for k in found)

    assert await eventually(revoked_everywhere) < 1.0


async def test_a_name_is_one_live_keys_across_replicas_and_free_again_once_revoked(
    replicas: Replicas,
) -> None:
    a, b = await replicas.add(2)
    first = a_key("bob")
    await a.add_key(first)
    with pytest.raises(KeyNameTaken):
        await b.add_key(a_key("bob"))
    other = a_key("carol")
    await b.add_key(other)
    with pytest.raises(KeyNameTaken):
        await b.put_key(replace(other, name="bob"))
    await a.put_key(replace(first, revoked_at=time.time()))
    await b.add_key(a_key("bob"))  # the name is free again
    assert sorted(k.name for k in await a.list_keys()) == ["bob", "bob", "carol"]


async def test_last_use_times_reach_redis_and_every_replica(replicas: Replicas) -> None:
    a, b = await replicas.add(2)
    key = a_key()
    await a.add_key(key)
    a.touch_key(key.id, 1234567890.5)
    await asyncio.sleep(0.3)  # a tick or two
    (seen,) = await b.list_keys()
    assert seen.last_used_at == 1234567890.5


async def test_a_replica_starting_without_redis_knows_the_keys_it_last_saw(
    redis_server: RedisServer,  # noqa: F811
    replicas: Replicas,
) -> None:
    (a,) = await replicas.add()
    key = a_key()
    await a.add_key(key)
    await a.list_keys()  # reloaded: the copy in its SQLite file follows
    await a.aclose()
    await a.link.aclose()
    redis_server.stop()

    link = RedisLink(replicas.url, ping_every=0.1)
    again = RedisStore(link, SqliteStore(replicas.folder / "replica-0.db"))
    await again.open()
    try:
        assert not await link.start()
        assert await again.find_key(key.digest) == key
        with pytest.raises(StoreError, match="does not answer"):
            await again.add_key(a_key("dave"))
    finally:
        await again.aclose()
        await link.aclose()


async def test_a_new_redis_gets_the_keys_a_replica_held_in_its_file(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Moving a gateway from SQLite alone to REDIS_URL keeps its keys."""
    local = SqliteStore(tmp_path / "before.db")
    await local.open()
    key = a_key(rpm=5)
    await local.add_key(key)
    await local.aclose()

    link = RedisLink(redis_server.url, ping_every=0.1)
    store = RedisStore(link, SqliteStore(tmp_path / "before.db"))
    await store.open()
    try:
        assert await link.start()
        with redis_server.client() as client:
            assert client.hget(f"ki2api:key:{key.digest}", "rpm") == b"5"
        assert await store.list_keys() == [key]
    finally:
        await store.aclose()
        await link.aclose()


async def test_the_cli_store_says_in_one_sentence_that_redis_is_not_there(tmp_path: Path) -> None:
    from tests.redis_server import free_port

    link = RedisLink(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    store = RedisStore(link, SqliteStore(tmp_path / "cli.db"), owns_link=True, drain=False)
    with pytest.raises(StoreError, match=r"Cannot reach Redis at redis://127\.0\.0\.1:\d+/0"):
        await store.open()


# --- limits ---------------------------------------------------------------------------------


async def test_a_rate_of_30_a_minute_is_30_across_three_replicas(replicas: Replicas) -> None:
    stores = await replicas.add(3)
    limits = Limits(rate=MINUTE)
    now = time.time()

    async def burst(store: RedisStore) -> int:
        return sum([await store.admit("key_r", limits, now) is None for _ in range(30)])

    admitted = await asyncio.gather(*(burst(s) for s in stores))
    assert 30 <= sum(admitted) <= 31
    refusal = await stores[0].admit("key_r", limits, now)
    assert refusal is not None and refusal.limit == "rpm" and 0 < refusal.retry_after <= 2.1


async def test_credits_spent_on_one_replica_close_the_budget_on_every_replica(
    replicas: Replicas,
) -> None:
    a, b, c = await replicas.add(3)
    limits = Limits(rate=MINUTE, credits_per_day=1.0, credits_per_month=10.0)
    now = time.time()
    day = day_of(now)
    assert await b.admit("key_b", limits, now) is None
    a.record_usage(UsageCounts(day, "key_b", "main", requests=1, credits=0.6))
    c.record_usage(UsageCounts(day, "key_b", "main", requests=1, credits=0.5))
    await a.flush()
    await c.flush()
    for store in (a, b, c):
        refusal = await store.admit("key_b", limits, now)
        assert refusal is not None and refusal.limit == "credits_per_day"
        assert refusal.used == pytest.approx(1.1) and refusal.allowed == 1.0
        assert await store.spent("key_b", now) == (pytest.approx(1.1), pytest.approx(1.1))
    # The month's budget counts the same credits.
    month = Limits(credits_per_month=1.0)
    refusal = await b.admit("key_b", month, now)
    assert refusal is not None and refusal.limit == "credits_per_month"


async def test_tokens_used_on_one_replica_count_against_the_tpm_everywhere(
    replicas: Replicas,
) -> None:
    a, b = await replicas.add(2)
    limits = Limits(tpm=1000)
    now = time.time()
    for store in (a, b):
        assert await store.admit("key_t", limits, now) is None
    spent = b.link.changed("spent", "key_t")
    a.record_usage(
        UsageCounts(day_of(now), "key_t", "main", input_tokens=900, output_tokens=400), tpm=1000
    )
    await asyncio.wait_for(spent.wait(), 2)  # past half the tokens: b asks Redis again
    refusal = await b.admit("key_t", limits, now)
    assert refusal is not None and refusal.limit == "tpm"
    assert refusal.retry_after == pytest.approx((1 + 300) / (1000 / 60), rel=0.05)


async def test_a_large_rate_is_lent_ahead_and_what_is_not_spent_goes_back(
    redis_server: RedisServer,  # noqa: F811
    replicas: Replicas,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keystore, "LEASE_IDLE", 0.3)
    (a,) = await replicas.add()
    limits = Limits(rate=Rate(6000, 60.0))
    now = time.time()
    assert await a.admit("key_l", limits, now) is None  # asked; 60 lent with it
    with calls_to_redis(a) as calls:
        for _ in range(20):
            assert await a.admit("key_l", limits, now) is None
    assert calls == []  # spent from what was lent
    await asyncio.sleep(0.8)  # unspent for longer than LEASE_IDLE: back in the bucket
    with redis_server.client() as client:
        left = float(client.hget("ki2api:lim:key_l", "tokens") or 0)
    assert left >= 6000 - 21 - 1


async def test_a_budget_far_from_spent_is_admitted_here_until_half_of_it_is_spent(
    replicas: Replicas,
) -> None:
    a, b = await replicas.add(2)
    limits = Limits(tpm=100_000, credits_per_day=10.0)
    now = time.time()
    day = day_of(now)
    for store in (a, b):
        assert await store.admit("key_h", limits, now) is None  # asked: the view comes back
    with calls_to_redis(a) as calls:
        for _ in range(20):
            assert await a.admit("key_h", limits, now) is None
    assert calls == []  # far from the budget and the tokens: admitted on the view

    a.record_usage(UsageCounts(day, "key_h", "main", requests=1, credits=6.0))  # past half
    spent = b.link.changed("spent", "key_h")
    await asyncio.wait_for(spent.wait(), 2)  # a said so, after its credits reached Redis
    assert await b.admit("key_h", limits, now) is None  # asked Redis: 6 of 10
    a.record_usage(UsageCounts(day, "key_h", "main", requests=1, credits=5.0))
    await a.flush()
    for store in (a, b):  # past half: every admission asks Redis, which says no
        refusal = await store.admit("key_h", limits, now)
        assert refusal is not None and refusal.limit == "credits_per_day"


async def test_the_views_of_keys_in_use_are_read_again_every_tick(replicas: Replicas) -> None:
    """No replica saw its own answers cross half the budget (a replica that restarted, say),
    yet the others' views follow Redis within a tick."""
    a, b = await replicas.add(2)
    limits = Limits(credits_per_day=10.0)
    now = time.time()
    assert await b.admit("key_v", limits, now) is None  # b's view: nothing spent
    a.record_usage(UsageCounts(day_of(now), "key_v", "main", requests=1, credits=10.5))
    await a.flush()
    await asyncio.sleep(0.4)  # a few ticks: b reads its view again
    refusal = await b.admit("key_v", limits, now)
    assert refusal is not None and refusal.limit == "credits_per_day"


# --- usage ----------------------------------------------------------------------------------


async def test_usage_of_every_replica_is_reported_by_each_and_old_days_drain_into_sqlite(
    redis_server: RedisServer,  # noqa: F811
    replicas: Replicas,
) -> None:
    a, b = await replicas.add(2, recent_days=3)
    today = day_of(time.time())
    old = "2026-01-02" if today > "2026-02-01" else "2025-01-02"
    for store, day in ((a, today), (b, today), (a, old), (b, old)):
        store.record_usage(UsageCounts(day, "key_u", "main", requests=1, credits=0.25))
    a.record_usage(UsageCounts(today, "key_u", "", refused=1))
    await a.flush()
    await b.flush()
    everything = UsageQuery(key_id="key_u", since="2020-01-01")
    before = [r.to_dict() for r in await b.usage(everything)]
    assert [(r["day"], r["requests"], r["refused"], r["credits"]) for r in before] == [
        (old, 2, 0, 0.5),
        (today, 0, 1, 0.0),
        (today, 2, 0, 0.5),
    ]
    assert await b.drain() == 1  # the old day, once, into b's file
    assert await a.drain() == 0
    with redis_server.client() as client:
        assert not client.exists(f"ki2api:usage:{old}")
    assert [r.to_dict() for r in await b.local.usage(everything)] == before[:1]
    assert [r.to_dict() for r in await b.usage(everything)] == before  # the same report


async def test_redis_lost_limits_count_here_and_the_usage_counted_meanwhile_converges(
    redis_server: RedisServer,  # noqa: F811
    replicas: Replicas,
) -> None:
    a, b = await replicas.add(2)
    key = a_key(rpm=10)
    await a.add_key(key)
    limits = Limits(rate=Rate(10, 60.0), credits_per_day=100.0)
    now = time.time()
    day = day_of(now)
    assert await a.admit(key.id, limits, now) is None
    a.record_usage(UsageCounts(day, key.id, "main", requests=1, credits=1.0))
    await a.flush()
    await asyncio.sleep(0.3)  # a's heartbeat has seen b
    assert a.link.replicas == 2
    redis_server.kill()
    with pytest.raises(SharedUnavailable):
        await a.link.call(lambda c: c.ping())
    # Alone: the key's rate is shared by the two replicas last seen, 5 each.
    admitted = [await a.admit(key.id, limits, now) is None for _ in range(10)]
    assert admitted.count(True) == 5
    assert await a.find_key(key.digest) == key  # the keys last known still answer
    assert await a.spent(key.id, now) == (1.0, 1.0)
    a.record_usage(UsageCounts(day, key.id, "main", requests=5, credits=2.0))
    await a.flush()  # waits in memory, no error

    redis_server.start()

    async def converged() -> bool:
        return await b.spent(key.id, now) == (3.0, 3.0)

    await eventually(converged, timeout=5)
    (row,) = await b.usage(UsageQuery(key_id=key.id))
    assert (row.requests, row.credits) == (6, 3.0)
