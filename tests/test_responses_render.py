"""The Responses renderer (ki2api/api/responses/render.py) on deltas alone: every event is one the
openai SDK accepts, numbered in order, with each output item added, filled and done."""

from __future__ import annotations

from typing import Any

from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from ki2api.api.responses.protocol import parse_wire
from ki2api.api.responses.render import WARNING_HEADER, ResponseRenderer
from ki2api.api.responses.sealed import ReasoningSeal
from ki2api.api.responses.tools import parse_tools
from ki2api.model.deltas import ServerToolResult, ServerToolUse, Stop, StopReason, Usage
from ki2api.model.errors import UpstreamTimeout
from ki2api.pipeline.gateway import CompletedToolCall, Completion
from tests.render_help import HITS, SCRIPTS, chat_request, events, render

EVENT = TypeAdapter(ResponseStreamEvent)
TOOLS = [
    {"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
    {"type": "custom", "name": "apply_patch", "description": "Apply a patch."},
    {"type": "local_shell"},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
]
SEAL = ReasoningSeal("a secret for the test")


def renderer(**body: Any) -> ResponseRenderer:
    wire = parse_wire({"model": "claude-sonnet-4.5", "input": "hi", "stream": True, **body})
    _, kinds = parse_tools(wire.tools)
    encrypted = "reasoning.encrypted_content" in (wire.include or ())
    return ResponseRenderer(chat_request(), wire, kinds, SEAL if encrypted else None)


def typed(data: bytes) -> list[Any]:
    parsed = []
    for event in events(data):
        body = event.json()
        assert event.event == body["type"]
        parsed.append(EVENT.validate_python(body))
    assert [e.sequence_number for e in parsed] == list(range(len(parsed)))
    return parsed


def items(parsed: list[Any]) -> list[dict[str, Any]]:
    """The finished output items, checking each was added before it was done, one at a time."""
    open_index: int | None = None
    done: list[dict[str, Any]] = []
    for event in parsed:
        if event.type == "response.output_item.added":
            assert open_index is None and event.output_index == len(done)
            open_index = event.output_index
        elif event.type == "response.output_item.done":
            assert event.output_index == open_index
            done.append(event.item.model_dump(exclude_none=True))
            open_index = None
    return done


def statuses(output: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(item["type"], item["status"]) for item in output]


def test_reasoning_text_and_each_kind_of_call_are_items_in_order() -> None:
    stream = renderer(tools=TOOLS, include=["reasoning.encrypted_content"])
    parsed = typed(render(stream, SCRIPTS["reasoning_and_tools"]))
    assert [e.type for e in parsed[:2]] == ["response.created", "response.in_progress"]
    output = items(parsed)
    kinds = [item["type"] for item in output]
    assert kinds == [
        "reasoning",
        "message",
        "function_call",
        "custom_tool_call",
        "local_shell_call",
    ]
    sealed = SEAL.open(output[0]["encrypted_content"])
    assert sealed is not None and (sealed.text, sealed.signature) == ("think more", "sig-2")
    assert output[1]["content"][0]["text"] == "Calling."
    assert output[2]["arguments"] == '{"city":"Paris"}'
    assert output[3]["input"] == "x"
    assert output[4]["action"]["command"] == ["ls"]
    completed = parsed[-1]
    assert completed.type == "response.completed"
    assert [item.type for item in completed.response.output] == kinds
    assert completed.response.usage.input_tokens_details.cached_tokens == 10


def test_the_warning_about_a_dropped_tool_goes_with_the_head() -> None:
    (name, value), *_ = renderer(tools=TOOLS).headers()
    assert name == WARNING_HEADER.encode() and b"file_search" in value
    assert renderer().headers() == []


def test_a_cut_tool_call_is_an_incomplete_item_in_an_incomplete_response() -> None:
    parsed = typed(render(renderer(), SCRIPTS["cut_tool_call"]))
    output = items(parsed)
    assert statuses(output) == [("message", "completed"), ("function_call", "incomplete")]
    assert not [e for e in parsed if e.type == "response.function_call_arguments.done"]
    last = parsed[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details.reason == "max_output_tokens"


def test_an_error_is_an_error_event_then_response_failed() -> None:
    stream = renderer()
    sent = stream.start() + stream.feed(SCRIPTS["text"][0])
    tail = typed(sent + stream.error(UpstreamTimeout("Too slow.")))[-2:]
    assert [e.type for e in tail] == ["error", "response.failed"]
    assert tail[1].response.error.code == "server_error"
    assert tail[1].response.error.message == "Too slow."


def test_searches_are_web_search_items_and_the_text_cites_them() -> None:
    parsed = typed(render(renderer(), SCRIPTS["search"]))
    output = items(parsed)
    searches = [("web_search_call", "completed"), ("web_search_call", "failed")]
    assert statuses(output) == [*searches, ("message", "completed")]
    assert output[0]["action"]["sources"] == [{"type": "url", "url": h.url} for h in HITS]
    urls = [a["url"] for a in output[2]["content"][0]["annotations"]]
    assert urls == ["https://example.com/a", "https://b.org/"]


def test_a_whole_answer_is_a_response() -> None:
    whole = renderer(tools=TOOLS, include=["reasoning.encrypted_content"])
    whole.prepare()
    done = Completion(
        text="Sunny.",
        reasoning="think",
        reasoning_signature="sig",
        tool_calls=[CompletedToolCall("call_1", "apply_patch", '{"input":"p"}')],
        usage=Usage(20, 4, 3),
        stop=Stop(StopReason.END_TURN),
        server_tools=[ServerToolUse("s1", "weather"), ServerToolResult("s1", HITS)],
    )
    body, headers = whole.whole(done)
    response = Response.model_validate(body)
    assert response.id == whole.id and response.status == "completed"
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "web_search_call", "message", "custom_tool_call"]
    assert headers is not None and "file_search" in headers[WARNING_HEADER]
