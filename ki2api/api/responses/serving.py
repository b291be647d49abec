"""OpenAI Responses: render the delta stream as response events or as one response object.

No FastAPI here. Output items follow the order of the deltas (typically a ``reasoning`` item,
a ``message`` item, then ``function_call`` items), one item open at a time. A streamed answer::

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
arguments are never reported as done) and the response as ``incomplete``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ki2api.api.common import HeadedPiece
from ki2api.api.responses.protocol import ResponsesWire
from ki2api.api.responses.sealed import ReasoningSeal
from ki2api.api.responses.tools import ToolKinds, custom_input, local_shell_action
from ki2api.model.deltas import (
    KEEP_ALIVE,
    ReasoningDelta,
    SearchHit,
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
from ki2api.model.errors import GatewayError
from ki2api.model.ids import hex_id
from ki2api.model.request import ChatRequest
from ki2api.model.tokens import estimate_tokens
from ki2api.pipeline.gateway import Completion, DeltaStream, Gateway, collect
from ki2api.pipeline.websearch import citations, open_answer

log = logging.getLogger("ki2api.responses")
KEEPALIVE = b": keep-alive\n\n"
INCOMPLETE_REASONS = {
    StopReason.MAX_TOKENS: "max_output_tokens",
    StopReason.CONTENT_FILTERED: "content_filter",
}

dumps = orjson.dumps


def _new_id(prefix: str) -> str:
    return f"{prefix}_{hex_id()}"


def usage_body(usage: Usage, reasoning: str) -> dict[str, Any]:
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


@dataclass(slots=True)
class OpenResponse:
    request: ChatRequest
    wire: ResponsesWire
    stream: DeltaStream
    id: str
    created_at: int
    kinds: ToolKinds = field(default_factory=ToolKinds)
    seal: ReasoningSeal | None = None  # set when the client asked for encrypted reasoning

    def warning_headers(self) -> dict[str, str] | None:
        warnings = self.kinds.warnings()
        return {WARNING_HEADER: "; ".join(warnings)} if warnings else None

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


def _annotations(text: str, hits: list[SearchHit]) -> list[dict[str, Any]]:
    if not hits:
        return []
    return [
        {"type": "url_citation", "start_index": a, "end_index": b, "url": h.url, "title": h.title}
        for a, b, h in citations(text, hits)
    ]


def _search_item(
    item_id: str, use: ServerToolUse, result: ServerToolResult | None
) -> dict[str, Any]:
    action: dict[str, Any] = {"type": "search", "query": use.query}
    status = "in_progress"
    if result is not None:
        status = "completed" if result.error is None else "failed"
        action["sources"] = [{"type": "url", "url": h.url} for h in result.hits]
    return {"type": "web_search_call", "id": item_id, "status": status, "action": action}


def _message_item(
    item_id: str, text: str, status: str, hits: list[SearchHit] | None = None
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
    kind: str  # reasoning | message | function_call | custom_tool_call | local_shell_call
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


class _Events:
    """Numbers the events and keeps the output items of one streamed response."""

    def __init__(self, resp: OpenResponse) -> None:
        self.resp = resp
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.open: _Item | None = None
        self.calls: dict[int, _Item] = {}  # tool call index → its item
        self.reasoning: list[str] = []
        self.hits: list[SearchHit] = []  # of the searches the gateway ran, for citations

    def event(self, kind: str, body: dict[str, Any]) -> bytes:
        body = {"type": kind, **body, "sequence_number": self.seq}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + dumps(body) + b"\n\n"

    def delta(self, kind: bytes, item: _Item, extra: bytes, text: str) -> bytes:
        seq = self.seq
        self.seq += 1
        return (
            b"event: " + kind + b'\ndata: {"type":"' + kind + b'",' + item.head + extra
            + b',"delta":' + dumps(text) + b',"sequence_number":%d}\n\n' % seq
        )  # fmt: skip

    def start(self, kind: str, prefix: str, item: dict[str, Any]) -> tuple[_Item, list[bytes]]:
        out = self.close("completed")
        index = len(self.output)
        item_id = _new_id(prefix)
        item["id"] = item_id
        self.output.append(item)
        head = b'"item_id":' + dumps(item_id) + b',"output_index":%d' % index
        self.open = _Item(kind, index, item_id, head)
        out.append(self.event("response.output_item.added", {"output_index": index, "item": item}))
        return self.open, out

    def close(self, status: str) -> list[bytes]:
        item, self.open = self.open, None
        if item is None:
            return []
        text = "".join(item.pieces)
        where = item.where()
        out: list[bytes] = []
        if item.kind == "reasoning":
            final = self.resp.reasoning_item(item.id, text, item.signature)
            part = {"type": "summary_text", "text": text}
            out.append(
                self.event(
                    "response.reasoning_summary_text.done",
                    {**where, "summary_index": 0, "text": text},
                )
            )
            out.append(
                self.event(
                    "response.reasoning_summary_part.done",
                    {**where, "summary_index": 0, "part": part},
                )
            )
        elif item.kind == "web_search_call":
            final = item.final or {}
        elif item.kind == "message":
            final = _message_item(item.id, text, status, self.hits)
            out.append(
                self.event(
                    "response.output_text.done",
                    {**where, "content_index": 0, "text": text, "logprobs": []},
                )
            )
            out.append(
                self.event(
                    "response.content_part.done",
                    {**where, "content_index": 0, "part": final["content"][0]},
                )
            )
        else:
            final = self.resp.call_item(item.id, item.call_id, item.name, text, status)
            if status != "completed":
                pass
            elif item.kind == "custom_tool_call":
                body = {**where, "input": final["input"]}
                out.append(self.event("response.custom_tool_call_input.done", body))
            elif item.kind == "function_call":
                out.append(
                    self.event(
                        "response.function_call_arguments.done",
                        {**where, "name": final["name"], "arguments": text},
                    )
                )
        self.output[item.index] = final
        out.append(
            self.event("response.output_item.done", {"output_index": item.index, "item": final})
        )
        return out


class ResponsesService:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.seal = ReasoningSeal(gateway.settings.reasoning_secret)

    async def open(
        self,
        request: ChatRequest,
        wire: ResponsesWire,
        *,
        conversation_header: str | None,
        kinds: ToolKinds | None = None,
    ) -> OpenResponse:
        kinds = kinds or ToolKinds()
        for warning in kinds.warnings():
            log.warning("responses: %s", warning)
        stream = await open_answer(self.gateway, request, conversation_header=conversation_header)
        encrypted = bool(wire.include) and "reasoning.encrypted_content" in (wire.include or [])
        return OpenResponse(
            request=request,
            wire=wire,
            stream=stream,
            id=_new_id("resp"),
            created_at=int(time.time()),
            kinds=kinds,
            seal=self.seal if encrypted else None,
        )

    async def sse(self, resp: OpenResponse) -> AsyncIterator[bytes]:
        ev = _Events(resp)
        usage: Usage | None = None
        stream = resp.stream
        try:
            start = resp.body("in_progress", [])
            created = ev.event("response.created", {"response": start})
            headers = resp.warning_headers()
            yield created if headers is None else HeadedPiece.with_headers(created, headers)
            yield ev.event("response.in_progress", {"response": start})
            async for delta in stream:
                if delta is KEEP_ALIVE:
                    yield KEEPALIVE
                elif isinstance(delta, TextDelta):
                    if not delta.text:
                        continue
                    item = ev.open
                    if item is None or item.kind != "message":
                        added = {**_message_item("", "", "in_progress"), "content": []}
                        item, out = ev.start("message", "msg", added)
                        part = {
                            "type": "output_text",
                            "text": "",
                            "annotations": [],
                            "logprobs": [],
                        }
                        body = {**item.where(), "content_index": 0, "part": part}
                        out.append(ev.event("response.content_part.added", body))
                        for chunk in out:
                            yield chunk
                    item.pieces.append(delta.text)
                    yield ev.delta(
                        b"response.output_text.delta",
                        item,
                        b',"content_index":0,"logprobs":[]',
                        delta.text,
                    )
                elif isinstance(delta, ReasoningDelta):
                    if not delta.text:
                        continue
                    item = ev.open
                    if item is None or item.kind != "reasoning":
                        item, out = ev.start("reasoning", "rs", _reasoning_item("", ""))
                        part = {"type": "summary_text", "text": ""}
                        body = {**item.where(), "summary_index": 0, "part": part}
                        out.append(ev.event("response.reasoning_summary_part.added", body))
                        for chunk in out:
                            yield chunk
                    item.pieces.append(delta.text)
                    item.signature = delta.signature or item.signature
                    ev.reasoning.append(delta.text)
                    yield ev.delta(
                        b"response.reasoning_summary_text.delta",
                        item,
                        b',"summary_index":0',
                        delta.text,
                    )
                elif isinstance(delta, ToolCallStart):
                    call = resp.call_item("", delta.id, delta.name, "", "in_progress")
                    prefix = "ctc" if call["type"] == "custom_tool_call" else "fc"
                    item, out = ev.start(call["type"], prefix, call)
                    item.call_id, item.name = delta.id, delta.name
                    ev.calls[delta.index] = item
                    for chunk in out:
                        yield chunk
                elif isinstance(delta, ToolCallArgs):
                    item = ev.calls.get(delta.index)
                    if item is not None and delta.fragment:
                        item.pieces.append(delta.fragment)
                        if item.kind == "function_call":  # the others are not JSON to the client
                            yield ev.delta(
                                b"response.function_call_arguments.delta",
                                item,
                                b"",
                                delta.fragment,
                            )
                elif isinstance(delta, ToolCallEnd):
                    if ev.open is not None and ev.open is ev.calls.get(delta.index):
                        for chunk in ev.close("completed"):
                            yield chunk
                elif isinstance(delta, Usage):
                    usage = delta
                elif isinstance(delta, Stop):
                    incomplete = INCOMPLETE_REASONS.get(delta.reason)
                    for chunk in ev.close("incomplete" if incomplete else "completed"):
                        yield chunk
                    final = usage_body(usage or Usage(0, 0), "".join(ev.reasoning))
                    status = "incomplete" if incomplete else "completed"
                    body = resp.body(status, ev.output, final, incomplete=incomplete)
                    yield ev.event(f"response.{status}", {"response": body})
                    return
                elif isinstance(delta, ServerToolUse):
                    added = _search_item("", delta, None)
                    item, out = ev.start("web_search_call", "ws", added)
                    item.final = {**added, "id": item.id}
                    out.append(ev.event("response.web_search_call.in_progress", item.where()))
                    out.append(ev.event("response.web_search_call.searching", item.where()))
                    for chunk in out:
                        yield chunk
                elif isinstance(delta, ServerToolResult):
                    item = ev.open
                    if item is not None and item.kind == "web_search_call" and item.final:
                        use = ServerToolUse(delta.id, item.final["action"]["query"])
                        item.final = _search_item(item.id, use, delta)
                        ev.hits.extend(delta.hits)
                        yield ev.event("response.web_search_call.completed", item.where())
                        for chunk in ev.close("completed"):
                            yield chunk
                elif isinstance(delta, StreamError):
                    error = delta.error
                    yield ev.event(
                        "error",
                        {"code": error.openai_code, "message": error.message, "param": error.param},
                    )
                    body = resp.body("failed", ev.output, error=error)
                    yield ev.event("response.failed", {"response": body})
                    return
        finally:
            await stream.aclose()

    async def complete(self, resp: OpenResponse) -> dict[str, Any]:
        return render_response(resp, await collect(resp.stream, close=False))


def render_response(resp: OpenResponse, done: Completion) -> dict[str, Any]:
    incomplete = INCOMPLETE_REASONS.get(done.stop.reason)
    status = "incomplete" if incomplete else "completed"
    output: list[dict[str, Any]] = []
    if done.reasoning:
        rs = resp.reasoning_item(_new_id("rs"), done.reasoning, done.reasoning_signature)
        output.append(rs)
    hits: list[SearchHit] = []
    uses: dict[str, ServerToolUse] = {}
    for step in done.server_tools:
        if isinstance(step, ServerToolUse):
            uses[step.id] = step
        elif step.id in uses:
            output.append(_search_item(_new_id("ws"), uses[step.id], step))
            hits.extend(step.hits)
    if done.text or not done.tool_calls:
        output.append(_message_item(_new_id("msg"), done.text, status, hits))
    output.extend(
        resp.call_item(_new_id("fc"), call.id, call.name, call.arguments, "completed")
        for call in done.tool_calls
    )
    usage = usage_body(done.usage, done.reasoning)
    return resp.body(status, output, usage, incomplete=incomplete)
