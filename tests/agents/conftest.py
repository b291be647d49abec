"""The real coding agents, installed at the versions .ci/install-agents pins.

Each agent is found (or installed, when npm is there) through that script, so the tests, CI
and a developer use the same versions. Without npm the agent tests skip, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import Stack, StackFactory

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / ".ci" / "install-agents"
# As the test run started: the autouse fixture later swaps HOME and drops KI2API_* variables,
# which decide where the agents are cached.
_ENV = dict(os.environ)


def agent_path(name: str) -> Path:
    """The pinned agent's executable, installing it if needed; skips without npm."""

    def listed() -> dict[str, Path]:
        out = subprocess.run(
            [str(INSTALL), "--print"], capture_output=True, text=True, check=True, env=_ENV
        ).stdout
        return {line.split()[0]: Path(line.split()[2]) for line in out.splitlines() if line}

    path = listed().get(name)
    assert path is not None, f"{name} is not pinned in .ci/install-agents"
    if not path.exists():
        if shutil.which("npm") is None:
            pytest.skip(f"npm is not installed: cannot install {name} (.ci/install-agents)")
        subprocess.run([str(INSTALL)], check=True, timeout=600, env=_ENV)
    if not path.exists():
        pytest.skip(f"{name} could not be installed (see .ci/install-agents)")
    return path


@pytest.fixture(scope="session")
def claude_code() -> Path:
    return agent_path("claude-code")


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


def agent_env(home: Path, **extra: str) -> dict[str, str]:
    """The least an agent needs: PATH, a home, and what the test passes (base URL, key)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


@pytest.fixture
def agent_stack(stack_factory: StackFactory) -> Iterator[Stack]:
    yield stack_factory()
