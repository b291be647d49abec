"""Web search run by the gateway, end to end: the real ``anthropic`` and ``openai`` SDKs (and
raw SSE) against the gateway on loopback, with the simulator playing both the model and Kiro's
MCP search endpoint (scripted results and faults)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from ki2api.simulator.faults import throttled
from ki2api.simulator.mcp import SearchFault, SearchResult
from ki2api.simulator.scripts import (
    HttpError,
    parallel_tool_use_answer,
    text_answer,
    tool_use_answer,
)
from tests.sse_events import parse_sse
from tests.stack import Stack, StackFactory, make_stack_factory

MODEL = "claude-sonnet-4-5"
SERVER_TOOL = {"type": "web_search_20250305", "name": "web_search", "max_uses": 8}
RESULTS = [
    SearchResult("Kumquat - Wikipedia", "https://en.wikipedia.org/wiki/Kumquat", "A small citrus."),
    SearchResult("Kumquat recipes", "https://recipes.example.org/kumquat", "Candied kumquats."),
]


@pytest.fixture(scope="module")
def factory() -> Iterator[StackFactory]:
    yield from make_stack_factory()


@pytest.fixture(scope="module")
def stack(factory: StackFactory) -> Stack:
    return factory()


@pytest.fixture(autouse=True)
def fresh(stack: Stack) -> None:
    stack.state.clear_queue()
    stack.state.reset_logs()
    stack.state.searches.clear()


def kiro_requests(stack: Stack) -> list[Any]:
    return [r.body for r in stack.state.requests]


def claude_code_body(query: str, stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 32000,
        "stream": stream,
        "system": [
            {"type": "text", "text": "You are an assistant for performing a web search tool use"}
        ],
        "messages": [{"role": "user", "content": f"Perform a web search for the query: {query}"}],
        "tools": [SERVER_TOOL],
    }


def post_messages(stack: Stack, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        stack.url + "/v1/messages?beta=true",
        json=body,
        headers={"x-api-key": stack.api_key, "anthropic-version": "2023-06-01"},
        timeout=30,
    )


def searched_queries(stack: Stack) -> list[str | None]:
    return [c.query for c in stack.state.searches.calls]


# --- Claude Code's WebSearch request: searched at once, no model call ---------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_claude_code_websearch_request_is_searched_directly(stack, stream):
    stack.state.searches.enqueue(RESULTS)
    response = post_messages(stack, claude_code_body("kumquat facts", stream))
    assert response.status_code == 200, response.text
    if stream:
        events = [e.json() for e in parse_sse(response.text)]
        starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
        kinds = [b["type"] for b in starts]
        assert kinds == ["server_tool_use", "web_search_tool_result", "text"]
        deltas = [e for e in events if e["type"] == "content_block_delta" and e["index"] == 0]
        assert orjson.loads(deltas[0]["delta"]["partial_json"]) == {"query": "kumquat facts"}
        result = starts[1]
        usage = next(e for e in events if e["type"] == "message_delta")["usage"]
    else:
        message = response.json()
        kinds = [b["type"] for b in message["content"]]
        assert kinds == ["server_tool_use", "web_search_tool_result", "text"]
        assert message["content"][0]["input"] == {"query": "kumquat facts"}
        assert message["content"][0]["id"].startswith("srvtoolu_")
        result = message["content"][1]
        usage = message["usage"]
    assert [r["url"] for r in result["content"]] == [r.url for r in RESULTS]
    assert result["content"][0]["title"] == "Kumquat - Wikipedia"
    assert usage["server_tool_use"] == {"web_search_requests": 1}
    assert searched_queries(stack) == ["kumquat facts"]
    assert stack.state.requests == []  # no model call
    call = stack.state.searches.calls[0]
    assert call.headers["authorization"] == "Bearer test-access-token-WXYZ"
    assert call.body["method"] == "tools/call" and call.refusal is None


def test_claude_code_websearch_through_the_sdk(stack):
    stack.state.searches.enqueue(RESULTS)
    with anthropic.Anthropic(base_url=stack.url, api_key=stack.api_key, max_retries=0) as client:
        body = claude_code_body("kumquat facts", True)
        with client.messages.stream(
            model=MODEL,
            max_tokens=1000,
            system=body["system"],
            messages=body["messages"],
            tools=body["tools"],
        ) as events:
            message = events.get_final_message()
    assert [b.type for b in message.content] == [
        "server_tool_use",
        "web_search_tool_result",
        "text",
    ]
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_search_requests == 1
    assert "en.wikipedia.org/wiki/Kumquat" in message.content[2].text  # type: ignore[union-attr]


def test_failed_search_is_an_error_block_not_a_failed_request(stack):
    stack.state.searches.enqueue(SearchFault(http=HttpError(500, {"message": "boom"})))
    response = post_messages(stack, claude_code_body("kumquat", False))
    assert response.status_code == 200, response.text
    result = response.json()["content"][1]
    assert result["content"] == {
        "type": "web_search_tool_result_error",
        "error_code": "unavailable",
    }
    assert "usage" in response.json() and "server_tool_use" not in response.json()["usage"]


# --- the model asks for a search in the middle of its answer ------------------------------------


def search_call(query: str, call_id: str = "tooluse_ws1") -> Any:
    return tool_use_answer("web_search", call_id, orjson.dumps({"query": query}).decode())


@pytest.mark.parametrize("stream", [False, True])
def test_model_search_is_run_and_the_turn_continues(stack, stream):
    stack.state.enqueue(search_call("kumquat season"), text_answer("Kumquats ripen in winter."))
    stack.state.searches.enqueue(RESULTS)
    body = {
        "model": MODEL,
        "max_tokens": 1000,
        "stream": stream,
        "messages": [{"role": "user", "content": "When are kumquats in season?"}],
        "tools": [SERVER_TOOL, {"name": "get_time", "input_schema": {"type": "object"}}],
    }
    response = post_messages(stack, body)
    assert response.status_code == 200, response.text
    if stream:
        events = [e.json() for e in parse_sse(response.text)]
        kinds = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
        text = "".join(
            e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta"
        )
        stop = next(e for e in events if e["type"] == "message_delta")
        stop_reason, usage = stop["delta"]["stop_reason"], stop["usage"]
    else:
        message = response.json()
        kinds = [b["type"] for b in message["content"]]
        text = "".join(b.get("text", "") for b in message["content"])
        stop_reason, usage = message["stop_reason"], message["usage"]
    assert kinds == ["server_tool_use", "web_search_tool_result", "text"]
    assert text == "Kumquats ripen in winter."
    assert stop_reason == "end_turn"
    assert usage["server_tool_use"] == {"web_search_requests": 1}
    assert searched_queries(stack) == ["kumquat season"]
    first, second = kiro_requests(stack)
    names = [
        t["toolSpecification"]["name"]
        for t in first["conversationState"]["currentMessage"]["userInputMessage"][
            "userInputMessageContext"
        ]["tools"]
    ]
    assert names == ["get_time", "web_search"]
    results = second["conversationState"]["currentMessage"]["userInputMessage"][
        "userInputMessageContext"
    ]["toolResults"]
    assert "en.wikipedia.org/wiki/Kumquat" in results[0]["content"][0]["text"]
    assert all(r.refusal is None for r in stack.state.requests)


def test_failed_search_goes_back_to_the_model_as_a_tool_error(stack):
    stack.state.enqueue(search_call("kumquat"), text_answer("I could not search."))
    stack.state.searches.enqueue(SearchFault(rpc_error="internal"))
    body = {
        "model": MODEL,
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "kumquat?"}],
        "tools": [SERVER_TOOL],
    }
    response = post_messages(stack, body)
    assert response.status_code == 200, response.text
    message = response.json()
    assert message["content"][1]["content"]["error_code"] == "unavailable"
    assert message["content"][-1]["text"] == "I could not search."
    result = kiro_requests(stack)[1]["conversationState"]["currentMessage"]["userInputMessage"][
        "userInputMessageContext"
    ]["toolResults"][0]
    assert result["status"] == "error" and "failed" in result["content"][0]["text"]


def test_max_uses_is_honoured(stack):
    stack.state.enqueue(
        search_call("one", "tooluse_a"), search_call("two", "tooluse_b"), text_answer("done")
    )
    body = {
        "model": MODEL,
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "search twice"}],
        "tools": [{**SERVER_TOOL, "max_uses": 1}],
    }
    response = post_messages(stack, body)
    assert response.status_code == 200, response.text
    message = response.json()
    results = [b for b in message["content"] if b["type"] == "web_search_tool_result"]
    assert isinstance(results[0]["content"], list)
    assert results[1]["content"] == {
        "type": "web_search_tool_result_error",
        "error_code": "max_uses_exceeded",
    }
    assert searched_queries(stack) == ["one"]
    assert message["usage"]["server_tool_use"] == {"web_search_requests": 1}


def test_earlier_search_blocks_in_history_are_accepted(stack):
    stack.state.enqueue(text_answer("ok"))
    body = {
        "model": MODEL,
        "max_tokens": 1000,
        "tools": [SERVER_TOOL],
        "messages": [
            {"role": "user", "content": "kumquat?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "server_tool_use",
                        "id": "srvtoolu_1",
                        "name": "web_search",
                        "input": {"query": "kumquat"},
                    },
                    {
                        "type": "web_search_tool_result",
                        "tool_use_id": "srvtoolu_1",
                        "content": [
                            {
                                "type": "web_search_result",
                                "title": "Kumquat",
                                "url": "https://en.wikipedia.org/wiki/Kumquat",
                                "encrypted_content": "x",
                                "page_age": None,
                            }
                        ],
                    },
                    {"type": "text", "text": "A citrus."},
                ],
            },
            {"role": "user", "content": "thanks"},
        ],
    }
    response = post_messages(stack, body)
    assert response.status_code == 200, response.text
    sent = orjson.dumps(kiro_requests(stack)[0]).decode()
    assert "en.wikipedia.org/wiki/Kumquat" in sent


def test_plain_request_never_searches(stack):
    stack.state.enqueue(text_answer("hi"))
    response = post_messages(
        stack,
        {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200
    assert stack.state.searches.calls == []
    tools = kiro_requests(stack)[0]["conversationState"]["currentMessage"]["userInputMessage"]
    assert "web_search" not in orjson.dumps(tools).decode()


# --- OpenAI Responses: {"type": "web_search"} ---------------------------------------------------


def cited_answer() -> Any:
    return text_answer("See https://en.wikipedia.org/wiki/Kumquat for more.")


@pytest.mark.parametrize("stream", [False, True])
def test_responses_web_search_call_items_and_citations(stack, stream):
    stack.state.enqueue(search_call("kumquat"), cited_answer())
    stack.state.searches.enqueue(RESULTS)
    body = {
        "model": MODEL,
        "input": "What is a kumquat?",
        "tools": [{"type": "web_search", "external_web_access": False}],
        "stream": stream,
    }
    response = httpx.post(
        stack.url + "/v1/responses", json=body, headers=stack.headers(), timeout=30
    )
    assert response.status_code == 200, response.text
    if stream:
        events = [e.json() for e in parse_sse(response.text)]
        types = [e["type"] for e in events]
        assert "response.web_search_call.searching" in types
        assert "response.web_search_call.completed" in types
        output = events[-1]["response"]["output"]
    else:
        output = response.json()["output"]
    assert [item["type"] for item in output] == ["web_search_call", "message"]
    search = output[0]
    assert search["status"] == "completed" and search["action"]["query"] == "kumquat"
    assert [s["url"] for s in search["action"]["sources"]] == [r.url for r in RESULTS]
    text = output[1]["content"][0]
    url = "https://en.wikipedia.org/wiki/Kumquat"
    start = text["text"].index(url)
    assert text["annotations"] == [
        {
            "type": "url_citation",
            "start_index": start,
            "end_index": start + len(url),
            "url": url,
            "title": "Kumquat - Wikipedia",
        }
    ]


def test_responses_web_search_through_the_sdk(stack):
    stack.state.enqueue(search_call("kumquat"), cited_answer())
    stack.state.searches.enqueue(RESULTS)
    with openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0) as client:
        response = client.responses.create(
            model=MODEL, input="What is a kumquat?", tools=[{"type": "web_search"}]
        )
    assert response.output[0].type == "web_search_call"
    assert "Kumquat" in response.output_text


# --- OpenAI Chat Completions: web_search_options -----------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_chat_web_search_options_search_and_cite(stack, stream):
    stack.state.enqueue(search_call("kumquat"), cited_answer())
    stack.state.searches.enqueue(RESULTS)
    with openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0) as client:
        messages: Any = [{"role": "user", "content": "What is a kumquat?"}]
        if stream:
            chunks = list(
                client.chat.completions.create(
                    model=MODEL, messages=messages, web_search_options={}, stream=True
                )
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            annotations = [
                a
                for c in chunks
                if c.choices
                for a in (c.choices[0].delta.model_extra or {}).get("annotations") or []
            ]
        else:
            completion = client.chat.completions.create(
                model=MODEL, messages=messages, web_search_options={}
            )
            text = completion.choices[0].message.content or ""
            annotations = [a.model_dump() for a in completion.choices[0].message.annotations or []]
    assert text == "See https://en.wikipedia.org/wiki/Kumquat for more."
    assert annotations == [
        {
            "type": "url_citation",
            "url_citation": {
                "start_index": 4,
                "end_index": 41,
                "url": "https://en.wikipedia.org/wiki/Kumquat",
                "title": "Kumquat - Wikipedia",
            },
        }
    ]
    assert searched_queries(stack) == ["kumquat"]


# --- bounds and mixtures -----------------------------------------------------------------------


def test_the_loop_is_bounded_by_web_search_max_rounds(factory):
    stack = factory({"WEB_SEARCH_MAX_ROUNDS": "1"})
    stack.state.enqueue(
        search_call("one", "tooluse_1"),
        search_call("two", "tooluse_2"),
        search_call("three", "tooluse_3"),
        text_answer("never asked for"),
    )
    body = {
        "model": MODEL,
        "max_tokens": 1000,
        "stream": True,
        "messages": [{"role": "user", "content": "search forever"}],
        "tools": [SERVER_TOOL],
    }
    response = post_messages(stack, body)
    assert response.status_code == 200, response.text
    events = [e.json() for e in parse_sse(response.text)]
    assert events[-1]["type"] == "message_stop"
    stop = next(e for e in events if e["type"] == "message_delta")
    assert stop["delta"]["stop_reason"] == "end_turn"
    assert stop["usage"]["server_tool_use"] == {"web_search_requests": 1}
    assert searched_queries(stack) == ["one"]
    assert len(stack.state.requests) == 3  # one search, one refusal, then the answer ends
    assert stack.state.pending() == 1


def test_client_tool_call_beside_a_search_ends_the_turn_for_the_client(stack):
    stack.state.enqueue(
        parallel_tool_use_answer(
            [("web_search", "tooluse_s", '{"query": "x"}'), ("get_time", "tooluse_t", "{}")]
        )
    )
    body = {
        "model": MODEL,
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "time?"}],
        "tools": [SERVER_TOOL, {"name": "get_time", "input_schema": {"type": "object"}}],
    }
    response = post_messages(stack, body)
    assert response.status_code == 200, response.text
    message = response.json()
    assert message["stop_reason"] == "tool_use"
    assert [b["type"] for b in message["content"] if b["type"] != "text"] == ["tool_use"]
    assert message["content"][-1]["name"] == "get_time"
    assert searched_queries(stack) == []


def test_responses_failed_search_is_a_failed_web_search_call(stack):
    stack.state.enqueue(search_call("kumquat"), text_answer("No luck."))
    stack.state.searches.enqueue(SearchFault(tool_error="down"))
    body = {"model": MODEL, "input": "kumquat?", "tools": [{"type": "web_search"}]}
    response = httpx.post(
        stack.url + "/v1/responses", json=body, headers=stack.headers(), timeout=30
    )
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert output[0]["type"] == "web_search_call" and output[0]["status"] == "failed"
    assert output[1]["content"][0]["text"] == "No luck."


def test_a_search_answer_does_not_skew_the_input_token_estimate(factory):
    """A search answer's input_tokens add up every round (two calls of ~5,000 tokens: 10,000),
    which is not what its prompt alone counts: the estimate Claude Code reads in message_start
    (learned per model from earlier answers) stays what Kiro counts for one call."""
    own = factory()
    counted = 5000
    pct = 100 * counted / 200_000  # Kiro's context usage for 5,000 tokens of a 200k window
    prompt = "word " * 3000
    client = anthropic.Anthropic(base_url=own.url, api_key=own.api_key, max_retries=0)

    def message_start_input_tokens(**extra: Any) -> int:
        with client.messages.stream(
            model=MODEL, max_tokens=100, messages=[{"role": "user", "content": prompt}], **extra
        ) as events:
            start = next(e for e in events if e.type == "message_start")
            events.until_done()
        return start.message.usage.input_tokens

    own.state.enqueue(text_answer("ok", context_usage=pct), text_answer("ok", context_usage=pct))
    message_start_input_tokens()  # learns: this prompt is 5,000 tokens
    assert abs(message_start_input_tokens() - counted) < counted * 0.05
    search = tool_use_answer("web_search", "tooluse_ws1", '{"query": "kumquat"}', context_usage=pct)
    own.state.enqueue(search, text_answer("Winter.", context_usage=pct))
    own.state.searches.enqueue(RESULTS)
    message_start_input_tokens(tools=[SERVER_TOOL])
    assert len(own.state.searches.calls) == 1
    own.state.enqueue(text_answer("ok", context_usage=pct))
    assert abs(message_start_input_tokens() - counted) < counted * 0.05


@pytest.mark.parametrize("stream", [False, True])
def test_search_answer_on_a_resolved_model_name_echoes_it(stack, stream):
    """Claude Code's default model name (one Kiro does not list) with a web search: resolved to
    the family's newest, every round sent with that Kiro id; the answer names the model asked for
    and x-ki2api-model the one that served it."""
    stack.state.enqueue(search_call("kumquat"), text_answer("Winter."))
    stack.state.searches.enqueue(RESULTS)
    body = {
        "model": "claude-opus-4-8[1m]",
        "max_tokens": 1000,
        "stream": stream,
        "messages": [{"role": "user", "content": "When are kumquats in season?"}],
        "tools": [SERVER_TOOL],
    }
    response = post_messages(stack, body)
    assert response.status_code == 200, response.text
    assert response.headers["x-ki2api-model"] == "claude-opus-4.6"
    if stream:
        events = [e.json() for e in parse_sse(response.text)]
        model = next(e for e in events if e["type"] == "message_start")["message"]["model"]
    else:
        model = response.json()["model"]
    assert model == "claude-opus-4-8[1m]"
    sent = [
        b["conversationState"]["currentMessage"]["userInputMessage"]["modelId"]
        for b in kiro_requests(stack)
    ]
    assert sent == ["claude-opus-4.6", "claude-opus-4.6"]


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_too_long_with_a_search_tool_is_anthropics_400(stack, stream):
    """A request offering web search that Kiro finds too long gets the answer Claude Code
    compacts on, as without the tool."""
    too_long = HttpError(
        400,
        {"message": "Input is too long.", "reason": "CONTENT_LENGTH_EXCEEDS_THRESHOLD"},
        {"x-amzn-errortype": "ValidationException"},
    )
    stack.state.fail_next(1, too_long)
    body = {
        "model": MODEL,
        "max_tokens": 1000,
        "stream": stream,
        "messages": [{"role": "user", "content": "When are kumquats in season?"}],
        "tools": [SERVER_TOOL],
    }
    response = post_messages(stack, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert re.fullmatch(r"prompt is too long: \d+ tokens > 200000 maximum", error["message"])
    assert stack.state.searches.calls == []


@pytest.mark.parametrize("published_ms", [10**20, -(10**20)])
def test_a_publication_date_no_datetime_can_hold_has_no_page_age(published_ms: int) -> None:
    """The search results' dates come from upstream: one out of a datetime's range must not
    break the answer being rendered (ValueError / OverflowError before); it has no page_age."""
    from ki2api.api.anthropic.server_tools import result_block
    from ki2api.model.deltas import SearchHit, ServerToolResult

    hit = SearchHit("t", "https://example.com/", "s", published_ms=published_ms)
    block = result_block(ServerToolResult("srvtoolu_1", hits=(hit,)))
    assert block["content"][0]["page_age"] is None


# --- a search while the only account cools down -------------------------------------------------


def test_a_search_while_the_only_account_cools_down_is_a_429_with_retry_after(
    factory: StackFactory,
) -> None:
    """Kiro throttled the only account (Retry-After 30): Claude Code's search request, asked
    meanwhile, is answered 429 with the wait and Kiro's words, streamed or not (a streamed one
    was cut off: the refusal came after the answer had started)."""

    stack = factory()
    stack.state.fail_next(1, throttled(retry_after=30))
    chat = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    assert post_messages(stack, chat).status_code == 429  # Kiro's 429: the account cools
    for round_no in range(20):
        response = post_messages(stack, claude_code_body("kumquat facts", round_no % 2 == 1))
        assert response.status_code == 429, response.text
        assert 0 < int(response.headers["retry-after"]) <= 30
        error = response.json()
        assert error["type"] == "error" and error["error"]["type"] == "rate_limit_error"
        assert "Too many requests" in error["error"]["message"]
    assert stack.state.searches.calls == []  # the account was left alone
    assert len(stack.state.requests) == 1


def test_a_search_between_two_throttles_does_not_end_their_row(factory: StackFactory) -> None:
    """Kiro's search endpoint says nothing about the account's chat rate: two chat 429s with
    a search between them are still two in a row, and the second cools the account."""

    admin = "websearch-admin-key-0123"
    stack = factory(upstream_attempts=1, admin_key=admin)
    chat = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(20):
        stack.state.searches.enqueue(RESULTS)
        stack.state.fail_next(1, throttled())
        assert post_messages(stack, chat).status_code == 429
        assert post_messages(stack, claude_code_body("kumquat", False)).status_code == 200
        stack.state.fail_next(1, throttled())
        assert post_messages(stack, chat).status_code == 429
        rows = httpx.get(
            stack.url + "/admin/accounts", headers={"authorization": f"Bearer {admin}"}
        ).json()["data"]
        assert [(r["state"], r["cause"]) for r in rows] == [("cooling_down", "rate_limit")]
        stack.runtime.pool._accounts["env"].enable()  # the next round starts afresh
