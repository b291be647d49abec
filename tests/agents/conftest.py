"""Fixtures of the agent tests: the pinned agents (see ``clients.py``), a throwaway home and
work folder per test, and a gateway in front of the simulator, shared by a module's tests and
wiped between them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agents.clients import AgentStack, agent_bin, agent_stack


@pytest.fixture(scope="session")
def claude_code() -> Path:
    return agent_bin("claude-code")


@pytest.fixture(scope="session")
def codex() -> Path:
    return agent_bin("codex")


@pytest.fixture(scope="session")
def opencode() -> Path:
    return agent_bin("opencode")


@pytest.fixture
def agent_home(tmp_path: Path) -> Path:
    """A throwaway home: no login, no settings, no history of the developer's own."""
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[AgentStack]:
    """The gateway in front of the simulator, one per test module, started with the module's
    ``GATEWAY_ENV`` (settings such as ``MODEL_ALIASES``) if it has one."""
    yield from agent_stack(**getattr(request.module, "GATEWAY_ENV", {}))


@pytest.fixture(autouse=True)
def fresh(stack: AgentStack) -> None:
    """Each test starts with no scripts, logs or recordings of the one before."""
    stack.fresh()
