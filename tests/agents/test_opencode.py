"""opencode (pinned, from npm) on its defaults against the gateway in front of the simulator:
an ``opencode.json`` with one OpenAI-compatible provider (base URL, key, one model) in a
temporary work folder and a throwaway HOME. opencode speaks Chat Completions; it also asks the
same model for a session title, in parallel, so the simulator answers the agent's own requests
by content (a request that offers tools, through its ``responder``), not by order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from ki2api.simulator.scripts import text_answer, tool_use_answer
from tests.agents.clients import AgentStack, agent_env, run_agent, save_fixture

pytestmark = pytest.mark.slow

MODEL = "claude-sonnet-4-5"
SECRET = "the secret word is kumquat"


def offers_tools(body: Any) -> bool:
    """The agent's own turn (the title request offers no tools)."""
    context = body["conversationState"]["currentMessage"]["userInputMessage"].get(
        "userInputMessageContext", {}
    )
    return bool(context.get("tools")) and not context.get("toolResults")


def run_opencode(opencode: Path, stack: AgentStack, tmp_path: Path, task: str) -> tuple[str, Path]:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (work / "notes.txt").write_text(SECRET + "\n")
    config = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            "ki2api": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Ki2API",
                "options": {"baseURL": f"{stack.url}/v1", "apiKey": "{env:KI2API_KEY}"},
                "models": {MODEL: {"name": "Claude Sonnet 4.5"}},
            }
        },
        "model": f"ki2api/{MODEL}",
    }
    (work / "opencode.json").write_text(json.dumps(config))
    done = run_agent([str(opencode), "run", task], cwd=work, env=agent_env(home))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    refused = [r for r in stack.sim.state.requests if r.refusal is not None]
    assert not refused, refused
    return done.stdout, work


def agent_turns(stack: AgentStack) -> list[Any]:
    bodies = [b for b in stack.recorder.bodies("/v1/chat/completions") if b.get("tools")]
    assert bodies, "opencode sent no request with its tools"
    return bodies


def test_plain_answer(opencode: Path, stack: AgentStack, tmp_path: Path) -> None:
    hello = text_answer("Hello from the Kiro simulator.")
    stack.state.responder = lambda body: hello if offers_tools(body) else None
    out, _ = run_opencode(opencode, stack, tmp_path, "say hello to the gateway")
    assert "Hello from the Kiro simulator." in out
    first = agent_turns(stack)[0]
    assert first["stream"] is True and first["model"] == MODEL
    save_fixture("opencode-plain.json", first)


def test_tool_loop_through_read(opencode: Path, stack: AgentStack, tmp_path: Path) -> None:
    work = tmp_path / "work"
    args = orjson.dumps({"filePath": str(work / "notes.txt")}).decode()
    read = tool_use_answer("read", "tooluse_read1", args)
    # The read call for the agent's turn; its answer after the tool result (and the title
    # request) get the fake model's default, which quotes what it was sent.
    stack.state.responder = lambda body: read if offers_tools(body) else None
    out, _ = run_opencode(opencode, stack, tmp_path, "read notes.txt and tell me the secret word")
    # The simulator's model quotes the tool result it got back: opencode read the file.
    assert "Received 1 tool result" in out and "kumquat" in out
    second = agent_turns(stack)[1]
    results = [m for m in second["messages"] if m.get("role") == "tool"]
    assert results and "kumquat" in str(results[0]["content"])
    save_fixture("opencode-tool-loop.json", second)
