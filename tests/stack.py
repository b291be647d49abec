"""The whole path on real sockets: Kiro simulator ← gateway (uvicorn) ← a real SDK client."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ki2api.app import create_app
from ki2api.kiro.accounts.pool import AccountPool
from ki2api.settings import Settings
from ki2api.simulator import SimulatorServer, SimulatorState
from ki2api.teams.gate import Teams
from tests.servers import ServerThread

API_KEY = "test-api-key-0123456789"
ACCESS_TOKEN = "test-access-token-WXYZ"


@dataclass
class Stack:
    sim: SimulatorServer
    server: ServerThread
    settings: Settings
    app: Any
    api_key: str = API_KEY
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def base_url(self) -> str:
        return f"{self.server.url}/v1"

    @property
    def state(self) -> SimulatorState:
        return self.sim.state

    @property
    def runtime(self) -> Any:
        return self.app.runtime

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}


def stack_env(sim_url: str, **extra: str) -> dict[str, str]:
    env = {
        "API_KEY": API_KEY,
        "KIRO_API_URL": f"{sim_url}/generateAssistantResponse",
        "KIRO_REFRESH_URL": f"{sim_url}/refreshToken",
        "KIRO_OIDC_URL": f"{sim_url}/token",
        "KIRO_MCP_URL": f"{sim_url}/mcp",
        "KIRO_ACCESS_TOKEN": ACCESS_TOKEN,
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


class StackFactory:
    def __init__(self) -> None:
        self._started: list[Stack] = []
        self._folders: list[str] = []

    def __call__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        with_ui: bool = False,
        state: SimulatorState | None = None,
        pool: Callable[[Settings], AccountPool] | None = None,
        uvloop: bool = False,
        teams: Callable[[Settings], Teams] | None = None,
        **overrides: Any,
    ) -> Stack:
        """``pool`` builds the account pool from the settings (e.g. on a fake clock), ``teams``
        the client keys (e.g. on a fake clock); ``uvloop`` runs the gateway on the event loop
        production uses."""
        env = dict(env or {})
        if "DATA_DIR" not in env and "data_dir" not in overrides:
            # Its own store (keys, usage, accounts added at run time): a test that wants two
            # gateways to share one names the folder.
            self._folders.append(tempfile.mkdtemp(prefix="ki2api-stack-data-"))
            env["DATA_DIR"] = self._folders[-1]
        sim = SimulatorServer(state=state).start()
        settings = Settings.from_env(stack_env(sim.url, **env), **overrides)
        app = create_app(
            settings,
            with_ui=with_ui,
            pool=pool(settings) if pool else None,
            teams=teams(settings) if teams else None,
        )
        server = ServerThread(app, uvloop=uvloop).start()
        stack = Stack(sim=sim, server=server, settings=settings, app=app)
        self._started.append(stack)
        return stack

    def close(self) -> None:
        for stack in reversed(self._started):
            stack.server.stop()
            stack.sim.stop()
        for folder in self._folders:
            shutil.rmtree(folder, ignore_errors=True)


def make_stack_factory() -> Iterator[StackFactory]:
    factory = StackFactory()
    try:
        yield factory
    finally:
        factory.close()
