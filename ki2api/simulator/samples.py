"""Small helpers for tests that talk to the simulator: a valid Kiro request body to start from,
and a decoder that turns an answer's bytes back into ``(event_type, payload)`` pairs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import orjson

from ki2api.kiro.wire.eventstream import EventStreamDecoder
from ki2api.simulator.accounts import SOCIAL_PROFILE_ARN


def tool_spec(
    name: str, description: str = "A tool.", schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    schema = schema if schema is not None else {"type": "object", "properties": {}}
    return {
        "toolSpecification": {
            "name": name,
            "description": description,
            "inputSchema": {"json": schema},
        }
    }


def kiro_request_body(
    content: str = "Hello",
    *,
    model_id: str = "claude-sonnet-4.5",
    history: Sequence[dict[str, Any]] = (),
    tools: Sequence[dict[str, Any]] = (),
    tool_results: Sequence[dict[str, Any]] = (),
    images: Sequence[dict[str, Any]] = (),
    conversation_id: str | None = None,
    profile_arn: str = SOCIAL_PROFILE_ARN,
) -> dict[str, Any]:
    """A ``generateAssistantResponse`` body the validator accepts (given valid parts)."""
    message: dict[str, Any] = {"content": content, "modelId": model_id, "origin": "AI_EDITOR"}
    if images:
        message["images"] = list(images)
    context: dict[str, Any] = {}
    if tools:
        context["tools"] = list(tools)
    if tool_results:
        context["toolResults"] = list(tool_results)
    if context:
        message["userInputMessageContext"] = context
    return {
        "profileArn": profile_arn,
        "conversationState": {
            "conversationId": conversation_id or str(uuid.uuid4()),
            "chatTriggerType": "MANUAL",
            "currentMessage": {"userInputMessage": message},
            "history": list(history),
        },
    }


def user_turn(content: str, **context: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"content": content, "origin": "AI_EDITOR"}
    if context:
        message["userInputMessageContext"] = context
    return {"userInputMessage": message}


def assistant_turn(content: str, tool_uses: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    message: dict[str, Any] = {"content": content}
    if tool_uses:
        message["toolUses"] = list(tool_uses)
    return {"assistantResponseMessage": message}


def decode_events(data: bytes) -> list[tuple[str | None, Any]]:
    """Every frame of a complete answer as ``(event_type, parsed JSON payload)``."""
    decoder = EventStreamDecoder()
    events = [(f.event_type, orjson.loads(f.payload)) for f in decoder.feed(data)]
    if decoder.buffered:
        raise ValueError(f"answer ends inside a frame ({decoder.buffered} bytes left over)")
    return events


def answer_text(data: bytes) -> str:
    """The text of every ``assistantResponseEvent`` in a complete answer."""
    return "".join(p["content"] for t, p in decode_events(data) if t == "assistantResponseEvent")
