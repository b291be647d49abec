"""Kiro events → deltas: text, reasoning (both forms), fragmented tool calls, usage, cuts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ki2api.kiro.wire.events import KiroEventParser, ThinkingSplitter
from ki2api.kiro.wire.eventstream import EventStreamDecoder, encode_event, encode_exception
from ki2api.model.deltas import (
    ReasoningDelta,
    Stop,
    StopReason,
    StreamError,
    TextDelta,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from ki2api.model.errors import (
    AccountSuspended,
    ContextLengthExceeded,
    ModelCapacity,
    QuotaExceeded,
    UpstreamError,
    UpstreamThrottled,
)


def frame(event: str, payload: dict) -> object:
    return EventStreamDecoder().feed(encode_event(event, orjson.dumps(payload)))[0]


def run(parser: KiroEventParser, events: list[tuple[str, dict]]) -> list[object]:
    out: list[object] = []
    for name, payload in events:
        out.extend(parser.feed(frame(name, payload)))
    return out + parser.finish()


def test_text_then_usage_and_end_turn() -> None:
    deltas = run(
        KiroEventParser(prompt_tokens_estimate=7),
        [
            ("assistantResponseEvent", {"content": "Hel"}),
            ("assistantResponseEvent", {"content": "lo"}),
        ],
    )
    assert deltas[:2] == [TextDelta("Hel"), TextDelta("lo")]
    assert isinstance(deltas[2], Usage) and deltas[2].source == "estimate"
    assert deltas[2].input_tokens == 7
    assert deltas[3] == Stop(StopReason.END_TURN)


def test_fragmented_tool_call_maps_name_back() -> None:
    events = [
        ("assistantResponseEvent", {"content": "Let me check."}),
        ("toolUseEvent", {"name": "short_1", "toolUseId": "t1"}),
        ("toolUseEvent", {"name": "short_1", "toolUseId": "t1", "input": '{"ci'}),
        ("toolUseEvent", {"name": "short_1", "toolUseId": "t1", "input": 'ty": "Paris"}'}),
        ("toolUseEvent", {"name": "short_1", "toolUseId": "t1", "stop": True}),
    ]
    deltas = run(KiroEventParser(tool_names={"short_1": "a_very_long_original_name"}), events)
    assert deltas[0] == TextDelta("Let me check.")
    assert deltas[1] == ToolCallStart(0, "t1", "a_very_long_original_name")
    args = "".join(d.fragment for d in deltas if isinstance(d, ToolCallArgs))
    assert orjson.loads(args) == {"city": "Paris"}
    assert ToolCallEnd(0) in deltas
    assert deltas[-1] == Stop(StopReason.TOOL_USE)


def test_tool_call_without_arguments_gets_empty_object() -> None:
    deltas = run(
        KiroEventParser(), [("toolUseEvent", {"name": "now", "toolUseId": "t", "stop": True})]
    )
    assert ToolCallArgs(0, "{}") in deltas


def test_cut_tool_call_is_reported_as_length_not_complete(caplog: pytest.LogCaptureFixture) -> None:
    events = [
        ("toolUseEvent", {"name": "Write", "toolUseId": "t1"}),
        ("toolUseEvent", {"name": "Write", "toolUseId": "t1", "input": '{"path": "a.py", "con'}),
    ]
    deltas = run(KiroEventParser(), events)
    assert not any(isinstance(d, ToolCallEnd) for d in deltas)
    assert deltas[-1] == Stop(StopReason.MAX_TOKENS)
    assert "before their 'stop'" in caplog.text


def test_parallel_tool_calls_get_their_own_indices() -> None:
    events = [
        ("toolUseEvent", {"name": "a", "toolUseId": "x"}),
        ("toolUseEvent", {"name": "a", "toolUseId": "x", "input": "{}", "stop": True}),
        ("toolUseEvent", {"name": "b", "toolUseId": "y", "input": '{"k": 1}', "stop": True}),
    ]
    deltas = run(KiroEventParser(), events)
    starts = [d for d in deltas if isinstance(d, ToolCallStart)]
    assert [(s.index, s.id, s.name) for s in starts] == [(0, "x", "a"), (1, "y", "b")]


def test_reasoning_event_and_upstream_usage() -> None:
    events = [
        ("reasoningContentEvent", {"text": "thinking...", "signature": "sig"}),
        ("assistantResponseEvent", {"content": "answer"}),
        (
            "metadataEvent",
            {
                "tokenUsage": {
                    "uncachedInputTokens": 10,
                    "outputTokens": 4,
                    "cacheReadInputTokens": 2,
                }
            },
        ),
    ]
    deltas = run(KiroEventParser(), events)
    assert deltas[0] == ReasoningDelta("thinking...", "sig")
    usage = next(d for d in deltas if isinstance(d, Usage))
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (12, 4, 2)
    assert usage.source == "upstream"


def test_context_usage_gives_prompt_tokens() -> None:
    events = [
        ("assistantResponseEvent", {"content": "x" * 400}),
        ("contextUsageEvent", {"contextUsagePercentage": 1.0}),
        ("meteringEvent", {"unit": "credit", "usage": 0.01}),
    ]
    deltas = run(KiroEventParser(context_window=200_000), events)
    usage = next(d for d in deltas if isinstance(d, Usage))
    assert usage.source == "context"
    assert usage.output_tokens == 100
    assert usage.input_tokens == 2000 - 100
    assert usage.credits == pytest.approx(0.01)


def test_unknown_events_are_ignored() -> None:
    deltas = run(
        KiroEventParser(),
        [
            ("followupPromptEvent", {"x": 1}),
            ("codeReferenceEvent", {}),
            ("assistantResponseEvent", {"content": "ok"}),
        ],
    )
    assert deltas[0] == TextDelta("ok")


def test_exception_frame_becomes_stream_error() -> None:
    parser = KiroEventParser()
    raw = encode_exception("ThrottlingException", b'{"message": "Too many requests"}')
    out = parser.feed(EventStreamDecoder().feed(raw)[0])
    assert isinstance(out[0], StreamError) and isinstance(out[0].error, UpstreamThrottled)
    raw = encode_exception("ServiceQuotaExceededException", b'{"message": "MONTHLY_REQUEST_COUNT"}')
    out = parser.feed(EventStreamDecoder().feed(raw)[0])
    assert isinstance(out[0], StreamError) and isinstance(out[0].error, QuotaExceeded)


def exception_error(kind: str, payload: dict[str, object]) -> object:
    frame = EventStreamDecoder().feed(encode_exception(kind, orjson.dumps(payload)))[0]
    [delta] = KiroEventParser().feed(frame)
    assert isinstance(delta, StreamError)
    return delta.error


def test_in_stream_errors_go_through_the_one_error_table() -> None:
    daily = exception_error(
        "ThrottlingException",
        {
            "message": "You have reached the limit for daily requests.",
            "reason": "DAILY_REQUEST_COUNT",
        },
    )
    assert isinstance(daily, QuotaExceeded)  # not a passing throttle: out until the next day
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert daily.retry_after is not None
    assert abs(daily.retry_after - (midnight - now).total_seconds()) < 5
    capacity = exception_error(
        "ThrottlingException", {"message": "busy", "reason": "INSUFFICIENT_MODEL_CAPACITY"}
    )
    assert isinstance(capacity, ModelCapacity)
    suspended = exception_error(
        "AccessDeniedException", {"message": "We detected unusual user activity."}
    )
    assert type(suspended) is AccountSuspended
    # An unknown exception type is matched by the table's markers alone.
    too_long = exception_error("SomethingNewException", {"message": "Input is too long."})
    assert isinstance(too_long, ContextLengthExceeded)
    other = exception_error("SomethingNewException", {"message": "odd"})
    assert type(other) is UpstreamError and "SomethingNewException: odd" in other.message


def test_thinking_tags_split_from_answer() -> None:
    parser = KiroEventParser(split_thinking=True)
    text = "<thinking>Let me think.</thinking>\n\nThe answer."
    deltas = run(parser, [("assistantResponseEvent", {"content": text})])
    reasoning = "".join(d.text for d in deltas if isinstance(d, ReasoningDelta))
    answer = "".join(d.text for d in deltas if isinstance(d, TextDelta))
    assert (reasoning, answer) == ("Let me think.", "The answer.")


@given(
    st.text(min_size=0, max_size=40),
    st.text(min_size=1, max_size=40),
    st.lists(st.integers(min_value=1, max_value=80), min_size=1, max_size=10),
)
def test_thinking_splitter_any_chunking(reasoning: str, answer: str, cuts: list[int]) -> None:
    if "</thinking>" in reasoning or answer.startswith("\n"):
        return
    text = f"<thinking>{reasoning}</thinking>\n{answer}"
    splitter, pieces, pos = ThinkingSplitter(), [], 0
    for size in cuts + [len(text)]:
        pieces.append(text[pos : pos + size])
        pos += size
    out = [d for p in pieces if p for d in splitter.feed(p)] + splitter.flush()
    assert "".join(d.text for d in out if isinstance(d, ReasoningDelta)) == reasoning
    assert "".join(d.text for d in out if isinstance(d, TextDelta)) == answer


@given(st.text(max_size=60), st.lists(st.integers(min_value=1, max_value=20), max_size=8))
def test_text_without_thinking_passes_unchanged(text: str, cuts: list[int]) -> None:
    if text.lstrip().startswith("<"):
        return
    splitter, out, pos = ThinkingSplitter(), [], 0
    for size in cuts + [len(text)]:
        out += splitter.feed(text[pos : pos + size]) if text[pos : pos + size] else []
        pos += size
    out += splitter.flush()
    assert all(isinstance(d, TextDelta) for d in out)
    assert "".join(d.text for d in out) == text
