"""Claude Code (pinned, from npm) answers a question with its WebSearch tool through the
gateway: the main model (the simulator) calls WebSearch, Claude Code sends its separate search
request (only the ``web_search_20250305`` server tool), the gateway searches Kiro's MCP endpoint
(the simulator's, with scripted results) and the final answer is only given once those results
are back in the conversation. Asserted on what Claude Code printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from ki2api.simulator.mcp import SearchResult
from ki2api.simulator.scripts import text_answer, tool_use_answer
from tests.agents.clients import AgentStack, agent_env, run_agent, save_fixture
from tests.stack import API_KEY

pytestmark = pytest.mark.slow

# Claude Code's default model name is resolved by the model lookup; this test is about search.
MODEL = "claude-sonnet-4-5"
URL = "https://en.wikipedia.org/wiki/Kumquat"
ANSWER = "Kumquats are in season in winter (source: Wikipedia)."


def _context(body: Any) -> dict[str, Any]:
    message = body["conversationState"]["currentMessage"]["userInputMessage"]
    context: dict[str, Any] = message.get("userInputMessageContext", {})
    return context


def asks_for_search(body: Any) -> bool:
    """The main agent's first turn: WebSearch is among its tools, no results yet."""
    context = _context(body)
    names = [t["toolSpecification"]["name"] for t in context.get("tools", [])]
    return "WebSearch" in names and not context.get("toolResults")


def has_search_results(body: Any) -> bool:
    return URL in orjson.dumps(body["conversationState"]["currentMessage"]).decode()


def test_websearch_answered_from_the_simulated_search(
    claude_code: Path, stack: AgentStack, tmp_path: Path
) -> None:
    state = stack.sim.state
    query = orjson.dumps({"query": "kumquat season"}).decode()
    state.answer_when(asks_for_search, tool_use_answer("WebSearch", "tooluse_ws1", query))
    state.answer_when(has_search_results, text_answer(ANSWER))
    state.searches.enqueue([SearchResult("Kumquat - Wikipedia", URL, "Kumquats ripen in winter.")])
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = agent_env(
        home,
        ANTHROPIC_BASE_URL=stack.url,
        ANTHROPIC_API_KEY=API_KEY,
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
        # WebSearch offered up front rather than loaded through ToolSearch first.
        ENABLE_TOOL_SEARCH="false",
    )
    argv = [
        str(claude_code),
        "-p",
        "When are kumquats in season? Search the web.",
        "--model",
        MODEL,
        "--allowedTools",
        "WebSearch",
        "--output-format",
        "json",
    ]
    done = run_agent(argv, cwd=work, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["is_error"] is False, result
    assert result["result"] == ANSWER
    assert result["modelUsage"][MODEL]["webSearchRequests"] == 1
    assert [c.query for c in state.searches.calls] == ["kumquat season"]
    searches = [
        b
        for b in stack.recorder.bodies("/v1/messages")
        if [t.get("type") for t in b.get("tools") or []] == ["web_search_20250305"]
    ]
    assert len(searches) == 1
    save_fixture("claude-websearch.json", searches[0])
