"""The real coding agents (Claude Code, Codex CLI, opencode) driven by the agent tests: where
to find them, a clean environment to run them in, and a gateway in front of the simulator that
records what the agent sent.

The agents are pinned and installed by ``.ci/install-agents`` into ``$KI2API_AGENTS_DIR`` (else
``~/.cache/ki2api-agents``), so the tests, CI and a developer use the same versions; a test
installs a missing one itself and skips, saying why, only when npm is missing. Each run gets a
throwaway HOME and a temporary work folder (see ``conftest.py``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from ki2api.app import create_app
from ki2api.settings import Settings
from ki2api.simulator import SimulatorServer, SimulatorState
from tests.servers import ServerThread
from tests.stack import API_KEY, stack_env

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / ".ci" / "install-agents"
FIXTURES = ROOT / "tests" / "fixtures" / "agents"
# As the test run started: the autouse fixture later swaps HOME and drops KI2API_* variables,
# which decide where the agents are cached.
_ENV = dict(os.environ)
SAVE_FIXTURES = os.environ.get("KI2API_SAVE_AGENT_FIXTURES") == "1"


def agent_bin(name: str) -> Path:
    """The pinned agent's executable, installed if needed; a skip only without npm."""
    listing = subprocess.run(
        [str(INSTALL), "--print"], capture_output=True, text=True, check=True, cwd=ROOT, env=_ENV
    ).stdout
    paths = {line.split()[0]: Path(line.split()[2]) for line in listing.splitlines() if line}
    path = paths.get(name)
    assert path is not None, f"{name} is not pinned in .ci/install-agents"
    if not path.exists():
        if shutil.which("npm") is None or shutil.which("node") is None:
            pytest.skip(f"npm is not installed: cannot install {name} (.ci/install-agents)")
        subprocess.run([str(INSTALL)], check=True, cwd=ROOT, timeout=900, env=_ENV)
    assert path.exists(), f"{name} was not installed at {path}"
    return path


@dataclass
class Recorded:
    path: str
    body: Any


@dataclass
class RecordingApp:
    """Wraps the gateway: keeps every request body an agent sent (for the fixtures)."""

    app: Any
    seen: list[Recorded] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        self.seen.append(Recorded(scope["path"], body))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in self.seen if r.path == path]


@dataclass
class AgentStack:
    """The gateway (behind a :class:`RecordingApp`) in front of the simulator."""

    sim: SimulatorServer
    server: ServerThread
    recorder: RecordingApp
    api_key: str = API_KEY

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def state(self) -> SimulatorState:
        return self.sim.state

    def fresh(self) -> None:
        """Forget the last test's scripts, logs and recordings (for a module-wide stack)."""
        self.state.clear_queue()
        self.state.reset_logs()
        self.state.responder = None
        self.state.searches.clear()
        self.recorder.seen.clear()


def agent_stack(**env: str) -> Iterator[AgentStack]:
    """Start a simulator and the gateway in front of it (``env``: the gateway's settings)."""
    with SimulatorServer() as sim:
        settings = Settings.from_env(stack_env(sim.url, **env))
        recorder = RecordingApp(create_app(settings, with_ui=False))
        with ServerThread(recorder) as server:
            yield AgentStack(sim, server, recorder)


def agent_env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: PATH, a throwaway HOME, no proxies, nothing of the caller's config;
    ``KI2API_KEY`` for the agents configured to read their key from it (Codex, opencode)."""
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "KI2API_KEY": API_KEY,
    }
    env.update(extra)
    return env


def claude_env(home: Path, stack: AgentStack, **extra: str) -> dict[str, str]:
    """Claude Code on its defaults: only the base URL and a key (and no traffic to Anthropic's
    own services: no update check, no telemetry)."""
    return agent_env(
        home,
        ANTHROPIC_BASE_URL=stack.url,
        ANTHROPIC_API_KEY=stack.api_key,
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
        **extra,
    )


def run_agent(
    argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def save_fixture(name: str, body: Any) -> None:
    """Keep a captured request (``KI2API_SAVE_AGENT_FIXTURES=1``), for the replay tests; the
    test's temporary folders are written as ``/tmp/agent-test/``."""
    if SAVE_FIXTURES:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        text = orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
        text = re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[\w.-]+/", "/tmp/agent-test/", text)
        (FIXTURES / name).write_text(text + "\n")
