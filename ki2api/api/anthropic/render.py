"""Anthropic Messages: the delta stream as message events, or as one message (no I/O; see
:mod:`ki2api.api.renderer`). Event order (what the ``anthropic`` SDK's accumulator checks)::

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
arrives in the stream's first batch, before anything went out), which Claude Code answers by
compacting the conversation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ki2api.api.anthropic.counting import estimate_request_tokens
from ki2api.api.anthropic.server_tools import result_block, server_tool_usage, use_block
from ki2api.api.errors import anthropic_error_body
from ki2api.api.renderer import Renderer
from ki2api.model import deltas
from ki2api.model.errors import ContextLengthExceeded, GatewayError, InvalidRequest
from ki2api.model.ids import hex_id
from ki2api.model.request import ChatRequest
from ki2api.pipeline.gateway import Completion

STOP_REASONS = {
    deltas.StopReason.END_TURN: "end_turn",
    deltas.StopReason.TOOL_USE: "tool_use",
    deltas.StopReason.MAX_TOKENS: "max_tokens",
    deltas.StopReason.STOP_SEQUENCE: "stop_sequence",
    deltas.StopReason.CONTENT_FILTERED: "refusal",
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

# (the Kiro model's raw input estimate, the count the service reported): teaches the calibration
Learn = Callable[[int, int], object]


def event(name: str, body: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(body) + b"\n\n"


def usage_body(usage: deltas.Usage) -> dict[str, int]:
    # Anthropic's input_tokens leaves out the cached tokens (read or written); ours includes them.
    cached = usage.cache_read_tokens + usage.cache_write_tokens
    return {
        "input_tokens": max(usage.input_tokens - cached, 0),
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }


def tool_input(arguments: str) -> dict[str, Any]:
    """A finished call's JSON arguments as the object Anthropic's ``input`` must be."""
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"value": value}


def _stop_sequence(stop: deltas.Stop) -> str | None:
    return stop.stop_sequence if stop.reason == deltas.StopReason.STOP_SEQUENCE else None


class MessageRenderer(Renderer):
    """One answer to ``/v1/messages``. At most one content block is open at a time."""

    keep_alive = PING
    id: str
    input_estimate: int  # calibrated
    raw_estimate: int

    def __init__(
        self,
        request: ChatRequest,
        *,
        ratio: float = 1.0,
        context_window: int,
        learn: Learn | None = None,
    ) -> None:
        super().__init__()
        self.request = request
        self.ratio = ratio
        self.context_window = context_window
        self.learn = learn
        self._start = b""
        self.searches = 0  # web searches the gateway ran for this answer
        self.blocks = 0  # content blocks started
        self.open_kind: str | None = None
        self.open_index = -1
        self.signature: str | None = None
        self.tool_blocks: dict[int, int] = {}  # tool call index → block index

    def prepare(self) -> None:
        if self._start:
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
                "usage": usage_body(deltas.Usage(self.input_estimate, 0)),
            },
        }
        self._start = event("message_start", start)

    def start(self) -> bytes:
        self.prepare()
        return self._start

    def status_error(self, error: GatewayError) -> GatewayError:
        """Anthropic's wording for a refusal as too long, which Claude Code reads to compact
        (N is above M by definition)."""
        if not isinstance(error, ContextLengthExceeded):
            return error
        self.prepare()
        tokens = max(self.input_estimate, self.context_window + 1)
        return InvalidRequest(
            f"prompt is too long: {tokens} tokens > {self.context_window} maximum",
            param=error.param,
            code="context_length_exceeded",
        )

    def final_usage(self, usage: deltas.Usage | None) -> deltas.Usage:
        """The counts for ``message_delta``; a real count also teaches the calibration."""
        if usage is None or usage.source == "estimate":
            output = usage.output_tokens if usage is not None else 0
            return deltas.Usage(
                self.input_estimate, output, credits=usage.credits if usage else None
            )
        if self.learn is not None and self.request.web_search is None:
            self.learn(self.raw_estimate, usage.input_tokens)  # a search's count sums rounds
        return usage

    # --- blocks ---------------------------------------------------------------------------

    def open_block(self, kind: str, block: dict[str, Any]) -> None:
        self.close_block()
        self.open_kind, self.open_index = kind, self.blocks
        self.blocks += 1
        body = {"type": "content_block_start", "index": self.open_index, "content_block": block}
        self.out.append(event("content_block_start", body))

    def close_block(self) -> None:
        if self.open_kind is None:
            return
        index = self.open_index
        if self.open_kind == "thinking":
            signature = {"type": "signature_delta", "signature": self.signature}
            if not self.signature:
                signature["signature"] = PLACEHOLDER_SIGNATURE
            delta = {"type": "content_block_delta", "index": index, "delta": signature}
            self.out.append(event("content_block_delta", delta))
        body = {"type": "content_block_stop", "index": index}
        self.out.append(event("content_block_stop", body))
        self.open_kind, self.signature = None, None

    def _delta(self, index: int, kind: bytes, value: str) -> None:
        self.out.append(_DELTA + b"%d" % index + kind + dumps(value) + _END)

    # --- deltas ---------------------------------------------------------------------------

    def on_text(self, delta: deltas.TextDelta) -> None:
        if not delta.text:
            return
        if self.open_kind != "text":
            self.open_block("text", {"type": "text", "text": ""})
        self._delta(self.open_index, _TEXT, delta.text)

    def on_reasoning(self, delta: deltas.ReasoningDelta) -> None:
        if self.open_kind != "thinking":
            if not delta.text:
                return  # a lone signature with no reasoning to sign
            self.open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        self.signature = delta.signature or self.signature
        if delta.text:
            self._delta(self.open_index, _THINKING, delta.text)

    def on_tool_start(self, delta: deltas.ToolCallStart) -> None:
        block = {"type": "tool_use", "id": delta.id, "name": delta.name, "input": {}}
        self.open_block("tool_use", block)
        self.tool_blocks[delta.index] = self.open_index

    def on_tool_args(self, delta: deltas.ToolCallArgs) -> None:
        index = self.tool_blocks.get(delta.index)
        if delta.fragment and index is not None:
            self._delta(index, _JSON, delta.fragment)

    def on_tool_end(self, delta: deltas.ToolCallEnd) -> None:
        if self.open_index == self.tool_blocks.get(delta.index):
            self.close_block()

    def on_search(self, delta: deltas.ServerToolUse) -> None:
        self.open_block("server_tool_use", {**use_block(delta), "input": {}})
        self._delta(self.open_index, _JSON, dumps({"query": delta.query}).decode())
        self.close_block()

    def on_search_result(self, delta: deltas.ServerToolResult) -> None:
        self.searches += delta.error is None
        self.open_block("web_search_tool_result", result_block(delta))
        self.close_block()

    def on_stop(self, stop: deltas.Stop) -> None:
        self.close_block()  # also a tool call cut off by max_tokens
        body = {
            "type": "message_delta",
            "delta": {
                "stop_reason": STOP_REASONS[stop.reason],
                "stop_sequence": _stop_sequence(stop),
            },
            "usage": {
                **usage_body(self.final_usage(self.usage)),
                **server_tool_usage(self.searches),
            },
        }
        self.out += (event("message_delta", body), MESSAGE_STOP)

    def on_stream_error(self, error: GatewayError) -> None:
        if self.fresh and isinstance(error, ContextLengthExceeded):
            # Nothing sent yet: the flow answers the 400 Claude Code acts on.
            raise self.status_error(error)
        super().on_stream_error(error)

    def render_error(self, error: GatewayError) -> bytes:
        return event("error", anthropic_error_body(error))

    # --- not streamed ---------------------------------------------------------------------

    def whole(self, done: Completion) -> tuple[dict[str, Any], dict[str, str] | None]:
        content: list[dict[str, Any]] = []
        searches = 0
        for step in done.server_tools:  # searches come first: the text answers from them
            if isinstance(step, deltas.ServerToolUse):
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
            {"type": "tool_use", "id": c.id, "name": c.name, "input": tool_input(c.arguments)}
            for c in done.tool_calls
        )
        usage = self.final_usage(done.usage)
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.request.model,
            "content": content,
            "stop_reason": STOP_REASONS[done.stop.reason],
            "stop_sequence": _stop_sequence(done.stop),
            "usage": {**usage_body(usage), **server_tool_usage(searches)},
        }
        return message, None
