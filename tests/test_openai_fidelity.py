"""Issue 4 through the real `openai` SDK: tool choice, legacy functions, images, parameters,
usage, long histories and conversation ids, against the simulator's strict validator."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from ki2api.simulator import get_fault, text_answer, tool_use_answer
from tests.openai_stream import assemble
from tests.servers import ServerThread
from tests.stack import Stack, StackFactory

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def png_bytes() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


PNG_URL = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


_clients: list[openai.OpenAI] = []  # closed after each test (their sockets)


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client(stack: Stack) -> openai.OpenAI:
    made = openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)
    _clients.append(made)
    return made


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def user_parts(parts: list) -> list[Any]:
    return [{"role": "user", "content": parts}]


def sent_body(stack: Stack) -> dict:
    record = stack.state.requests[-1]
    assert record.refusal is None, record.refusal
    return record.body


def current(body: dict) -> dict:
    return body["conversationState"]["currentMessage"]["userInputMessage"]


def test_tool_choice_none_offers_no_tools(stack: Stack) -> None:
    stack.state.enqueue(text_answer("no tools"))
    client(stack).chat.completions.create(
        model="claude-sonnet-4-5", messages=user("hi"), tools=[WEATHER], tool_choice="none"
    )
    assert "tools" not in current(sent_body(stack)).get("userInputMessageContext", {})


def test_required_tool_choice_not_followed_is_reported(stack: Stack) -> None:
    stack.state.enqueue(text_answer("I refuse to call tools."))
    raw = client(stack).chat.completions.with_raw_response.create(
        model="claude-sonnet-4-5", messages=user("hi"), tools=[WEATHER], tool_choice="required"
    )
    assert "required" in raw.headers["x-ki2api-warning"]
    assert raw.parse().choices[0].finish_reason == "stop"
    assert "Respond by calling" in current(sent_body(stack))["content"]


def test_named_tool_choice_is_steered_and_followed(stack: Stack) -> None:
    stack.state.enqueue(tool_use_answer("get_weather", "tooluse_1", '{"city": "Oslo"}'))
    raw = client(stack).chat.completions.with_raw_response.create(
        model="claude-sonnet-4-5",
        messages=user("weather?"),
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert "x-ki2api-warning" not in raw.headers
    call = raw.parse().choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Oslo"},
    )


def test_legacy_functions_round_trip(stack: Stack) -> None:
    stack.state.enqueue(tool_use_answer("get_weather", "tooluse_9", '{"city": "Rome"}'))
    c = client(stack)
    first = c.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=user("weather in Rome"),
        functions=[WEATHER["function"]],
        function_call="auto",
    )
    assert first.choices[0].message.tool_calls[0].function.name == "get_weather"
    stack.state.enqueue(text_answer("Sunny in Rome."))
    messages = [
        *user("weather in Rome"),
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
        },
        {"role": "function", "name": "get_weather", "content": "sunny"},
    ]
    final = c.chat.completions.create(
        model="claude-sonnet-4-5", messages=messages, functions=[WEATHER["function"]]
    )
    assert final.choices[0].message.content == "Sunny in Rome."
    results = current(sent_body(stack))["userInputMessageContext"]["toolResults"]
    assert results[0]["content"] == [{"text": "sunny"}]


def test_images_in_current_message_and_history(stack: Stack) -> None:
    stack.state.enqueue(text_answer("A green pixel."))
    picture = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": PNG_URL}},
    ]
    messages = [
        {"role": "user", "content": picture},
        {"role": "assistant", "content": "A pixel."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG_URL}}]},
    ]
    client(stack).chat.completions.create(model="claude-sonnet-4-5", messages=messages)
    body = sent_body(stack)
    assert current(body)["images"][0]["format"] == "png"
    assert base64.b64decode(current(body)["images"][0]["source"]["bytes"]) == png_bytes()
    assert body["conversationState"]["history"][0]["userInputMessage"]["images"]


def test_bad_image_is_a_clear_400(stack: Stack) -> None:
    bad = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]
    with pytest.raises(openai.BadRequestError) as info:
        client(stack).chat.completions.create(model="claude-sonnet-4-5", messages=user_parts(bad))
    assert info.value.body["param"].startswith("messages[0].content[0]")


def image_server() -> ServerThread:
    async def image(request: object) -> Response:
        return Response(png_bytes(), media_type="image/png")

    return ServerThread(Starlette(routes=[Route("/cat.png", image)])).start()


def test_loopback_image_urls_are_refused_by_default(stack: Stack) -> None:
    server = image_server()
    try:
        part = {"type": "image_url", "image_url": {"url": f"{server.url}/cat.png"}}
        with pytest.raises(openai.BadRequestError) as info:
            client(stack).chat.completions.create(
                model="claude-sonnet-4-5", messages=user_parts([part])
            )
        assert "private" in info.value.message or "loopback" in info.value.message
    finally:
        server.stop()


def test_image_urls_are_fetched_when_allowed(stack_factory: StackFactory) -> None:
    stack = stack_factory({"ALLOW_PRIVATE_IMAGE_URLS": "1"})
    server = image_server()
    try:
        stack.state.enqueue(text_answer("A cat."))
        part = {"type": "image_url", "image_url": {"url": f"{server.url}/cat.png"}}
        client(stack).chat.completions.create(
            model="claude-sonnet-4-5", messages=user_parts([part])
        )
        assert current(sent_body(stack))["images"][0]["format"] == "png"
    finally:
        server.stop()


@pytest.mark.parametrize("stream", [True, False])
def test_max_tokens_is_enforced(stack: Stack, stream: bool) -> None:
    long_text = "word " * 400
    stack.state.enqueue(text_answer(long_text, chunks=20))
    kwargs = dict(model="claude-sonnet-4-5", messages=user("talk"), max_tokens=10)
    if stream:
        got = assemble(list(client(stack).chat.completions.create(**kwargs, stream=True)))
        text, finish = got.text, got.finish_reason
    else:
        result = client(stack).chat.completions.create(**kwargs)
        text, finish = result.choices[0].message.content, result.choices[0].finish_reason
    assert finish == "length"
    assert 0 < len(text) <= 60
    assert long_text.startswith(text)


@pytest.mark.parametrize("stream", [True, False])
def test_stop_sequence_split_across_chunks(stack: Stack, stream: bool) -> None:
    stack.state.enqueue(text_answer("one two STOP three four", chunks=12))
    kwargs = dict(model="claude-sonnet-4-5", messages=user("count"), stop=["STOP"])
    if stream:
        got = assemble(list(client(stack).chat.completions.create(**kwargs, stream=True)))
        text, finish = got.text, got.finish_reason
    else:
        result = client(stack).chat.completions.create(**kwargs)
        text, finish = result.choices[0].message.content, result.choices[0].finish_reason
    assert (text, finish) == ("one two ", "stop")


def test_json_response_format_is_instructed_and_unfenced(stack: Stack) -> None:
    stack.state.enqueue(text_answer('```json\n{"answer": 42}\n```'))
    result = client(stack).chat.completions.create(
        model="claude-sonnet-4-5",
        messages=user("answer"),
        response_format={"type": "json_object"},
    )
    assert json.loads(result.choices[0].message.content) == {"answer": 42}
    assert "JSON" in current(sent_body(stack))["content"]


def test_streamed_and_non_streamed_usage_agree(stack: Stack) -> None:
    for _ in range(2):
        stack.state.enqueue(text_answer("Counted answer.", tokens=(123, 7)))
    plain = client(stack).chat.completions.create(model="claude-sonnet-4-5", messages=user("x"))
    chunks = list(
        client(stack).chat.completions.create(
            model="claude-sonnet-4-5",
            messages=user("x"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = assemble(chunks, expect_usage=True).usage
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (123, 7)
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (123, 7)


def test_input_too_long_is_context_length_exceeded(stack: Stack) -> None:
    stack.state.enqueue(get_fault("input_too_long"))
    with pytest.raises(openai.BadRequestError) as info:
        client(stack).chat.completions.create(model="claude-sonnet-4-5", messages=user("x"))
    assert info.value.code == "context_length_exceeded"


def test_huge_history_is_trimmed_not_refused(stack: Stack) -> None:
    stack.state.enqueue(text_answer("Still here."))
    messages: list[dict] = [{"role": "system", "content": "Be brief."}]
    for i in range(60):
        messages += [
            {"role": "user", "content": f"question {i} " + "x" * 30_000},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    messages += user("last question")
    result = client(stack).chat.completions.create(model="claude-sonnet-4-5", messages=messages)
    assert result.choices[0].message.content == "Still here."
    body = sent_body(stack)
    assert stack.state.requests[-1].body_size < 1_250_000
    first = body["conversationState"]["history"][0]["userInputMessage"]["content"]
    assert "Be brief." in first
    assert current(body)["content"].endswith("last question")


def test_conversation_id_from_header_and_stable_without(stack: Stack) -> None:
    c = client(stack)
    stack.state.enqueue(text_answer("a"), text_answer("b"), text_answer("c"))
    c.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=user("hi"),
        extra_headers={"X-Conversation-Id": "3f2b8c1e-0000-4000-8000-000000000001"},
    )
    assert sent_body(stack)["conversationState"]["conversationId"] == (
        "3f2b8c1e-0000-4000-8000-000000000001"
    )
    c.chat.completions.create(model="claude-sonnet-4-5", messages=user("first turn"))
    first = sent_body(stack)["conversationState"]["conversationId"]
    c.chat.completions.create(
        model="claude-sonnet-4-5",
        messages=[*user("first turn"), {"role": "assistant", "content": "b"}, *user("next")],
    )
    assert sent_body(stack)["conversationState"]["conversationId"] == first


def test_temperature_and_friends_are_accepted(stack: Stack) -> None:
    stack.state.enqueue(text_answer("ok"))
    r = httpx.post(
        f"{stack.base_url}/chat/completions",
        headers=stack.headers(),
        json={
            "model": "claude-sonnet-4-5",
            "messages": user("x"),
            "temperature": 0.2,
            "top_p": 0.9,
            "seed": 1,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.1,
            "user": "u1",
            "logit_bias": {},
            "parallel_tool_calls": True,
            "store": False,
        },
    )
    assert r.status_code == 200, r.text


def test_a_tool_choice_name_cannot_forge_a_header_or_an_event(stack: Stack) -> None:
    # The name is the client's and goes into the warning header, an SSE comment and the log:
    # before, a CR LF in it made the answer a 500 (an invalid header) or a forged event.
    forged = "get_weather\r\nx-forged: 1\n\ndata: [DONE]"
    body = {
        "model": "claude-sonnet-4-5",
        "messages": user("hi"),
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": forged}},
    }
    stack.state.enqueue(text_answer("no call"))
    r = httpx.post(f"{stack.base_url}/chat/completions", headers=stack.headers(), json=body)
    assert r.status_code == 200, r.text
    assert "x-forged" not in r.headers
    assert "get_weather\\x0d\\x0ax-forged:" in r.headers["x-ki2api-warning"]
    stack.state.enqueue(text_answer("no call"))
    streamed = httpx.post(
        f"{stack.base_url}/chat/completions",
        headers=stack.headers(),
        json={**body, "stream": True},
    )
    assert streamed.status_code == 200
    lines = streamed.text.split("\n")
    assert lines.count("data: [DONE]") == 1 and lines[-3:] == ["data: [DONE]", "", ""]
    (warning,) = [line for line in lines if line.startswith(": warning:")]
    assert "\\x0a\\x0adata:\\x20[DONE]" in warning
