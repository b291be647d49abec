"""What the front doors' plain-request fast paths (``*/plain.py``) share.

A fast path names the wire-model fields it handles itself; every other field of the model
(:func:`unhandled_fields`, read from the model, so it cannot fall behind it) must be absent or
null, or the body takes the full path. A field added to a wire model therefore sends the bodies
that set it down the full path until the fast path learns it. The checks accept exact JSON
types only: anything pydantic would coerce is left to the full path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel


def unhandled_fields(model: type[BaseModel], handled: Iterable[str]) -> tuple[str, ...]:
    """The fields of ``model`` not in ``handled``, in the model's order."""
    known = frozenset(handled)
    return tuple(name for name in model.model_fields if name not in known)


def number_or_none(value: Any) -> bool:
    return value is None or type(value) is float or type(value) is int


def text_blocks(content: Any) -> list[str] | None:
    """The texts of a string, or of a list of ``{"type": "text", "text": ...}`` blocks only."""
    if type(content) is str:
        return [content]
    if type(content) is not list:
        return None
    texts = []
    for block in content:
        if type(block) is not dict or block.get("type") != "text":
            return None
        text = block.get("text")
        if type(text) is not str:
            return None
        texts.append(text)
    return texts


def plain_basics(body: Any, rich_fields: Iterable[str]) -> tuple[str, list[Any], bool] | None:
    """``(model, messages, stream)`` of a body with none of ``rich_fields`` set, a model name of
    1-256 characters, a non-empty message list and a boolean (or absent) ``stream``; else None."""
    if type(body) is not dict:
        return None
    for name in rich_fields:
        if body.get(name) is not None:
            return None
    model = body.get("model")
    if type(model) is not str or not 0 < len(model) <= 256:
        return None
    messages = body.get("messages")
    if type(messages) is not list or not messages:
        return None
    stream = body.get("stream", False)
    if type(stream) is not bool:
        return None
    return model, messages, stream
