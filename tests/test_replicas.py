"""Several gateway replicas, one state, through a real Redis (issue 21's acceptance).

Each replica is a whole gateway on its own uvicorn server and event loop (threads here, real
processes where one must die); all of them talk to one Kiro simulator and one ``redis-server``
the tests start on a free port. Each replica has its own copy of the login file, as separate
machines would, so nothing but Redis can keep them from stepping on each other.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ki2api.app import create_app
from ki2api.settings import Settings
from ki2api.simulator import SimulatorServer
from ki2api.simulator.faults import throttled
from tests.redis_server import RedisServer, free_port
from tests.servers import ServerThread
from tests.stack import API_KEY, stack_env
from tests.test_accounts_sim import iso, write_login

pytestmark = pytest.mark.skipif(
    not RedisServer.available(), reason="redis-server is not installed (.ci/run installs it)"
)
HEADERS = {"authorization": f"Bearer {API_KEY}"}
BODY = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        server.state.require_known_tokens = True
        yield server


class Replicas:
    """``n`` gateways in this process, each with its own settings (and login file)."""

    def __init__(self) -> None:
        self.servers: list[ServerThread] = []
        self.apps: list[Any] = []

    def start(self, settings: list[Settings]) -> Replicas:
        for one in settings:
            app = create_app(one, with_ui=False)
            self.apps.append(app)
            self.servers.append(ServerThread(app).start())
        return self

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def pool(self, i: int) -> Any:
        return self.apps[i].runtime.pool

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def replicas() -> Iterator[Replicas]:
    group = Replicas()
    try:
        yield group
    finally:
        group.stop()


def replica_settings(
    sim: SimulatorServer, redis_url: str | None, overrides: dict[str, Any] | None = None, **env: str
) -> Settings:
    # The replicas here share one interpreter (and its lock): a reply can wait longer to be
    # read than between processes, so a longer REDIS_TIMEOUT than the default keeps a busy
    # moment from counting as Redis lost.
    base = {"REDIS_URL": redis_url or "", "KIRO_ACCESS_TOKEN": "", "REDIS_TIMEOUT": "1", **env}
    return Settings.from_env(stack_env(sim.url, **base), **(overrides or {}))


def login_per_replica(tmp_path: Path, n: int, **fields: Any) -> list[Path]:
    return [
        write_login(tmp_path / f"replica-{i}" / "kiro-auth-token.json", **fields) for i in range(n)
    ]


async def post_all(urls: list[str], count: int, body: dict[str, Any] = BODY) -> list[int]:
    """``count`` chats at once, spread round-robin over ``urls``; their status codes."""
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(i: int) -> int:
            url = urls[i % len(urls)] + "/v1/chat/completions"
            return (await client.post(url, json=body, headers=HEADERS)).status_code

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def wait_for(check: Any, timeout: float = 5.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold in time")
        time.sleep(0.02)


# --- tokens ---------------------------------------------------------------------------------


async def test_a_refresh_storm_over_three_replicas_refreshes_once_and_keeps_the_rotated_token(
    sim: SimulatorServer, redis_server: RedisServer, replicas: Replicas, tmp_path: Path
) -> None:
    state = sim.state
    account = state.add_account(refresh_token="aorSim-storm-0001", rotate_refresh=True)
    state.refresh_latency = 0.3  # long enough for every replica to ask meanwhile
    files = login_per_replica(
        tmp_path,
        3,
        accessToken="aoaSim-long-expired-0001",
        refreshToken="aorSim-storm-0001",
        expiresAt=iso(timedelta(minutes=-5)),
    )
    replicas.start([replica_settings(sim, redis_server.url, KIRO_TOKEN_FILE=str(f)) for f in files])

    codes = await post_all(replicas.urls, 60)

    assert codes == [200] * 60
    assert len(state.refresh_calls) == 1  # one replica refreshed; two took its tokens
    assert all(r.status == 200 for r in state.requests)  # nobody sent an expired token
    rotated = account.refresh_token
    assert rotated != "aorSim-storm-0001"
    with redis_server.client() as client:
        assert client.hget("ki2api:tok:kiro-login", "refresh") == rotated.encode()
    # Every replica holds the rotated refresh token, in memory and in its own login file.
    wait_for(
        lambda: all(
            replicas.pool(i).account("kiro-login").spec.refresh_token == rotated for i in range(3)
        )
    )
    for path in files:
        assert orjson.loads(path.read_bytes())["refreshToken"] == rotated


# --- account states -------------------------------------------------------------------------


async def test_a_throttle_seen_by_one_replica_keeps_the_others_off_the_account(
    sim: SimulatorServer, redis_server: RedisServer, replicas: Replicas
) -> None:
    state = sim.state
    account = state.add_account(refresh_token="aorSim-throttle-0001")
    env = {"KIRO_ACCESS_TOKEN": account.access_token}
    once = {"upstream_attempts": 1}
    replicas.start([replica_settings(sim, redis_server.url, once, **env) for _ in range(2)])
    first, second = replicas.urls
    state.fail_next(1, throttled(retry_after=3))

    assert await post_all([first], 1) == [429]  # Kiro's throttle, Retry-After 3 s
    wait_for(lambda: replicas.pool(1).usable_count() == 0)  # told through Redis
    sent = len(state.requests)
    async with httpx.AsyncClient() as client:
        refused = await client.post(second + "/v1/chat/completions", json=BODY, headers=HEADERS)
    assert refused.status_code == 429 and float(refused.headers["retry-after"]) > 1
    assert len(state.requests) == sent  # the second replica did not call Kiro meanwhile

    await asyncio.sleep(float(refused.headers["retry-after"]) + 0.1)
    assert await post_all([second], 1) == [200]  # the cooldown ended everywhere


async def test_a_lost_login_seen_by_one_replica_is_not_retried_by_the_others(
    sim: SimulatorServer, redis_server: RedisServer, replicas: Replicas, tmp_path: Path
) -> None:
    state = sim.state
    state.add_account(refresh_token="aorSim-dead-0001")
    state.revoke_refresh_token("aorSim-dead-0001")
    files = login_per_replica(
        tmp_path,
        2,
        accessToken="aoaSim-expired-0002",
        refreshToken="aorSim-dead-0001",
        expiresAt=iso(timedelta(minutes=-5)),
    )
    replicas.start([replica_settings(sim, redis_server.url, KIRO_TOKEN_FILE=str(f)) for f in files])

    assert await post_all(replicas.urls[:1], 1) == [503]
    wait_for(lambda: replicas.pool(1).snapshot()[0].state == "needs_login")
    assert await post_all(replicas.urls[1:], 1) == [503]
    assert len(state.refresh_calls) == 1  # the second replica knew without trying


async def test_a_conversation_keeps_its_account_whichever_replica_takes_its_next_turn(
    sim: SimulatorServer, redis_server: RedisServer, replicas: Replicas
) -> None:
    state = sim.state
    main = state.add_account(refresh_token="aorSim-sticky-0001", label="main")
    spare = state.add_account(refresh_token="aorSim-sticky-0002", label="spare")
    accounts = orjson.dumps(
        [
            {"label": "main", "accessToken": main.access_token},
            {"label": "spare", "accessToken": spare.access_token},
        ]
    ).decode()
    replicas.start(
        [replica_settings(sim, redis_server.url, KIRO_ACCOUNTS=accounts) for _ in range(2)]
    )
    first, second = replicas.urls

    async def turn(url: str, conversation: str) -> str:
        headers = {**HEADERS, "x-conversation-id": conversation}
        async with httpx.AsyncClient() as client:
            answer = await client.post(url + "/v1/chat/completions", json=BODY, headers=headers)
        assert answer.status_code == 200
        return str(state.requests[-1].headers["authorization"])

    assert await turn(first, "conv-sticky-1") == f"Bearer {main.access_token}"
    assert await turn(second, "conv-other") == f"Bearer {main.access_token}"
    # The second replica would take the least recently used account, "spare", for a new
    # conversation; this one served its first turn on "main" over there.
    assert await turn(second, "conv-sticky-1") == f"Bearer {main.access_token}"
    assert await turn(second, "conv-new") == f"Bearer {spare.access_token}"


# --- limits ---------------------------------------------------------------------------------


async def test_a_key_limited_to_30_a_minute_gets_30_across_three_replicas(
    sim: SimulatorServer, redis_server: RedisServer, replicas: Replicas
) -> None:
    account = sim.state.add_account(refresh_token="aorSim-rate-0001")
    env = {"KIRO_ACCESS_TOKEN": account.access_token, "RATE_LIMIT": "30/minute"}
    replicas.start([replica_settings(sim, redis_server.url, **env) for _ in range(3)])

    codes = await post_all(replicas.urls, 90)

    assert 30 <= codes.count(200) <= 31  # the bucket refills 0.5 a second meanwhile
    assert codes.count(200) + codes.count(429) == 90


async def test_the_concurrency_cap_counts_every_replicas_requests(
    sim: SimulatorServer, redis_server: RedisServer, replicas: Replicas
) -> None:
    state = sim.state
    account = state.add_account(refresh_token="aorSim-cap-0001")
    state.latency = 0.3
    env = {
        "KIRO_ACCESS_TOKEN": account.access_token,
        "MAX_CONCURRENT_PER_ACCOUNT": "4",
        "QUEUE_TIMEOUT": "0.2",
    }
    once = {"upstream_attempts": 1}
    replicas.start([replica_settings(sim, redis_server.url, once, **env) for _ in range(2)])

    codes = await post_all(replicas.urls, 8)

    assert codes.count(200) == 4  # 4 in flight over both replicas, not 4 each
    assert codes.count(503) == 4


# --- Redis lost and back --------------------------------------------------------------------


async def test_killing_redis_mid_load_loses_no_request_and_the_state_converges_after(
    sim: SimulatorServer,
    redis_server: RedisServer,
    replicas: Replicas,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = sim.state
    main = state.add_account(refresh_token="aorSim-kill-0001", label="main")
    spare = state.add_account(refresh_token="aorSim-kill-0002", label="spare")
    accounts = orjson.dumps(
        [
            {"label": "main", "accessToken": main.access_token},
            {"label": "spare", "accessToken": spare.access_token},
        ]
    ).decode()
    env = {
        "KIRO_ACCOUNTS": accounts,
        "RATE_LIMIT": "100000/minute",
        "KIRO_POOL_STRATEGY": "first",
    }
    replicas.start([replica_settings(sim, redis_server.url, **env) for _ in range(2)])
    codes: list[int] = []
    stop = asyncio.Event()

    async def load(url: str) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while not stop.is_set():
                answer = await client.post(url + "/v1/chat/completions", json=BODY, headers=HEADERS)
                codes.append(answer.status_code)

    workers = [asyncio.create_task(load(url)) for url in replicas.urls for _ in range(3)]
    await asyncio.sleep(0.5)
    redis_server.kill()
    await asyncio.sleep(1.5)  # the replicas notice and carry on alone
    async with httpx.AsyncClient() as client:
        health = (await client.get(replicas.urls[0] + "/health")).json()
    assert health["shared_state"]["connected"] is False
    served_alone = len(codes)
    # While Redis is away, the first replica sees a throttle the second does not hear of.
    state.fail_next(1, throttled(retry_after=30))
    await asyncio.sleep(0.5)
    redis_server.start()  # same port, same folder: the append-only file brings the data back
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.gather(*workers)

    assert len(codes) > served_alone + 10  # served all along
    assert [c for c in codes if c >= 500] == []
    said = [r.getMessage() for r in caplog.records if r.name == "ki2api.shared"]
    lost, back = sum("is unreachable" in m for m in said), sum("is back" in m for m in said)
    assert lost == back >= 2  # once per replica and outage, not per request
    async with httpx.AsyncClient() as client:
        for url in replicas.urls:
            assert (await client.get(url + "/health")).json()["shared_state"]["connected"]
    # Converged: the throttle one replica saw while alone now keeps both off "main".
    wait_for(
        lambda: all(replicas.pool(i).account("main").state == "cooling_down" for i in range(2))
    )
    # And the usage counted while Redis was away reached it, each request once.
    answered = len(codes) - codes.count(429)
    wait_for(lambda: _usage_requests(redis_server) == answered, what=f"{answered} usage rows")


def _usage_requests(server: RedisServer) -> int:
    from ki2api.shared.usage import today

    with server.client() as client:
        fields = client.hgetall(f"ki2api:usage:{today()}")
    return sum(int(v) for k, v in fields.items() if k.endswith(b"\x1frequests"))


# --- one replica dies -----------------------------------------------------------------------


def _spawn(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KIRO_", "REDIS_"))},
        **env,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "DATA_DIR": str(log.parent / f"data-{port}"),  # its own disk, as on its own machine
        "PYTHONPATH": str(ROOT),
        "LOG_LEVEL": "warning",
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.replica"], env=full, cwd=ROOT, stdout=out, stderr=out
        )


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the replica exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the replica did not start")


async def test_killing_one_replica_mid_stream_loses_only_its_streams_and_no_usage(
    sim: SimulatorServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    state = sim.state
    account = state.add_account(refresh_token="aorSim-die-0001")
    env = stack_env(sim.url, KIRO_ACCESS_TOKEN=account.access_token, REDIS_URL=redis_server.url)
    ports = [free_port(), free_port()]
    logs = [tmp_path / "replica-0.log", tmp_path / "replica-1.log"]
    processes = [_spawn(env, port, log) for port, log in zip(ports, logs, strict=True)]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url, process, log in zip(urls, processes, logs, strict=True):
            _wait_healthy(url, process, log)
        assert await post_all(urls, 6) == [200] * 6  # finished before anything dies
        state.chunk_interval = 0.2  # streams of about 3 s from here on
        stream_body = {**BODY, "stream": True}

        async def stream(url: str) -> bool:
            try:
                async with (
                    httpx.AsyncClient(timeout=30) as client,
                    client.stream(
                        "POST", url + "/v1/chat/completions", json=stream_body, headers=HEADERS
                    ) as answer,
                ):
                    text = b"".join([chunk async for chunk in answer.aiter_bytes()])
                return text.rstrip().endswith(b"data: [DONE]")
            except httpx.HTTPError:
                return False

        streams = [asyncio.create_task(stream(url)) for url in urls for _ in range(3)]
        await asyncio.sleep(1.0)
        processes[0].send_signal(signal.SIGKILL)
        finished = await asyncio.gather(*streams)

        assert finished == [False] * 3 + [True] * 3  # only the dead replica's streams broke
        # The usage rows of every finished request are in Redis: 6 + the 3 streams that ended.
        wait_for(lambda: _usage_requests(redis_server) == 9)
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=10)


# --- start-up -------------------------------------------------------------------------------


def test_an_unreachable_redis_is_a_one_line_start_up_error(tmp_path: Path) -> None:
    port = free_port()
    env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "KI2API_DEMO": "1"}
    log = tmp_path / "replica.log"
    process = _spawn(env, port, log)
    assert process.wait(timeout=60) == 2
    text = log.read_text()
    assert "cannot reach Redis at redis://127.0.0.1:" in text and "REDIS_OPTIONAL=1" in text
    assert "Traceback" not in text


def test_with_redis_optional_it_starts_on_local_state_and_joins_when_redis_answers(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis")  # not started yet
    env = {"REDIS_URL": server.url, "REDIS_OPTIONAL": "1", "KI2API_DEMO": "1"}
    port = free_port()
    log = tmp_path / "replica.log"
    process = _spawn(env, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        assert httpx.get(url + "/health").json()["shared_state"]["connected"] is False
        assert "starting on this replica's own state" in log.read_text()
        server.start()
        wait_for(lambda: httpx.get(url + "/health").json()["shared_state"]["connected"], 10)
        with server.client() as client:
            assert client.zcard("ki2api:replicas") == 1  # it joined
    finally:
        process.terminate()
        process.wait(timeout=10)
        server.stop()
