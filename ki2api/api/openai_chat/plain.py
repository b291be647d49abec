"""The common chat request, parsed without pydantic.

Most requests are plain: text messages from the system, the user and the assistant, a model, a
few scalar options. For them this module builds the same :class:`ChatRequest` that
``to_chat_request(parse_wire(body))`` would, in a few plain loops. Why: the gateway usually
sleeps between requests, and a request's first touch of pydantic-core's validator tree then
costs tens of times its warm cost (measured in docs/benchmarks.md, "Where the time goes, third
round"), on every request's way to its first token.

Anything else (tools, images, tool traffic, options that change the answer, any value whose
type pydantic would coerce or reject) returns None, and the full path decides, with its errors.
A property test checks both paths agree on every body this one accepts.
"""

from __future__ import annotations

from typing import Any

from ki2api.api.openai_chat.protocol import ChatCompletionWire, MessageWire
from ki2api.api.plain import number_or_none, plain_basics, text_blocks, unhandled_fields
from ki2api.model.request import ChatRequest, Message, TextPart

# The wire model's fields this path handles; the others (RICH_FIELDS, read from the model) must
# be absent or null. Unknown fields are ignored by both paths.
HANDLED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "n",
        "temperature",
        "top_p",
        "seed",
    }
)
RICH_FIELDS = unhandled_fields(ChatCompletionWire, HANDLED_FIELDS)
HANDLED_MESSAGE_FIELDS = frozenset({"role", "content", "name"})
RICH_MESSAGE_FIELDS = unhandled_fields(MessageWire, HANDLED_MESSAGE_FIELDS)
_SYSTEM_ROLES = ("system", "developer")


def parse_plain(body: Any) -> tuple[ChatRequest, bool] | None:
    """``(request, include_usage)`` for a plain request, else None."""
    basics = plain_basics(body, RICH_FIELDS)
    if basics is None:
        return None
    model, raw_messages, stream = basics
    include_usage = _include_usage(body.get("stream_options"))
    max_tokens = body.get("max_tokens")
    max_completion_tokens = body.get("max_completion_tokens")
    if include_usage is None or not (_count(max_tokens) and _count(max_completion_tokens)):
        return None
    n = body.get("n")
    if not (n is None or (type(n) is int and n == 1)):
        return None
    if not (number_or_none(body.get("temperature")) and number_or_none(body.get("top_p"))):
        return None
    seed = body.get("seed")
    if not (seed is None or type(seed) is int):
        return None
    stop = _stop(body.get("stop"))
    if stop is None:
        return None

    system: list[str] = []
    messages: list[Message] = []
    for m in raw_messages:
        if type(m) is not dict:
            return None
        for field in RICH_MESSAGE_FIELDS:
            if m.get(field) is not None:
                return None
        label = m.get("name")
        if not (label is None or type(label) is str):
            return None
        content = m.get("content")
        texts = [] if content is None else text_blocks(content)
        if texts is None:
            return None
        role = m.get("role")
        if role == "user":
            messages.append(Message("user", [TextPart(t) for t in texts if t]))
        elif role == "assistant":
            text = "".join(texts)
            messages.append(Message("assistant", [TextPart(text)] if text else []))
        elif role in _SYSTEM_ROLES:
            text = "".join(texts)
            if text:
                system.append(text)
        else:  # tool results, legacy functions, or not a role at all
            return None
    request = ChatRequest(
        model=model,
        messages=messages,
        system="\n\n".join(system),
        max_tokens=max_completion_tokens or max_tokens,
        stop=stop,
        stream=stream,
    )
    return request, include_usage


def _include_usage(options: Any) -> bool | None:
    if options is None:
        return False
    if type(options) is not dict:
        return None
    value = options.get("include_usage", False)
    return value if type(value) is bool else None


def _count(value: Any) -> bool:
    return value is None or (type(value) is int and value >= 1)


def _stop(value: Any) -> list[str] | None:
    if value is None:
        return []
    if type(value) is str:
        return [value]
    if type(value) is list and all(type(s) is str for s in value):
        return list(value)
    return None
