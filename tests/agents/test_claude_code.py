"""Claude Code, the real one (the version .ci/install-agents pins), driven headless through the
gateway in front of the Kiro simulator, on its defaults: only ANTHROPIC_BASE_URL and a key.

The simulator's ``responder`` plays the model: it reads each request Kiro would get and
answers it (a tool call, a summary, "input too long"...). Every test asserts on what the agent
printed or did, never on the gateway's log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ki2api.simulator.faults import http_error
from ki2api.simulator.scripts import Script, text_answer, tool_use_answer
from tests.agents.clients import AgentStack, claude_env, run_agent

pytestmark = pytest.mark.slow

TIMEOUT = 120  # seconds per agent run; each takes a second or two on a quiet machine


def run_claude(
    claude: Path, stack: AgentStack, home: Path, work: Path, *args: str
) -> dict[str, Any]:
    done = run_agent(
        [str(claude), "-p", *args, "--output-format", "json"],
        cwd=work,
        env=claude_env(home, stack),
        timeout=TIMEOUT,
    )
    assert done.stdout.strip(), f"no output (exit {done.returncode}): {done.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["_exit"] = done.returncode
    return result


def current_message(body: Any) -> tuple[str, list[str]]:
    """The text of the request's current user message and its tool results' texts."""
    message = body["conversationState"]["currentMessage"]["userInputMessage"]
    context = message.get("userInputMessageContext") or {}
    results = [
        " ".join(part.get("text", "") for part in result.get("content", []))
        for result in context.get("toolResults", [])
    ]
    return str(message.get("content", "")), results


def test_plain_answer_on_its_default_model(
    claude_code: Path, stack: AgentStack, agent_home: Path, work_dir: Path
) -> None:
    asked: list[str] = []

    def model(body: Any) -> Script:
        asked.append(body["conversationState"]["currentMessage"]["userInputMessage"]["modelId"])
        return text_answer("Hello from the gateway: PLAIN-ANSWER-42.")

    stack.state.responder = model
    result = run_claude(claude_code, stack, agent_home, work_dir, "Say hello.")
    assert result["is_error"] is False, result
    assert result["_exit"] == 0
    assert "PLAIN-ANSWER-42" in result["result"]
    # Its default model (whatever this version calls it) was served, not refused.
    assert result["modelUsage"], result
    assert asked and all(m.startswith("claude-") for m in asked)


def test_tool_loop_reads_a_file_in_the_work_folder(
    claude_code: Path, stack: AgentStack, agent_home: Path, work_dir: Path
) -> None:
    notes = work_dir / "notes.txt"
    notes.write_text("The launch code is PAPAYA-7431.\n")
    reads: list[str] = []

    def model(body: Any) -> Script:
        text, results = current_message(body)
        if results:  # the agent ran the tool: quote what it read
            reads.extend(results)
            return text_answer(f"The file says: {' '.join(results)}")
        arguments = json.dumps({"file_path": str(notes)})
        return tool_use_answer("Read", "tooluse_read_notes_0001", arguments)

    stack.state.responder = model
    result = run_claude(claude_code, stack, agent_home, work_dir, "What is in notes.txt?")
    assert result["is_error"] is False, result
    assert "PAPAYA-7431" in result["result"]  # only the agent's Read could have found it
    assert result["num_turns"] >= 2


def test_prompt_too_long_makes_it_compact_and_carry_on(
    claude_code: Path, stack: AgentStack, agent_home: Path, work_dir: Path
) -> None:
    """A second session turn is 'too long' for Kiro once: Claude Code summarises the
    conversation (its compaction) and asks again with the summary, which then goes through."""
    refused = {"done": False}

    def model(body: Any) -> Script:
        text, _ = current_message(body)
        if text.rstrip().endswith("SECOND question"):
            if not refused["done"]:
                refused["done"] = True
                return Script(
                    (http_error(400, "Input is too long.", "CONTENT_LENGTH_EXCEEDS_THRESHOLD"),),
                    "too_long",
                )
            return text_answer("ANSWER-AFTER-COMPACTION")
        if body["conversationState"].get("history") and "summar" in text.lower():
            return text_answer("<summary>The user said hello; FIRST-TURN-DONE.</summary>")
        return text_answer("ANSWER-TO-FIRST")

    stack.state.responder = model
    first = run_claude(claude_code, stack, agent_home, work_dir, "FIRST hello")
    assert first["is_error"] is False and "ANSWER-TO-FIRST" in first["result"], first
    second = run_claude(
        claude_code,
        stack,
        agent_home,
        work_dir,
        "SECOND question",
        "--resume",
        first["session_id"],
    )
    assert refused["done"]
    assert second["is_error"] is False, second
    assert "ANSWER-AFTER-COMPACTION" in second["result"]
    # What it did on disk: its session transcript records the compaction.
    transcripts = list((agent_home / ".claude" / "projects").rglob("*.jsonl"))
    assert any("compact" in path.read_text() for path in transcripts), transcripts
