"""OpenAI Responses front door end to end: the real ``openai`` SDK (and raw SSE) against the
gateway on a real uvicorn server, with the Kiro simulator behind it."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

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

KEY = "test-key-responses"
MODEL = "claude-sonnet-4-6"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
    {
        "type": "function",
        "name": "get_time",
        "description": "Local time in a time zone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
]


def gateway_settings(sim: SimulatorServer, home: Path, **overrides: Any) -> Settings:
    env = {
        "API_KEY": KEY,
        "KIRO_API_URL": sim.url + "/generateAssistantResponse",
        "KIRO_ACCESS_TOKEN": "sim-access-token-responses",
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
def client(gateway: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway + "/v1", api_key=KEY, max_retries=0) as c:
        yield c


def sent_body(sim: SimulatorServer) -> dict[str, Any]:
    record = sim.state.wait_for_requests(1)[-1]
    assert record.refusal is None, record.refusal
    return record.body  # type: ignore[no-any-return]


def current_message(sim: SimulatorServer) -> dict[str, Any]:
    return sent_body(sim)["conversationState"]["currentMessage"]["userInputMessage"]  # type: ignore[no-any-return]


def sse_events(gateway: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a streamed request; the data of every event, checked against its ``event:`` line."""
    events: list[dict[str, Any]] = []
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.stream(
        "POST", gateway + "/v1/responses", json={**body, "stream": True}, headers=headers
    ) as response:
        assert response.status_code == 200
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = orjson.loads(line[len("data: ") :])
                assert data["type"] == name
                events.append(data)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


# --- text answers ------------------------------------------------------------------------------


def test_text_answer_not_streamed(sim, client):
    answer = "Hello from the simulator — Responses edition."
    sim.state.enqueue(text_answer(answer, tokens=(40, 11)))
    response = client.responses.create(
        model=MODEL,
        instructions="Be brief.",
        input="Hello",
        temperature=0.3,
        store=False,
        metadata={"k": "v"},
    )
    assert response.output_text == answer
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.incomplete_details is None
    assert response.model == MODEL
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert message.status == "completed"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (40, 11)
    assert response.usage.total_tokens == 51
    content = current_message(sim)["content"]
    assert content.startswith("Be brief.") and content.endswith("Hello")


def test_text_answer_streamed(sim, client):
    answer = "A streamed Responses answer in several pieces."
    sim.state.enqueue(text_answer(answer, chunks=5))
    with client.responses.stream(model=MODEL, input="Hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == answer
    assert len(deltas) == 5
    assert final.output_text == answer
    assert final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens > 0


def test_input_items_roles_and_images(sim, client):
    sim.state.enqueue(text_answer("Seen."))
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    client.responses.create(
        model=MODEL,
        instructions="Top instructions.",
        input=[
            {"role": "developer", "content": "Developer rule."},
            {"role": "user", "content": [{"type": "input_text", "text": "First question"}]},
            {
                "type": "message",
                "role": "assistant",
                "id": "msg_prev",
                "status": "completed",
                "content": [{"type": "output_text", "text": "First answer", "annotations": []}],
            },
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in this image?"},
                    {"type": "input_image", "image_url": data_url, "detail": "auto"},
                ],
            },
        ],
    )
    state = sent_body(sim)["conversationState"]
    first = state["history"][0]["userInputMessage"]["content"]
    assert first.startswith("Top instructions.\n\nDeveloper rule.") and "First question" in first
    assert state["history"][1]["assistantResponseMessage"]["content"] == "First answer"
    current = state["currentMessage"]["userInputMessage"]
    assert current["content"] == "What is in this image?"
    assert current["images"][0]["format"] == "png"


def test_reasoning_effort_and_reasoning_item(sim, client):
    sim.state.enqueue(text_answer("It is 4.", reasoning="Two and two make four."))
    response = client.responses.create(
        model=MODEL, input="2+2?", reasoning={"effort": "low", "summary": "auto"}
    )
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].summary[0].text == "Two and two make four."
    assert response.output_text == "It is 4."
    assert "<thinking_mode>enabled</thinking_mode>" in current_message(sim)["content"]
    assert response.reasoning is not None and response.reasoning.effort == "low"


# --- tools -------------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True])
def test_two_tool_agent_loop(sim, client, streamed):
    calls = [
        ("get_weather", "tooluse_weather_1", '{"city": "Paris"}'),
        ("get_time", "tooluse_time_1", '{"tz": "Europe/Paris"}'),
    ]
    final_text = "Sunny in Paris, and it is 14:00."
    sim.state.enqueue(parallel_tool_use_answer(calls))
    sim.state.enqueue(text_answer(final_text))
    items: list[Any] = [{"role": "user", "content": "Weather and time in Paris?"}]

    def ask() -> Any:
        if not streamed:
            return client.responses.create(model=MODEL, input=items, tools=TOOLS)
        with client.responses.stream(model=MODEL, input=items, tools=TOOLS) as stream:
            return stream.get_final_response()

    first = ask()
    function_calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.call_id, c.name, orjson.loads(c.arguments)) for c in function_calls] == [
        ("tooluse_weather_1", "get_weather", {"city": "Paris"}),
        ("tooluse_time_1", "get_time", {"tz": "Europe/Paris"}),
    ]
    assert all(c.status == "completed" and c.id.startswith("fc_") for c in function_calls)
    assert first.status == "completed"
    items += [item.model_dump(exclude_none=True) for item in first.output]
    items += [
        {"type": "function_call_output", "call_id": "tooluse_weather_1", "output": "Sunny"},
        {"type": "function_call_output", "call_id": "tooluse_time_1", "output": "14:00"},
    ]
    second = ask()
    assert second.output_text == final_text

    records = sim.state.wait_for_requests(2)
    assert all(r.refusal is None for r in records)
    state = records[-1].body["conversationState"]
    results = state["currentMessage"]["userInputMessage"]["userInputMessageContext"]["toolResults"]
    assert [(r["toolUseId"], r["content"][0]["text"]) for r in results] == [
        ("tooluse_weather_1", "Sunny"),
        ("tooluse_time_1", "14:00"),
    ]


def test_tool_choice_is_steered(sim, client):
    sim.state.enqueue(text_answer("ok"))
    client.responses.create(
        model=MODEL,
        input="Time?",
        tools=TOOLS,
        tool_choice={"type": "function", "name": "get_time"},
    )
    assert "Respond by calling the tool get_time." in current_message(sim)["content"]


# --- the raw event stream ----------------------------------------------------------------------


def test_raw_sse_sequence(sim, gateway):
    steps: list[Step] = [
        *reasoning_events("Thinking.", chunks=2),
        *text_events("Checking.", chunks=2),
        *tool_use_events("get_weather", "tooluse_w", '{"city": "Oslo"}', fragments=2),
        *tool_use_events("get_time", "tooluse_t", '{"tz": "CET"}', fragments=2),
        *trailer(tokens=(30, 12)),
    ]
    sim.state.enqueue(Script(tuple(steps)))
    events = sse_events(gateway, {"model": MODEL, "input": "Hi", "tools": TOOLS})
    compact: list[tuple[str, Any]] = []
    for e in events:
        key = (e["type"], e.get("output_index"))
        if not compact or compact[-1] != key:
            compact.append(key)
    assert compact == [
        ("response.created", None),
        ("response.in_progress", None),
        ("response.output_item.added", 0),
        ("response.reasoning_summary_part.added", 0),
        ("response.reasoning_summary_text.delta", 0),
        ("response.reasoning_summary_text.done", 0),
        ("response.reasoning_summary_part.done", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.content_part.added", 1),
        ("response.output_text.delta", 1),
        ("response.output_text.done", 1),
        ("response.content_part.done", 1),
        ("response.output_item.done", 1),
        ("response.output_item.added", 2),
        ("response.function_call_arguments.delta", 2),
        ("response.function_call_arguments.done", 2),
        ("response.output_item.done", 2),
        ("response.output_item.added", 3),
        ("response.function_call_arguments.delta", 3),
        ("response.function_call_arguments.done", 3),
        ("response.output_item.done", 3),
        ("response.completed", None),
    ]
    created = events[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [a["id"] for a in added] == [d["id"] for d in done]
    assert added[1]["content"] == [] and added[1]["status"] == "in_progress"
    assert done[1]["content"][0]["text"] == "Checking."
    assert (done[2]["call_id"], done[2]["arguments"]) == ("tooluse_w", '{"city": "Oslo"}')
    text_events_ = [e for e in events if e["type"] == "response.output_text.delta"]
    assert all(e["item_id"] == added[1]["id"] and e["content_index"] == 0 for e in text_events_)
    args_done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [e["arguments"] for e in args_done] == ['{"city": "Oslo"}', '{"tz": "CET"}']
    completed = events[-1]["response"]
    assert completed["status"] == "completed"
    assert [o["type"] for o in completed["output"]] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    assert completed["usage"]["input_tokens"] == 30 and completed["usage"]["output_tokens"] == 12


def test_keepalive_comments_while_silent(sim, gateway, client):
    steps: list[Step] = [
        *text_events("Slow ", 1),
        Delay(0.7),
        *text_events("answer.", 1),
        *trailer(),
    ]
    sim.state.enqueue(Script(tuple(steps)))
    with httpx.stream(
        "POST",
        gateway + "/v1/responses",
        json={"model": MODEL, "input": "Hi", "stream": True},
        headers={"authorization": f"Bearer {KEY}"},
    ) as response:
        lines = list(response.iter_lines())
    assert ": keep-alive" in lines

    sim.state.enqueue(Script(tuple(steps)))
    with client.responses.stream(model=MODEL, input="Hi") as stream:
        assert stream.get_final_response().output_text == "Slow answer."


def test_max_output_tokens_makes_the_response_incomplete(sim, client, gateway):
    sim.state.enqueue(text_answer("word " * 200))
    response = client.responses.create(model=MODEL, input="Talk", max_output_tokens=5)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"

    sim.state.enqueue(tool_use_answer("get_weather", "tooluse_cut", '{"city": "Pa', truncated=True))
    events = sse_events(gateway, {"model": MODEL, "input": "Hi", "tools": TOOLS})
    types = [e["type"] for e in events]
    assert "response.function_call_arguments.done" not in types  # a cut call is never "done"
    assert types[-1] == "response.incomplete"
    item_done = next(e for e in events if e["type"] == "response.output_item.done")
    assert item_done["item"]["status"] == "incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_mid_stream_failure_is_an_error_then_response_failed(sim, gateway):
    sim.state.fail_next(1, "cut_mid_frame")
    events = sse_events(gateway, {"model": MODEL, "input": "Hi"})
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["message"] and events[-2]["code"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"


# --- errors ------------------------------------------------------------------------------------


def openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"model": MODEL, "input": "Hi", "previous_response_id": "resp_1"}, "does not store"),
        ({"model": MODEL, "input": "Hi", "conversation": "conv_1"}, "does not store"),
        ({"model": MODEL, "input": [{"type": "item_reference", "id": "x"}]}, "does not store"),
        (
            {
                "model": MODEL,
                "input": "Hi",
                "tools": [{"type": "computer_use_preview"}],
                "tool_choice": {"type": "computer_use_preview"},
            },
            "computer_use_preview",
        ),
        ({"model": MODEL, "input": "Hi", "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": MODEL, "input": "Hi", "reasoning": {"effort": "extreme"}}, "effort"),
        ({"model": MODEL, "input": []}, "input"),
        ({"model": MODEL, "input": "Hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": MODEL, "input": [{"type": "computer_call"}]}, "computer_call"),
        ({"model": MODEL, "input": [{"role": "tool", "content": "x"}]}, "role"),
        (
            {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_file"}]}]},
            "input_file",
        ),
        ({"input": "Hi"}, "model"),
    ],
)
def test_bad_input_is_a_400_in_openai_shape(sim, gateway, body, needle):
    response = httpx.post(
        gateway + "/v1/responses", json=body, headers={"authorization": f"Bearer {KEY}"}
    )
    error = openai_error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert needle in error["message"]
    assert sim.state.requests == []


def test_previous_response_id_through_the_sdk(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="Hi", previous_response_id="resp_abc")
    assert "previous_response_id" in caught.value.message


def test_missing_key_is_401_and_unknown_model_is_404(gateway, client):
    response = httpx.post(gateway + "/v1/responses", json={"model": MODEL, "input": "Hi"})
    assert openai_error(response, 401)["type"] == "authentication_error"
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="gpt-9-turbo", input="Hi")
    assert caught.value.code == "model_not_found"


def test_client_leaving_a_stream_closes_the_upstream(sim, gateway):
    sim.state.enqueue(Script((*text_events("First words", 1), Stall())))
    with httpx.stream(
        "POST",
        gateway + "/v1/responses",
        json={"model": MODEL, "input": "Hi", "stream": True},
        headers={"authorization": f"Bearer {KEY}"},
    ) as response:
        for line in response.iter_lines():
            if "output_text.delta" in line:
                break
    assert sim.state.wait_for(
        lambda s: bool(s.requests) and s.requests[-1].closed_by_client and s.open_streams == 0,
        timeout=5,
    )
