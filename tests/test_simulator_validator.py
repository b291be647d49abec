"""The simulator's strict validator: one bad body per rule of the protocol doc's "400 Improperly
formed request" list (and the body shape), and a set of good bodies it must accept."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from ki2api.simulator.samples import assistant_turn, kiro_request_body, tool_spec, user_turn
from ki2api.simulator.validator import (
    KNOWN_MODEL_IDS,
    MAX_BODY_BYTES,
    check_request,
    parse_and_check,
    validate_request,
)

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
TOOL = tool_spec(
    "bash", "Run a command.", {"type": "object", "properties": {"cmd": {"type": "string"}}}
)


def use() -> dict[str, Any]:
    return {"toolUseId": "tooluse_1", "name": "bash", "input": {"cmd": "ls"}}


def result() -> dict[str, Any]:
    return {"toolUseId": "tooluse_1", "content": [{"text": "a.txt"}], "status": "success"}


def tool_round() -> dict[str, Any]:
    """A valid body: the assistant called a tool, the current message carries its result."""
    return kiro_request_body(
        "Here is the result.",
        history=[user_turn("List files"), assistant_turn("Listing.", [use()])],
        tools=[TOOL],
        tool_results=[result()],
    )


def current(body: dict[str, Any]) -> dict[str, Any]:
    return body["conversationState"]["currentMessage"]["userInputMessage"]  # type: ignore[no-any-return]


def context(body: dict[str, Any]) -> dict[str, Any]:
    return current(body)["userInputMessageContext"]  # type: ignore[no-any-return]


def history(body: dict[str, Any]) -> list[dict[str, Any]]:
    return body["conversationState"]["history"]  # type: ignore[no-any-return]


GOOD: dict[str, Callable[[], dict[str, Any]]] = {
    "minimal": lambda: kiro_request_body("Hi"),
    "no history key": lambda: _without_history(kiro_request_body("Hi")),
    "history": lambda: kiro_request_body(
        "And now?", history=[user_turn("Hello"), assistant_turn("Hi there")]
    ),
    "tools offered": lambda: kiro_request_body("Use bash", tools=[TOOL]),
    "tool result round": tool_round,
    "tool result in history": lambda: kiro_request_body(
        "Thanks",
        history=[
            user_turn("List files"),
            assistant_turn("Listing.", [use()]),
            user_turn("Result", toolResults=[result()]),
            assistant_turn("Done."),
        ],
        tools=[TOOL],
    ),
    "image": lambda: kiro_request_body(
        "What is this?", images=[{"format": "png", "source": {"bytes": PNG}}]
    ),
    "thinking tags": lambda: kiro_request_body(
        "<thinking_mode>enabled</thinking_mode><max_thinking_length>4000</max_thinking_length>Hi"
    ),
    "older model id": lambda: kiro_request_body("Hi", model_id="CLAUDE_SONNET_4_20250514_V1_0"),
    "auto model": lambda: kiro_request_body("Hi", model_id="auto"),
    "json tool result": lambda: _json_result(tool_round()),
    "64-char tool name": lambda: kiro_request_body("x", tools=[tool_spec("t" * 64)]),
    "error status": lambda: _set(
        tool_round(), lambda b: context(b)["toolResults"][0].update(status="error")
    ),
}


def _without_history(body: dict[str, Any]) -> dict[str, Any]:
    del body["conversationState"]["history"]
    return body


def _json_result(body: dict[str, Any]) -> dict[str, Any]:
    context(body)["toolResults"][0]["content"] = [{"json": {"files": ["a.txt"]}}]
    return body


def _set(body: dict[str, Any], change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    change(body)
    return body


@pytest.mark.parametrize("name", GOOD)
def test_good_bodies_are_accepted(name: str) -> None:
    body = GOOD[name]()
    assert validate_request(body) is None


# Each case: a change to a valid body, and a fragment of the reason the validator gives.
# A case whose body is built bad on purpose has no change (None).
Change = Callable[[dict[str, Any]], Any] | None
BAD: dict[str, tuple[Callable[[], dict[str, Any]], Change, str]] = {
    "body not an object": (lambda: kiro_request_body(), lambda b: b.clear(), "profileArn"),
    "profileArn missing": (
        lambda: kiro_request_body(),
        lambda b: b.pop("profileArn"),
        "profileArn",
    ),
    "profileArn not a string": (
        lambda: kiro_request_body(),
        lambda b: b.update(profileArn=42),
        "profileArn",
    ),
    "top-level systemPrompt": (
        lambda: kiro_request_body(),
        lambda b: b.update(systemPrompt="Be nice"),
        "systemPrompt",
    ),
    "unknown top-level key": (
        lambda: kiro_request_body(),
        lambda b: b.update(temperature=0.2),
        "unknown key",
    ),
    "conversationId missing": (
        lambda: kiro_request_body(),
        lambda b: b["conversationState"].pop("conversationId"),
        "conversationId",
    ),
    "chatTriggerType not MANUAL": (
        lambda: kiro_request_body(),
        lambda b: b["conversationState"].update(chatTriggerType="AUTO"),
        "MANUAL",
    ),
    "unknown conversationState key": (
        lambda: kiro_request_body(),
        lambda b: b["conversationState"].update(system="x"),
        "unknown key",
    ),
    "empty current content": (
        lambda: kiro_request_body(),
        lambda b: current(b).update(content=""),
        "empty content",
    ),
    "whitespace current content": (
        lambda: kiro_request_body(),
        lambda b: current(b).update(content="  \n"),
        "empty content",
    ),
    "modelId missing": (
        lambda: kiro_request_body(),
        lambda b: current(b).pop("modelId"),
        "modelId",
    ),
    "origin missing": (lambda: kiro_request_body(), lambda b: current(b).pop("origin"), "origin"),
    "prefill (assistant current message)": (
        lambda: kiro_request_body(),
        lambda b: b["conversationState"].update(
            currentMessage={"assistantResponseMessage": {"content": "Sure"}}
        ),
        "prefill",
    ),
    "history starts with assistant": (
        lambda: kiro_request_body(history=[assistant_turn("Hi"), user_turn("Hello")]),
        None,
        "expected a user message",
    ),
    "history not alternating": (
        lambda: kiro_request_body(history=[user_turn("a"), user_turn("b"), assistant_turn("c")]),
        None,
        "expected a assistant message",
    ),
    "history ends with user": (
        lambda: kiro_request_body(history=[user_turn("a")]),
        None,
        "ends with a user message",
    ),
    "system role in history": (
        lambda: kiro_request_body(
            history=[{"systemMessage": {"content": "x"}}, assistant_turn("c")]
        ),
        None,
        "expected a user message",
    ),
    "empty history user content": (
        lambda: kiro_request_body(history=[user_turn(""), assistant_turn("c")]),
        None,
        "history[0]: empty content",
    ),
    "empty assistant content": (
        lambda: kiro_request_body(history=[user_turn("a"), assistant_turn("")]),
        None,
        "history[1]: empty content",
    ),
    "toolResults without tools": (
        tool_round,
        lambda b: context(b).pop("tools"),
        "without tools",
    ),
    "toolResult with no matching toolUse": (
        tool_round,
        lambda b: context(b)["toolResults"][0].update(toolUseId="tooluse_other"),
        "no toolUse",
    ),
    "toolResult matching an older assistant message": (
        lambda: kiro_request_body(
            "r",
            history=[
                user_turn("a"),
                assistant_turn("b", [use()]),
                user_turn("c", toolResults=[result()]),
                assistant_turn("d"),
            ],
            tools=[TOOL],
            tool_results=[result()],
        ),
        None,
        "no toolUse",
    ),
    "duplicate toolResult ids": (
        tool_round,
        lambda b: context(b)["toolResults"].append(result()),
        "duplicate toolUseId",
    ),
    "duplicate toolUse ids in history": (
        lambda: kiro_request_body(
            "r",
            history=[
                user_turn("a"),
                assistant_turn("b", [use()]),
                user_turn("c", toolResults=[result()]),
                assistant_turn("d", [use()]),
            ],
            tools=[TOOL],
        ),
        None,
        "duplicate toolUseId",
    ),
    "empty toolResult text": (
        tool_round,
        lambda b: context(b)["toolResults"][0].update(content=[{"text": ""}]),
        "empty text",
    ),
    "toolResult status": (
        tool_round,
        lambda b: context(b)["toolResults"][0].update(status="ok"),
        "status",
    ),
    "toolUse input not an object": (
        tool_round,
        lambda b: history(b)[1]["assistantResponseMessage"]["toolUses"][0].update(input="ls"),
        "input must be an object",
    ),
    "tool name over 64 characters": (
        lambda: kiro_request_body("x", tools=[tool_spec("t" * 65)]),
        None,
        "longer than 64",
    ),
    "tool description over 10,000 characters": (
        lambda: kiro_request_body("x", tools=[tool_spec("t", "d" * 10_001)]),
        None,
        "longer than 10000",
    ),
    "cache_control in a tool spec": (
        lambda: kiro_request_body("x", tools=[tool_spec("t")]),
        lambda b: context(b)["tools"][0]["toolSpecification"].update(
            cache_control={"type": "ephemeral"}
        ),
        "cache_control",
    ),
    "extra key beside toolSpecification": (
        lambda: kiro_request_body("x", tools=[tool_spec("t")]),
        lambda b: context(b)["tools"][0].update(type="function"),
        "unknown key",
    ),
    "duplicate tool names": (
        lambda: kiro_request_body("x", tools=[tool_spec("t"), tool_spec("t")]),
        None,
        "duplicate tool name",
    ),
    "schema not an object": (
        lambda: kiro_request_body("x", tools=[tool_spec("t")]),
        lambda b: context(b)["tools"][0]["toolSpecification"]["inputSchema"].update(json="{}"),
        "inputSchema.json",
    ),
    "image format": (
        lambda: kiro_request_body("x", images=[{"format": "bmp", "source": {"bytes": PNG}}]),
        None,
        "format",
    ),
    "image bytes not base64": (
        lambda: kiro_request_body(
            "x", images=[{"format": "png", "source": {"bytes": "not base64!"}}]
        ),
        None,
        "base64",
    ),
    "thinking tags with toolResults": (
        tool_round,
        lambda b: current(b).update(
            content="<thinking_mode>enabled</thinking_mode><max_thinking_length>9</max_thinking_length>ok"
        ),
        "thinking tags",
    ),
    "unknown userInputMessage key": (
        lambda: kiro_request_body(),
        lambda b: current(b).update(role="user"),
        "unknown key",
    ),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_bodies_are_refused_with_a_reason(name: str) -> None:
    make, change, fragment = BAD[name]
    body = make()
    if change is not None:
        assert validate_request(body) is None, "the starting body must be good"
        change(body)
    reason = validate_request(body)
    assert reason is not None, "accepted"
    assert fragment in reason
    refusal = check_request(body)
    assert refusal is not None
    assert refusal.body() == {"message": "Improperly formed request.", "reason": None}


def test_unknown_model_id_has_its_own_reason() -> None:
    refusal = check_request(kiro_request_body(model_id="gpt-4o"))
    assert refusal is not None
    assert refusal.code == "INVALID_MODEL_ID"
    assert refusal.body()["reason"] == "INVALID_MODEL_ID"


def test_every_documented_model_id_is_accepted() -> None:
    for model_id in KNOWN_MODEL_IDS:
        assert validate_request(kiro_request_body(model_id=model_id)) is None, model_id


def test_model_ids_can_be_restricted() -> None:
    body = kiro_request_body(model_id="claude-opus-4.6")
    refusal = check_request(body, model_ids={"claude-sonnet-4.5"})
    assert refusal is not None and refusal.code == "INVALID_MODEL_ID"


def test_body_over_the_limit_is_input_too_long() -> None:
    body = kiro_request_body("x" * MAX_BODY_BYTES)
    refusal = check_request(body)
    assert refusal is not None
    assert refusal.body() == {
        "message": "Input is too long.",
        "reason": "CONTENT_LENGTH_EXCEEDS_THRESHOLD",
    }
    just_under = kiro_request_body("x")
    padding = MAX_BODY_BYTES - len(orjson.dumps(just_under))
    current(just_under)["content"] += "x" * padding
    assert len(orjson.dumps(just_under)) == MAX_BODY_BYTES
    assert validate_request(just_under) is None


def test_parse_and_check_handles_raw_bytes() -> None:
    body, refusal = parse_and_check(b"{not json")
    assert body is None and refusal is not None and refusal.code == "REQUEST_BODY_INVALID"
    body, refusal = parse_and_check(b"[1, 2]")
    assert refusal is not None
    good = kiro_request_body()
    body, refusal = parse_and_check(orjson.dumps(good))
    assert refusal is None and body == good
    body, refusal = parse_and_check(b"x" * 20, max_body_bytes=10)
    assert refusal is not None and refusal.code == "CONTENT_LENGTH_EXCEEDS_THRESHOLD"


@pytest.mark.parametrize(
    "junk",
    [
        None,
        1,
        "x",
        [],
        {"conversationState": []},
        {"profileArn": "a", "conversationState": {"history": 5}},
    ],
)
def test_junk_is_refused_not_crashed_on(junk: Any) -> None:
    assert validate_request(junk) is not None
