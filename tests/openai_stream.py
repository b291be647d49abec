"""Reassemble an OpenAI chat stream and check the invariants clients rely on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Assembled:
    text: str = ""
    reasoning: str = ""
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Any = None
    chunks: int = 0


def assemble(chunks: list[Any], *, expect_usage: bool = False) -> Assembled:
    out = Assembled(chunks=len(chunks))
    assert chunks, "no chunks"
    ids = {c.id for c in chunks}
    assert len(ids) == 1, f"chunk ids differ: {ids}"
    assert len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    choice_chunks = [c for c in chunks if c.choices]
    assert choice_chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in choice_chunks[1:])
    finishing = [c for c in choice_chunks if c.choices[0].finish_reason is not None]
    assert len(finishing) == 1 and finishing[0] is choice_chunks[-1], "one finish, at the end"
    last = finishing[0].choices[0]
    assert not last.delta.content and not last.delta.tool_calls
    out.finish_reason = last.finish_reason
    for c in choice_chunks:
        delta = c.choices[0].delta
        if delta.content:
            out.text += delta.content
        reasoning = getattr(delta, "reasoning_content", None)
        if reasoning:
            out.reasoning += reasoning
        for call in delta.tool_calls or []:
            if call.index not in out.tool_calls:
                assert call.id and call.type == "function" and call.function.name, (
                    "first fragment of a call carries id, type and name"
                )
                out.tool_calls[call.index] = {
                    "id": call.id,
                    "name": call.function.name,
                    "arguments": "",
                }
            else:
                assert call.id is None
            out.tool_calls[call.index]["arguments"] += call.function.arguments or ""
    usage_chunks = [c for c in chunks if not c.choices]
    if expect_usage:
        assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0], "usage comes last"
        out.usage = usage_chunks[0].usage
        assert all(c.usage is None for c in choice_chunks)
    else:
        assert not usage_chunks
    return out
