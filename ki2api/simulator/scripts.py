"""Scripted answers: a tiny language of steps the simulator plays as one HTTP response.

A :class:`Script` is a tuple of steps played in order:

- frames: :class:`Event` (one event-stream frame), :class:`ExceptionFrame`, :class:`Raw` bytes;
- timing: :class:`Delay`, :class:`SlowFirstByte`, :class:`Stall` (never sends again);
- :class:`Flood`: one frame over and over, without end (an upstream that never stops);
- stream faults: :class:`CorruptCrc` (the next frame gets a bad CRC), :class:`Garbage`,
  :class:`CutMidFrame` (half a frame, then the end);
- HTTP faults: :class:`HttpError` (answered instead of a stream), :class:`ConnectionDrop`.

The response headers go out lazily, just before the first body byte, so a leading ``Delay`` or
``SlowFirstByte`` delays the status line too (what a slow upstream looks like), and a ``Stall``
before any frame never answers at all.

The builders below (``text_answer``, ``tool_use_answer``, ``capture`` ...) produce the shapes the
real service sends; see ``docs/kiro-protocol.md`` section 4.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeAlias

import orjson

from ki2api.kiro.wire.eventstream import (
    EventStreamDecoder,
    EventStreamError,
    encode_event,
    encode_exception,
)

DEFAULT_METERING_USAGE = 0.0058
DEFAULT_CONTEXT_USAGE = 12.5


def _json(payload: Mapping[str, Any]) -> bytes:
    return orjson.dumps(payload)


# --- steps -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """One ``:message-type: event`` frame with a JSON payload."""

    event_type: str
    payload: Mapping[str, Any]

    def encode(self) -> bytes:
        return encode_event(self.event_type, _json(self.payload))


@dataclass(frozen=True, slots=True)
class ExceptionFrame:
    """One ``:message-type: exception`` frame (an error inside an otherwise good stream)."""

    exception_type: str
    payload: Mapping[str, Any]

    def encode(self) -> bytes:
        return encode_exception(self.exception_type, _json(self.payload))


@dataclass(frozen=True, slots=True)
class Raw:
    """Bytes written as they are (a replayed capture frame, a hand-made broken frame ...)."""

    data: bytes

    def encode(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class Delay:
    seconds: float


@dataclass(frozen=True, slots=True)
class SlowFirstByte:
    """Wait before the response starts (status line included). Same as a leading ``Delay``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Stall:
    """Stop sending and keep the connection open until the client leaves (or the server stops)."""


@dataclass(frozen=True, slots=True)
class CorruptCrc:
    """The next frame goes out with a wrong message CRC."""


@dataclass(frozen=True, slots=True)
class Garbage:
    """``n`` bytes that are not an event stream (deterministic for a given seed)."""

    n: int = 64
    seed: int = 0

    def encode(self) -> bytes:
        # The first byte is 0xFF so the bytes can never pass for a frame prelude by accident.
        rng = random.Random(self.seed)
        return b"\xff" + rng.randbytes(max(self.n - 1, 0)) if self.n > 0 else b""


@dataclass(frozen=True, slots=True)
class CutMidFrame:
    """Send the first half of a frame, then end the response.

    ``abort=False`` ends the HTTP body cleanly (the client's decoder is left holding a partial
    frame); ``abort=True`` closes the TCP connection instead (an incomplete chunked body).
    """

    event: Event | None = None
    abort: bool = False

    def half(self) -> bytes:
        event = self.event or Event("assistantResponseEvent", {"content": "(this frame is cut)"})
        data = event.encode()
        return data[: len(data) // 2]


@dataclass(frozen=True, slots=True)
class HttpError:
    """An HTTP error answered instead of a stream (only meaningful before any frame was sent)."""

    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConnectionDrop:
    """Close the TCP connection: before any byte, the client sees no response at all."""


@dataclass(frozen=True, slots=True)
class Flood:
    """``event`` again and again, ``frames_per_write`` at a time, until the client leaves (or,
    with ``total_bytes``, until that much has gone out; then the next step). Its text is not
    added to the request's ``sent_text``: that would grow without end as well."""

    event: Event
    total_bytes: int | None = None
    frames_per_write: int = 16


Step: TypeAlias = (
    Event
    | ExceptionFrame
    | Raw
    | Delay
    | SlowFirstByte
    | Stall
    | CorruptCrc
    | Garbage
    | CutMidFrame
    | HttpError
    | ConnectionDrop
    | Flood
)
FRAME_STEPS = (Event, ExceptionFrame, Raw)


@dataclass(frozen=True, slots=True)
class Script:
    """A named, immutable sequence of steps. ``a + b`` concatenates."""

    steps: tuple[Step, ...]
    name: str = "script"

    def __add__(self, other: Script | Sequence[Step]) -> Script:
        more = other.steps if isinstance(other, Script) else tuple(other)
        return Script(self.steps + more, self.name)

    def named(self, name: str) -> Script:
        return Script(self.steps, name)

    @property
    def text(self) -> str:
        """The answer text a correct client shows: every ``assistantResponseEvent`` content."""
        parts: list[str] = []
        for step in self.steps:
            if isinstance(step, Event):
                parts.append(event_text(step.event_type, step.payload))
            elif isinstance(step, Raw):
                parts.append(raw_text(step.data))
        return "".join(parts)

    def body(self) -> bytes:
        """Every frame's bytes, as a fault-free playback would send them."""
        return b"".join(s.encode() for s in self.steps if isinstance(s, FRAME_STEPS))


def as_script(value: Script | Step | Iterable[Step], name: str = "script") -> Script:
    if isinstance(value, Script):
        return value
    if isinstance(value, Iterable):
        return Script(tuple(value), name)
    return Script((value,), name)


def event_text(event_type: str, payload: Mapping[str, Any]) -> str:
    if event_type == "assistantResponseEvent":
        content = payload.get("content")
        return content if isinstance(content, str) else ""
    return ""


def raw_text(data: bytes) -> str:
    """Answer text inside raw bytes, best effort (broken bytes count as no text)."""
    try:
        frames = EventStreamDecoder().feed(data)
    except EventStreamError:
        return ""
    parts: list[str] = []
    for frame in frames:
        if frame.event_type == "assistantResponseEvent":
            try:
                payload = orjson.loads(frame.payload)
            except orjson.JSONDecodeError:
                continue
            if isinstance(payload, dict):
                parts.append(event_text("assistantResponseEvent", payload))
    return "".join(parts)


# --- builders ----------------------------------------------------------------------------------


def split_text(text: str, chunks: int) -> list[str]:
    """Split into at most ``chunks`` non-empty pieces of near-equal length (by characters, so
    every frame holds whole UTF-8 characters, as the service sends them)."""
    if not text:
        return []
    chunks = max(1, min(chunks, len(text)))
    size, extra = divmod(len(text), chunks)
    pieces, pos = [], 0
    for i in range(chunks):
        end = pos + size + (1 if i < extra else 0)
        pieces.append(text[pos:end])
        pos = end
    return pieces


def text_events(text: str, chunks: int = 4, *, model_id: str | None = None) -> list[Event]:
    extra = {"modelId": model_id} if model_id else {}
    return [
        Event("assistantResponseEvent", {"content": piece, **extra})
        for piece in split_text(text, chunks)
    ]


def reasoning_events(
    text: str, chunks: int = 2, *, signature: str = "sim-signature"
) -> list[Event]:
    """``reasoningContentEvent``s; the last one carries the signature."""
    pieces = split_text(text, chunks)
    events = [Event("reasoningContentEvent", {"text": piece}) for piece in pieces[:-1]]
    if pieces:
        events.append(Event("reasoningContentEvent", {"text": pieces[-1], "signature": signature}))
    return events


def initial_response(conversation_id: str) -> Event:
    return Event("initial-response", {"conversationId": conversation_id})


def metering_event(usage: float = DEFAULT_METERING_USAGE) -> Event:
    return Event("meteringEvent", {"unit": "credit", "unitPlural": "credits", "usage": usage})


def context_usage_event(percentage: float = DEFAULT_CONTEXT_USAGE) -> Event:
    return Event("contextUsageEvent", {"contextUsagePercentage": percentage})


def metadata_event(input_tokens: int, output_tokens: int) -> Event:
    return Event(
        "metadataEvent", {"inputTokenCount": input_tokens, "outputTokenCount": output_tokens}
    )


def message_metadata_event(
    uncached_input_tokens: int,
    output_tokens: int,
    *,
    cache_read_input_tokens: int = 0,
    cache_write_input_tokens: int = 0,
    conversation_id: str | None = None,
) -> Event:
    payload: dict[str, Any] = {
        "tokenUsage": {
            "uncachedInputTokens": uncached_input_tokens,
            "outputTokens": output_tokens,
            "cacheReadInputTokens": cache_read_input_tokens,
            "cacheWriteInputTokens": cache_write_input_tokens,
            "totalTokens": uncached_input_tokens
            + output_tokens
            + cache_read_input_tokens
            + cache_write_input_tokens,
        }
    }
    if conversation_id:
        payload["conversationId"] = conversation_id
    return Event("messageMetadataEvent", payload)


def trailer(
    usage: float = DEFAULT_METERING_USAGE,
    context_usage: float | None = DEFAULT_CONTEXT_USAGE,
    *,
    tokens: tuple[int, int] | None = None,
) -> list[Event]:
    """The events that close a complete answer: metering, context usage, optional token counts."""
    events = [metering_event(usage)]
    if context_usage is not None:
        events.append(context_usage_event(context_usage))
    if tokens is not None:
        events.append(metadata_event(*tokens))
    return events


def text_answer(
    text: str,
    chunks: int = 4,
    *,
    reasoning: str | None = None,
    thinking_tags: bool = False,
    model_id: str | None = None,
    conversation_id: str | None = None,
    usage: float = DEFAULT_METERING_USAGE,
    context_usage: float | None = DEFAULT_CONTEXT_USAGE,
    tokens: tuple[int, int] | None = None,
    name: str = "text",
) -> Script:
    """A complete text answer. ``reasoning`` goes out as ``reasoningContentEvent``s, or with
    ``thinking_tags=True`` as ``<thinking>...</thinking>`` at the start of the text (the other
    shape accounts receive; ``Script.text`` then includes the tags, as sent)."""
    steps: list[Step] = []
    if conversation_id:
        steps.append(initial_response(conversation_id))
    if reasoning and thinking_tags:
        text = f"<thinking>{reasoning}</thinking>\n\n{text}"
    elif reasoning:
        steps.extend(reasoning_events(reasoning))
    steps.extend(text_events(text, chunks, model_id=model_id))
    steps.extend(trailer(usage, context_usage, tokens=tokens))
    return Script(tuple(steps), name)


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    tool_use_id: str
    input_json: str


def tool_use_events(
    name: str, tool_use_id: str, input_json: str, fragments: int = 3, *, stop: bool = True
) -> list[Event]:
    """First frame ``{name, toolUseId}``, then ``input`` fragments, then ``stop: true``."""
    head = {"name": name, "toolUseId": tool_use_id}
    events = [Event("toolUseEvent", head)]
    events += [
        Event("toolUseEvent", {**head, "input": piece})
        for piece in split_text(input_json, fragments)
    ]
    if stop:
        events.append(Event("toolUseEvent", {**head, "stop": True}))
    return events


def tool_use_answer(
    name: str,
    tool_use_id: str,
    input_json_str: str,
    fragments: int = 3,
    *,
    truncated: bool = False,
    text_before: str = "",
    usage: float = DEFAULT_METERING_USAGE,
    context_usage: float | None = DEFAULT_CONTEXT_USAGE,
) -> Script:
    """One tool call with fragmented arguments. ``truncated=True`` ends the stream after the
    fragments with no ``stop`` and no trailer: the field-reported cut tool call."""
    steps: list[Step] = list(text_events(text_before, 2))
    steps += tool_use_events(name, tool_use_id, input_json_str, fragments, stop=not truncated)
    if not truncated:
        steps += trailer(usage, context_usage)
    return Script(tuple(steps), "tool_use_truncated" if truncated else "tool_use")


def parallel_tool_use_answer(
    calls: Sequence[ToolCall | tuple[str, str, str]],
    fragments: int = 2,
    *,
    text_before: str = "",
    usage: float = DEFAULT_METERING_USAGE,
    context_usage: float | None = DEFAULT_CONTEXT_USAGE,
) -> Script:
    """Several tool calls in one answer, one after the other, each complete."""
    steps: list[Step] = list(text_events(text_before, 2))
    for call in calls:
        c = call if isinstance(call, ToolCall) else ToolCall(*call)
        steps += tool_use_events(c.name, c.tool_use_id, c.input_json, fragments)
    steps += trailer(usage, context_usage)
    return Script(tuple(steps), "parallel_tool_use")


# --- captures ----------------------------------------------------------------------------------

_CAPTURES = "captures"
_PRELUDE_TOTAL = struct.Struct(">I")


def capture_names() -> list[str]:
    folder = resources.files(__package__).joinpath(_CAPTURES)
    return sorted(p.name.removesuffix(".bin") for p in folder.iterdir() if p.name.endswith(".bin"))


def capture_bytes(name: str) -> bytes:
    """The bytes of a real upstream capture shipped with the simulator (``captures/*.bin``)."""
    file = name if name.endswith(".bin") else f"{name}.bin"
    if "/" in file or "\\" in file:
        raise ValueError(f"not a capture name: {name!r}")
    path = resources.files(__package__).joinpath(_CAPTURES, file)
    if not path.is_file():
        raise KeyError(f"no capture {name!r}; have {capture_names()}")
    return path.read_bytes()


def capture(name: str) -> Script:
    """Replay a real capture byte for byte, one frame per write (frames split by their length
    prefix, so the bytes are never re-encoded)."""
    data = capture_bytes(name)
    steps: list[Step] = []
    pos = 0
    while pos < len(data):
        total = _PRELUDE_TOTAL.unpack_from(data, pos)[0] if len(data) - pos >= 4 else 0
        if total < 16 or pos + total > len(data):  # not a frame boundary: send the rest as is
            total = len(data) - pos
        steps.append(Raw(data[pos : pos + total]))
        pos += total
    return Script(tuple(steps), f"capture:{name.removesuffix('.bin')}")
