"""Claude Code (pinned, from npm) answers a question with its WebSearch tool through the
gateway, on its defaults (only the base URL and a key: its own default model, resolved by the
gateway, and WebSearch deferred behind its ToolSearch tool). The main model (the simulator) loads
WebSearch through ToolSearch and calls it; Claude Code sends its separate search request (only
the ``web_search_20250305`` server tool), the gateway searches Kiro's MCP endpoint (the
simulator's, with scripted results) and the final answer is only given once those results are
back in the conversation. Asserted on what Claude Code printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from ki2api.simulator.mcp import SearchResult
from ki2api.simulator.scripts import Script, text_answer, tool_use_answer
from tests.agents.clients import AgentStack, claude_env, run_agent, save_fixture

pytestmark = pytest.mark.slow

URL = "https://en.wikipedia.org/wiki/Kumquat"
ANSWER = "Kumquats are in season in winter (source: Wikipedia)."


def _context(body: Any) -> dict[str, Any]:
    message = body["conversationState"]["currentMessage"]["userInputMessage"]
    context: dict[str, Any] = message.get("userInputMessageContext", {})
    return context


def has_search_results(body: Any) -> bool:
    return URL in orjson.dumps(body["conversationState"]["currentMessage"]).decode()


def model(body: Any) -> Script | None:
    """The main model: load WebSearch (deferred behind ToolSearch), search, answer from the
    results. Anything else (the search request's own summary) gets the default answer."""
    context = _context(body)
    names = {t["toolSpecification"]["name"] for t in context.get("tools", [])}
    if has_search_results(body):
        return text_answer(ANSWER)
    if "WebSearch" in names:
        query = orjson.dumps({"query": "kumquat season"}).decode()
        return tool_use_answer("WebSearch", "tooluse_ws1", query)
    if "ToolSearch" in names and not context.get("toolResults"):
        select = orjson.dumps({"query": "select:WebSearch", "max_results": 1}).decode()
        return tool_use_answer("ToolSearch", "tooluse_ts1", select)
    return None


def test_websearch_answered_from_the_simulated_search(
    claude_code: Path, stack: AgentStack, tmp_path: Path
) -> None:
    state = stack.state
    state.responder = model
    state.searches.enqueue([SearchResult("Kumquat - Wikipedia", URL, "Kumquats ripen in winter.")])
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    argv = [
        str(claude_code),
        "-p",
        "When are kumquats in season? Search the web.",
        # Headless, a tool that asks permission waits for it: granted here (no gateway setting).
        "--allowedTools",
        "WebSearch",
        "--output-format",
        "json",
    ]
    done = run_agent(argv, cwd=work, env=claude_env(home, stack))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["is_error"] is False, result
    assert result["result"] == ANSWER
    # Its own default model, whatever this version calls it, served the turn and the search.
    assert sum(u["webSearchRequests"] for u in result["modelUsage"].values()) == 1, result
    assert [c.query for c in state.searches.calls] == ["kumquat season"]
    searches = [
        b
        for b in stack.recorder.bodies("/v1/messages")
        if [t.get("type") for t in b.get("tools") or []] == ["web_search_20250305"]
    ]
    assert len(searches) == 1
    save_fixture("claude-websearch.json", searches[0])
