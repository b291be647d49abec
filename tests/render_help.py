"""Delta scripts and a stand-in for the streaming loop, for the renderers' unit tests (no stream,
no server: deltas in, bytes out)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

import ki2api.model.ids as ids
from ki2api.api.renderer import Renderer
from ki2api.model import deltas as d
from ki2api.model.errors import UpstreamTimeout
from ki2api.model.request import ChatRequest, Message, TextPart, WebSearch
from tests.sse_events import SseEvent, parse_sse

Batches = Sequence[Sequence[d.Delta]]

HITS = (
    d.SearchHit("Example", "https://example.com/a", "a snippet", 1_700_000_000_000),
    d.SearchHit("B", "https://b.org/", "another"),
)

SCRIPTS: dict[str, list[list[d.Delta]]] = {
    "text": [
        [d.TextDelta("Hello")],
        [d.TextDelta(", wor"), d.TextDelta('ld é"\n')],
        [d.Usage(12, 5, source="upstream"), d.Stop(d.StopReason.END_TURN)],
    ],
    "keep_alive": [
        [d.KEEP_ALIVE],
        [d.TextDelta("a")],
        [d.KEEP_ALIVE],
        [d.TextDelta(""), d.TextDelta("b"), d.Usage(3, 2), d.Stop(d.StopReason.END_TURN)],
    ],
    "reasoning_and_tools": [
        [d.ReasoningDelta("think "), d.ReasoningDelta("more", signature="sig-1")],
        [d.ReasoningDelta("", signature="sig-2"), d.TextDelta("Calling.")],
        [
            d.ToolCallStart(0, "call_1", "get_weather"),
            d.ToolCallArgs(0, '{"city":'),
            d.ToolCallArgs(0, '"Paris"}'),
            d.ToolCallEnd(0),
        ],
        [
            d.ToolCallStart(1, "call_2", "apply_patch"),
            d.ToolCallArgs(1, '{"input":"x"}'),
            d.ToolCallEnd(1),
        ],
        [d.ToolCallStart(2, "call_3", "local_shell"), d.ToolCallArgs(2, '{"command":["ls"]}')],
        [d.ToolCallEnd(2), d.Usage(100, 40, 10, "upstream", cache_write_tokens=5)],
        [d.Stop(d.StopReason.TOOL_USE)],
    ],
    "cut_tool_call": [
        [d.TextDelta("x")],
        [d.ToolCallStart(0, "call_9", "get_weather"), d.ToolCallArgs(0, '{"ci')],
        [d.Usage(5, 9), d.Stop(d.StopReason.MAX_TOKENS)],
    ],
    "error": [
        [d.TextDelta("part")],
        [d.StreamError(UpstreamTimeout("The upstream stopped answering."))],
    ],
    "search": [
        [d.ServerToolUse("srvtoolu_1", "weather paris")],
        [d.ServerToolResult("srvtoolu_1", HITS)],
        [d.ServerToolUse("srvtoolu_2", "q2")],
        [d.ServerToolResult("srvtoolu_2", (), error="unavailable")],
        [d.TextDelta("See https://example.com/a and https://b.org/ for more.")],
        [d.Usage(50, 10, source="upstream"), d.Stop(d.StopReason.END_TURN)],
    ],
    "stop_sequence": [
        [d.TextDelta("abc")],
        [d.Usage(2, 2, source="context"), d.Stop(d.StopReason.STOP_SEQUENCE, "END")],
    ],
}


def chat_request(*, stream: bool = True, web_search: bool = False, **kw: Any) -> ChatRequest:
    return ChatRequest(
        model="claude-sonnet-4.5",
        messages=[Message("user", [TextPart("What is the weather in Paris?")])],
        system="Be brief.",
        stream=stream,
        web_search=WebSearch() if web_search else None,
        **kw,
    )


def render(renderer: Renderer, batches: Batches) -> bytes:
    """What the streaming loop sends for these batches, joined: the preamble, each batch's
    bytes until the answer is done, and the end if the deltas ran out first."""
    pieces = [renderer.start()]
    for batch in batches:
        pieces.append(renderer.feed(batch))
        if renderer.done:
            return b"".join(pieces)
    pieces.append(renderer.end())
    return b"".join(pieces)


def events(data: bytes) -> list[SseEvent]:
    return parse_sse(data.decode())


def seeded() -> None:
    """The same ids in every run, so two renderings can be compared byte for byte."""
    ids._random.seed(7)


@st.composite
def rebatched(draw: st.DrawFn, batches: Batches) -> list[list[d.Delta]]:
    """The same deltas, in the same order, cut into batches anywhere."""
    flat = [delta for batch in batches for delta in batch]
    cuts = draw(st.sets(st.integers(1, max(1, len(flat) - 1)), max_size=len(flat)))
    bounds = [0, *sorted(c for c in cuts if c < len(flat)), len(flat)]
    return [flat[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
