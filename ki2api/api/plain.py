"""Checks shared by the front doors' plain-request fast paths (``*/plain.py``): exact JSON types
only, since anything pydantic would coerce is left to the full path."""

from __future__ import annotations

from typing import Any


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
