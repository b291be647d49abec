"""Thousands of messy OpenAI conversations: each must become a body the strict validator accepts.

Every role (system and developer anywhere), empty and multi-part content, images, tool calls and
results in every order (orphans, duplicates, parallel calls), legacy functions, prefill.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ki2api.api.openai_chat.protocol import parse_wire, to_chat_request
from ki2api.kiro.wire.models import ModelCatalog
from ki2api.kiro.wire.request_builder import build_kiro_request
from ki2api.model.request import ImagePart
from ki2api.pipeline.images import decode_data_url
from ki2api.simulator.validator import validate_request

GIF = base64.b64encode(
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00,"
    b"\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
).decode()
IMAGE = {"type": "image_url", "image_url": {"url": f"data:image/gif;base64,{GIF}"}}
CATALOG = ModelCatalog()

texts = st.one_of(st.just(""), st.just(" "), st.text(max_size=30), st.just("<thinking>x"))
ids = st.sampled_from(["call_1", "call_2", "call_3", "tooluse_x", "", "a" * 80, "id with space"])
names = st.sampled_from(["get_weather", "search", "x" * 70, "Read", "read", "bad name!"])


@st.composite
def contents(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(texts)
    if kind == 1:
        return None
    parts = draw(
        st.lists(
            st.one_of(st.builds(lambda t: {"type": "text", "text": t}, texts), st.just(IMAGE)),
            max_size=3,
        )
    )
    return parts


@st.composite
def tool_calls(draw: st.DrawFn) -> list[dict[str, Any]]:
    calls = []
    for _ in range(draw(st.integers(1, 3))):
        arguments = draw(st.sampled_from(['{"city": "Paris"}', "{}", "", "not json", "[1,2]"]))
        calls.append(
            {
                "id": draw(ids),
                "type": "function",
                "function": {"name": draw(names), "arguments": arguments},
            }
        )
    return calls


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(
        st.sampled_from(
            ["system", "developer", "user", "user", "assistant", "assistant", "tool", "function"]
        )
    )
    message: dict[str, Any] = {"role": role}
    if role in ("system", "developer"):
        message["content"] = draw(texts)
    elif role == "user":
        message["content"] = draw(contents())
    elif role == "assistant":
        message["content"] = draw(st.one_of(st.none(), texts))
        if draw(st.booleans()):
            message["tool_calls"] = draw(tool_calls())
        elif draw(st.integers(0, 5)) == 0:
            message["function_call"] = {"name": draw(names), "arguments": "{}"}
    elif role == "tool":
        message["tool_call_id"] = draw(ids) or "call_1"
        message["content"] = draw(st.one_of(texts, st.just([{"type": "text", "text": "ok"}])))
    else:
        message["name"] = draw(names)
        message["content"] = draw(texts)
    return message


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": draw(
            st.sampled_from(
                ["claude-sonnet-4-5", "auto", "claude-haiku-4.5", "claude-sonnet-4-6-thinking"]
            )
        ),
        "messages": draw(st.lists(messages(), min_size=1, max_size=10)),
    }
    if draw(st.booleans()):
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": n,
                    "description": draw(st.sampled_from(["", "d", "z" * 12_000])),
                    "parameters": {
                        "type": "object",
                        "properties": {},
                        "additionalProperties": False,
                        "$schema": "x",
                    },
                },
            }
            for n in draw(st.lists(names, min_size=1, max_size=3, unique=True))
        ]
        body["tool_choice"] = draw(
            st.sampled_from(
                ["auto", "none", "required", {"type": "function", "function": {"name": "search"}}]
            )
        )
    if draw(st.booleans()):
        body["reasoning_effort"] = draw(st.sampled_from(["low", "medium", "high"]))
    if draw(st.booleans()):
        body["response_format"] = {"type": "json_object"}
    return body


async def load_image(url: str, param: str) -> ImagePart:
    return decode_data_url(url)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_every_openai_conversation_is_accepted(body: dict[str, Any]) -> None:
    request = asyncio.run(to_chat_request(parse_wire(body), load_image))
    model = CATALOG.resolve(request.model)
    built = build_kiro_request(
        request,
        model=model,
        profile_arn="arn:aws:codewhisperer:us-east-1:699475941385:profile/EHGA3GRVQMUK",
        conversation_id="00000000-0000-4000-8000-000000000000",
    )
    reason = validate_request(orjson.loads(built.body))
    assert reason is None, reason
