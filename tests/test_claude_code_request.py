"""Claude Code's requests, accepted in full (issue 18, item 2), without the agent itself: a
request it really sent (tests/fixtures/agents/) through the parser, the request builder and the
simulator's strict validator, and over HTTP; "prompt is too long" in Anthropic's words; cache
and calibrated input tokens."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from ki2api.api.anthropic.protocol import parse_wire, to_chat_request
from ki2api.kiro.wire.models import ModelCatalog
from ki2api.kiro.wire.request_builder import build_kiro_request
from ki2api.model.request import ImagePart
from ki2api.simulator.scripts import (
    ExceptionFrame,
    Script,
    context_usage_event,
    message_metadata_event,
    metering_event,
    text_events,
)
from ki2api.simulator.validator import check_request
from tests.stack import Stack

FIXTURES = Path(__file__).parent / "fixtures" / "agents"
CAPTURED = sorted(FIXTURES.glob("claude-code-*.json"))
TOO_LONG = re.compile(r"^prompt is too long: (\d+) tokens > (\d+) maximum$")


def captured(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(path.read_bytes())
    return data


async def no_images(url: str, param: str) -> ImagePart:
    raise AssertionError("the captured request has no image URLs")


def test_there_is_a_captured_request() -> None:
    assert CAPTURED, "tests/fixtures/agents/claude-code-*.json is missing"
    body = captured(CAPTURED[0])["body"]
    # What makes it Claude Code's: the fields the gateway used to trip over.
    assert {"thinking", "context_management", "output_config", "metadata"} <= set(body)
    kinds = {
        block.get("type")
        for m in body["messages"]
        if isinstance(m["content"], list)
        for block in m["content"]
        for block in [
            block,
            *(block.get("content") or [] if block["type"] == "tool_result" else []),
        ]
    }
    assert {"thinking", "tool_use", "tool_result", "tool_reference"} <= kinds


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("path", CAPTURED, ids=lambda p: p.stem)
async def test_captured_request_builds_a_body_the_validator_accepts(
    path: Path, stream: bool
) -> None:
    body = copy.deepcopy(captured(path)["body"])
    body["stream"] = stream
    request = await to_chat_request(parse_wire(body), no_images, max_image_bytes=5_000_000)
    assert request.stream is stream and request.reasoning is not None
    model = ModelCatalog().resolve(request.model)
    assert model.id == "claude-opus-4-6"  # its default, the newest opus the pool has
    kiro = build_kiro_request(request, model=model, profile_arn="arn:x", conversation_id="c-1")
    assert check_request(orjson.loads(kiro.body)) is None


@pytest.mark.parametrize("stream", [True, False])
def test_captured_request_over_http(stack: Stack, stream: bool) -> None:
    data = captured(CAPTURED[0])
    body = {**data["body"], "stream": stream}
    headers = {**data["headers"], "x-api-key": stack.api_key}
    response = httpx.post(
        f"{stack.url}{data['path']}?{data['query']}", content=orjson.dumps(body), headers=headers
    )
    assert response.status_code == 200, response.text
    assert stack.state.last_request is not None and stack.state.last_request.refusal is None
    assert response.headers["x-ki2api-model"] == "claude-opus-4.6"
    if stream:
        assert '"model":"claude-opus-5-5"' in response.text  # echoed as asked
        assert "event: message_stop" in response.text
    else:
        assert response.json()["model"] == "claude-opus-5-5"


def too_long_script() -> Script:
    error = {"message": "Input is too long.", "reason": "CONTENT_LENGTH_EXCEEDS_THRESHOLD"}
    return Script((ExceptionFrame("ValidationException", error),), "too_long_in_stream")


@pytest.mark.parametrize("where", ["status", "first_event"])
@pytest.mark.parametrize("stream", [True, False])
def test_input_too_long_is_anthropics_prompt_too_long(
    stack: Stack, where: str, stream: bool
) -> None:
    if where == "status":
        stack.state.fail_next(1, "input_too_long")
    else:
        stack.state.enqueue(too_long_script())
    client = anthropic.Anthropic(base_url=stack.url, api_key=stack.api_key, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as info:
        kwargs: dict[str, Any] = dict(
            model="claude-sonnet-4-5",
            max_tokens=100,
            messages=[{"role": "user", "content": "a long story " * 2000}],
        )
        if stream:
            with client.messages.stream(**kwargs) as events:
                events.until_done()
        else:
            client.messages.create(**kwargs)
    error = info.value
    assert error.status_code == 400
    assert error.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    match = TOO_LONG.match(error.body["error"]["message"])  # type: ignore[index]
    assert match, error.body
    tokens, window = int(match[1]), int(match[2])
    assert window == 200_000 and tokens > window


def test_cache_tokens_are_kiros_own(stack: Stack) -> None:
    steps = [
        *text_events("cached answer", 2),
        metering_event(),
        message_metadata_event(
            1_000, 20, cache_read_input_tokens=30_000, cache_write_input_tokens=4_000
        ),
    ]
    stack.state.enqueue(Script(tuple(steps), "cached"))
    client = anthropic.Anthropic(base_url=stack.url, api_key=stack.api_key, max_retries=0)
    message = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (1_000, 20)
    assert usage.cache_read_input_tokens == 30_000
    assert usage.cache_creation_input_tokens == 4_000
    plain = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    assert plain.usage.cache_read_input_tokens == 0  # none reported: none claimed
    assert plain.usage.cache_creation_input_tokens == 0


def test_message_start_input_tokens_learn_from_the_service(stack: Stack) -> None:
    """The first answer's context usage says the prompt is ~3x our estimate; the next
    message_start for that model says so too (within the moving average)."""
    prompt = "word " * 3000
    client = anthropic.Anthropic(base_url=stack.url, api_key=stack.api_key, max_retries=0)

    def first_input_tokens() -> int:
        with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=100,
            messages=[{"role": "user", "content": prompt}],
        ) as events:
            start = next(e for e in events if e.type == "message_start")
            events.until_done()
        return start.message.usage.input_tokens

    baseline = first_input_tokens()  # the default answer's context usage: body size / 4
    counted = baseline * 2
    for _ in range(6):
        stack.state.enqueue(
            Script(
                (
                    *text_events("ok", 1),
                    metering_event(),
                    context_usage_event(100 * counted / 200_000),
                ),
                "counted",
            )
        )
        first_input_tokens()
    learned = first_input_tokens()
    assert abs(learned - counted) < counted * 0.15, (baseline, learned, counted)
    # Another model has learned nothing.
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": prompt}]
    ) as events:
        start = next(e for e in events if e.type == "message_start")
        assert abs(start.message.usage.input_tokens - baseline) < baseline * 0.5
        events.until_done()


async def test_tool_reference_and_context_management_are_accepted() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "thinking": {"type": "enabled", "budget_tokens": 2000, "display": "omitted"},
        "metadata": {"user_id": "u"},
        "tools": [
            {"name": "Monitor", "input_schema": {"type": "object"}, "defer_loading": True},
            {
                "name": "ToolSearch",
                "input_schema": {"type": "object"},
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "messages": [
            {"role": "user", "content": "find a tool"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "tool_use", "id": "t1", "name": "ToolSearch", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "tool_reference", "tool_name": "Monitor"}],
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            },
        ],
    }
    request = await to_chat_request(parse_wire(body), no_images, max_image_bytes=1)
    assert (
        request.messages[-1].tool_results[0].content == "Tool Monitor is loaded: call it directly."
    )
    assert request.reasoning is not None and request.reasoning.budget_tokens == 2000
