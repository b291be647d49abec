"""Client keys and their limits across gateway replicas, through a real Redis (issue 21).

Whole gateways on their own uvicorn servers (tests/test_replicas.py's ``Replicas``), each with
its own ``DATA_DIR``, one Kiro simulator and one ``redis-server``; keys made through one
replica's admin API or by the CLI in a process of its own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ki2api.shared.usage import today
from ki2api.simulator import SimulatorServer
from tests.redis_server import RedisServer
from tests.test_replicas import (  # noqa: F401  (fixtures)
    BODY,
    ROOT,
    Replicas,
    redis_server,
    replica_settings,
    replicas,
    sim,
)

pytestmark = pytest.mark.skipif(
    not RedisServer.available(), reason="redis-server is not installed (.ci/run installs it)"
)
ADMIN_KEY = "test-admin-key-0123456789"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Fleet:
    """Gateway replicas sharing one simulator account and one Redis, each its own DATA_DIR."""

    sim: SimulatorServer
    redis: RedisServer
    replicas: Replicas
    folder: Path

    def start(self, n: int) -> list[str]:
        account = self.sim.state.add_account(refresh_token="aorSim-keys-0001")
        self.replicas.start(
            [
                replica_settings(
                    self.sim,
                    self.redis.url,
                    KIRO_ACCESS_TOKEN=account.access_token,
                    ADMIN_KEY=ADMIN_KEY,
                    DATA_DIR=str(self.folder / f"data-{i}"),
                )
                for i in range(n)
            ]
        )
        return self.replicas.urls

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -m ki2api`` in a process of its own, on the replicas' Redis."""
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KIRO_", "REDIS_"))},
            "REDIS_URL": self.redis.url,
            "DATA_DIR": str(self.folder / "cli"),
            "PYTHONPATH": str(ROOT),
        }
        return subprocess.run(
            [sys.executable, "-m", "ki2api", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def fleet(
    sim: SimulatorServer,  # noqa: F811
    redis_server: RedisServer,  # noqa: F811
    replicas: Replicas,  # noqa: F811
    tmp_path: Path,
) -> Fleet:
    return Fleet(sim, redis_server, replicas, tmp_path)


def make_key(url: str, **fields: Any) -> str:
    made = httpx.post(url + "/admin/keys", json={"name": "alice", **fields}, headers=ADMIN)
    assert made.status_code == 201, made.text
    return str(made.json()["secret"])


async def send(urls: list[str], secret: str, count: int) -> list[int]:
    """``count`` chats at once with ``secret``, round-robin over ``urls``; their statuses."""
    headers = {"authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(i: int) -> int:
            url = urls[i % len(urls)] + "/v1/chat/completions"
            return (await client.post(url, json=BODY, headers=headers)).status_code

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def usage_of(url: str, key: str = "alice") -> dict[str, float]:
    answer = httpx.get(url + "/admin/usage", params={"key": key}, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    rows = answer.json()["data"]
    return {f: sum(r[f] for r in rows) for f in ("requests", "refused", "errors", "credits")}


def eventually(check: Any, timeout: float = 5.0) -> float:
    """Seconds until ``check()`` is true."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError("did not hold in time")
        time.sleep(0.01)
    return time.monotonic() - started


async def test_a_key_limited_to_30_a_minute_gets_30_across_three_replicas(fleet: Fleet) -> None:
    urls = fleet.start(3)
    secret = make_key(urls[0], rpm=30)

    codes = await send(urls, secret, 90)

    assert 30 <= codes.count(200) <= 31  # the bucket refills 0.5 a second meanwhile
    assert codes.count(200) + codes.count(429) == 90
    # Every replica reports every replica's usage of the key.
    for url in urls:
        eventually(lambda u=url: usage_of(u)["requests"] == codes.count(200))
        assert usage_of(url)["refused"] == codes.count(429)


async def test_a_budget_spent_across_replicas_refuses_the_next_request_on_every_replica(
    fleet: Fleet,
) -> None:
    """The simulator meters 0.0058 credits an answer: two answers, on two replicas, cross a
    budget of 0.01; then every replica refuses the key with insufficient_quota."""
    urls = fleet.start(3)
    first, second, third = urls
    secret = make_key(second, credits_per_day=0.01)

    assert await send([first], secret, 1) == [200]
    assert await send([second], secret, 1) == [200]  # 0.0058 spent: under the budget
    eventually(lambda: usage_of(third)["credits"] >= 0.0116 - 1e-9)  # counted as each ends
    served = len(fleet.sim.state.requests)

    headers = {"authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(timeout=30) as client:
        for url in urls:
            refused = await client.post(url + "/v1/chat/completions", json=BODY, headers=headers)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "insufficient_quota"
            assert "0.01 credits for today" in refused.json()["error"]["message"]
    assert len(fleet.sim.state.requests) == served  # nothing went upstream


async def test_a_key_revoked_on_one_replica_or_by_the_cli_is_refused_by_the_others_within_a_second(
    fleet: Fleet,
) -> None:
    urls = fleet.start(3)
    first, second, third = urls
    alice = make_key(first)
    made = fleet.cli("keys", "create", "--name", "bob", "--json")
    assert made.returncode == 0, made.stderr
    bob = made.stdout.strip().split('"secret":"')[1].split('"')[0]
    for secret in (alice, bob):  # made on one replica or by the CLI: good everywhere at once
        assert await send(urls, secret, 3) == [200] * 3

    def refused(secret: str, url: str) -> bool:
        answer = httpx.post(
            url + "/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {secret}"}
        )
        return answer.status_code == 401 and answer.json()["error"]["code"] == "key_revoked"

    revoked = httpx.delete(first + "/admin/keys/alice", headers=ADMIN)
    assert revoked.status_code == 200
    assert eventually(lambda: refused(alice, second) and refused(alice, third)) < 1.0

    gone = fleet.cli("keys", "revoke", "bob")
    assert gone.returncode == 0, gone.stderr
    assert eventually(lambda: all(refused(bob, url) for url in urls)) < 1.0
    listed = fleet.cli("keys", "list", "--all", "--json")
    assert listed.returncode == 0 and listed.stdout.count('"status":"revoked"') == 2


async def test_killing_redis_mid_load_keeps_the_keys_working_and_their_counts_converge(
    fleet: Fleet,
) -> None:
    first, second = urls = fleet.start(2)
    server = fleet.redis
    # One key asked for in Redis on every request (a budget), one lent ahead (a large rate).
    budget = make_key(first, credits_per_day=1000)
    rate = make_key(first, name="fast", rpm=100000)
    codes: dict[str, list[int]] = {"alice": [], "fast": []}
    stop = asyncio.Event()

    async def load(url: str, name: str, secret: str) -> None:
        headers = {"authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(timeout=30) as client:
            while not stop.is_set():
                answer = await client.post(url + "/v1/chat/completions", json=BODY, headers=headers)
                codes[name].append(answer.status_code)

    workers = [
        asyncio.create_task(load(url, name, secret))
        for url in urls
        for name, secret in (("alice", budget), ("fast", rate))
    ]
    await asyncio.sleep(0.5)
    server.kill()
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient() as client:
        health = (await client.get(first + "/health")).json()
    assert health["shared_state"]["connected"] is False
    served_alone = sum(map(len, codes.values()))
    await asyncio.sleep(0.5)
    server.start()  # the append-only file brings back what it held
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.gather(*workers)

    assert sum(map(len, codes.values())) > served_alone + 10  # served all along
    assert [c for c in codes["alice"] + codes["fast"] if c != 200] == []
    # Converged: each request counted once in Redis, the credits against the budget too.
    for url in (first, second):
        for name in ("alice", "fast"):
            eventually(lambda u=url, n=name: usage_of(u, n)["requests"] == len(codes[n]))
    with server.client() as client:
        spent = client.hget(f"ki2api:spent:{_key_id(first, 'alice')}:{today()[:7]}", "m")
    assert float(spent or 0) == pytest.approx(usage_of(second)["credits"], rel=1e-6)


def _key_id(url: str, name: str) -> str:
    answer = httpx.get(url + f"/admin/keys/{name}", headers=ADMIN)
    return str(answer.json()["id"])
