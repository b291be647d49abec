"""The shared-state parts one by one, against a real ``redis-server`` (ki2api/shared/)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ki2api.kiro.accounts.available_models import AvailableModels
from ki2api.kiro.accounts.credentials import AccountSpec, Credential
from ki2api.kiro.accounts.refresh import RefreshResult
from ki2api.kiro.wire.models import ModelCatalog, ModelInfo, info_for_listed
from ki2api.shared import SharedState
from ki2api.shared.counters import RedisCounters
from ki2api.shared.link import RedisLink, SharedUnavailable, masked_url
from ki2api.shared.models import RedisModelLists
from ki2api.shared.slots import RedisSlots
from ki2api.shared.sticky import RedisSticky
from ki2api.shared.tokens import SharedTokens
from ki2api.shared.usage import RedisUsage, UsageRow
from tests.redis_server import RedisServer

pytestmark = pytest.mark.skipif(
    not RedisServer.available(), reason="redis-server is not installed (.ci/run installs it)"
)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def links(redis_server: RedisServer) -> AsyncIterator[list[RedisLink]]:
    """Two replicas' links to the same Redis."""
    made = [
        RedisLink(redis_server.url, replica=f"replica-{i}", ping_every=0.1, replica_ttl=0.5)
        for i in range(2)
    ]
    for link in made:
        assert await link.start()
    yield made
    for link in made:
        await link.aclose()


def spec(**fields: object) -> AccountSpec:
    values: dict[str, object] = dict(
        label="main",
        source="env",
        auth_method="social",
        access_token="aoa-stale",
        refresh_token="aor-first",
        expires_at=datetime.now(UTC) - timedelta(minutes=1),
    )
    values.update(fields)
    return AccountSpec(**values)  # type: ignore[arg-type]


def result(n: int, refresh: str) -> RefreshResult:
    return RefreshResult(f"aoa-new-{n}", refresh, datetime.now(UTC) + timedelta(hours=1), None)


# --- the link --------------------------------------------------------------------------------


async def test_a_dead_redis_fails_the_first_call_and_costs_nothing_after(
    redis_server: RedisServer, links: list[RedisLink]
) -> None:
    link = links[0]
    assert await link.call(lambda c: c.ping())
    redis_server.kill()
    with pytest.raises(SharedUnavailable):
        await link.call(lambda c: c.ping())
    started = time.perf_counter()
    for _ in range(100):
        with pytest.raises(SharedUnavailable):
            await link.call(lambda c: c.ping())
    assert time.perf_counter() - started < 0.05  # no network while down
    assert link.status()["connected"] is False


async def test_a_stalled_redis_holds_a_call_no_longer_than_the_timeout(
    redis_server: RedisServer, links: list[RedisLink]
) -> None:
    link = links[0]
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        started = time.perf_counter()
        with pytest.raises(SharedUnavailable):
            await link.call(lambda c: c.ping())
        assert time.perf_counter() - started < link.timeout + 0.2
    finally:
        redis_server.process.send_signal(signal.SIGCONT)


async def test_the_link_comes_back_by_itself_and_runs_the_reconcile_hooks(
    redis_server: RedisServer, links: list[RedisLink], caplog: pytest.LogCaptureFixture
) -> None:
    link = links[0]
    await links[1].aclose()  # one replica's log only
    reconciled = asyncio.Event()

    async def hook() -> None:
        reconciled.set()

    link.on_reconnect(hook)
    redis_server.kill()
    with pytest.raises(SharedUnavailable):
        await link.call(lambda c: c.ping())
    with pytest.raises(SharedUnavailable):
        await link.call(lambda c: c.ping())
    redis_server.start()
    await asyncio.wait_for(reconciled.wait(), 5)
    assert link.up and await link.call(lambda c: c.ping())
    lost = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(lost) == 1  # once per outage, not per call
    assert any("is back" in r.getMessage() for r in caplog.records)


def test_a_password_never_shows() -> None:
    assert masked_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert masked_url("redis://user:s3cret@redis/0") == "redis://user:***@redis/0"
    assert masked_url("redis://redis:6379") == "redis://redis:6379"


# --- tokens ----------------------------------------------------------------------------------


async def test_a_holder_whose_lease_ran_out_cannot_overwrite_a_newer_token(
    links: list[RedisLink],
) -> None:
    """A's refresh outlives its lease; B takes the lock with a newer fence and writes first;
    A's late write is refused and A ends with B's tokens."""
    late, prompt = SharedTokens(links[0], lease=0.2), SharedTokens(links[1], lease=0.2)

    async def slow(s: AccountSpec) -> RefreshResult:
        await asyncio.sleep(0.5)
        return result(1, "aor-from-late-holder")

    async def quick(s: AccountSpec) -> RefreshResult:
        return result(2, "aor-from-prompt-holder")

    first = asyncio.create_task(late.refresh(spec(), slow))
    await asyncio.sleep(0.3)  # A's lease has run out; A is still waiting on "Kiro"
    second = await prompt.refresh(spec(), quick)
    got = await first

    assert second.access_token == "aoa-new-2"
    assert got.access_token == "aoa-new-2"  # A took the newer one, not its own
    assert got.refresh_token == "aor-from-prompt-holder"
    record = await late.read("main")
    assert record is not None and record.refresh_token == "aor-from-prompt-holder"
    assert late.refreshes == prompt.refreshes == 1


async def test_replicas_waiting_on_a_refresh_take_the_holders_tokens(
    links: list[RedisLink],
) -> None:
    calls = 0

    async def refresher(s: AccountSpec) -> RefreshResult:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return result(calls, "aor-rotated")

    tokens = [SharedTokens(link) for link in links]
    results = await asyncio.gather(*(t.refresh(spec(), refresher) for t in tokens * 5))
    assert calls == 1
    assert {r.access_token for r in results} == {"aoa-new-1"}


async def test_tokens_refreshed_while_redis_was_away_win_over_the_older_shared_ones(
    links: list[RedisLink],
) -> None:
    tokens = SharedTokens(links[0])
    older = spec(access_token="aoa-old", expires_at=datetime.now(UTC) + timedelta(minutes=20))
    newer = spec(access_token="aoa-newer", expires_at=datetime.now(UTC) + timedelta(minutes=50))
    assert await tokens.offer(older)
    assert await tokens.offer(newer)
    assert not await tokens.offer(older)  # an older offer never overwrites
    record = await tokens.read("main")
    assert record is not None and record.access_token == "aoa-newer"


# --- slots, counters -------------------------------------------------------------------------


async def test_a_dead_replicas_places_come_back_when_its_heartbeat_ends(
    links: list[RedisLink],
) -> None:
    dying, living = RedisSlots(links[0]), RedisSlots(links[1])
    assert await dying.take("main", 2) is not None
    assert await dying.take("main", 2) is not None
    assert await living.take("main", 2) is None  # all taken
    assert links[0]._task is not None
    links[0]._task.cancel()  # the replica dies: no heartbeat, no trim from here on
    await asyncio.sleep(0.7)  # its heartbeat (0.5 s) has ended
    assert await living.take("main", 2) is not None
    assert await living.take("main", 2) is not None


async def test_a_replica_gives_idle_places_to_one_that_waits(links: list[RedisLink]) -> None:
    busy, other = RedisSlots(links[0]), RedisSlots(links[1])
    give_back = [await busy.take("main", 4) for _ in range(4)]
    assert all(give_back)
    assert await other.take("main", 4) is None  # leaves its mark: it waits
    await asyncio.sleep(0.3)  # busy's ticks keep what is in use
    assert await other.take("main", 4) is None
    for release in give_back[:2]:
        assert release is not None
        release()
    await asyncio.sleep(0.3)  # busy's next tick gives the idle ones back
    assert await other.take("main", 4) is not None
    assert await other.take("main", 4) is not None
    assert await other.take("main", 4) is None  # 2 here, 2 in use there


async def test_places_are_taken_without_a_round_trip_while_the_grant_lasts(
    links: list[RedisLink], monkeypatch: pytest.MonkeyPatch
) -> None:
    slots = RedisSlots(links[0])
    first = await slots.take("main", 16)  # grows the grant by a step (4)
    assert first is not None
    calls = 0
    real = links[0].call

    async def counting(fn: object) -> object:
        nonlocal calls
        calls += 1
        return await real(fn)  # type: ignore[arg-type]

    monkeypatch.setattr(links[0], "call", counting)
    more = [await slots.take("main", 16) for _ in range(3)]
    assert all(more) and calls == 0
    assert await slots.take("main", 16) is not None and calls == 1  # the next step


def test_the_rate_bucket_is_shared_by_three_processes(redis_server: RedisServer) -> None:
    """Three processes take from one bucket of 30 a minute as fast as they can: 30 (+1 for
    the refill meanwhile) go through in all, not 90."""
    script = textwrap.dedent(
        f"""
        import asyncio
        from ki2api.shared.counters import RedisCounters
        from ki2api.shared.link import RedisLink

        async def main():
            link = RedisLink({redis_server.url!r})
            await link.start()
            counters = RedisCounters(link)
            taken = 0
            for _ in range(30):
                taken += await counters.take("rate:k", 30, 0.5) == 0
            await link.aclose()
            print(taken)

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE)
        for _ in range(3)
    ]
    taken = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert 30 <= sum(taken) <= 31


async def test_a_large_bucket_lends_credit_and_takes_back_what_is_not_spent(
    redis_server: RedisServer, links: list[RedisLink], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ki2api.shared import counters as module

    monkeypatch.setattr(module, "CREDIT_IDLE", 0.3)
    counters = RedisCounters(links[0])
    assert await counters.take("rate:big", 1000, 1000 / 60) == 0  # asked; credit follows
    await asyncio.sleep(0.05)
    calls = 0
    real = links[0].call

    async def counting(fn: object) -> object:
        nonlocal calls
        calls += 1
        return await real(fn)  # type: ignore[arg-type]

    monkeypatch.setattr(links[0], "call", counting)
    for _ in range(4):
        assert await counters.take("rate:big", 1000, 1000 / 60) == 0
    assert calls == 0  # spent from the credit
    monkeypatch.setattr(links[0], "call", real)
    await asyncio.sleep(0.6)  # unspent for longer than CREDIT_IDLE: back in the bucket
    with redis_server.client() as client:
        left = float(client.hget("ki2api:bucket:rate:big", "tokens") or 0)
    assert left >= 1000 - 5 - 1  # the five taken (and a moment's refill) are all that is gone


async def test_a_running_total_is_shared_and_ends_with_its_ttl(links: list[RedisLink]) -> None:
    a, b = RedisCounters(links[0]), RedisCounters(links[1])
    assert await a.add("credits:alice", 1.5, ttl=1) == 1.5
    assert await b.add("credits:alice", 2.0, ttl=1) == 3.5
    await asyncio.sleep(1.1)
    assert await a.add("credits:alice", 1.0, ttl=1) == 1.0


# --- usage, sticky, model lists --------------------------------------------------------------


class MemoryStore:
    def __init__(self, fail: bool = False) -> None:
        self.rows: list[UsageRow] = []
        self.fail = fail

    async def add_usage(self, rows: Sequence[UsageRow]) -> None:
        if self.fail:
            raise OSError("disk full")
        self.rows += rows


async def test_usage_counted_by_two_replicas_drains_once_into_the_store(
    links: list[RedisLink],
) -> None:
    a, b = RedisUsage(links[0]), RedisUsage(links[1])
    for usage in (a, b):
        usage.add(UsageRow("2026-05-01", "alice", "main", requests=1, output_tokens=10))
    a.add(UsageRow("2026-05-01", "bob", "main", requests=1, errors=1))
    await a.flush()
    await b.flush()
    assert await a.totals("2026-05-01") == [
        UsageRow("2026-05-01", "alice", "main", requests=2, output_tokens=20),
        UsageRow("2026-05-01", "bob", "main", requests=1, errors=1),
    ]
    broken = MemoryStore(fail=True)
    with pytest.raises(OSError):
        await a.drain_to(broken, ["2026-05-01"])
    store = MemoryStore()
    assert await b.drain_to(store, ["2026-05-01"]) == 2  # what the failed drain left, once
    assert sum(r.requests for r in store.rows) == 3
    assert await a.drain_to(store, ["2026-05-01"]) == 0
    assert await a.totals("2026-05-01") == []


async def test_usage_counted_while_redis_is_away_is_sent_when_it_returns(
    redis_server: RedisServer, links: list[RedisLink]
) -> None:
    usage = RedisUsage(links[0])
    redis_server.kill()
    with pytest.raises(SharedUnavailable):
        await links[0].call(lambda c: c.ping())
    usage.add(UsageRow("2026-05-02", "", "main", requests=1))
    assert usage.pending() == 1
    redis_server.start()
    for _ in range(50):
        if links[0].up and usage.pending() == 0:
            break
        await asyncio.sleep(0.1)
    assert await usage.totals("2026-05-02") == [UsageRow("2026-05-02", "", "main", requests=1)]


class LocalSticky:
    def __init__(self) -> None:
        self.entries: dict[str, str] = {}

    async def get(self, key: str) -> str | None:
        return self.entries.get(key)

    async def set(self, key: str, label: str, ttl: float) -> None:
        self.entries[key] = label


async def test_a_conversation_sticks_across_replicas_and_forgets_after_its_ttl(
    redis_server: RedisServer, links: list[RedisLink]
) -> None:
    a, b = RedisSticky(links[0], LocalSticky()), RedisSticky(links[1], LocalSticky())
    await a.set("conv-1", "main", ttl=0.3)
    await asyncio.sleep(0.05)  # written in the background
    assert await b.get("conv-1") == "main"
    await asyncio.sleep(0.4)
    assert await b.get("conv-1") is None
    redis_server.kill()
    await a.set("conv-2", "spare", ttl=60)  # Redis away: this replica still remembers
    assert await a.get("conv-2") == "spare"


async def test_one_replica_asks_for_an_accounts_models_and_the_other_takes_its_list(
    links: list[RedisLink],
) -> None:
    asked: list[str] = []
    listed = [info_for_listed("claude-sonnet-4.5", known=None, context_window=123_000)]

    class Pool:
        def labels(self) -> list[str]:
            return ["main"]

        def usable_labels(self) -> list[str]:
            return ["main"]

        async def with_credential(self, label: str, call: object) -> list[ModelInfo]:
            asked.append(label)
            return listed

    async def fetch(credential: Credential) -> list[ModelInfo]:
        raise AssertionError("not called: the pool above answers")

    replicas = []
    for link in links:
        models = AvailableModels(Pool(), ModelCatalog(), fetch, ttl=60)
        models.shared = RedisModelLists(link)
        replicas.append(models)
    await replicas[0].refresh()
    await replicas[1].refresh()
    assert asked == ["main"]  # once for both
    (entry,) = replicas[1].snapshot()
    assert entry.kiro_ids() == frozenset({"claude-sonnet-4.5"})
    assert entry.models is not None and entry.models[0].context_window == 123_000


async def test_without_redis_url_nothing_is_shared() -> None:
    from ki2api.settings import Settings

    shared = SharedState.from_settings(Settings())
    assert not shared.enabled and shared.counters is None and shared.slots is None
    assert shared.status() == {"backend": "local"}
    await shared.start()
    await shared.aclose()


def test_the_status_tab_says_whether_redis_answers_in_both_languages() -> None:
    from types import SimpleNamespace

    from ki2api.ui.status import shared_state_line

    def runtime(status: dict[str, object]) -> object:
        return SimpleNamespace(shared=SimpleNamespace(status=lambda: status))

    assert shared_state_line(runtime({"backend": "local"}), "en") is None  # type: ignore[arg-type]
    up = runtime({"backend": "redis", "connected": True, "replicas": 2})
    assert "connected (2 replica(s) seen)" in (shared_state_line(up, "en") or "")  # type: ignore[arg-type]
    assert "2 个副本" in (shared_state_line(up, "zh") or "")  # type: ignore[arg-type]
    down = runtime(
        {"backend": "redis", "connected": False, "down_since": "2026-05-01T12:00:05+00:00"}
    )
    assert "unreachable since 12:00:05Z" in (shared_state_line(down, "en") or "")  # type: ignore[arg-type]
    assert "12:00:05Z 起无法连接 Redis" in (shared_state_line(down, "zh") or "")  # type: ignore[arg-type]
