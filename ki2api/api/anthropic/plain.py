"""The common Messages request, parsed without pydantic.

The Anthropic twin of :mod:`ki2api.api.openai_chat.plain` (see there for why): text-only
messages and system prompt, a model, ``max_tokens`` and a few scalar options become the same
:class:`ChatRequest` that ``to_chat_request(parse_wire(body))`` builds. Anything else returns
None and takes the full path, with its errors. A property test checks both paths agree.
"""

from __future__ import annotations

from typing import Any

from ki2api.api.anthropic.protocol import MessagesWire, MessageWire
from ki2api.api.plain import number_or_none, plain_basics, text_blocks, unhandled_fields
from ki2api.model.request import ChatRequest, Message, TextPart

# The wire model's fields this path handles; the others (RICH_FIELDS, read from the model) must
# be absent or null. Unknown fields are ignored by both paths.
HANDLED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stop_sequences",
        "stream",
        "metadata",
        "temperature",
        "top_p",
        "top_k",
        "context_management",
    }
)
RICH_FIELDS = unhandled_fields(MessagesWire, HANDLED_FIELDS)
HANDLED_MESSAGE_FIELDS = frozenset({"role", "content"})
RICH_MESSAGE_FIELDS = unhandled_fields(MessageWire, HANDLED_MESSAGE_FIELDS)  # none, today
_ROLES = ("user", "assistant")


def parse_plain(body: Any) -> ChatRequest | None:
    """The request for a plain body, else None."""
    basics = plain_basics(body, RICH_FIELDS)
    if basics is None:
        return None
    model, raw_messages, stream = basics
    max_tokens = body.get("max_tokens")
    if type(max_tokens) is not int or max_tokens < 1:
        return None
    stop = body.get("stop_sequences")
    if not (stop is None or (type(stop) is list and all(type(s) is str for s in stop))):
        return None
    metadata = body.get("metadata")
    if not (metadata is None or type(metadata) is dict):
        return None
    edits = body.get("context_management")  # accepted, nothing to do (see protocol.py)
    if not (edits is None or type(edits) is dict):
        return None
    if not (number_or_none(body.get("temperature")) and number_or_none(body.get("top_p"))):
        return None
    top_k = body.get("top_k")
    if not (top_k is None or type(top_k) is int):
        return None
    first_system = body.get("system")
    system = [] if first_system is None else text_blocks(first_system)
    if system is None:
        return None
    system = ["\n\n".join(t for t in system if t)]

    messages: list[Message] = []
    for m in raw_messages:
        if type(m) is not dict:
            return None
        for field in RICH_MESSAGE_FIELDS:
            if m.get(field) is not None:
                return None
        texts = text_blocks(m.get("content"))
        if texts is None:
            return None
        role = m.get("role")
        if role in _ROLES:
            messages.append(Message(role, [TextPart(t) for t in texts if t]))
        elif role == "system":
            system.append("\n\n".join(t for t in texts if t))
        else:
            return None
    if not messages:
        return None
    return ChatRequest(
        model=model,
        messages=messages,
        system="\n\n".join(s for s in system if s),
        max_tokens=max_tokens,
        stop=[s for s in stop or () if s],  # "" would stop at once
        stream=stream,
    )
