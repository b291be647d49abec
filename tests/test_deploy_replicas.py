"""deploy/compose.replicas.yml and deploy/nginx.conf: two replicas, Redis, nginx in front.

The compose file is checked for what the README promises; nginx itself (when installed, as
``.ci/run`` does) runs the deployed config in front of two real gateways, and an answer must
stream through it event by event, not arrive in one piece at the end (the config turns
buffering off, and the gateway's ``x-accel-buffering: no`` does so per answer too).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from bench import lb
from ki2api.app import create_app
from ki2api.settings import Settings
from ki2api.simulator import SimulatorServer
from tests.redis_server import free_port
from tests.servers import ServerThread
from tests.stack import API_KEY, stack_env

ROOT = Path(__file__).resolve().parent.parent


def test_the_compose_file_runs_two_replicas_on_one_redis_behind_a_load_balancer() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.replicas.yml").read_text())
    services = compose["services"]
    replicas = [s for name, s in services.items() if name.startswith("ki2api-")]
    assert len(replicas) == 2
    for replica in replicas:
        assert replica["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert "REASONING_SECRET" in replica["environment"]  # items open on either replica
        assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"  # persistence on
    assert services["lb"]["ports"] == ["127.0.0.1:8989:8989"]
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    for setting in ("proxy_buffering off;", "proxy_request_buffering off;", "proxy_read_timeout"):
        assert setting in conf


@pytest.fixture
def nginx_binary() -> str:
    binary = lb.available()
    if binary is None:
        pytest.skip("nginx is not installed (.ci/run installs it)")
    return binary


@pytest.fixture
def two_gateways() -> Iterator[tuple[SimulatorServer, list[ServerThread]]]:
    with SimulatorServer() as sim:
        servers = []
        try:
            for _ in range(2):
                app = create_app(Settings.from_env(stack_env(sim.url)), with_ui=False)
                servers.append(ServerThread(app).start())
            yield sim, servers
        finally:
            for server in servers:
                server.stop()


def test_an_answer_streams_through_nginx_as_it_is_written(
    nginx_binary: str,
    two_gateways: tuple[SimulatorServer, list[ServerThread]],
    tmp_path: Path,
) -> None:
    sim, servers = two_gateways
    listen = free_port()
    argv = lb.argv(nginx_binary, [s.port for s in servers], listen, tmp_path / "nginx")
    nginx = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{listen}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        sim.state.chunk_interval = 0.15
        body = {
            "model": "claude-sonnet-4-5",
            "messages": [{"role": "user", "content": "one two three four five six"}],
            "stream": True,
        }
        arrivals: list[float] = []
        with httpx.stream(
            "POST",
            url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {API_KEY}"},
            timeout=30,
        ) as answer:
            assert answer.status_code == 200
            for chunk in answer.iter_raw():
                if b"data: " in chunk:
                    arrivals.append(time.monotonic())
        assert len(arrivals) >= 3
        assert arrivals[-1] - arrivals[0] > 0.3  # piece by piece, not buffered into one
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
