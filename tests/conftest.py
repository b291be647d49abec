"""Shared fixtures. Every test runs with a clean environment and a temporary home directory,
so nothing reads the developer's real Kiro login or API keys."""

from __future__ import annotations

import gc
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from ki2api.kiro.accounts import credits
from tests.stack import Stack, StackFactory, make_stack_factory
from tests.tls import TlsFiles

ISOLATED_PREFIXES = ("KIRO_", "KI2API_", "SPACE_", "HF_", "HUGGING", "REDIS_", "BACKUP_")
ISOLATED_NAMES = {
    "API_KEY",
    "ADMIN_KEY",
    "HOST",
    "PORT",
    "RATE_LIMIT",
    "CORS_ORIGINS",
    "DATA_DIR",
    "XDG_DATA_HOME",
    "LOCALAPPDATA",
    "USAGE_FLUSH_SECONDS",
}

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "kiro-captures"


@pytest.fixture(scope="session", autouse=True)
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A home folder for fixtures wider than one test (a module's gateway): they start before
    ``isolated_env``, and must not keep their stores in the real user's data folder."""
    home = tmp_path_factory.mktemp("session-home")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("HOME", "USERPROFILE"):
            patch.setenv(name, str(home))
        for name in ("DATA_DIR", "XDG_DATA_HOME", "LOCALAPPDATA"):
            patch.delenv(name, raising=False)
        yield home


@pytest.fixture(scope="module", autouse=True)
def collect_what_the_module_left() -> Iterator[None]:
    """Collect garbage at the end of each test module. A socket a test left open is then
    finalised here, where it is reported with the module that leaked it, rather than in
    whichever later test the collector happens to run in (where its ResourceWarning fails a
    test that did nothing wrong; that happened in CI after a hypothesis test)."""
    yield
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        gc.collect()
    for warning in seen:
        if issubclass(warning.category, ResourceWarning):
            sys.__stderr__.write(f"\nleft open by this module's tests: {warning.message}\n")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # No background getUsageLimits calls unless a test sets KIRO_USAGE_REFRESH itself.
    monkeypatch.setattr(credits, "DEFAULT_EVERY", 0.0)
    for name in list(os.environ):
        if name.startswith(ISOLATED_PREFIXES) or name in ISOLATED_NAMES:
            monkeypatch.delenv(name, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    return home


@pytest.fixture
def capture_dir() -> Iterator[Path]:
    if not FIXTURES.is_dir():
        pytest.skip("../shared/fixtures/kiro-captures is not present")
    yield FIXTURES


@pytest.fixture
def stack_factory() -> Iterator[StackFactory]:
    """Start simulator + gateway on loopback; call it with env overrides (``""`` removes one)."""
    yield from make_stack_factory()


@pytest.fixture
def stack(stack_factory: StackFactory) -> Stack:
    return stack_factory()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA made for this test run and its certificate for 127.0.0.1 and localhost."""
    return TlsFiles.make(tmp_path_factory.mktemp("tls"))
