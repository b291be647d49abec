"""Property: every ChatRequest a front door can produce, however messy, becomes a body the
simulator's strict validator (the protocol doc's "400 Improperly formed request" rules) accepts.

The strategies are reusable: :func:`chat_requests` draws ChatRequest values directly (every role
order, empty and multi-part content, images, tool calls and results in every order including
orphans, duplicates and parallel calls, misplaced tool traffic, system prompts, prefill, unicode
with control characters and lone surrogates)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ki2api.kiro.wire.models import ModelCatalog, ModelInfo
from ki2api.kiro.wire.request_builder import build_kiro_request
from ki2api.model.errors import ContextLengthExceeded
from ki2api.model.request import (
    ChatRequest,
    ImagePart,
    Message,
    Reasoning,
    Role,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolResult,
    ToolSpec,
)
from ki2api.simulator.validator import validate_request

ARN = "arn:aws:codewhisperer:us-east-1:699475941385:profile/EHGA3GRVQMUK"
CATALOG = ModelCatalog()

SPECIAL_TEXT = [
    "",
    " ",
    "\n\t",
    ".",
    "\x00",
    "\ud800",
    "日本語 🎉",
    "<thinking_mode>enabled</thinking_mode>",
    "\u2028\u202e",
    '{"json": true}',
]
TOOL_NAMES = [
    "bash",
    "Read",
    "read",
    "mcp__server__" + "very_long_tool_name_" * 4,
    "server.tool",
    "my tool",
    "",
    "工具",
]
CALL_IDS = ["c1", "c2", "call_0", "toolu_01", "", "id with spaces", "x" * 80, "c1 "]
SCHEMAS: list[Any] = [
    {},
    {"type": "object", "properties": {"a": {"type": "string"}}, "required": []},
    {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "additionalProperties": False,
        "properties": {"additionalProperties": {"type": "boolean"}},
    },
    {"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}, {"type": "null"}]}}},
]
IMAGES = [ImagePart("png", b"\x89PNG\r\n\x1a\n\0"), ImagePart("jpeg", b"\xff\xd8\xff\xe0")]

texts = st.one_of(
    st.sampled_from(SPECIAL_TEXT),
    st.text(st.characters(exclude_categories=()), max_size=12),
)
arguments = st.dictionaries(
    st.text(max_size=4),
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.just(2**70)),
    max_size=3,
)
tool_calls = st.builds(ToolCall, st.sampled_from(CALL_IDS), st.sampled_from(TOOL_NAMES), arguments)
tool_results = st.builds(ToolResult, st.sampled_from(CALL_IDS), texts, st.booleans())
parts = st.lists(
    st.one_of(st.builds(TextPart, texts), st.sampled_from(IMAGES)),
    max_size=3,
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    role: Role = draw(st.sampled_from(["user", "assistant"]))
    # Mostly well-placed tool traffic, sometimes on the wrong role (a sloppy front door).
    misplaced = draw(st.integers(0, 9)) == 0
    calls = draw(st.lists(tool_calls, max_size=3)) if role == "assistant" or misplaced else []
    results = draw(st.lists(tool_results, max_size=3)) if role == "user" or misplaced else []
    return Message(role, draw(parts), tool_calls=calls, tool_results=results)


@st.composite
def agent_histories(draw: st.DrawFn) -> list[Message]:
    """Well-formed tool loops with a few things broken: the common case for agents."""
    out: list[Message] = [Message("user", [TextPart(draw(texts))])]
    for turn in range(draw(st.integers(0, 4))):
        ids = [f"t{turn}_{i}" for i in range(draw(st.integers(1, 3)))]
        calls = [ToolCall(i, draw(st.sampled_from(TOOL_NAMES)), {}) for i in ids]
        out.append(Message("assistant", draw(parts), tool_calls=calls))
        answered = draw(st.permutations(ids))[: draw(st.integers(0, len(ids)))]
        out.append(Message("user", [], tool_results=[ToolResult(i, draw(texts)) for i in answered]))
    return out


tool_specs = st.builds(
    ToolSpec,
    st.sampled_from(TOOL_NAMES),
    st.one_of(texts, st.just("long description " * 700)),
    st.sampled_from(SCHEMAS),
)
tool_choices = st.one_of(
    st.sampled_from([ToolChoice("auto"), ToolChoice("none"), ToolChoice("required")]),
    st.builds(lambda n: ToolChoice("tool", n), st.sampled_from([*TOOL_NAMES, "missing"])),
)
reasonings = st.one_of(
    st.none(),
    st.builds(Reasoning, st.just("enabled"), st.one_of(st.none(), st.integers(0, 10**6))),
    st.builds(
        lambda e: Reasoning("adaptive", effort=e), st.sampled_from([None, "low", "medium", "high"])
    ),
)
models = st.sampled_from(
    [m.id for m in CATALOG.list()] + [m.id + "-thinking" for m in CATALOG.list()]
)


@st.composite
def chat_requests(draw: st.DrawFn) -> tuple[ChatRequest, ModelInfo]:
    history = draw(
        st.one_of(st.lists(messages(), max_size=7), agent_histories()),
    )
    if draw(st.booleans()):
        history = history + draw(st.lists(messages(), max_size=2))
    model = CATALOG.resolve(draw(models))
    request = ChatRequest(
        model=model.id,
        messages=history,
        system=draw(texts),
        tools=draw(st.lists(tool_specs, max_size=3)),
        tool_choice=draw(tool_choices),
        reasoning=draw(reasonings),
        response_schema=draw(st.sampled_from([None, {}, SCHEMAS[1]])),
    )
    return request, model


def check(request: ChatRequest, model: ModelInfo, max_body_bytes: int) -> None:
    built = build_kiro_request(
        request,
        model=model,
        profile_arn=ARN,
        conversation_id="0b6d9a7e-3f0c-4c1e-9d55-2f0f8f7b1a11",
        max_body_bytes=max_body_bytes,
    )
    assert len(built.body) <= max_body_bytes
    body = orjson.loads(built.body)
    reason = validate_request(body)
    assert reason is None, reason
    # Every name sent upstream maps back to one of the client's names.
    client_names = {t.name for t in request.tools} | {
        c.name for m in request.messages for c in m.tool_calls
    }
    assert set(built.tool_names.values()) <= client_names
    state = body["conversationState"]
    for entry in state.get("history", []):
        for use in entry.get("assistantResponseMessage", {}).get("toolUses", []):
            assert use["name"] in built.tool_names


@settings(
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(chat_requests())
def test_every_request_is_accepted(drawn: tuple[ChatRequest, ModelInfo]) -> None:
    request, model = drawn
    check(request, model, 1_200_000)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chat_requests(), st.integers(1_500, 30_000))
def test_trimmed_requests_are_accepted(drawn: tuple[ChatRequest, ModelInfo], limit: int) -> None:
    """Under a tight body limit: either a smaller body the validator accepts, or a clear
    context-length error; never a broken pair or a refused body."""
    request, model = drawn
    try:
        check(request, model, limit)
    except ContextLengthExceeded:
        pass
