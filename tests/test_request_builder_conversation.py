"""Conversation ids: stable across the turns of one conversation, distinct between conversations."""

from __future__ import annotations

import uuid

import pytest

from ki2api.model.errors import InvalidRequest
from ki2api.model.request import ChatRequest, Message, TextPart
from ki2api.pipeline.conversation import conversation_id_for


def chat(*texts: str, system: str = "sys") -> ChatRequest:
    roles = ["user", "assistant"]
    messages = [Message(roles[i % 2], [TextPart(t)]) for i, t in enumerate(texts)]  # type: ignore[arg-type]
    return ChatRequest(model="auto", messages=messages, system=system)


def test_stable_across_turns() -> None:
    first = conversation_id_for(chat("hello"), None)
    later = conversation_id_for(chat("hello", "hi!", "tell me more", "sure", "thanks"), None)
    assert first == later
    assert uuid.UUID(first).version == 5


def test_differs_between_conversations() -> None:
    base = conversation_id_for(chat("hello"), None)
    assert conversation_id_for(chat("hello!"), None) != base
    assert conversation_id_for(chat("hello", system="other"), None) != base


def test_leading_assistant_message_is_skipped_for_the_seed() -> None:
    request = ChatRequest(
        model="auto",
        messages=[Message("assistant", [TextPart("Welcome!")]), Message("user", [TextPart("hi")])],
    )
    assert conversation_id_for(request, None) == conversation_id_for(chat("hi", system=""), None)


def test_empty_and_odd_requests_still_get_an_id() -> None:
    assert uuid.UUID(conversation_id_for(ChatRequest(model="auto", messages=[]), None))
    odd = chat("\ud800 lone surrogate", system="\x00")
    assert conversation_id_for(odd, None) == conversation_id_for(odd, None)


def test_header_uuid_is_used_normalized() -> None:
    value = "{8C1D5E9A-0B7F-4E2A-9F3C-1A2B3C4D5E6F}"
    assert conversation_id_for(chat("x"), value) == "8c1d5e9a-0b7f-4e2a-9f3c-1a2b3c4d5e6f"


def test_header_free_text_becomes_a_stable_uuid() -> None:
    a = conversation_id_for(chat("x"), "my-session-42")
    assert a == conversation_id_for(chat("something else"), " my-session-42 ")
    assert a != conversation_id_for(chat("x"), "my-session-43")
    assert uuid.UUID(a)


def test_request_field_is_used_when_no_header() -> None:
    request = chat("x")
    request.conversation_id = "from-front-door"
    assert conversation_id_for(request, None) == conversation_id_for(chat("y"), "from-front-door")
    assert conversation_id_for(request, "header-wins") != conversation_id_for(request, None)


def test_blank_header_falls_back_to_the_derived_id() -> None:
    assert conversation_id_for(chat("x"), "  ") == conversation_id_for(chat("x"), None)


@pytest.mark.parametrize("value", ["a" * 201, "has space", "tab\there", "naïve", "new\nline"])
def test_bad_header_values_are_refused(value: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        conversation_id_for(chat("x"), value)
    assert info.value.param == "X-Conversation-Id"


@pytest.mark.parametrize(
    ("system", "first", "expected"),
    [
        ("sys", "hello", "335c7330-0797-516f-a9ac-fff2c9e167a2"),
        ("be brief", "naïve \ud800 🦊", "c339af92-274c-5a9d-993f-77231431a994"),  # a lone surrogate
    ],
)
def test_derived_ids_are_those_of_earlier_versions(system: str, first: str, expected: str) -> None:
    """An upgrade keeps every conversation's id (recorded with the code before this one)."""
    assert conversation_id_for(chat(first, system=system), None) == expected
