"""Anthropic Messages: render the delta stream as message events or as one message.

No FastAPI here. Event order (what the ``anthropic`` SDK's accumulator checks)::

    message_start
    (content_block_start · content_block_delta* · content_block_stop)*   indices 0, 1, 2 ...
    message_delta (stop_reason, stop_sequence, usage) · message_stop

with ``ping`` events whenever the upstream is silent for the keep-alive interval and an
``error`` event (then nothing) for a failure after the first byte. A thinking block ends with a
``signature_delta`` (the service's signature, else :data:`PLACEHOLDER_SIGNATURE`). A tool call
the service cut off (``Stop(MAX_TOKENS)`` without ``ToolCallEnd``) has already started its
block: the block is closed and the message ends with ``stop_reason: max_tokens``, as Anthropic
does when ``max_tokens`` cuts a tool call.

``message_start`` carries an estimate of ``input_tokens`` (Kiro counts only at the end),
scaled by what the service counted for the same model before (:mod:`ki2api.pipeline.calibration`);
``message_delta`` carries the final counts, which the SDK's accumulator takes over. Cache
tokens are Kiro's own counts when it sends them, else 0.

Kiro refusing the input as too long becomes Anthropic's own answer, a 400
``invalid_request_error`` "prompt is too long: N tokens > M maximum" (also when the refusal
arrives as the stream's first event), which Claude Code answers by compacting the conversation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from ki2api.api.anthropic.counting import estimate_request_tokens
from ki2api.api.anthropic.server_tools import result_block, server_tool_usage, use_block
from ki2api.api.common import LastPiece
from ki2api.api.errors import anthropic_error_body
from ki2api.model.deltas import (
    KEEP_ALIVE,
    ReasoningDelta,
    ServerToolResult,
    ServerToolUse,
    Stop,
    StopReason,
    StreamError,
    TextDelta,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from ki2api.model.errors import ContextLengthExceeded, InvalidRequest
from ki2api.model.ids import hex_id
from ki2api.model.request import ChatRequest
from ki2api.pipeline.gateway import Completion, DeltaStream, Gateway, collect
from ki2api.pipeline.websearch import open_answer

STOP_REASONS = {
    StopReason.END_TURN: "end_turn",
    StopReason.TOOL_USE: "tool_use",
    StopReason.MAX_TOKENS: "max_tokens",
    StopReason.STOP_SEQUENCE: "stop_sequence",
    StopReason.CONTENT_FILTERED: "refusal",
}
PLACEHOLDER_SIGNATURE = "ki2api-unsigned"
PING = b'event: ping\ndata: {"type":"ping"}\n\n'
MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT = b',"delta":{"type":"text_delta","text":'
_THINKING = b',"delta":{"type":"thinking_delta","thinking":'
_JSON = b',"delta":{"type":"input_json_delta","partial_json":'
_END = b"}}\n\n"

dumps = orjson.dumps


def event(name: str, body: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(body) + b"\n\n"


def usage_body(usage: Usage) -> dict[str, int]:
    # Anthropic's input_tokens leaves out the cached tokens (read or written); ours includes them.
    cached = usage.cache_read_tokens + usage.cache_write_tokens
    return {
        "input_tokens": max(usage.input_tokens - cached, 0),
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }


def prompt_too_long(error: ContextLengthExceeded, tokens: int, window: int) -> InvalidRequest:
    """Anthropic's wording, which Claude Code reads to compact: N is above M by definition."""
    return InvalidRequest(
        f"prompt is too long: {max(tokens, window + 1)} tokens > {window} maximum",
        param=error.param,
        code="context_length_exceeded",
    )


def tool_input(arguments: str) -> dict[str, Any]:
    """A finished call's JSON arguments as the object Anthropic's ``input`` must be."""
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"value": value}


class OpenMessage:
    """A message being served: its request, its delta stream, its id and ``message_start``."""

    __slots__ = ("request", "stream", "id", "input_estimate", "raw_estimate", "ratio", "_start")

    stream: DeltaStream  # set once the gateway has opened the answer
    id: str
    input_estimate: int  # calibrated
    raw_estimate: int

    def __init__(self, request: ChatRequest, ratio: float = 1.0) -> None:
        self.request = request
        self.ratio = ratio
        self._start: bytes | None = None

    def prepare(self) -> None:
        """The id, the input estimate and the ``message_start`` event. The gateway calls it
        while the upstream thinks (``Gateway.open``'s ``while_waiting``)."""
        if self._start is not None:
            return
        self.id = f"msg_{hex_id(24)}"
        self.raw_estimate = estimate_request_tokens(self.request)
        self.input_estimate = max(1, round(self.raw_estimate * self.ratio))
        start = {
            "type": "message_start",
            "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.request.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage_body(Usage(self.input_estimate, 0)),
            },
        }
        self._start = event("message_start", start)

    def message_start(self) -> bytes:
        if self._start is None:
            self.prepare()
        assert self._start is not None
        return self._start


class _Blocks:
    """Content-block bookkeeping for one streamed message: at most one block open at a time."""

    def __init__(self) -> None:
        self.count = 0
        self.open_kind: str | None = None
        self.open_index = -1
        self.signature: str | None = None
        self.tool_blocks: dict[int, int] = {}  # tool call index → block index

    def start(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self.close()
        self.open_kind, self.open_index = kind, self.count
        self.count += 1
        body = {"type": "content_block_start", "index": self.open_index, "content_block": block}
        out.append(event("content_block_start", body))
        return out

    def close(self) -> list[bytes]:
        if self.open_kind is None:
            return []
        out: list[bytes] = []
        index = self.open_index
        if self.open_kind == "thinking":
            signature = {"type": "signature_delta", "signature": self.signature}
            if not self.signature:
                signature["signature"] = PLACEHOLDER_SIGNATURE
            delta = {"type": "content_block_delta", "index": index, "delta": signature}
            out.append(event("content_block_delta", delta))
        out.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
        self.open_kind, self.signature = None, None
        return out


class MessagesService:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def open(self, request: ChatRequest, *, conversation_header: str | None) -> OpenMessage:
        gateway = self.gateway
        model = gateway.catalog.resolve(request.model)  # memoised: a dict lookup
        msg = OpenMessage(request, gateway.calibration.ratio(model.kiro_id))
        try:
            msg.stream = await open_answer(
                gateway, request, conversation_header=conversation_header, while_waiting=msg.prepare
            )
        except ContextLengthExceeded as exc:
            msg.prepare()
            raise prompt_too_long(exc, msg.input_estimate, model.context_window) from None
        msg.prepare()  # a no-op unless the gateway had no moment for it
        return msg

    def _final_usage(self, msg: OpenMessage, usage: Usage | None) -> Usage:
        """The counts for ``message_delta``; a real count also teaches the calibration."""
        if usage is None or usage.source == "estimate":
            output = usage.output_tokens if usage is not None else 0
            return Usage(msg.input_estimate, output, credits=usage.credits if usage else None)
        if msg.request.web_search is None:  # a search answer's count sums its rounds
            self.gateway.calibration.observe(
                msg.stream.model.kiro_id, msg.raw_estimate, usage.input_tokens
            )
        return usage

    def count_tokens(self, request: ChatRequest) -> int:
        """The estimate of :mod:`ki2api.api.anthropic.counting`; unknown models are a 404."""
        self.gateway.catalog.resolve(request.model)
        return estimate_request_tokens(request)

    async def sse(self, msg: OpenMessage) -> AsyncIterator[bytes]:
        blocks = _Blocks()
        usage: Usage | None = None
        searches = 0  # web searches the gateway ran for this answer
        stream = msg.stream
        parts = [msg.message_start()]  # goes out with the first batch
        first = True
        try:
            async for batch in stream.batches():
                for delta in batch:
                    if isinstance(delta, TextDelta):
                        if not delta.text:
                            continue
                        if blocks.open_kind != "text":
                            parts += blocks.start("text", {"type": "text", "text": ""})
                        index = b"%d" % blocks.open_index
                        parts.append(_DELTA + index + _TEXT + dumps(delta.text) + _END)
                    elif delta is KEEP_ALIVE:
                        parts.append(PING)
                    elif isinstance(delta, ReasoningDelta):
                        if blocks.open_kind != "thinking":
                            if not delta.text:
                                continue  # a lone signature with no reasoning to sign
                            thinking = {"type": "thinking", "thinking": "", "signature": ""}
                            parts += blocks.start("thinking", thinking)
                        blocks.signature = delta.signature or blocks.signature
                        if delta.text:
                            index = b"%d" % blocks.open_index
                            parts.append(_DELTA + index + _THINKING + dumps(delta.text) + _END)
                    elif isinstance(delta, ToolCallStart):
                        tool_use = {
                            "type": "tool_use",
                            "id": delta.id,
                            "name": delta.name,
                            "input": {},
                        }
                        parts += blocks.start("tool_use", tool_use)
                        blocks.tool_blocks[delta.index] = blocks.open_index
                    elif isinstance(delta, ToolCallArgs):
                        block_index = blocks.tool_blocks.get(delta.index)
                        if delta.fragment and block_index is not None:
                            index = b"%d" % block_index
                            parts.append(_DELTA + index + _JSON + dumps(delta.fragment) + _END)
                    elif isinstance(delta, ToolCallEnd):
                        if blocks.open_index == blocks.tool_blocks.get(delta.index):
                            parts += blocks.close()
                    elif isinstance(delta, Usage):
                        usage = delta
                    elif isinstance(delta, Stop):
                        parts += blocks.close()  # also a tool call cut off by max_tokens
                        final = self._final_usage(msg, usage)
                        body = {
                            "type": "message_delta",
                            "delta": {
                                "stop_reason": STOP_REASONS[delta.reason],
                                "stop_sequence": _stop_sequence(delta),
                            },
                            "usage": {**usage_body(final), **server_tool_usage(searches)},
                        }
                        parts += (event("message_delta", body), MESSAGE_STOP)
                        yield LastPiece(b"".join(parts))
                        return
                    elif isinstance(delta, StreamError):
                        error = delta.error
                        if first and isinstance(error, ContextLengthExceeded):
                            # Nothing sent yet: the flow answers the 400 Claude Code acts on.
                            window = stream.model.context_window
                            raise prompt_too_long(error, msg.input_estimate, window)
                        parts.append(event("error", anthropic_error_body(error)))
                        yield LastPiece(b"".join(parts))
                        return
                    elif isinstance(delta, ServerToolUse):
                        parts += blocks.start("server_tool_use", {**use_block(delta), "input": {}})
                        query = dumps({"query": delta.query})
                        parts.append(
                            _DELTA
                            + b"%d" % blocks.open_index
                            + _JSON
                            + dumps(query.decode())
                            + _END
                        )
                        parts += blocks.close()
                    elif isinstance(delta, ServerToolResult):
                        searches += delta.error is None
                        parts += blocks.start("web_search_tool_result", result_block(delta))
                        parts += blocks.close()
                if parts:
                    first = False
                    yield b"".join(parts)
                    parts = []
            if parts:
                yield b"".join(parts)
        finally:
            await stream.aclose()

    async def complete(self, msg: OpenMessage) -> dict[str, Any]:
        try:
            done = await collect(msg.stream, close=False)
        except ContextLengthExceeded as exc:
            raise prompt_too_long(
                exc, msg.input_estimate, msg.stream.model.context_window
            ) from None
        done.usage = self._final_usage(msg, done.usage)
        return render_message(msg, done)


def _stop_sequence(stop: Stop) -> str | None:
    return stop.stop_sequence if stop.reason == StopReason.STOP_SEQUENCE else None


def render_message(msg: OpenMessage, done: Completion) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    searches = 0
    for step in done.server_tools:  # searches come first: the text answers from them
        if isinstance(step, ServerToolUse):
            content.append(use_block(step))
        else:
            content.append(result_block(step))
            searches += step.error is None
    if done.reasoning:
        signature = done.reasoning_signature or PLACEHOLDER_SIGNATURE
        content.append({"type": "thinking", "thinking": done.reasoning, "signature": signature})
    if done.text or not (done.tool_calls or done.reasoning):
        content.append({"type": "text", "text": done.text})
    content.extend(
        {"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(call.arguments)}
        for call in done.tool_calls
    )
    return {
        "id": msg.id,
        "type": "message",
        "role": "assistant",
        "model": msg.request.model,
        "content": content,
        "stop_reason": STOP_REASONS[done.stop.reason],
        "stop_sequence": _stop_sequence(done.stop),
        "usage": {**usage_body(done.usage), **server_tool_usage(searches)},
    }
