"""The OpenAI chat renderer (ki2api/api/openai_chat/render.py) on deltas alone: every chunk is
one the openai SDK accepts, and the stream reads as a whole answer."""

from __future__ import annotations

from unittest import mock

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ki2api.api.openai_chat.render import WARNING_HEADER, ChatRenderer
from ki2api.model.deltas import ServerToolResult, Stop, StopReason, TextDelta, Usage
from ki2api.model.errors import QuotaExceeded
from ki2api.model.request import ToolChoice
from ki2api.pipeline.gateway import CompletedToolCall, Completion
from tests.openai_stream import assemble
from tests.render_help import HITS, SCRIPTS, chat_request, events, render, seeded


def chunks(data: bytes) -> tuple[list[ChatCompletionChunk], list[str]]:
    """The chunks (checked against the SDK's model) and the other data lines, in order."""
    parsed, other = [], []
    for event in events(data):
        if event.data == "[DONE]" or "error" in event.json():
            other.append(event.data)
        else:
            parsed.append(ChatCompletionChunk.model_validate(event.json()))
    return parsed, other


def test_a_text_answer_golden() -> None:
    # The bytes clients have been getting, pinned: the role chunk, text, finish, usage, [DONE].
    seeded()
    renderer = ChatRenderer(chat_request(), include_usage=True)
    with mock.patch("time.time", return_value=1_700_000_000.0):
        data = render(
            renderer,
            [[TextDelta("Hi")], [Usage(3, 1, source="upstream"), Stop(StopReason.END_TURN)]],
        )
    head = (
        f'data: {{"id":"{renderer.id}","object":"chat.completion.chunk","created":1700000000,'
        '"model":"claude-sonnet-4.5","system_fingerprint":null,"choices":[{"index":0,"delta":'
    )
    assert data.decode() == (
        head + '{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],'
        '"usage":null}\n\n'
        + head + '{"content":"Hi"},"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
        + head + '{},"logprobs":null,"finish_reason":"stop"}],"usage":null}\n\n'
        f'data: {{"id":"{renderer.id}","object":"chat.completion.chunk","created":1700000000,'
        '"model":"claude-sonnet-4.5","system_fingerprint":null,"choices":[],"usage":'
        '{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4,'
        '"prompt_tokens_details":{"cached_tokens":0}}}\n\n'
        "data: [DONE]\n\n"
    )  # fmt: skip


def test_reasoning_and_tool_calls_reassemble() -> None:
    data = render(ChatRenderer(chat_request(), include_usage=True), SCRIPTS["reasoning_and_tools"])
    parsed, other = chunks(data)
    assert other == ["[DONE]"]
    answer = assemble(parsed, expect_usage=True)
    assert answer.reasoning == "think more"
    assert answer.text == "Calling."
    assert answer.finish_reason == "tool_calls"
    calls = answer.tool_calls
    assert [calls[i]["name"] for i in range(3)] == ["get_weather", "apply_patch", "local_shell"]
    assert calls[0]["arguments"] == '{"city":"Paris"}'
    assert (
        answer.usage.prompt_tokens == 100 and answer.usage.prompt_tokens_details.cached_tokens == 10
    )


def test_without_include_usage_no_usage_chunk_and_no_usage_field() -> None:
    data = render(ChatRenderer(chat_request(), include_usage=False), SCRIPTS["text"])
    parsed, _ = chunks(data)
    assert all(c.choices for c in parsed)
    assert b'"usage"' not in data


def test_a_cut_tool_call_finishes_with_length() -> None:
    parsed, _ = chunks(
        render(ChatRenderer(chat_request(), include_usage=True), SCRIPTS["cut_tool_call"])
    )
    assert assemble(parsed, expect_usage=True).finish_reason == "length"


def test_an_unmet_tool_choice_is_an_sse_comment_before_done() -> None:
    request = chat_request(tool_choice=ToolChoice("required"))
    data = render(ChatRenderer(request, include_usage=False), SCRIPTS["text"])
    warning = b": warning: tool_choice was 'required' but the model answered without calling a tool"
    assert data.endswith(b"\n\n" + warning + b"\n\ndata: [DONE]\n\n")


def test_an_error_after_the_first_byte_is_an_error_object_and_no_done() -> None:
    renderer = ChatRenderer(chat_request(), include_usage=True)
    renderer.start()
    renderer.feed([TextDelta("part")])
    tail = renderer.error(QuotaExceeded("Out of quota."))
    ((event,),) = [events(tail)]
    assert event.json()["error"]["code"] == "insufficient_quota"
    assert renderer.done and renderer.end() == b""


def test_searched_answers_cite_the_urls_they_name() -> None:
    data = render(
        ChatRenderer(chat_request(web_search=True), include_usage=False), SCRIPTS["search"]
    )
    parsed, _ = chunks(data)
    notes = [
        c.choices[0].delta.model_extra
        for c in parsed
        if "annotations" in (c.choices[0].delta.model_extra or {})
    ]
    (note,) = notes
    urls = [a["url_citation"]["url"] for a in note["annotations"]]
    assert urls == ["https://example.com/a", "https://b.org/"]


def test_a_whole_answer_is_a_chat_completion() -> None:
    renderer = ChatRenderer(chat_request(stream=False, tool_choice=ToolChoice("required")), False)
    renderer.prepare()
    done = Completion(
        text="Calling.",
        reasoning="think",
        tool_calls=[CompletedToolCall("call_1", "get_weather", '{"city":"Paris"}')],
        usage=Usage(10, 4, 2),
        stop=Stop(StopReason.TOOL_USE),
        server_tools=[ServerToolResult("s1", HITS)],
    )
    body, headers = renderer.whole(done)
    completion = ChatCompletion.model_validate(body)
    assert completion.id == renderer.id
    message = completion.choices[0].message
    assert message.content == "Calling." and message.tool_calls is not None
    assert message.tool_calls[0].function.arguments == '{"city":"Paris"}'
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None and completion.usage.total_tokens == 14
    assert headers is None  # the tool_choice was met


def test_a_whole_answer_that_breaks_the_rules_says_so_in_a_header() -> None:
    request = chat_request(stream=False, tool_choice=ToolChoice("required"))
    request.response_schema = {}
    renderer = ChatRenderer(request, False)
    renderer.prepare()
    body, headers = renderer.whole(Completion(text='```json\n{"a": 1}\n```'))
    assert body["choices"][0]["message"]["content"] == '{"a": 1}'
    assert headers is not None and "tool_choice was 'required'" in headers[WARNING_HEADER]
