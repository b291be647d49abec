"""The internal stream: small frozen values that Kiro events become and front doors render.

Order guarantees a renderer may rely on: ``ToolCallStart(i)`` comes before any
``ToolCallArgs(i)``, which come before ``ToolCallEnd(i)``; indices count from 0 in the order calls
start; ``Usage`` (at most one) and then exactly one ``Stop`` or ``StreamError`` end the stream.
``KeepAlive`` may come anywhere before the end: the upstream has been silent for the keep-alive
interval; streaming renderers send their format's keep-alive, everyone else ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ki2api.model.errors import GatewayError


class StopReason(StrEnum):
    END_TURN = "end_turn"
    TOOL_USE = "tool_use"
    MAX_TOKENS = "max_tokens"  # also a tool call cut off by the upstream
    STOP_SEQUENCE = "stop_sequence"
    CONTENT_FILTERED = "content_filtered"


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str
    signature: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArgs:
    index: int
    fragment: str  # a piece of the JSON arguments; pieces concatenate


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    index: int


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    # where the counts came from: "upstream", "context" (from contextUsagePercentage), "estimate"
    source: str = "estimate"
    credits: float | None = None
    cache_write_tokens: int = 0  # included in input_tokens, like cache_read_tokens


@dataclass(frozen=True, slots=True)
class Stop:
    reason: StopReason
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class StreamError:
    """A failure after the first byte went out: renderers turn it into an in-stream error."""

    error: GatewayError


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """The upstream has been silent for the keep-alive interval (nothing to show)."""


KEEP_ALIVE = KeepAlive()


@dataclass(frozen=True, slots=True)
class SearchHit:
    title: str
    url: str
    snippet: str
    published_ms: int | None = None  # epoch milliseconds


@dataclass(frozen=True, slots=True)
class ServerToolUse:
    """The gateway runs a web search for the model (only when the client offered one)."""

    id: str
    query: str
    name: str = "web_search"


@dataclass(frozen=True, slots=True)
class ServerToolResult:
    """The outcome of the :class:`ServerToolUse` with the same id: hits, or an error code
    (Anthropic's: ``unavailable``, ``max_uses_exceeded``, ``too_many_requests`` ...)."""

    id: str
    hits: tuple[SearchHit, ...] = ()
    error: str | None = None


Delta = (
    TextDelta
    | ReasoningDelta
    | ToolCallStart
    | ToolCallArgs
    | ToolCallEnd
    | Usage
    | Stop
    | StreamError
    | KeepAlive
    | ServerToolUse
    | ServerToolResult
)
