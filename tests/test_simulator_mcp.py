"""The simulator's web-search endpoint (``POST /mcp``) and ``SimulatorState.responder``, and
the gateway's MCP client against it: the strict check of the JSON-RPC body, scripted results
and faults, the headers Kiro wants."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from ki2api.kiro.accounts.credentials import Credential
from ki2api.kiro.http.mcp import KiroWebSearch, SearchFailed, parse_hits
from ki2api.settings import Settings
from ki2api.simulator import SimulatorServer
from ki2api.simulator.mcp import SearchFault, SearchResult, fake_results
from ki2api.simulator.scripts import HttpError, text_answer

ARN = "arn:aws:codewhisperer:us-east-1:123456789012:profile/ABC"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh(sim: SimulatorServer) -> None:
    sim.state.clear_queue()
    sim.state.reset_logs()
    sim.state.searches.clear()


def call(query: Any = "kumquat", **extra: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": "1",
        "method": "tools/call",
        "params": {"name": "web_search", "arguments": {"query": query}},
        **extra,
    }


def post(sim: SimulatorServer, body: Any, token: str = "tok") -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(sim.url + "/mcp", json=body, headers=headers, timeout=10)


def test_default_results_are_made_from_the_query(sim):
    answer = post(sim, call()).json()
    inner = orjson.loads(answer["result"]["content"][0]["text"])
    assert [r["url"] for r in inner["results"]] == [r.url for r in fake_results("kumquat")]
    assert answer["result"]["isError"] is False and inner["query"] == "kumquat"
    assert [c.query for c in sim.state.searches.calls] == ["kumquat"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({**call(), "jsonrpc": "1.0"}, "jsonrpc"),
        ({**call(), "method": "tools/list"}, "method"),
        (call(query=""), "query"),
        (call(query=5), "query"),
        ({**call(), "params": {"name": "fetch", "arguments": {}}}, "params.name"),
    ],
)
def test_malformed_calls_are_refused(sim, body, reason):
    answer = post(sim, body).json()
    assert answer["error"]["code"] == -32602 and reason in answer["error"]["message"]
    assert reason in (sim.state.searches.calls[0].refusal or "")


def test_missing_token_is_a_403(sim):
    assert post(sim, call(), token="").status_code == 403


def test_scripted_results_and_faults(sim):
    hit = SearchResult("T", "https://example.org/a", "s")
    sim.state.searches.enqueue(
        [hit],
        SearchFault(tool_error="quota"),
        SearchFault(rpc_error="boom"),
        SearchFault(http=HttpError(429, {"message": "slow down"})),
    )
    assert [h.url for h in parse_hits(post(sim, call()).json())] == ["https://example.org/a"]
    with pytest.raises(SearchFailed, match="quota"):
        parse_hits(post(sim, call()).json())
    with pytest.raises(SearchFailed, match="boom"):
        parse_hits(post(sim, call()).json())
    assert post(sim, call()).status_code == 429


def search(sim: SimulatorServer, credential: Credential, query: str = "kumquat") -> Any:
    settings = Settings.from_env({"KIRO_MCP_URL": sim.url + "/mcp"})

    async def run() -> Any:
        async with httpx.AsyncClient() as http:
            return await KiroWebSearch(http, settings).search(query, credential)

    return asyncio.run(run())


def test_client_sends_what_kiro_wants(sim):
    hits = search(sim, Credential("a", "ksk_key", ARN, "us-east-1", is_api_key=True))
    assert [h.url for h in hits] == [r.url for r in fake_results("kumquat")]
    assert hits[0].published_ms == 1_767_225_600_000
    headers = sim.state.searches.calls[0].headers
    assert headers["tokentype"] == "API_KEY"
    assert headers["x-amzn-kiro-profile-arn"] == ARN
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (SearchFault(http=HttpError(500, {"message": "x"})), "unavailable"),
        (SearchFault(http=HttpError(429, {"message": "x"})), "too_many_requests"),
        (SearchFault(tool_error="nope"), "unavailable"),
    ],
)
def test_client_failures_are_search_failed(sim, fault, code):
    sim.state.searches.enqueue(fault)
    with pytest.raises(SearchFailed) as caught:
        search(sim, Credential("a", "tok", None, "us-east-1"))
    assert caught.value.code == code


def test_client_refuses_a_query_too_long_without_calling(sim):
    with pytest.raises(SearchFailed) as caught:
        search(sim, Credential("a", "tok", None, "us-east-1"), "q" * 2000)
    assert caught.value.code == "query_too_long"
    assert sim.state.searches.calls == []


def test_responder_picks_the_answer_by_content_after_the_queue(sim):
    sim.state.responder = lambda body: (
        text_answer("B") if "second" in orjson.dumps(body).decode() else None
    )
    sim.state.enqueue(text_answer("A"))
    texts = []
    for prompt in ("second", "second", "third"):
        body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
        answer = httpx.post(sim.url + "/v1/chat/completions", json=body, timeout=10).json()
        texts.append(answer["choices"][0]["message"]["content"])
    # The queue first; then the responder; where it answers None, the fake model.
    assert texts[:2] == ["A", "B"]
    assert "third" in texts[2]
    assert sim.state.pending() == 0
