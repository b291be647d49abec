"""Anthropic Messages front door end to end: the real ``anthropic`` SDK (and raw SSE) against the
gateway on a real uvicorn server, with the Kiro simulator behind it."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from anthropic.types import MessageParam

from ki2api.app import create_app
from ki2api.settings import Settings
from ki2api.simulator import Delay, Script, SimulatorServer, Stall
from ki2api.simulator.scripts import (
    Step,
    parallel_tool_use_answer,
    reasoning_events,
    text_answer,
    text_events,
    tool_use_answer,
    tool_use_events,
    trailer,
)
from tests.servers import ServerThread

KEY = "test-key-anthropic"
MODEL = "claude-sonnet-4-6"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32  # the gateway sniffs the format from the magic bytes
X: list[MessageParam] = [{"role": "user", "content": "x"}]
BAD_BASE64 = {"type": "base64", "media_type": "image/png", "data": "@@"}
TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
    {
        "name": "get_time",
        "description": "Local time in a time zone",
        "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
]


def gateway_settings(sim: SimulatorServer, home: Path, **overrides: Any) -> Settings:
    env = {
        "API_KEY": KEY,
        "KIRO_API_URL": sim.url + "/generateAssistantResponse",
        "KIRO_ACCESS_TOKEN": "sim-access-token-anthropic",
    }
    return Settings.from_env(env, kiro_token_file=home / "no-login.json", **overrides)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(sim: SimulatorServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = gateway_settings(sim, tmp_path_factory.mktemp("home"), keepalive_interval=0.2)
    with ServerThread(create_app(settings, with_ui=False)) as server:
        yield server.url


@pytest.fixture(autouse=True)
def fresh(sim: SimulatorServer) -> None:
    sim.state.clear_queue()
    sim.state.reset_logs()


@pytest.fixture
def client(gateway: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway, api_key=KEY, max_retries=0) as c:
        yield c


def sent_body(sim: SimulatorServer) -> dict[str, Any]:
    record = sim.state.wait_for_requests(1)[-1]
    assert record.refusal is None, record.refusal
    return record.body  # type: ignore[no-any-return]


def sse_events(gateway: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """POST a streamed request and parse the raw SSE into (event, data) pairs."""
    events: list[tuple[str, dict[str, Any]]] = []
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    with httpx.stream(
        "POST", gateway + "/v1/messages", json={**body, "stream": True}, headers=headers
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                assert name is not None
                data = orjson.loads(line[len("data: ") :])
                assert data["type"] == name  # Anthropic repeats the event name in the data
                events.append((name, data))
                name = None
    return events


def hello(**extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Hello"}],
        **extra,
    }


# --- text answers ------------------------------------------------------------------------------


def test_text_answer_not_streamed(sim, client):
    answer = "Hello from the simulator, in four chunks — with ünïcödé."
    sim.state.enqueue(text_answer(answer, tokens=(42, 17)))
    message = client.messages.create(
        model=MODEL,
        max_tokens=256,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Hello"}],
        metadata={"user_id": "u-1"},
        extra_body={"temperature": 0.2, "top_p": 0.9, "top_k": 5},  # accepted and ignored
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == MODEL
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == answer
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == 42 and message.usage.output_tokens == 17
    assert message.usage.cache_read_input_tokens == 0
    current = sent_body(sim)["conversationState"]["currentMessage"]["userInputMessage"]
    assert current["content"].startswith("Be brief.") and current["content"].endswith("Hello")


def test_text_answer_streamed(sim, client):
    answer = "A streamed answer that arrives in several pieces."
    sim.state.enqueue(text_answer(answer, chunks=6))
    with client.messages.stream(
        model=MODEL, max_tokens=256, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == answer
    assert final.content[0].type == "text" and final.content[0].text == answer
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0


def test_bearer_key_and_any_anthropic_version_are_accepted(sim, gateway):
    sim.state.enqueue(text_answer("ok"))
    response = httpx.post(
        gateway + "/v1/messages",
        json=hello(),
        headers={"authorization": f"Bearer {KEY}", "anthropic-version": "2099-01-01"},
    )
    assert response.status_code == 200
    assert response.json()["content"] == [{"type": "text", "text": "ok"}]


def test_thinking_is_rendered_with_its_signature(sim, client):
    sim.state.enqueue(text_answer("The answer is 4.", reasoning="2 plus 2 is 4."))
    message = client.messages.create(
        model=MODEL,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "What is 2+2?"}],
    )
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "2 plus 2 is 4."
    assert message.content[0].signature == "sim-signature"
    assert message.content[1].text == "The answer is 4."
    content = sent_body(sim)["conversationState"]["currentMessage"]["userInputMessage"]["content"]
    assert "<max_thinking_length>1024</max_thinking_length>" in content

    sim.state.enqueue(text_answer("Still 4.", reasoning="Same again."))
    with client.messages.stream(
        model=MODEL,
        max_tokens=2048,
        thinking={"type": "adaptive"},
        messages=[{"role": "user", "content": "And now?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "thinking"
    thinking = final.content[0]
    assert (thinking.thinking, thinking.signature) == ("Same again.", "sim-signature")
    assert final.content[1].text == "Still 4."


# --- tools -------------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True])
def test_two_tool_agent_loop(sim, client, streamed):
    calls = [
        ("get_weather", "tooluse_weather_1", '{"city": "Paris"}'),
        ("get_time", "tooluse_time_1", '{"tz": "Europe/Paris"}'),
    ]
    final_text = "It is sunny in Paris and 14:00 there."
    sim.state.enqueue(parallel_tool_use_answer(calls, text_before="Let me check."))
    sim.state.enqueue(text_answer(final_text))
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather and time in Paris?"}]

    def ask() -> Any:
        if not streamed:
            return client.messages.create(
                model=MODEL, max_tokens=1024, tools=TOOLS, messages=messages
            )
        with client.messages.stream(
            model=MODEL, max_tokens=1024, tools=TOOLS, messages=messages
        ) as stream:
            return stream.get_final_message()

    first = ask()
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["text", "tool_use", "tool_use"]
    assert first.content[0].text == "Let me check."
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [(u.id, u.name, u.input) for u in uses] == [
        ("tooluse_weather_1", "get_weather", {"city": "Paris"}),
        ("tooluse_time_1", "get_time", {"tz": "Europe/Paris"}),
    ]
    messages.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": uses[0].id, "content": "Sunny, 21 °C"},
                {
                    "type": "tool_result",
                    "tool_use_id": uses[1].id,
                    "content": [{"type": "text", "text": "14:00"}],
                },
            ],
        }
    )
    second = ask()
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text == final_text

    records = sim.state.wait_for_requests(2)
    assert all(r.refusal is None for r in records)
    state = records[-1].body["conversationState"]
    results = state["currentMessage"]["userInputMessage"]["userInputMessageContext"]["toolResults"]
    assert [(r["toolUseId"], r["content"][0]["text"], r["status"]) for r in results] == [
        ("tooluse_weather_1", "Sunny, 21 °C", "success"),
        ("tooluse_time_1", "14:00", "success"),
    ]
    uses_sent = state["history"][-1]["assistantResponseMessage"]["toolUses"]
    assert [u["input"] for u in uses_sent] == [{"city": "Paris"}, {"tz": "Europe/Paris"}]


def test_tool_choice_and_error_results_reach_the_service(sim, client):
    sim.state.enqueue(text_answer("Understood."))
    client.messages.create(
        model=MODEL,
        max_tokens=256,
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_time"},
        messages=[
            {"role": "user", "content": "Time?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "is_error": True,
                        "content": [
                            {"type": "text", "text": "clock broken"},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": base64.b64encode(PNG).decode(),
                                },
                            },
                        ],
                    }
                ],
            },
        ],
    )
    state = sent_body(sim)["conversationState"]
    current = state["currentMessage"]["userInputMessage"]
    result = current["userInputMessageContext"]["toolResults"][0]
    assert result["status"] == "error" and result["content"][0]["text"].startswith("clock broken")
    assert current["images"][0]["format"] == "png"  # the result's image rides on the turn
    assert "Respond by calling the tool get_time." in current["content"]
    assistant = state["history"][-1]["assistantResponseMessage"]
    assert "hmm" not in assistant["content"] and "opaque" not in assistant["content"]


def test_truncated_tool_call(sim, client, gateway):
    cut = tool_use_answer("get_weather", "tooluse_cut", '{"city": "Par', truncated=True)
    sim.state.enqueue(cut)
    message = client.messages.create(
        model=MODEL, max_tokens=256, tools=TOOLS, messages=[{"role": "user", "content": "Hi"}]
    )
    # Not streamed: a cut call is never passed on as if complete.
    assert message.stop_reason == "max_tokens"
    assert all(b.type != "tool_use" for b in message.content)

    sim.state.enqueue(cut)
    events = sse_events(gateway, {**hello(), "tools": TOOLS})
    names = [(n, d.get("index")) for n, d in events if n != "ping"]
    assert names == [
        ("message_start", None),
        ("content_block_start", 0),
        *[("content_block_delta", 0)] * (len(names) - 5),
        ("content_block_stop", 0),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert events[1][1]["content_block"] == {
        "type": "tool_use",
        "id": "tooluse_cut",
        "name": "get_weather",
        "input": {},
    }
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"


# --- the raw event stream ----------------------------------------------------------------------


def test_raw_sse_sequence_and_indices(sim, gateway):
    steps: list[Step] = [
        *reasoning_events("Thinking it over.", chunks=2),
        *text_events("Checking the weather.", chunks=3),
        *tool_use_events("get_weather", "tooluse_w", '{"city": "Oslo"}', fragments=2),
        *tool_use_events("get_time", "tooluse_t", '{"tz": "CET"}', fragments=2),
        *trailer(tokens=(30, 12)),
    ]
    sim.state.enqueue(Script(tuple(steps)))
    events = [(n, d) for n, d in sse_events(gateway, {**hello(), "tools": TOOLS}) if n != "ping"]

    def compact(pairs: list[tuple[str, dict[str, Any]]]) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for name, data in pairs:
            kind = data.get("delta", {}).get("type") if name == "content_block_delta" else None
            key = (name, data.get("index"), kind)
            if not out or out[-1] != key:
                out.append(key)
        return out

    assert compact(events) == [
        ("message_start", None, None),
        ("content_block_start", 0, None),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, None),
        ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, None),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("content_block_start", 3, None),
        ("content_block_delta", 3, "input_json_delta"),
        ("content_block_stop", 3, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    data = [d for _, d in events]
    start = data[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] > 0 and start["usage"]["output_tokens"] == 0
    blocks = [d["content_block"] for d in data if d["type"] == "content_block_start"]
    assert blocks == [
        {"type": "thinking", "thinking": "", "signature": ""},
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "tooluse_w", "name": "get_weather", "input": {}},
        {"type": "tool_use", "id": "tooluse_t", "name": "get_time", "input": {}},
    ]

    def joined(index: int, field: str) -> str:
        return "".join(
            d["delta"].get(field, "")
            for d in data
            if d["type"] == "content_block_delta" and d["index"] == index
        )

    assert joined(0, "thinking") == "Thinking it over."
    assert joined(0, "signature") == "sim-signature"
    assert joined(1, "text") == "Checking the weather."
    assert orjson.loads(joined(2, "partial_json")) == {"city": "Oslo"}
    assert orjson.loads(joined(3, "partial_json")) == {"tz": "CET"}
    final = data[-2]
    assert final["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert final["usage"]["input_tokens"] == 30 and final["usage"]["output_tokens"] == 12


def test_ping_events_while_the_upstream_is_silent(sim, gateway, client):
    steps: list[Step] = [
        *text_events("Slow ", 1),
        Delay(0.7),
        *text_events("answer.", 1),
        *trailer(),
    ]
    sim.state.enqueue(Script(tuple(steps)))
    events = sse_events(gateway, hello())
    names = [n for n, _ in events]
    first_text = names.index("content_block_delta")
    assert "ping" in names[first_text:]
    assert names[-1] == "message_stop"

    sim.state.enqueue(Script(tuple(steps)))  # the SDK skips the pings
    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        assert stream.get_final_message().content[0].text == "Slow answer."


def test_stop_sequence(sim, client):
    sim.state.enqueue(text_answer("one two STOP three"))
    message = client.messages.create(
        model=MODEL,
        max_tokens=256,
        stop_sequences=["STOP"],
        messages=[{"role": "user", "content": "Count"}],
    )
    assert message.content[0].text == "one two "
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "STOP")


def test_max_tokens_cuts_the_answer(sim, client):
    sim.state.enqueue(text_answer("word " * 200))
    message = client.messages.create(
        model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "Talk"}]
    )
    assert message.stop_reason == "max_tokens"
    assert len(message.content[0].text) < len("word " * 200)


def test_mid_stream_failure_is_an_error_event(sim, gateway, client):
    # The fault cuts the simulator's default answer after its first frame.
    sim.state.fail_next(1, "cut_mid_frame")
    events = sse_events(gateway, hello())
    assert events[0][0] == "message_start"
    name, data = events[-1]
    assert name == "error"
    assert data["type"] == "error" and data["error"]["type"] == "api_error"
    assert data["error"]["message"]

    sim.state.fail_next(1, "cut_mid_frame")
    with pytest.raises(anthropic.APIStatusError) as caught:
        with client.messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            stream.get_final_message()
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]


# --- images ------------------------------------------------------------------------------------


def test_base64_image_reaches_the_service(sim, client):
    sim.state.enqueue(text_answer("A tiny picture."))
    client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": base64.b64encode(PNG).decode(),
                        },
                    },
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    current = sent_body(sim)["conversationState"]["currentMessage"]["userInputMessage"]
    assert current["images"] == [
        {"format": "png", "source": {"bytes": base64.b64encode(PNG).decode()}}
    ]
    assert current["content"] == "What is this?"


# --- errors ------------------------------------------------------------------------------------


def post(gateway: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(gateway + "/v1/messages", json=body, headers={"x-api-key": KEY, **headers})


def anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return str(body["error"]["message"])


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 10, "messages": []}, "messages"),
        (hello(max_tokens=0), "max_tokens"),
        (hello(messages=[{"role": "tool", "content": "x"}]), "role"),
        (
            hello(tools=[{"type": "code_execution_20250522", "name": "code_execution"}]),
            "code_execution_20250522",
        ),
        (hello(thinking={"type": "enabled"}), "budget_tokens"),
        (hello(tool_choice={"type": "tool"}), "tool_choice.name"),
        (hello(system=[{"type": "image"}]), "system[0]"),
        (
            hello(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {
                                    "type": "base64",
                                    "media_type": "application/pdf",
                                    "data": "JVBERi0=",
                                },
                            }
                        ],
                    }
                ]
            ),
            "PDF",
        ),
        (
            hello(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": BAD_BASE64,
                            }
                        ],
                    }
                ]
            ),
            "base64",
        ),
        (hello(messages=[{"role": "user", "content": [{"type": "video"}]}]), "video"),
        (hello(messages=[{"role": "user", "content": [{"type": "text"}]}]), "text"),
        ([1, 2, 3], "JSON object"),
    ],
)
def test_bad_input_is_a_400_in_anthropic_shape(sim, gateway, body, needle):
    message = anthropic_error(post(gateway, body), 400, "invalid_request_error")
    assert needle in message
    assert sim.state.requests == []  # nothing reached the service


def test_not_json_is_a_400(gateway):
    response = httpx.post(
        gateway + "/v1/messages",
        content=b"{nope",
        headers={"x-api-key": KEY, "content-type": "application/json"},
    )
    anthropic_error(response, 400, "invalid_request_error")


def test_missing_and_wrong_keys_are_401(gateway):
    anthropic_error(httpx.post(gateway + "/v1/messages", json=hello()), 401, "authentication_error")
    with anthropic.Anthropic(base_url=gateway, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            bad.messages.create(model=MODEL, max_tokens=8, messages=X)
    assert caught.value.status_code == 401
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_unknown_model_is_404_not_found_error(client, gateway):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(
            model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    anthropic_error(post(gateway, hello(model="nope"), **{}), 404, "not_found_error")


def test_every_account_throttled_is_429_rate_limit_error_with_kiro_words(sim, tmp_path):
    # Its own gateway: the throttled account cools down, which must not leak into other tests.
    settings = gateway_settings(sim, tmp_path, upstream_attempts=2)
    sim.state.fail_next(4, "throttled")  # both attempts of both requests
    with ServerThread(create_app(settings, with_ui=False)) as server:
        with anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0) as c:
            with pytest.raises(anthropic.RateLimitError) as caught:
                c.messages.create(model=MODEL, max_tokens=8, messages=X)
        response = post(server.url, hello())
    assert sim.state.pending() == 0
    assert caught.value.status_code == 429  # Kiro said 429: never turned into an overload
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "Too many requests" in caught.value.message
    anthropic_error(response, 429, "rate_limit_error")


# --- count_tokens ------------------------------------------------------------------------------


def test_count_tokens(sim, client, gateway):
    short = client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "Hello there"}]
    )
    long = client.messages.count_tokens(
        model=MODEL,
        system="You are a careful assistant. " * 20,
        tools=TOOLS,
        messages=[{"role": "user", "content": "Hello there " * 50}],
    )
    assert 0 < short.input_tokens < long.input_tokens
    assert sim.state.requests == []  # counting never calls the service
    response = httpx.post(
        gateway + "/v1/messages/count_tokens",
        json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": KEY},
    )
    anthropic_error(response, 404, "not_found_error")
    response = httpx.post(
        gateway + "/v1/messages/count_tokens", json={"model": MODEL, "messages": []}
    )
    anthropic_error(response, 401, "authentication_error")


# --- disconnects -------------------------------------------------------------------------------


def upstream_closed(sim: SimulatorServer) -> bool:
    return sim.state.wait_for(
        lambda s: bool(s.requests) and s.requests[-1].closed_by_client and s.open_streams == 0,
        timeout=5,
    )


def test_client_leaving_a_stream_closes_the_upstream(sim, gateway):
    sim.state.enqueue(Script((*text_events("First words", 1), Stall())))
    with httpx.stream(
        "POST",
        gateway + "/v1/messages",
        json=hello(stream=True),
        headers={"x-api-key": KEY},
    ) as response:
        for line in response.iter_lines():
            if "text_delta" in line:
                break
    assert upstream_closed(sim)


def test_client_leaving_before_a_whole_answer_closes_the_upstream(sim, gateway):
    sim.state.enqueue(Script((*text_events("First words", 1), Stall())))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway + "/v1/messages", json=hello(), headers={"x-api-key": KEY}, timeout=0.5)
    assert upstream_closed(sim)
