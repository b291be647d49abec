"""The plain-request fast path (ki2api/api/anthropic/plain.py) against the full path.

Whatever body the fast path accepts, the full path (pydantic wire model, then
``to_chat_request``) must accept too and build the same request; common bodies must take the
fast path; everything else is left to the full path, errors included.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ki2api.api.anthropic.plain import (
    HANDLED_FIELDS,
    HANDLED_MESSAGE_FIELDS,
    RICH_FIELDS,
    RICH_MESSAGE_FIELDS,
    parse_plain,
)
from ki2api.api.anthropic.protocol import MessagesWire, MessageWire, parse_wire, to_chat_request
from ki2api.model.errors import InvalidRequest
from ki2api.model.request import ChatRequest, ImagePart


async def _no_images(url: str, param: str) -> ImagePart:
    raise AssertionError("a plain request has no images")


def full_path(body: Any) -> ChatRequest:
    return asyncio.run(to_chat_request(parse_wire(body), _no_images, max_image_bytes=1 << 20))


def test_the_field_lists_follow_the_wire_model() -> None:
    # What the fast path handles is in the model (a field renamed there fails here); the rest
    # of the model's fields, read from it, send a body down the full path.
    assert HANDLED_FIELDS <= set(MessagesWire.model_fields)
    assert set(RICH_FIELDS) == set(MessagesWire.model_fields) - HANDLED_FIELDS
    assert HANDLED_MESSAGE_FIELDS <= set(MessageWire.model_fields)
    assert set(RICH_MESSAGE_FIELDS) == set(MessageWire.model_fields) - HANDLED_MESSAGE_FIELDS


texts = st.one_of(st.just(""), st.just(" "), st.text(max_size=12))
odd_scalars = st.sampled_from([None, True, False, 0, 1, -3, 1.0, 2.5, "1", "true", "", [], {}])
text_blocks = st.lists(st.builds(lambda t: {"type": "text", "text": t}, texts), max_size=3)
plain_contents = st.one_of(texts, text_blocks)
odd_contents = st.one_of(
    odd_scalars,
    st.sampled_from(
        [
            [{"type": "text", "text": 5}],
            [{"type": "text"}],
            [{"text": "no type"}],
            [{"type": "thinking", "thinking": "hm"}],
            [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}],
            [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
            ["not a block"],
        ]
    ),
)
plain_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system"]), "content": plain_contents}
    ),
    min_size=1,
    max_size=5,
)
PLAIN_OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "system": st.one_of(st.none(), plain_contents),
    "stop_sequences": st.one_of(st.none(), st.lists(texts, max_size=3)),
    "stream": st.booleans(),
    "metadata": st.one_of(st.none(), st.just({"user_id": "u1"})),
    "temperature": st.one_of(st.none(), st.floats(0, 1), st.integers(0, 1)),
    "top_p": st.one_of(st.none(), st.floats(0, 1)),
    "top_k": st.one_of(st.none(), st.integers(1, 50)),
    "anthropic_version": texts,  # not in the wire model: ignored by both paths
}
ODD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["", "x" * 257, 5, None]),
    "messages": st.sampled_from([[], None, "hi", {"role": "user"}]),
    "max_tokens": st.sampled_from([0, -1, 1.0, "5", True, None]),
    "system": odd_contents,
    "stop_sequences": st.sampled_from([["a", 1], "stop", 3]),
    "stream": st.sampled_from(["true", 1, "maybe"]),
    "metadata": st.sampled_from(["x", [], 1]),
    "temperature": st.sampled_from(["0.5", True, [], "hot"]),
    "top_k": st.sampled_from([1.0, "3", True, 2.5]),
    "tools": st.sampled_from([[], [{"name": "f", "input_schema": {}}]]),
    "tool_choice": st.sampled_from([{"type": "auto"}, {"type": "none"}, "auto"]),
    "thinking": st.sampled_from([{"type": "disabled"}, {"type": "enabled", "budget_tokens": 9}]),
    "output_config": st.sampled_from([{}, {"effort": "low"}]),
}
# Every field of the wire model gets odd values too: one added there is exercised at once.
for _name in MessagesWire.model_fields:
    ODD_VALUES.setdefault(_name, odd_scalars)


@st.composite
def bodies(draw: st.DrawFn) -> Any:
    """A plain body, then up to two changes that may (or may not) make it less plain."""
    body: dict[str, Any] = {
        "model": draw(st.sampled_from(["claude-sonnet-4-5", "x" * 256])),
        "messages": draw(plain_messages),
        "max_tokens": draw(st.integers(1, 64_000)),
    }
    for name, values in PLAIN_OPTIONS.items():
        if draw(st.booleans()):
            body[name] = draw(values)
    for _ in range(draw(st.integers(0, 2))):
        change = draw(st.integers(0, 3))
        if change in (1, 2) and not (type(body["messages"]) is list and body["messages"]):
            change = 0
        if change == 0:
            name = draw(st.sampled_from(sorted(ODD_VALUES)))
            body[name] = draw(st.one_of(ODD_VALUES[name], odd_scalars))
        elif change in (1, 2):
            i = draw(st.integers(0, len(body["messages"]) - 1))
            body["messages"] = [*body["messages"]]
            message = body["messages"][i]
            if change == 1 and type(message) is dict:
                role = draw(st.sampled_from(["tool", "developer", 7, None]))
                body["messages"][i] = {**message, "role": role}
            else:
                body["messages"][i] = {"role": "user", "content": draw(odd_contents)}
        else:
            return draw(odd_scalars)
    return body


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_whatever_the_fast_path_accepts_the_full_path_builds_alike(body: Any) -> None:
    fast = parse_plain(body)
    if fast is None:
        return
    assert full_path(body) == fast


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "assistant"]), "content": plain_contents}
        ),
        min_size=1,
        max_size=5,
    ),
    st.booleans(),
    st.one_of(st.none(), plain_contents),
)
def test_common_requests_take_the_fast_path(
    msgs: list[dict[str, Any]], stream: bool, system: Any
) -> None:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": msgs,
        "stream": stream,
    }
    if system is not None:
        body["system"] = system
    fast = parse_plain(body)
    assert fast is not None
    assert fast == full_path(body)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "max_tokens": 5, "messages": []},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        {"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]},
        {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "be kind"}]},
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user"}]},
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": "maybe",
        },
    ],
)
def test_bad_requests_are_left_to_the_full_path(body: dict[str, Any]) -> None:
    assert parse_plain(body) is None
    with pytest.raises(InvalidRequest):
        full_path(body)
