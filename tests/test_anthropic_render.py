"""The Anthropic renderer (ki2api/api/anthropic/render.py) on deltas alone: every event is one the
anthropic SDK accepts, in the order its accumulator checks."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from ki2api.api.anthropic.render import PLACEHOLDER_SIGNATURE, MessageRenderer
from ki2api.model import deltas as d
from ki2api.model.errors import ContextLengthExceeded, InvalidRequest
from ki2api.pipeline.gateway import CompletedToolCall, Completion
from tests.render_help import HITS, SCRIPTS, chat_request, events, render

EVENT = TypeAdapter(RawMessageStreamEvent)


def typed(data: bytes) -> list[Any]:
    out = []
    for event in events(data):
        body = event.json()
        assert event.event == body["type"]  # the SSE name repeats the type
        out.append(EVENT.validate_python(body))
    return out


def blocks(data: bytes) -> list[tuple[int, str]]:
    """(index, type) of each content block, checking each starts, takes deltas, then stops."""
    open_index: int | None = None
    seen: list[tuple[int, str]] = []
    for event in map(lambda e: e.json(), events(data)):
        if event["type"] == "content_block_start":
            assert open_index is None, "one block open at a time"
            assert event["index"] == len(seen)
            open_index = event["index"]
            seen.append((event["index"], event["content_block"]["type"]))
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_index
        elif event["type"] == "content_block_stop":
            assert event["index"] == open_index
            open_index = None
    assert open_index is None
    return seen


def test_reasoning_text_and_tool_calls_are_blocks_in_order() -> None:
    data = render(
        MessageRenderer(chat_request(), context_window=200_000), SCRIPTS["reasoning_and_tools"]
    )
    parsed = typed(data)
    assert parsed[0].type == "message_start"
    assert [e.type for e in parsed[-2:]] == ["message_delta", "message_stop"]
    assert blocks(data) == [
        (0, "thinking"),
        (1, "text"),
        (2, "tool_use"),
        (3, "tool_use"),
        (4, "tool_use"),
    ]
    signatures = [
        e.delta.signature
        for e in parsed
        if e.type == "content_block_delta" and e.delta.type == "signature_delta"
    ]
    assert signatures == ["sig-2"]  # the last signature the service sent
    final = parsed[-2]
    assert final.delta.stop_reason == "tool_use"
    # Anthropic's input_tokens leaves the cached tokens out; ours counts them.
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens) == (85, 10)


def test_reasoning_without_a_signature_is_signed_with_the_placeholder() -> None:
    data = render(
        MessageRenderer(chat_request(), context_window=200_000),
        [[d.ReasoningDelta("hm")], [d.TextDelta("ok"), d.Stop(d.StopReason.END_TURN)]],
    )
    assert f'"signature":"{PLACEHOLDER_SIGNATURE}"'.encode() in data


def test_a_cut_tool_call_closes_its_block_and_stops_at_max_tokens() -> None:
    data = render(MessageRenderer(chat_request(), context_window=200_000), SCRIPTS["cut_tool_call"])
    parsed = typed(data)
    assert blocks(data) == [(0, "text"), (1, "tool_use")]
    assert parsed[-2].delta.stop_reason == "max_tokens"


def test_searches_are_server_tool_blocks_and_are_counted() -> None:
    renderer = MessageRenderer(chat_request(web_search=True), context_window=200_000)
    data = render(renderer, SCRIPTS["search"])
    *parsed, delta, _ = events(data)
    for event in parsed:
        EVENT.validate_python(event.json())
    kinds = [kind for _, kind in blocks(data)]
    assert kinds == ["server_tool_use", "web_search_tool_result"] * 2 + ["text"]
    # (raw: the SDK's model of this usage now also wants web_fetch_requests; its stream does
    # not validate)
    assert delta.json()["usage"]["server_tool_use"] == {"web_search_requests": 1}  # one failed


def test_the_upstream_count_replaces_the_estimate_and_teaches_the_calibration() -> None:
    learned: list[tuple[int, int]] = []
    renderer = MessageRenderer(
        chat_request(), ratio=2.0, context_window=200_000, learn=lambda *a: learned.append(a)
    )
    parsed = typed(render(renderer, SCRIPTS["text"]))
    assert (
        parsed[0].message.usage.input_tokens == renderer.input_estimate == 2 * renderer.raw_estimate
    )
    assert parsed[-2].usage.input_tokens == 12
    assert learned == [(renderer.raw_estimate, 12)]


def test_an_estimated_count_keeps_the_estimate_and_teaches_nothing() -> None:
    learned: list[tuple[int, int]] = []
    renderer = MessageRenderer(
        chat_request(), context_window=200_000, learn=lambda *a: learned.append(a)
    )
    parsed = typed(
        render(renderer, [[d.TextDelta("a"), d.Usage(999, 3), d.Stop(d.StopReason.END_TURN)]])
    )
    assert parsed[-2].usage.input_tokens == renderer.input_estimate
    assert parsed[-2].usage.output_tokens == 3
    assert learned == []


def test_too_long_in_the_first_batch_is_anthropics_400_before_anything_is_sent() -> None:
    renderer = MessageRenderer(chat_request(), context_window=1000)
    renderer.start()
    with pytest.raises(InvalidRequest, match=r"^prompt is too long: 1001 tokens > 1000 maximum$"):
        renderer.feed([d.StreamError(ContextLengthExceeded("Input is too long."))])


def test_too_long_after_the_first_batch_is_an_error_event() -> None:
    renderer = MessageRenderer(chat_request(), context_window=1000)
    renderer.start()
    renderer.feed([d.TextDelta("a")])
    (event,) = events(renderer.feed([d.StreamError(ContextLengthExceeded("Input is too long."))]))
    assert event.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "Input is too long."},
    }
    assert renderer.done


def test_a_whole_answer_is_a_message() -> None:
    renderer = MessageRenderer(chat_request(stream=False, web_search=True), context_window=200_000)
    renderer.prepare()
    done = Completion(
        text="Sunny.",
        reasoning="think",
        reasoning_signature="sig",
        tool_calls=[
            CompletedToolCall("toolu_1", "get_weather", '{"city":"Paris"}'),
            CompletedToolCall("toolu_2", "broken", "{not json"),
        ],
        usage=d.Usage(20, 4, source="upstream"),
        stop=d.Stop(d.StopReason.STOP_SEQUENCE, "END"),
        server_tools=[d.ServerToolUse("s1", "weather"), d.ServerToolResult("s1", HITS)],
    )
    body, headers = renderer.whole(done)
    assert body["usage"].pop("server_tool_use") == {"web_search_requests": 1}  # (see above)
    message = Message.model_validate(body)
    assert headers is None and message.id == renderer.id
    assert [b.type for b in message.content] == [
        "server_tool_use",
        "web_search_tool_result",
        "thinking",
        "text",
        "tool_use",
        "tool_use",
    ]
    assert message.content[4].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert message.content[5].input == {"_raw_arguments": "{not json"}  # type: ignore[union-attr]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")
