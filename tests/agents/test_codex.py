"""Codex CLI (pinned, from npm) on its defaults against the gateway in front of the simulator:
only a provider (base URL, key variable, ``wire_api = "responses"``) and a model in a throwaway
``CODEX_HOME``. The simulator's scripts make the model call Codex's own tools; each test asserts
on what Codex printed or did on disk. Codex runs without its sandbox
(``--dangerously-bypass-approvals-and-sandbox``) inside a temporary work folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from ki2api.simulator.default_model import SIMULATOR_TAG
from ki2api.simulator.scripts import tool_use_answer
from tests.agents.clients import AgentStack, agent_env, run_agent, save_fixture

pytestmark = pytest.mark.slow

MODEL = "claude-sonnet-4-5"
# Codex offers its free-form apply_patch tool to the gpt-5 family only; the gateway serves such
# a name when the operator maps it (MODEL_ALIASES).
GPT_MODEL = "gpt-5.5"
GATEWAY_ENV = {"MODEL_ALIASES": orjson.dumps({GPT_MODEL: "claude-sonnet-4-6"}).decode()}
SECRET = "the secret word is kumquat"
PATCH = (
    "*** Begin Patch\n*** Update File: notes.txt\n@@\n"
    "-the secret word is kumquat\n+the secret word is quince\n*** End Patch\n"
)


def run_codex(
    codex: Path, stack: AgentStack, tmp_path: Path, task: str, model: str = MODEL
) -> tuple[str, Path]:
    home, codex_home, work = tmp_path / "home", tmp_path / "codex-home", tmp_path / "work"
    for folder in (home, codex_home, work):
        folder.mkdir()
    (work / "notes.txt").write_text(SECRET + "\n")
    (codex_home / "config.toml").write_text(
        f'model = "{model}"\n'
        'model_provider = "ki2api"\n'
        "[model_providers.ki2api]\n"
        'name = "Ki2API"\n'
        f'base_url = "{stack.url}/v1"\n'
        'env_key = "KI2API_KEY"\n'
        'wire_api = "responses"\n'
    )
    argv = [
        str(codex),
        "exec",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        task,
    ]
    done = run_agent(argv, cwd=work, env=agent_env(home, CODEX_HOME=str(codex_home)))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    refused = [r for r in stack.sim.state.requests if r.refusal is not None]
    assert not refused, refused
    return done.stdout, work


def requests(stack: AgentStack) -> list[Any]:
    bodies = stack.recorder.bodies("/v1/responses")
    assert bodies, "Codex sent no request"
    return bodies


def test_plain_answer(codex: Path, stack: AgentStack, tmp_path: Path) -> None:
    out, _ = run_codex(codex, stack, tmp_path, "say hello to the gateway")
    assert SIMULATOR_TAG in out and "say hello to the gateway" in out
    first = requests(stack)[0]
    assert first["stream"] is True and first["store"] is False
    assert {t["type"] for t in first["tools"]} >= {"function", "namespace", "web_search"}
    save_fixture("codex-plain.json", first)


def test_tool_loop_through_exec_command(codex: Path, stack: AgentStack, tmp_path: Path) -> None:
    args = orjson.dumps({"cmd": "cat notes.txt"}).decode()
    stack.sim.state.enqueue(tool_use_answer("exec_command", "tooluse_exec1", args))
    out, _ = run_codex(codex, stack, tmp_path, "read notes.txt and tell me the secret word")
    # The simulator's model quotes the tool result it got back: Codex ran the command.
    assert "Received 1 tool result" in out and SECRET in out
    second = requests(stack)[1]
    outputs = [i for i in second["input"] if i.get("type") == "function_call_output"]
    assert outputs and SECRET in str(outputs[0]["output"])
    save_fixture("codex-exec-command.json", second)


def test_apply_patch_through_exec_command_changes_the_file(
    codex: Path, stack: AgentStack, tmp_path: Path
) -> None:
    command = f"apply_patch <<'EOF'\n{PATCH}EOF\n"
    args = orjson.dumps({"cmd": command}).decode()
    stack.sim.state.enqueue(tool_use_answer("exec_command", "tooluse_patch1", args))
    out, work = run_codex(codex, stack, tmp_path, "change the secret word to quince")
    assert (work / "notes.txt").read_text() == "the secret word is quince\n"
    assert "Updated the following files" in out


def test_apply_patch_custom_tool_changes_the_file(
    codex: Path, stack: AgentStack, tmp_path: Path
) -> None:
    args = orjson.dumps({"input": PATCH}).decode()
    stack.sim.state.enqueue(tool_use_answer("apply_patch", "tooluse_patch2", args))
    out, work = run_codex(codex, stack, tmp_path, "change the secret word", model=GPT_MODEL)
    assert (work / "notes.txt").read_text() == "the secret word is quince\n"
    first, second = requests(stack)[:2]
    assert any(t["type"] == "custom" and t["name"] == "apply_patch" for t in first["tools"])
    calls = [i for i in second["input"] if i.get("type") == "custom_tool_call"]
    assert calls and calls[0]["input"] == PATCH
    assert any(i.get("type") == "custom_tool_call_output" for i in second["input"])
    save_fixture("codex-gpt-plain.json", first)
    save_fixture("codex-custom-tool.json", second)
