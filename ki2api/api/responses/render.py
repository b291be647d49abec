"""OpenAI Responses: the delta stream as response events, or as one response object (no I/O;
see :mod:`ki2api.api.renderer`).

Output items follow the order of the deltas (typically a ``reasoning`` item, a ``message``
item, then ``function_call`` items), one item open at a time. A streamed answer::

    response.created · response.in_progress
    per item: response.output_item.added
      reasoning:  reasoning_summary_part.added · reasoning_summary_text.delta* ·
                  reasoning_summary_text.done · reasoning_summary_part.done
      message:    content_part.added · output_text.delta* · output_text.done · content_part.done
      call:       function_call_arguments.delta* · function_call_arguments.done
    response.output_item.done
    response.completed | response.incomplete (max_output_tokens, content_filter)

Every event carries a ``sequence_number`` counting from 0. A failure after the first byte is an
``error`` event followed by ``response.failed``. While the upstream is silent an SSE comment keeps
the connection alive. A tool call the service cut off ends as an ``incomplete`` item (its
arguments are never reported as done) and the response as ``incomplete``. Calls to the tool
kinds of :mod:`.tools` come back as their own item types; reasoning is sealed
(:mod:`.sealed`) when the client asked for ``reasoning.encrypted_content``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ki2api.api.renderer import Renderer
from ki2api.api.responses.protocol import ResponsesWire
from ki2api.api.responses.sealed import ReasoningSeal
from ki2api.api.responses.tools import ToolKinds, custom_input, local_shell_action
from ki2api.model import deltas
from ki2api.model.errors import GatewayError
from ki2api.model.ids import hex_id
from ki2api.model.request import ChatRequest
from ki2api.model.tokens import estimate_tokens
from ki2api.pipeline.gateway import Completion
from ki2api.pipeline.websearch import citations

INCOMPLETE_REASONS = {
    deltas.StopReason.MAX_TOKENS: "max_output_tokens",
    deltas.StopReason.CONTENT_FILTERED: "content_filter",
}
_OUTPUT_TEXT = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}

dumps = orjson.dumps


def _new_id(prefix: str) -> str:
    return f"{prefix}_{hex_id()}"


def usage_body(usage: deltas.Usage, reasoning: str) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cache_read_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.output_tokens,
        # Kiro does not split its count; the reasoning share is estimated from its text.
        "output_tokens_details": {
            "reasoning_tokens": min(estimate_tokens(reasoning), usage.output_tokens)
        },
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def error_code(error: GatewayError) -> str:
    """``Response.error.code`` takes a fixed set of values; two of them fit gateway errors."""
    return "rate_limit_exceeded" if error.status == 429 else "server_error"


WARNING_HEADER = "x-ki2api-warning"


def _annotations(text: str, hits: list[deltas.SearchHit]) -> list[dict[str, Any]]:
    if not hits:
        return []
    return [
        {"type": "url_citation", "start_index": a, "end_index": b, "url": h.url, "title": h.title}
        for a, b, h in citations(text, hits)
    ]


def _search_item(
    item_id: str, use: deltas.ServerToolUse, result: deltas.ServerToolResult | None
) -> dict[str, Any]:
    action: dict[str, Any] = {"type": "search", "query": use.query}
    status = "in_progress"
    if result is not None:
        status = "completed" if result.error is None else "failed"
        action["sources"] = [{"type": "url", "url": h.url} for h in result.hits]
    return {"type": "web_search_call", "id": item_id, "status": status, "action": action}


def _message_item(
    item_id: str, text: str, status: str, hits: list[deltas.SearchHit] | None = None
) -> dict[str, Any]:
    annotations = _annotations(text, hits) if hits else []
    part = {"type": "output_text", "text": text, "annotations": annotations, "logprobs": []}
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [part],
    }


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": [{"type": "summary_text", "text": text}] if text else [],
    }


def _call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


@dataclass(slots=True)
class _Item:
    kind: str  # reasoning | message | web_search_call | function_call and the other call types
    index: int  # output_index
    id: str
    head: bytes  # '"item_id":"…","output_index":N' for the pre-serialised delta events
    pieces: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    signature: str | None = None
    final: dict[str, Any] | None = None  # a web_search_call's finished item

    def where(self) -> dict[str, Any]:
        return {"item_id": self.id, "output_index": self.index}


class ResponseRenderer(Renderer):
    """One answer to ``/v1/responses``: numbers the events and keeps the output items."""

    id: str
    created_at: int

    def __init__(
        self,
        request: ChatRequest,
        wire: ResponsesWire,
        kinds: ToolKinds | None = None,
        seal: ReasoningSeal | None = None,  # set when the client asked for encrypted reasoning
    ) -> None:
        super().__init__()
        self.request = request
        self.wire = wire
        self.kinds = kinds or ToolKinds()
        self.seal = seal
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.item: _Item | None = None  # the open one
        self.calls: dict[int, _Item] = {}  # tool call index → its item
        self.reasoning: list[str] = []
        self.hits: list[deltas.SearchHit] = []  # of the searches the gateway ran, for citations
        self._start = b""

    def prepare(self) -> None:
        if self._start:
            return
        self.id = _new_id("resp")
        self.created_at = int(time.time())
        start = self.body("in_progress", [])
        self._start = self.event("response.created", {"response": start}) + self.event(
            "response.in_progress", {"response": start}
        )

    def start(self) -> bytes:
        self.prepare()
        return self._start

    def warning_headers(self) -> dict[str, str] | None:
        warnings = self.kinds.warnings()
        return {WARNING_HEADER: "; ".join(warnings)} if warnings else None

    def headers(self) -> list[tuple[bytes, bytes]]:
        warnings = self.warning_headers() or {}
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in warnings.items()]

    # --- items and the response object ----------------------------------------------------

    def reasoning_item(self, item_id: str, text: str, signature: str | None) -> dict[str, Any]:
        item = _reasoning_item(item_id, text)
        if self.seal is not None:
            item["encrypted_content"] = self.seal.seal(text, signature)
        return item

    def call_item(
        self, item_id: str, call_id: str, name: str, arguments: str, status: str
    ) -> dict[str, Any]:
        """A tool call as the item type of the tool the client declared."""
        kinds = self.kinds
        if name in kinds.custom:
            return {
                "type": "custom_tool_call",
                "id": item_id,
                "call_id": call_id,
                "name": name,
                "input": custom_input(arguments),
                "status": status,
            }
        if name == "local_shell" and kinds.local_shell:
            return {
                "type": "local_shell_call",
                "id": item_id,
                "call_id": call_id,
                "status": status,
                "action": local_shell_action(arguments),
            }
        item = _call_item(item_id, call_id, name, arguments, status)
        namespaced = kinds.namespaced.get(name)
        if namespaced is not None:
            item["namespace"], item["name"] = namespaced
        return item

    def body(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        *,
        incomplete: str | None = None,
        error: GatewayError | None = None,
    ) -> dict[str, Any]:
        """The response object; request settings are echoed as OpenAI does."""
        wire = self.wire
        reasoning = wire.reasoning
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None
            if error is None
            else {"code": error_code(error), "message": error.message},
            "incomplete_details": None if incomplete is None else {"reason": incomplete},
            "instructions": wire.instructions,
            "max_output_tokens": wire.max_output_tokens,
            "model": self.request.model,
            "output": output,
            "parallel_tool_calls": True
            if wire.parallel_tool_calls is None
            else wire.parallel_tool_calls,
            "previous_response_id": None,
            "reasoning": {
                "effort": reasoning.effort if reasoning else None,
                "summary": reasoning.summary if reasoning else None,
            },
            "store": False,  # nothing is stored (see the protocol module)
            "temperature": wire.temperature,
            "text": wire.text or {"format": {"type": "text"}},
            "tool_choice": wire.tool_choice or "auto",
            "tools": wire.tools or [],
            "top_p": wire.top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": wire.user,
            "metadata": wire.metadata or {},
        }

    # --- events ---------------------------------------------------------------------------

    def event(self, kind: str, body: dict[str, Any]) -> bytes:
        body = {"type": kind, **body, "sequence_number": self.seq}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + dumps(body) + b"\n\n"

    def _emit(self, kind: str, body: dict[str, Any]) -> None:
        self.out.append(self.event(kind, body))

    def _delta(self, kind: bytes, item: _Item, extra: bytes, text: str) -> None:
        seq = self.seq
        self.seq += 1
        self.out.append(
            b"event: " + kind + b'\ndata: {"type":"' + kind + b'",' + item.head + extra
            + b',"delta":' + dumps(text) + b',"sequence_number":%d}\n\n' % seq
        )  # fmt: skip

    def open_item(self, kind: str, prefix: str, item: dict[str, Any]) -> _Item:
        self.close_item("completed")
        index = len(self.output)
        item_id = _new_id(prefix)
        item["id"] = item_id
        self.output.append(item)
        head = b'"item_id":' + dumps(item_id) + b',"output_index":%d' % index
        self.item = _Item(kind, index, item_id, head)
        self._emit("response.output_item.added", {"output_index": index, "item": item})
        return self.item

    def close_item(self, status: str) -> None:
        item, self.item = self.item, None
        if item is None:
            return
        text = "".join(item.pieces)
        where = item.where()
        if item.kind == "reasoning":
            final = self.reasoning_item(item.id, text, item.signature)
            part = {"type": "summary_text", "text": text}
            body = {**where, "summary_index": 0, "text": text}
            self._emit("response.reasoning_summary_text.done", body)
            body = {**where, "summary_index": 0, "part": part}
            self._emit("response.reasoning_summary_part.done", body)
        elif item.kind == "web_search_call":
            final = item.final or {}
        elif item.kind == "message":
            final = _message_item(item.id, text, status, self.hits)
            body = {**where, "content_index": 0, "text": text, "logprobs": []}
            self._emit("response.output_text.done", body)
            body = {**where, "content_index": 0, "part": final["content"][0]}
            self._emit("response.content_part.done", body)
        else:
            final = self.call_item(item.id, item.call_id, item.name, text, status)
            if status != "completed":
                pass
            elif item.kind == "custom_tool_call":
                body = {**where, "input": final["input"]}
                self._emit("response.custom_tool_call_input.done", body)
            elif item.kind == "function_call":
                body = {**where, "name": final["name"], "arguments": text}
                self._emit("response.function_call_arguments.done", body)
        self.output[item.index] = final
        self._emit("response.output_item.done", {"output_index": item.index, "item": final})

    # --- deltas ---------------------------------------------------------------------------

    def on_text(self, delta: deltas.TextDelta) -> None:
        if not delta.text:
            return
        item = self.item
        if item is None or item.kind != "message":
            added = {**_message_item("", "", "in_progress"), "content": []}
            item = self.open_item("message", "msg", added)
            body = {**item.where(), "content_index": 0, "part": dict(_OUTPUT_TEXT)}
            self._emit("response.content_part.added", body)
        item.pieces.append(delta.text)
        extra = b',"content_index":0,"logprobs":[]'
        self._delta(b"response.output_text.delta", item, extra, delta.text)

    def on_reasoning(self, delta: deltas.ReasoningDelta) -> None:
        item = self.item
        if not delta.text:  # the service's signature comes last, on its own
            if item is not None and item.kind == "reasoning":
                item.signature = delta.signature or item.signature
            return
        if item is None or item.kind != "reasoning":
            item = self.open_item("reasoning", "rs", _reasoning_item("", ""))
            part = {"type": "summary_text", "text": ""}
            body = {**item.where(), "summary_index": 0, "part": part}
            self._emit("response.reasoning_summary_part.added", body)
        item.pieces.append(delta.text)
        item.signature = delta.signature or item.signature
        self.reasoning.append(delta.text)
        extra = b',"summary_index":0'
        self._delta(b"response.reasoning_summary_text.delta", item, extra, delta.text)

    def on_tool_start(self, delta: deltas.ToolCallStart) -> None:
        call = self.call_item("", delta.id, delta.name, "", "in_progress")
        prefix = "ctc" if call["type"] == "custom_tool_call" else "fc"
        item = self.open_item(call["type"], prefix, call)
        item.call_id, item.name = delta.id, delta.name
        self.calls[delta.index] = item

    def on_tool_args(self, delta: deltas.ToolCallArgs) -> None:
        item = self.calls.get(delta.index)
        if item is not None and delta.fragment:
            item.pieces.append(delta.fragment)
            if item.kind == "function_call":  # the others are not JSON to the client
                kind = b"response.function_call_arguments.delta"
                self._delta(kind, item, b"", delta.fragment)

    def on_tool_end(self, delta: deltas.ToolCallEnd) -> None:
        if self.item is not None and self.item is self.calls.get(delta.index):
            self.close_item("completed")

    def on_search(self, delta: deltas.ServerToolUse) -> None:
        added = _search_item("", delta, None)
        item = self.open_item("web_search_call", "ws", added)
        item.final = {**added, "id": item.id}
        self._emit("response.web_search_call.in_progress", item.where())
        self._emit("response.web_search_call.searching", item.where())

    def on_search_result(self, delta: deltas.ServerToolResult) -> None:
        item = self.item
        if item is not None and item.kind == "web_search_call" and item.final:
            use = deltas.ServerToolUse(delta.id, item.final["action"]["query"])
            item.final = _search_item(item.id, use, delta)
            self.hits.extend(delta.hits)
            self._emit("response.web_search_call.completed", item.where())
            self.close_item("completed")

    def on_stop(self, stop: deltas.Stop) -> None:
        incomplete = INCOMPLETE_REASONS.get(stop.reason)
        status = "incomplete" if incomplete else "completed"
        self.close_item(status)
        final = usage_body(self.usage or deltas.Usage(0, 0), "".join(self.reasoning))
        body = self.body(status, self.output, final, incomplete=incomplete)
        self._emit(f"response.{status}", {"response": body})

    def render_error(self, error: GatewayError) -> bytes:
        body = {"code": error.openai_code, "message": error.message, "param": error.param}
        failed = self.body("failed", self.output, error=error)
        return self.event("error", body) + self.event("response.failed", {"response": failed})

    # --- not streamed ---------------------------------------------------------------------

    def whole(self, done: Completion) -> tuple[dict[str, Any], dict[str, str] | None]:
        incomplete = INCOMPLETE_REASONS.get(done.stop.reason)
        status = "incomplete" if incomplete else "completed"
        output: list[dict[str, Any]] = []
        if done.reasoning:
            rs = self.reasoning_item(_new_id("rs"), done.reasoning, done.reasoning_signature)
            output.append(rs)
        hits: list[deltas.SearchHit] = []
        uses: dict[str, deltas.ServerToolUse] = {}
        for step in done.server_tools:
            if isinstance(step, deltas.ServerToolUse):
                uses[step.id] = step
            elif step.id in uses:
                output.append(_search_item(_new_id("ws"), uses[step.id], step))
                hits.extend(step.hits)
        if done.text or not done.tool_calls:
            output.append(_message_item(_new_id("msg"), done.text, status, hits))
        output.extend(
            self.call_item(_new_id("fc"), call.id, call.name, call.arguments, "completed")
            for call in done.tool_calls
        )
        usage = usage_body(done.usage, done.reasoning)
        body = self.body(status, output, usage, incomplete=incomplete)
        return body, self.warning_headers()
