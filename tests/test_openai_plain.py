"""The plain-request fast path (ki2api/api/openai_chat/plain.py) against the full path.

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

from ki2api.api.openai_chat.plain import (
    HANDLED_FIELDS,
    HANDLED_MESSAGE_FIELDS,
    RICH_FIELDS,
    RICH_MESSAGE_FIELDS,
    parse_plain,
)
from ki2api.api.openai_chat.protocol import (
    ChatCompletionWire,
    MessageWire,
    parse_wire,
    to_chat_request,
)
from ki2api.model.errors import InvalidRequest
from ki2api.model.request import ChatRequest, ImagePart

MISSING = object()


async def _no_images(url: str, param: str) -> ImagePart:
    raise AssertionError("a plain request has no images")


def full_path(body: Any) -> tuple[ChatRequest, bool]:
    wire = parse_wire(body)
    request = asyncio.run(to_chat_request(wire, _no_images))
    return request, bool(wire.stream_options and wire.stream_options.include_usage)


def test_the_field_lists_follow_the_wire_model() -> None:
    # What the fast path handles is in the model (a field renamed there fails here); the rest
    # of the model's fields, read from it, send a body down the full path.
    assert HANDLED_FIELDS <= set(ChatCompletionWire.model_fields)
    assert set(RICH_FIELDS) == set(ChatCompletionWire.model_fields) - HANDLED_FIELDS
    assert HANDLED_MESSAGE_FIELDS <= set(MessageWire.model_fields)
    assert set(RICH_MESSAGE_FIELDS) == set(MessageWire.model_fields) - HANDLED_MESSAGE_FIELDS


texts = st.one_of(st.just(""), st.just(" "), st.text(max_size=12))
odd_scalars = st.sampled_from([None, True, False, 0, 1, -3, 1.0, 2.5, "1", "true", "", [], {}])


@st.composite
def contents(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(texts)
    if kind == 1:
        return None
    if kind == 2:
        return draw(odd_scalars)
    part = st.one_of(
        st.builds(lambda t: {"type": "text", "text": t}, texts),
        st.sampled_from(
            [
                {"type": "text", "text": 5},
                {"type": "text"},
                {"text": "no type"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                "not a dict",
            ]
        ),
    )
    return draw(st.lists(part, max_size=3))


@st.composite
def messages(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 30)) == 0:
        return draw(odd_scalars)
    roles = ["system", "developer", "user", "user", "assistant", "tool", "function", "robot", 7]
    message: dict[str, Any] = {}
    role = draw(st.sampled_from([*roles, MISSING]))
    if role is not MISSING:
        message["role"] = role
    if draw(st.booleans()):
        message["content"] = draw(contents())
    if draw(st.integers(0, 4)) == 0:
        message["name"] = draw(st.one_of(texts, odd_scalars))
    if draw(st.integers(0, 6)) == 0:
        rich = draw(st.sampled_from(RICH_MESSAGE_FIELDS))
        message[rich] = draw(st.sampled_from([None, "call_1", [], {"name": "f", "arguments": ""}]))
    if draw(st.integers(0, 8)) == 0:
        message["x_unknown"] = draw(odd_scalars)
    return message


plain_contents = st.one_of(
    st.none(), texts, st.lists(st.builds(lambda t: {"type": "text", "text": t}, texts), max_size=3)
)
plain_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant"])},
        optional={"content": plain_contents, "name": texts},
    ),
    min_size=1,
    max_size=5,
)
PLAIN_OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "stream": st.booleans(),
    "stream_options": st.sampled_from(
        [None, {}, {"include_usage": True}, {"include_usage": False}]
    ),
    "max_tokens": st.one_of(st.none(), st.integers(1, 5000)),
    "max_completion_tokens": st.one_of(st.none(), st.integers(1, 5000)),
    "stop": st.one_of(st.none(), texts, st.lists(texts, max_size=3)),
    "n": st.sampled_from([None, 1]),
    "temperature": st.one_of(st.none(), st.floats(0, 2), st.integers(0, 2)),
    "top_p": st.one_of(st.none(), st.floats(0, 1)),
    "seed": st.one_of(st.none(), st.integers(-5, 5)),
    "user": texts,  # not in the wire model: ignored by both paths
}
ODD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["", "x" * 257, 5, None]),
    "messages": st.sampled_from([[], None, "hi", {"role": "user"}]),
    "stream_options": st.sampled_from([{"include_usage": 1}, {"include_usage": "yes"}, []]),
    "max_tokens": st.sampled_from([0, -1, 1.0, "5", True]),
    "max_completion_tokens": st.sampled_from([0, 2.0, "7"]),
    "stop": st.sampled_from([["a", 1], 3, {"x": 1}]),
    "n": st.sampled_from([0, 2, 1.0, "1"]),
    "temperature": st.sampled_from(["0.5", True, [], "hot"]),
    "seed": st.sampled_from([1.0, "3", True, 2.5]),
    **{name: st.sampled_from(["auto", "none", [], {}, "medium", 0]) for name in RICH_FIELDS},
}
# Every field of the wire model gets odd values too: one added there is exercised at once.
for _name in ChatCompletionWire.model_fields:
    ODD_VALUES.setdefault(_name, odd_scalars)


@st.composite
def bodies(draw: st.DrawFn) -> Any:
    """A plain body, then up to two changes that may (or may not) make it less plain."""
    body: dict[str, Any] = {
        "model": draw(st.sampled_from(["claude-sonnet-4.5", "gpt-4o", "x" * 256])),
        "messages": draw(plain_messages),
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
        elif change == 1:
            i = draw(st.integers(0, len(body["messages"]) - 1))
            body["messages"] = [*body["messages"]]
            body["messages"][i] = draw(messages())
        elif change == 2:
            i = draw(st.integers(0, len(body["messages"]) - 1))
            body["messages"] = [*body["messages"]]
            message = body["messages"][i]
            base = message if type(message) is dict else {"role": "user"}
            body["messages"][i] = {**base, "content": draw(contents())}
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
    plain_messages,
    st.booleans(),
    st.one_of(st.none(), st.integers(1, 100_000)),
    st.one_of(st.none(), st.booleans()),
)
def test_common_requests_take_the_fast_path(
    msgs: list[dict[str, Any]], stream: bool, max_tokens: int | None, usage: bool | None
) -> None:
    body: dict[str, Any] = {"model": "claude-sonnet-4.5", "messages": msgs, "stream": stream}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if usage is not None:
        body["stream_options"] = {"include_usage": usage}
    fast = parse_plain(body)
    assert fast is not None
    assert fast == full_path(body)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": []},
        {"model": "", "messages": [{"role": "user", "content": "hi"}]},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": "maybe"},
        {"model": "m", "messages": [{"role": "user", "content": 5}]},
    ],
)
def test_bad_requests_are_left_to_the_full_path(body: dict[str, Any]) -> None:
    assert parse_plain(body) is None
    with pytest.raises(InvalidRequest):
        full_path(body)
