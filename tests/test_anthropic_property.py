"""Property: messy conversations in Anthropic's Messages format (every block type, tool_use and
tool_result in every order and on either role, orphans and duplicates, images by base64 and URL,
thinking blocks in history, system as a string, as blocks or as a stray message, prefill) parse
into a ChatRequest whose Kiro body the simulator's strict validator accepts."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ki2api.api.anthropic.protocol import parse_wire, to_chat_request
from ki2api.kiro.wire.models import ModelCatalog
from ki2api.kiro.wire.request_builder import build_kiro_request
from ki2api.model.errors import GatewayError
from ki2api.model.request import ImagePart
from ki2api.simulator.validator import validate_request

ARN = "arn:aws:codewhisperer:us-east-1:699475941385:profile/EHGA3GRVQMUK"
CATALOG = ModelCatalog()
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 8

SPECIAL_TEXT = ["", " ", "\n\t", ".", "\x00", "日本語 🎉", "<thinking>x</thinking>", "\u2028"]
TOOL_NAMES = ["bash", "Read", "read", "mcp__server__" + "long_name_" * 8, "server.tool", "工具"]
CALL_IDS = ["toolu_01", "toolu_02", "c1", "id with spaces", "x" * 80]
SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {}},
    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
    {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"},
]

texts = st.one_of(st.sampled_from(SPECIAL_TEXT), st.text(max_size=12))
arguments = st.dictionaries(
    st.text(max_size=4), st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5))
)


def b64_image(data: bytes, media_type: str) -> dict[str, Any]:
    source = {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode()}
    return {"type": "image", "source": source}


images = st.sampled_from(
    [
        b64_image(PNG, "image/png"),
        b64_image(JPEG, "image/jpeg"),
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
    ]
)
text_blocks = st.builds(
    lambda t, cached: (
        {"type": "text", "text": t} | ({"cache_control": {"type": "ephemeral"}} if cached else {})
    ),
    texts,
    st.booleans(),
)
tool_uses = st.builds(
    lambda i, n, a: {"type": "tool_use", "id": i, "name": n, "input": a},
    st.sampled_from(CALL_IDS),
    st.sampled_from(TOOL_NAMES),
    arguments,
)
result_contents = st.one_of(texts, st.lists(st.one_of(text_blocks, images), max_size=3), st.none())
tool_results = st.builds(
    lambda i, c, e: (
        {"type": "tool_result", "tool_use_id": i, "is_error": e}
        | ({} if c is None else {"content": c})
    ),
    st.sampled_from(CALL_IDS),
    result_contents,
    st.booleans(),
)
other_blocks = st.sampled_from(
    [
        {"type": "thinking", "thinking": "Let me think.", "signature": "sig"},
        {"type": "redacted_thinking", "data": "opaque"},
        {
            "type": "document",
            "title": "notes.txt",
            "source": {"type": "text", "media_type": "text/plain", "data": "Document text."},
        },
        {
            "type": "search_result",
            "source": "https://example.com",
            "title": "Result",
            "content": [{"type": "text", "text": "Found it."}],
        },
    ]
)
blocks = st.one_of(text_blocks, images, tool_uses, tool_results, other_blocks)


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(st.sampled_from(["user", "assistant", "user", "assistant", "system"]))
    if role == "system":
        return {"role": "system", "content": draw(texts)}
    content = draw(st.one_of(texts, st.lists(blocks, max_size=4)))
    return {"role": role, "content": content}


@st.composite
def agent_loops(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Well-formed tool loops with a few things broken, as agents send them."""
    out: list[dict[str, Any]] = [{"role": "user", "content": draw(texts)}]
    for turn in range(draw(st.integers(0, 3))):
        ids = [f"toolu_{turn}_{i}" for i in range(draw(st.integers(1, 3)))]
        uses = [
            {"type": "tool_use", "id": i, "name": draw(st.sampled_from(TOOL_NAMES)), "input": {}}
            for i in ids
        ]
        lead = draw(st.lists(st.one_of(text_blocks, other_blocks), max_size=2))
        out.append({"role": "assistant", "content": lead + uses})
        answered = draw(st.permutations(ids))[: draw(st.integers(0, len(ids)))]
        results = [
            {"type": "tool_result", "tool_use_id": i, "content": draw(result_contents)}
            for i in answered
        ]
        trailing = draw(st.lists(st.one_of(text_blocks, images), max_size=1))
        out.append({"role": "user", "content": results + trailing})
    return out


tools = st.lists(
    st.builds(
        lambda n, d, s: {"name": n, "description": d, "input_schema": s},
        st.sampled_from(TOOL_NAMES),
        texts,
        st.sampled_from(SCHEMAS),
    ),
    max_size=3,
)
tool_choices = st.one_of(
    st.none(),
    st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"}]),
    st.builds(lambda n: {"type": "tool", "name": n}, st.sampled_from([*TOOL_NAMES, "missing"])),
)
thinkings = st.one_of(
    st.none(),
    st.just({"type": "disabled"}),
    st.just({"type": "adaptive"}),
    st.builds(lambda b: {"type": "enabled", "budget_tokens": b}, st.integers(1024, 200_000)),
)
systems = st.one_of(st.none(), texts, st.lists(text_blocks, max_size=3))


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    history = draw(st.one_of(st.lists(messages(), min_size=1, max_size=6), agent_loops()))
    if draw(st.booleans()):  # a stray tail, e.g. an assistant prefill
        history = history + draw(st.lists(messages(), max_size=2))
    if all(m["role"] == "system" for m in history):  # only system text: a 400 (tested elsewhere)
        history = history + [{"role": "user", "content": draw(texts)}]
    body: dict[str, Any] = {
        "model": draw(st.sampled_from([m.id for m in CATALOG.list()])),
        "max_tokens": draw(st.integers(1, 64_000)),
        "messages": history,
        "stop_sequences": draw(st.lists(st.text(min_size=1, max_size=4), max_size=2)),
        "metadata": {"user_id": "u-1"},
    }
    for key, strategy in (
        ("system", systems),
        ("tools", tools),
        ("tool_choice", tool_choices),
        ("thinking", thinkings),
    ):
        value = draw(strategy)
        if value is not None:
            body[key] = value
    return body


async def load_image(url: str, param: str) -> ImagePart:
    return ImagePart("png", PNG)  # the URL fetcher has its own tests; no network here


@settings(
    max_examples=700,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(bodies())
def test_anthropic_conversations_become_accepted_kiro_bodies(body: dict[str, Any]) -> None:
    wire = parse_wire(body)
    request = asyncio.run(to_chat_request(wire, load_image, max_image_bytes=5 * 1024 * 1024))
    built = build_kiro_request(
        request,
        model=CATALOG.resolve(request.model),
        profile_arn=ARN,
        conversation_id="0b6d9a7e-3f0c-4c1e-9d55-2f0f8f7b1a11",
    )
    reason = validate_request(orjson.loads(built.body))
    assert reason is None, reason


# --- anything at all: a clear 400 or an accepted body, never a crash ------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
BLOCK_TYPES = [
    "text",
    "image",
    "document",
    "search_result",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "server_tool_use",
    None,
]
BLOCK_KEYS = [
    "text",
    "source",
    "id",
    "name",
    "input",
    "tool_use_id",
    "content",
    "is_error",
    "title",
]
fuzzy_blocks = st.fixed_dictionaries(
    {"type": st.sampled_from(BLOCK_TYPES)},
    optional={
        **dict.fromkeys(BLOCK_KEYS, json_values),
        "source": st.fixed_dictionaries(
            {"type": st.sampled_from(["base64", "url", "text", "content", "file"])},
            optional={"media_type": json_values, "data": json_values, "url": json_values},
        ),
    },
)
fuzzy_messages = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "tool"]),
        "content": st.one_of(json_values, st.lists(fuzzy_blocks, max_size=4)),
    }
)
fuzzy_bodies = st.fixed_dictionaries(
    {
        "model": st.just("claude-sonnet-4-6"),
        "max_tokens": st.one_of(st.integers(1, 100), st.integers(-1, 100), json_values),
        "messages": st.lists(fuzzy_messages, max_size=4),
    },
    optional={
        "system": st.one_of(json_values, st.lists(fuzzy_blocks, max_size=2)),
        "tools": st.one_of(
            json_values,
            st.lists(
                st.fixed_dictionaries(
                    {"name": json_values},
                    optional={"type": json_values, "input_schema": json_values},
                ),
                max_size=2,
            ),
        ),
        "tool_choice": json_values,
        "thinking": json_values,
        "stop_sequences": json_values,
        "output_config": json_values,
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzzy_bodies)
def test_any_body_is_a_400_or_an_accepted_request(body: dict[str, Any]) -> None:
    try:
        wire = parse_wire(body)
        request = asyncio.run(to_chat_request(wire, load_image, max_image_bytes=1024))
    except GatewayError as exc:
        assert exc.status == 400 and exc.message
        return
    built = build_kiro_request(
        request, model=CATALOG.resolve(request.model), profile_arn=ARN, conversation_id="c-1"
    )
    reason = validate_request(orjson.loads(built.body))
    assert reason is None, reason
