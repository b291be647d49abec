"""The real `openai` SDK against the gateway on loopback, in front of the Kiro simulator."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from ki2api.simulator import (
    Delay,
    Event,
    Script,
    capture,
    parallel_tool_use_answer,
    text_answer,
    tool_use_answer,
)
from tests.openai_stream import assemble
from tests.stack import Stack, StackFactory

ZH_TEXT = (
    "我将为您创建一个高级天气展示卡片，完全符合您的要求。让我先创建一个包含所有功能的单一HTML文件。"
)


_OPENED: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Each test's SDK clients are closed after it: one left to the garbage collector (e.g. after
    a stream that ended in an error) leaves an open socket, a ResourceWarning in a later test."""
    yield
    while _OPENED:
        _OPENED.pop().close()


def client(stack: Stack, api_key: str | None = None, **kw: object) -> openai.OpenAI:
    made = openai.OpenAI(
        base_url=stack.base_url, api_key=api_key or stack.api_key, max_retries=0, **kw
    )
    _OPENED.append(made)
    return made


def ask(stack: Stack, text: str = "Hello", **kw: object) -> dict:
    return dict(model="claude-sonnet-4-5", messages=[{"role": "user", "content": text}], **kw)


def test_models_and_health(stack: Stack) -> None:
    models = client(stack).models.list()
    ids = [m.id for m in models.data]
    assert "claude-sonnet-4-5" in ids and "auto" in ids
    health = httpx.get(f"{stack.url}/health").json()
    assert health["status"] == "ok" and health["accounts_usable"] == 1
    assert "test-access-token" not in json.dumps(health)


def test_non_streamed_text_equals_what_the_simulator_sent(stack: Stack) -> None:
    stack.state.enqueue(text_answer("The quick brown fox jumps over the lazy dog.", chunks=5))
    result = client(stack).chat.completions.create(**ask(stack))
    assert result.choices[0].message.content == "The quick brown fox jumps over the lazy dog."
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    sent = stack.state.requests[-1]
    assert sent.refusal is None
    assert sent.headers["authorization"] == "Bearer test-access-token-WXYZ"


def test_streamed_text_with_usage(stack: Stack) -> None:
    stack.state.enqueue(text_answer("Streaming works, one piece at a time.", chunks=6))
    chunks = list(
        client(stack).chat.completions.create(
            **ask(stack), stream=True, stream_options={"include_usage": True}
        )
    )
    got = assemble(chunks, expect_usage=True)
    assert got.text == "Streaming works, one piece at a time."
    assert got.finish_reason == "stop"
    assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("text-short", "Immersive Weather Card: Native Web Design & Dynamic Effects"),
        ("text-json-fragments", '{\n    "isNewTopic": true,\n    "title": "Weather Card"\n}'),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_real_captures_pass_through_exactly(
    stack: Stack, name: str, expected: str, stream: bool
) -> None:
    stack.state.enqueue(capture(name))
    if stream:
        got = assemble(list(client(stack).chat.completions.create(**ask(stack), stream=True)))
        assert (got.text, got.finish_reason) == (expected, "stop")
    else:
        result = client(stack).chat.completions.create(**ask(stack))
        assert result.choices[0].message.content == expected


@pytest.mark.parametrize("stream", [True, False])
def test_chinese_capture_cut_inside_a_tool_call(stack: Stack, stream: bool) -> None:
    """The capture ends right after the tool call's first frame: the text arrives intact, the
    call is never delivered as complete, and the finish reason says the answer was cut."""
    stack.state.enqueue(capture("text-zh-then-tooluse"))
    if stream:
        got = assemble(list(client(stack).chat.completions.create(**ask(stack), stream=True)))
        assert got.text == ZH_TEXT
        assert got.finish_reason == "length"
    else:
        result = client(stack).chat.completions.create(**ask(stack))
        assert result.choices[0].message.content == ZH_TEXT
        assert result.choices[0].finish_reason == "length"
        assert not result.choices[0].message.tool_calls


def test_first_chunk_arrives_before_the_upstream_finishes(stack: Stack) -> None:
    answer = text_answer("first part", chunks=1)
    stack.state.enqueue(answer + [Delay(1.5)] + text_answer(" and the rest", chunks=1).steps)
    stream = client(stack).chat.completions.create(**ask(stack), stream=True)
    started = time.monotonic()
    text = ""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text = chunk.choices[0].delta.content
            break
    elapsed = time.monotonic() - started
    record = stack.state.requests[-1]
    assert text == "first part"
    assert not record.done, "the simulator was still sending when the client had the first chunk"
    assert elapsed < 1.0
    rest = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert rest == " and the rest"


def test_reasoning_is_streamed_apart_from_the_answer(stack: Stack) -> None:
    stack.state.enqueue(text_answer("42.", reasoning="Six times seven.", thinking_tags=True))
    chunks = list(
        client(stack).chat.completions.create(
            **ask(stack, "What is 6x7?"), reasoning_effort="low", stream=True
        )
    )
    got = assemble(chunks)
    assert (got.reasoning, got.text) == ("Six times seven.", "42.")
    body = stack.state.requests[-1].body
    current = body["conversationState"]["currentMessage"]["userInputMessage"]["content"]
    assert current.startswith("<thinking_mode>enabled</thinking_mode>")


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.mark.parametrize("stream", [True, False])
def test_agent_loop_with_two_parallel_tool_calls(stack: Stack, stream: bool) -> None:
    stack.state.enqueue(
        parallel_tool_use_answer(
            [
                ("get_weather", "tooluse_a1", '{"city": "Paris"}'),
                ("get_time", "tooluse_b2", '{"city": "Tokyo"}'),
            ],
            fragments=3,
            text_before="Let me look both up.",
        )
    )
    stack.state.enqueue(text_answer("Paris is sunny; in Tokyo it is 9 pm."))
    c = client(stack)
    messages: list = [{"role": "user", "content": "Weather in Paris and time in Tokyo?"}]
    request = dict(model="claude-sonnet-4-5", tools=[WEATHER, TIME])
    if stream:
        got = assemble(list(c.chat.completions.create(messages=messages, stream=True, **request)))
        text, finish = got.text, got.finish_reason
        calls = [got.tool_calls[i] for i in sorted(got.tool_calls)]
    else:
        result = c.chat.completions.create(messages=messages, **request)
        msg = result.choices[0].message
        text, finish = msg.content, result.choices[0].finish_reason
        calls = [
            {"id": t.id, "name": t.function.name, "arguments": t.function.arguments}
            for t in msg.tool_calls or []
        ]
    assert text == "Let me look both up."
    assert finish == "tool_calls"
    assert [(x["id"], x["name"]) for x in calls] == [
        ("tooluse_a1", "get_weather"),
        ("tooluse_b2", "get_time"),
    ]
    assert [json.loads(x["arguments"]) for x in calls] == [{"city": "Paris"}, {"city": "Tokyo"}]

    messages.append(
        {
            "role": "assistant",
            "content": text,
            "tool_calls": [
                {
                    "id": x["id"],
                    "type": "function",
                    "function": {"name": x["name"], "arguments": x["arguments"]},
                }
                for x in calls
            ],
        }
    )
    messages += [
        {"role": "tool", "tool_call_id": "tooluse_a1", "content": "sunny, 21 C"},
        {"role": "tool", "tool_call_id": "tooluse_b2", "content": "21:00"},
    ]
    final = c.chat.completions.create(messages=messages, **request)
    assert final.choices[0].message.content == "Paris is sunny; in Tokyo it is 9 pm."
    sent = stack.state.requests[-1]
    assert sent.refusal is None
    user = sent.body["conversationState"]["currentMessage"]["userInputMessage"]
    results = user["userInputMessageContext"]["toolResults"]
    assert [r["toolUseId"] for r in results] == ["tooluse_a1", "tooluse_b2"]
    history = sent.body["conversationState"]["history"]
    uses = history[-1]["assistantResponseMessage"]["toolUses"]
    assert [u["input"] for u in uses] == [{"city": "Paris"}, {"city": "Tokyo"}]


@pytest.mark.parametrize("stream", [True, False])
def test_truncated_tool_call_is_reported_not_delivered(stack: Stack, stream: bool) -> None:
    stack.state.enqueue(
        tool_use_answer(
            "Write",
            "tooluse_w",
            '{"path": "a.py", "content": "print(1)"}',
            fragments=4,
            truncated=True,
        )
    )
    c = client(stack)
    if stream:
        got = assemble(list(c.chat.completions.create(**ask(stack), tools=[WEATHER], stream=True)))
        assert got.finish_reason == "length"
    else:
        result = c.chat.completions.create(**ask(stack), tools=[WEATHER])
        assert result.choices[0].finish_reason == "length"
        assert not result.choices[0].message.tool_calls


def test_unknown_model_is_404_in_openai_format(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(stack).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.code == "model_not_found"
    assert info.value.body["param"] == "model"


def test_wrong_api_key_is_401(stack: Stack) -> None:
    bad = client(stack, api_key="nope")
    with pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(**ask(stack))
    assert info.value.body["type"] == "authentication_error"


def test_no_credentials_answers_503_with_instructions(stack_factory: StackFactory) -> None:
    stack = stack_factory({"KIRO_ACCESS_TOKEN": ""})
    with pytest.raises(openai.InternalServerError) as info:
        client(stack).chat.completions.create(**ask(stack))
    assert info.value.status_code == 503
    assert "KIRO_ACCESS_TOKEN" in info.value.message
    assert httpx.get(f"{stack.url}/health").json()["accounts_usable"] == 0


def test_bad_input_is_400_in_openai_format(stack: Stack) -> None:
    cases = [
        b"not json",
        b"[]",
        b'{"model": "claude-sonnet-4-5"}',
        b'{"model": "claude-sonnet-4-5", "messages": "hi"}',
        b'{"model": "claude-sonnet-4-5", "messages": [{"role": "wizard", "content": "x"}]}',
        b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "claude-sonnet-4-5", "n": 2, "messages": [{"role": "user", "content": "x"}]}',
    ]
    for body in cases:
        r = httpx.post(
            f"{stack.base_url}/chat/completions",
            content=body,
            headers={**stack.headers(), "content-type": "application/json"},
        )
        assert r.status_code == 400, body
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"


def test_one_refresh_for_twenty_concurrent_requests(stack_factory: StackFactory) -> None:
    stack = stack_factory({"KIRO_ACCESS_TOKEN": "old-access-1111", "KIRO_REFRESH_TOKEN": "rt-2222"})
    stack.state.require_known_tokens = True
    stack.state.add_account(access_token="old-access-1111", refresh_token="rt-2222")
    stack.state.expire_access_token("old-access-1111")

    async def run() -> list[str]:
        c = openai.AsyncOpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)
        results = await asyncio.gather(
            *[c.chat.completions.create(**ask(stack, f"q{i}")) for i in range(20)]
        )
        await c.close()
        return [r.choices[0].message.content or "" for r in results]

    answers = asyncio.run(run())
    assert len(answers) == 20 and all(answers)
    refreshes = [c for c in stack.state.refresh_calls if c.path.endswith("/refreshToken")]
    assert len(refreshes) == 1
    assert refreshes[0].body == {"refreshToken": "rt-2222"}


@pytest.mark.parametrize(
    ("fault", "status"),
    [("cut_mid_frame", 502), ("corrupted_crc", 502), ("garbage_bytes", 502)],
)
def test_broken_upstream_streams_give_clear_errors(stack: Stack, fault: str, status: int) -> None:
    from ki2api.simulator import get_fault

    # Clients closed explicitly: a stream that ends in an error leaves its connection to them.
    stack.state.enqueue(get_fault(fault))
    with client(stack) as c, pytest.raises(openai.APIStatusError) as info:
        c.chat.completions.create(**ask(stack))
    assert info.value.status_code == status
    assert info.value.body["code"] == "upstream_protocol_error"

    stack.state.enqueue(get_fault(fault))
    with client(stack) as c, pytest.raises(openai.APIError) as streamed:
        with c.chat.completions.create(**ask(stack), stream=True) as chunks:
            list(chunks)
    assert "Kiro" in str(streamed.value)


def test_slow_upstream_times_out_instead_of_hanging(stack_factory: StackFactory) -> None:
    from ki2api.simulator import get_fault

    stack = stack_factory(
        {"KIRO_FIRST_BYTE_TIMEOUT": "0.5", "KIRO_IDLE_TIMEOUT": "0.5"}, upstream_attempts=1
    )
    stack.state.enqueue(get_fault("slow_first_byte"))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client(stack).chat.completions.create(**ask(stack))
    assert info.value.status_code == 504
    stack.state.enqueue(get_fault("stall_mid_stream"))
    with pytest.raises(openai.APIError):
        list(client(stack).chat.completions.create(**ask(stack), stream=True))
    assert time.monotonic() - started < 5


def test_first_byte_timeout_applies_on_its_own(stack_factory: StackFactory) -> None:
    # A long idle timeout must not stretch the wait for the answer to start.
    from ki2api.simulator import get_fault

    stack = stack_factory(
        {"KIRO_FIRST_BYTE_TIMEOUT": "0.4", "KIRO_IDLE_TIMEOUT": "30"}, upstream_attempts=1
    )
    stack.state.enqueue(get_fault("slow_first_byte"))
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client(stack).chat.completions.create(**ask(stack))
    assert info.value.status_code == 504
    assert "did not start answering in time" in str(info.value)
    assert time.monotonic() - started < 1.8  # the fault holds the first byte for 2 s
    assert client(stack).chat.completions.create(**ask(stack)).choices[0].message.content


def test_client_disconnect_closes_the_upstream_request(stack: Stack) -> None:
    stack.state.enqueue(text_answer("a", chunks=1) + [Delay(30)] + text_answer("b").steps)
    done = threading.Event()

    def consume() -> None:
        with httpx.stream(
            "POST",
            f"{stack.base_url}/chat/completions",
            json={**ask(stack), "stream": True},
            headers=stack.headers(),
        ) as r:
            for line in r.iter_lines():
                if '"content":"a"' in line:
                    break
        done.set()

    threading.Thread(target=consume, daemon=True).start()
    assert done.wait(5)
    left = time.monotonic()
    assert stack.state.wait_for(lambda s: bool(s.requests) and s.requests[-1].closed_by_client, 3)
    closed_at = stack.state.requests[-1].closed_by_client_at
    assert closed_at is not None
    assert time.monotonic() - left < 1.5


ARGS = '{"city": "Zürich", "unit": "°C", "days": [1, 2]}'


def split_call(at: int) -> Script:
    head = {"name": "get_weather", "toolUseId": f"tooluse_{at}"}
    steps = [Event("toolUseEvent", head)]
    steps += [Event("toolUseEvent", {**head, "input": p}) for p in (ARGS[:at], ARGS[at:]) if p]
    steps.append(Event("toolUseEvent", {**head, "stop": True}))
    return Script(tuple(steps), f"split-{at}")


def test_arguments_split_at_every_point_reassemble_exactly(stack: Stack) -> None:
    c = client(stack)
    for at in range(len(ARGS) + 1):
        stack.state.enqueue(split_call(at), split_call(at))
        got = assemble(list(c.chat.completions.create(**ask(stack), tools=[WEATHER], stream=True)))
        assert got.tool_calls[0]["arguments"] == ARGS, at
        whole = c.chat.completions.create(**ask(stack), tools=[WEATHER])
        assert whole.choices[0].message.tool_calls[0].function.arguments == ARGS, at
