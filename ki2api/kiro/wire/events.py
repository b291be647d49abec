"""Kiro events → internal deltas. Sans I/O: fed decoded frames, returns deltas.

Handles the quirks of the service in one place: tool calls whose JSON arguments arrive as string
fragments, reasoning that arrives either as ``reasoningContentEvent`` or as ``<thinking>`` text,
usage spread over several event types, exception frames, and streams cut before a tool call's
``stop`` (reported as ``MAX_TOKENS``, never as a complete call).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

from ki2api.kiro.wire.errors import error_for_exception
from ki2api.kiro.wire.eventstream import Frame
from ki2api.model.deltas import (
    Delta,
    ReasoningDelta,
    Stop,
    StopReason,
    StreamError,
    TextDelta,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from ki2api.model.errors import GatewayError, UpstreamProtocolError
from ki2api.model.tokens import estimate_tokens

log = logging.getLogger("ki2api.kiro")

_OPEN_TAG = "<thinking>"
_CLOSE_TAG = "</thinking>"


class ThinkingSplitter:
    """Splits ``<thinking>…</thinking>`` at the start of the text from the answer, across chunks.

    Only a block at the very start counts (after blank space): a tag later in an answer is the
    model talking about tags, not reasoning.
    """

    __slots__ = ("_held", "_state")

    def __init__(self) -> None:
        self._state = "start"  # start → thinking → after (drop the blank line) → answer
        self._held = ""

    def feed(self, text: str) -> list[TextDelta | ReasoningDelta]:
        if self._state == "after":
            text = text.lstrip("\n")
            if not text:
                return []
            self._state = "answer"
        if self._state == "answer":
            return [TextDelta(text)] if text else []
        self._held += text
        out: list[TextDelta | ReasoningDelta] = []
        if self._state == "start":
            stripped = self._held.lstrip()
            if _OPEN_TAG.startswith(stripped):
                return out  # not enough text yet to decide
            if not stripped.startswith(_OPEN_TAG):
                self._state = "answer"
                held, self._held = self._held, ""
                return [TextDelta(held)]
            self._state = "thinking"
            self._held = stripped[len(_OPEN_TAG) :]
        # thinking: emit all but a tail that could be the start of the closing tag
        end = self._held.find(_CLOSE_TAG)
        if end >= 0:
            reasoning, rest = self._held[:end], self._held[end + len(_CLOSE_TAG) :]
            if reasoning:
                out.append(ReasoningDelta(reasoning))
            self._state = "after"
            self._held = ""
            out.extend(self.feed(rest))
            return out
        keep = _partial_suffix(self._held, _CLOSE_TAG)
        ready = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep :]
        if ready:
            out.append(ReasoningDelta(ready))
        return out

    def flush(self) -> list[TextDelta | ReasoningDelta]:
        held, self._held = self._held, ""
        if not held:
            return []
        return [ReasoningDelta(held)] if self._state == "thinking" else [TextDelta(held)]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class _ToolCall:
    __slots__ = ("args", "ended", "index")

    def __init__(self, index: int) -> None:
        self.index = index
        self.args: list[str] = []
        self.ended = False


class KiroEventParser:
    """One per upstream response. ``feed(frame)`` → deltas; ``finish()`` → usage and the stop."""

    def __init__(
        self,
        *,
        tool_names: Mapping[str, str] | None = None,
        split_thinking: bool = False,
        prompt_tokens_estimate: int = 0,
        context_window: int = 200_000,
    ) -> None:
        self._tool_names = tool_names or {}
        self._thinking = ThinkingSplitter() if split_thinking else None
        self._prompt_estimate = prompt_tokens_estimate
        self._context_window = context_window
        self._calls: dict[str, _ToolCall] = {}
        self._output_chars: list[str] = []
        self._input_tokens: int | None = None
        self._output_tokens: int | None = None
        self._cache_read = 0
        self._cache_write = 0
        self._context_pct: float | None = None
        self._credits: float | None = None
        self._upstream_stop: StopReason | None = None
        self.saw_context_usage = False

    def feed(self, frame: Frame) -> list[Delta]:
        if frame.message_type != "event":
            return [StreamError(exception_from_frame(frame))]
        event = frame.event_type
        try:
            payload = orjson.loads(frame.payload) if frame.payload else {}
        except orjson.JSONDecodeError:
            return [StreamError(UpstreamProtocolError(f"unreadable {event} payload from Kiro"))]
        if not isinstance(payload, dict):
            return []
        if event == "assistantResponseEvent":
            return self._text(payload.get("content"))
        if event == "toolUseEvent":
            return self._tool_use(payload)
        if event == "reasoningContentEvent":
            text = payload.get("text") or ""
            signature = payload.get("signature")
            if text or signature:
                self._output_chars.append(text)
                return [ReasoningDelta(text, signature if isinstance(signature, str) else None)]
            return []
        if event in ("metadataEvent", "messageMetadataEvent"):
            self._metadata(payload)
        elif event == "meteringEvent":
            usage = payload.get("usage")
            if isinstance(usage, int | float):
                self._credits = (self._credits or 0.0) + float(usage)
        elif event == "contextUsageEvent":
            pct = payload.get("contextUsagePercentage")
            if isinstance(pct, int | float):
                self._context_pct = float(pct)
                self.saw_context_usage = True
        elif event == "messageStopEvent":
            self._upstream_stop = _stop_reason(payload.get("stopReason"))
        elif event == "invalidStateEvent":  # an error event: through the same table
            return [StreamError(error_for_exception(event, frame.payload))]
        # Everything else (code references, citations, follow-up prompts…) is not for clients.
        return []

    def _text(self, content: Any) -> list[Delta]:
        if not isinstance(content, str) or not content:
            return []
        self._output_chars.append(content)
        if self._thinking is None:
            return [TextDelta(content)]
        return list(self._thinking.feed(content))

    def _tool_use(self, payload: dict[str, Any]) -> list[Delta]:
        tool_use_id = payload.get("toolUseId")
        if not isinstance(tool_use_id, str) or not tool_use_id:
            return []
        out: list[Delta] = []
        call = self._calls.get(tool_use_id)
        if call is None:
            if self._thinking is not None:
                out.extend(self._thinking.flush())
            name = str(payload.get("name") or "")
            call = self._calls[tool_use_id] = _ToolCall(len(self._calls))
            out.append(ToolCallStart(call.index, tool_use_id, self._tool_names.get(name, name)))
        if call.ended:
            return out
        fragment = payload.get("input")
        if isinstance(fragment, dict):  # some answers carry the whole object at once
            fragment = orjson.dumps(fragment).decode()
        if isinstance(fragment, str) and fragment:
            call.args.append(fragment)
            self._output_chars.append(fragment)
            out.append(ToolCallArgs(call.index, fragment))
        if payload.get("stop"):
            if not call.args:  # a call with no arguments still needs valid JSON
                out.append(ToolCallArgs(call.index, "{}"))
            call.ended = True
            out.append(ToolCallEnd(call.index))
        return out

    def _metadata(self, payload: dict[str, Any]) -> None:
        usage = payload.get("tokenUsage")
        source = usage if isinstance(usage, dict) else payload
        inp = source.get("inputTokenCount", source.get("uncachedInputTokens"))
        out = source.get("outputTokenCount", source.get("outputTokens"))
        cache = source.get("cacheReadInputTokens")
        write = source.get("cacheWriteInputTokens", source.get("cacheCreationInputTokens"))
        if isinstance(inp, int):
            self._input_tokens = (
                inp
                + (cache if isinstance(cache, int) else 0)
                + (write if isinstance(write, int) else 0)
            )
        if isinstance(out, int):
            self._output_tokens = out
        if isinstance(cache, int):
            self._cache_read = cache
        if isinstance(write, int):
            self._cache_write = write

    def usage(self) -> Usage:
        if self._input_tokens is not None and self._output_tokens is not None:
            return Usage(
                self._input_tokens,
                self._output_tokens,
                self._cache_read,
                "upstream",
                self._credits,
                self._cache_write,
            )
        output = self._output_tokens
        if output is None:
            output = estimate_tokens("".join(self._output_chars))
        if self._input_tokens is not None:
            return Usage(
                self._input_tokens,
                output,
                self._cache_read,
                "upstream",
                self._credits,
                self._cache_write,
            )
        if self._context_pct is not None:
            # The percentage covers the prompt plus this answer.
            total = round(self._context_pct / 100 * self._context_window)
            return Usage(max(total - output, 0), output, 0, "context", self._credits)
        return Usage(self._prompt_estimate, output, 0, "estimate", self._credits)

    def finish(self) -> list[Delta]:
        out: list[Delta] = []
        if self._thinking is not None:
            out.extend(self._thinking.flush())
        out.append(self.usage())
        cut = [tid for tid, call in self._calls.items() if not call.ended]
        if cut:
            log.warning(
                "Kiro ended the stream inside tool call(s) %s before their 'stop': reporting "
                "finish reason 'length' instead of passing on incomplete arguments",
                ", ".join(cut),
            )
            out.append(Stop(StopReason.MAX_TOKENS))
        elif self._calls:
            out.append(Stop(StopReason.TOOL_USE))
        else:
            out.append(Stop(self._upstream_stop or StopReason.END_TURN))
        return out


def _stop_reason(value: Any) -> StopReason | None:
    return (
        {
            "END_TURN": StopReason.END_TURN,
            "TOOL_USE": StopReason.TOOL_USE,
            "MAX_TOKENS": StopReason.MAX_TOKENS,
            "MODEL_CONTEXT_WINDOW_EXCEEDED": StopReason.MAX_TOKENS,
            "CONTENT_FILTERED": StopReason.CONTENT_FILTERED,
        }.get(str(value).upper())
        if value
        else None
    )


def exception_from_frame(frame: Frame) -> GatewayError:
    """An ``exception`` / ``error`` frame inside a 200 stream, as a gateway error: classified by
    the same table as the HTTP answers (:mod:`ki2api.kiro.wire.errors`)."""
    kind = str(frame.headers.get(":exception-type") or frame.headers.get(":error-code") or "")
    message = str(frame.headers.get(":error-message") or "")
    return error_for_exception(kind, frame.payload, message)
