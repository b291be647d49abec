"""The simulator's building blocks without a server: script builders, captures, fault
transforms, and the deterministic default model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ki2api.kiro.wire.eventstream import EventStreamDecoder
from ki2api.simulator import faults
from ki2api.simulator.default_model import (
    ANY_TOOL,
    SIMULATOR_TAG,
    Prompt,
    best_tool,
    default_answer,
    example_arguments,
    prompt_from_kiro,
    prompt_from_openai,
    tool_arguments,
)
from ki2api.simulator.samples import kiro_request_body, tool_spec
from ki2api.simulator.scripts import (
    ConnectionDrop,
    CorruptCrc,
    CutMidFrame,
    Event,
    HttpError,
    Raw,
    Script,
    Stall,
    as_script,
    capture,
    capture_bytes,
    capture_names,
    message_metadata_event,
    split_text,
    text_answer,
    tool_use_answer,
)
from ki2api.simulator.state import SimulatorState


@given(st.text(), st.integers(min_value=1, max_value=50))
def test_split_text_keeps_every_character(text: str, chunks: int) -> None:
    pieces = split_text(text, chunks)
    assert "".join(pieces) == text
    assert all(pieces) and len(pieces) <= chunks


def test_script_text_body_and_concatenation() -> None:
    script = text_answer("héllo 世界", chunks=3)
    assert script.text == "héllo 世界"
    frames = EventStreamDecoder().feed(script.body())
    assert [f.event_type for f in frames][-2:] == ["meteringEvent", "contextUsageEvent"]
    longer = script + [Stall()]
    assert isinstance(longer.steps[-1], Stall) and longer.name == script.name
    assert as_script(HttpError(500, {})).steps == (HttpError(500, {}),)
    assert as_script([Stall()]).steps == (Stall(),)
    assert as_script(script) is script


def test_trailer_events() -> None:
    events = {
        e.event_type: e.payload
        for e in text_answer("x", tokens=(120, 30), usage=0.01, context_usage=54.36).steps
        if isinstance(e, Event)
    }
    assert events["meteringEvent"]["usage"] == 0.01
    assert events["contextUsageEvent"] == {"contextUsagePercentage": 54.36}
    assert events["metadataEvent"] == {"inputTokenCount": 120, "outputTokenCount": 30}
    meta = message_metadata_event(100, 20, cache_read_input_tokens=5, conversation_id="c")
    assert meta.payload["tokenUsage"]["totalTokens"] == 125
    assert meta.payload["conversationId"] == "c"


def test_request_log_is_bounded_and_masked() -> None:
    state = SimulatorState(log_limit=10)
    for _ in range(30):
        state.new_record("/p", "path", {"authorization": "Bearer secret-token"}, 0)
    assert 10 <= len(state.requests) <= 11 and state.requests[-1].id == 30
    assert "secret" not in repr(state.requests[-1])


def test_truncated_tool_use_has_no_stop_and_no_trailer() -> None:
    script = tool_use_answer("Write", "tooluse_1", '{"a": 1}', 2, truncated=True)
    payloads = [s.payload for s in script.steps if isinstance(s, Event)]
    assert not any(p.get("stop") for p in payloads)
    assert all(s.event_type == "toolUseEvent" for s in script.steps if isinstance(s, Event))


@pytest.mark.parametrize("name", capture_names())
def test_capture_is_split_into_whole_frames(name: str) -> None:
    script = capture(name)
    assert all(isinstance(s, Raw) for s in script.steps)
    assert b"".join(s.data for s in script.steps if isinstance(s, Raw)) == capture_bytes(name)
    for step in script.steps:
        assert isinstance(step, Raw)
        decoder = EventStreamDecoder()
        assert len(decoder.feed(step.data)) == 1 and decoder.buffered == 0


def test_capture_frame_counts_match_the_fixture_readme() -> None:
    counts = {name: len(capture(name).steps) for name in capture_names()}
    assert counts == {"text-json-fragments": 5, "text-short": 2, "text-zh-then-tooluse": 21}


# --- faults -------------------------------------------------------------------------------------


def test_mid_stream_faults_land_after_the_first_content_frame() -> None:
    answer = Script((Event("initial-response", {"conversationId": "c"}),)) + text_answer(
        "abcdef", 3
    )
    cut = faults.cut_mid_frame().apply(answer)
    assert cut.name == "cut_mid_frame"
    kinds = [type(s).__name__ for s in cut.steps]
    assert kinds == ["Event", "Event", "CutMidFrame"]  # initial-response, first text, cut
    last = cut.steps[-1]
    assert isinstance(last, CutMidFrame) and last.event is not None
    assert last.event.payload["content"] == "cd"

    crc = faults.corrupted_crc().apply(answer)
    assert isinstance(crc.steps[2], CorruptCrc) and len(crc.steps) == len(answer.steps) + 1
    stall = faults.stall_mid_stream(after_frames=2).apply(answer)
    assert isinstance(stall.steps[-1], Stall) and stall.text == "abcd"
    drop = faults.drop_mid_stream().apply(answer)
    assert isinstance(drop.steps[-1], ConnectionDrop)


def test_http_faults_replace_the_answer() -> None:
    for name in ("expired_token", "server_error", "model_unavailable", "quota_exceeded"):
        script = faults.get_fault(name).apply(text_answer("x"))
        assert len(script.steps) == 1 and isinstance(script.steps[0], HttpError)
    with pytest.raises(KeyError, match="unknown fault"):
        faults.get_fault("nope")


def test_throttled_can_carry_retry_after() -> None:
    error = faults.throttled(retry_after=3).apply(text_answer("x")).steps[0]
    assert isinstance(error, HttpError) and error.headers["retry-after"] == "3"


# --- default model ------------------------------------------------------------------------------


def test_example_arguments_follow_the_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 10},
            "count": {"type": "integer"},
            "ratio": {"type": "number"},
            "on": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string", "format": "email"}},
            "kind": {"enum": ["a", "b"]},
            "fixed": {"const": 7},
            "maybe": {"type": ["null", "integer"]},
            "either": {"anyOf": [{"type": "boolean"}, {"type": "string"}]},
            "nested": {"properties": {"x": {"default": "y"}}},
        },
    }
    assert example_arguments(schema) == {
        "name": "examplexxx",
        "count": 1,
        "ratio": 1.5,
        "on": True,
        "tags": ["user@example.com"],
        "kind": "a",
        "fixed": 7,
        "maybe": 1,
        "either": True,
        "nested": {"x": "y"},
    }
    assert example_arguments("junk") == {}


def test_default_answer_is_deterministic() -> None:
    body = kiro_request_body("Same question", conversation_id="c")
    first = default_answer(prompt_from_kiro(body)).body()
    assert first == default_answer(prompt_from_kiro(body)).body()


def test_default_answer_echoes_the_end_of_long_messages() -> None:
    text = "SYSTEM " * 100 + "the real question?"
    answer = default_answer(Prompt(text)).text
    assert answer.startswith(SIMULATOR_TAG) and "the real question?" in answer and "…" in answer


def test_tool_names_match_whole_words_only() -> None:
    prompt = prompt_from_kiro(kiro_request_body("please do the reading", tools=[tool_spec("read")]))
    assert not [
        s
        for s in default_answer(prompt).steps
        if isinstance(s, Event) and s.event_type == "toolUseEvent"
    ]
    prompt = prompt_from_kiro(kiro_request_body("use read now", tools=[tool_spec("read")]))
    names = [
        s.payload.get("name")
        for s in default_answer(prompt).steps
        if isinstance(s, Event) and s.event_type == "toolUseEvent"
    ]
    assert names and set(names) == {"read"}


def test_prompt_from_openai() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be kind"},
            {"role": "user", "content": [{"type": "text", "text": "Look up"}]},
            {"role": "assistant", "tool_calls": []},
            {"role": "tool", "tool_call_id": "1", "content": "result one"},
        ],
        "tools": [
            {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
        ],
        "reasoning_effort": "low",
    }
    prompt = prompt_from_openai(body)
    assert prompt.text == "Look up" and prompt.tool_results == ("result one",)
    assert set(prompt.tools) == {"lookup"} and prompt.thinking and prompt.model_id == "m"
    assert "result one" in default_answer(prompt).text
    assert prompt_from_openai({"messages": "nope"}) == Prompt()


def test_prompt_from_kiro_reads_thinking_and_results() -> None:
    body = kiro_request_body(
        "<thinking_mode>adaptive</thinking_mode><thinking_effort>low</thinking_effort>Hi"
    )
    prompt = prompt_from_kiro(body)
    assert prompt.thinking and prompt.text == "Hi"
    events = [s for s in default_answer(prompt).steps if isinstance(s, Event)]
    assert any(e.event_type == "reasoningContentEvent" for e in events)
    assert prompt_from_kiro({"junk": 1}) == Prompt()


def _weather_and_time(text: str, **body: object) -> Prompt:
    city = {"type": "object", "properties": {"city": {"type": "string"}}}
    zone = {"type": "object", "properties": {"timezone": {"type": "string"}}}
    tools = [
        tool_spec("get_weather", "Current weather in a city.", city),
        tool_spec("get_time", "Current time in an IANA time zone.", zone),
    ]
    return prompt_from_kiro(kiro_request_body(text, tools=tools, **body))  # type: ignore[arg-type]


def test_the_best_fitting_tool_is_picked_by_shared_words() -> None:
    assert best_tool(_weather_and_time("What's the weather in Paris?")) == "get_weather"
    assert best_tool(_weather_and_time("Which time zone is Lima in?")) == "get_time"
    assert best_tool(_weather_and_time("Tell me a joke")) is None  # nothing in common
    assert best_tool(_weather_and_time("今天天气怎么样？")) is None
    # The gateway's tool_choice lines: any tool (the first when none fits), or a named one.
    forced = _weather_and_time(
        "Tell me a joke\n\nRespond by calling one or more of the available tools."
    )
    assert forced.tool_choice == ANY_TOOL and best_tool(forced) == "get_weather"
    assert forced.said == "Tell me a joke"
    named = _weather_and_time("Weather in Rome?\n\nRespond by calling the tool get_time.")
    assert best_tool(named) == "get_time" and "Respond" not in named.text


def test_tool_arguments_come_from_the_message_where_it_has_them() -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "timezone": {"type": "string"},
            "days": {"type": "integer"},
            "query": {"type": "string"},
            "unit": {"type": "string", "enum": ["c", "f"]},
            "note": {"type": "string"},
        },
    }
    text = "Forecast for New York for 3 days, zone America/New_York"
    assert tool_arguments(schema, text) == {
        "city": "New York",
        "timezone": "America/New_York",
        "days": 3,
        "query": text,
        "unit": "c",
        "note": "example",
    }
    assert tool_arguments(schema, "nothing useful") == {
        "city": "example",
        "timezone": "UTC",
        "days": 1,
        "query": "nothing useful",
        "unit": "c",
        "note": "example",
    }


def test_the_echo_leaves_out_a_system_prompt_on_the_first_turn() -> None:
    first = prompt_from_kiro(kiro_request_body("You are terse.\n\nHello there"))
    assert "“Hello there” (2 words)" in default_answer(first).text
    later = kiro_request_body(
        "One.\n\nTwo.",
        history=[
            {
                "userInputMessage": {
                    "content": "You are terse.\n\nHi",
                    "modelId": "m",
                    "origin": "AI_EDITOR",
                }
            },
            {"assistantResponseMessage": {"content": "Hello"}},
        ],
    )
    assert "“One. Two.”" in default_answer(prompt_from_kiro(later)).text
