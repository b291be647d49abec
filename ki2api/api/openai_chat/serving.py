"""OpenAI chat completions: render the delta stream as chunks or as one completion.

No FastAPI here. The constant part of every chunk is serialised once per answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ki2api.api.common import LastPiece
from ki2api.api.errors import openai_error_body
from ki2api.model.deltas import (
    KEEP_ALIVE,
    ReasoningDelta,
    SearchHit,
    ServerToolResult,
    Stop,
    StopReason,
    StreamError,
    TextDelta,
    ToolCallArgs,
    ToolCallStart,
    Usage,
)
from ki2api.model.ids import hex_id
from ki2api.model.request import ChatRequest
from ki2api.pipeline.compliance import normalise_json_answer, tool_choice_problem
from ki2api.pipeline.gateway import Completion, DeltaStream, Gateway, collect
from ki2api.pipeline.websearch import citations, open_answer

log = logging.getLogger("ki2api.openai")

FINISH_REASONS = {
    StopReason.END_TURN: "stop",
    StopReason.STOP_SEQUENCE: "stop",
    StopReason.TOOL_USE: "tool_calls",
    StopReason.MAX_TOKENS: "length",
    StopReason.CONTENT_FILTERED: "content_filter",
}
DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
    }


class OpenChat:
    """An answer being served: its request, its delta stream, and what every chunk repeats."""

    __slots__ = ("request", "stream", "include_usage", "warnings", "id", "created", "_parts")

    stream: DeltaStream  # set once the gateway has opened the answer
    id: str
    created: int

    def __init__(self, request: ChatRequest, include_usage: bool) -> None:
        self.request = request
        self.include_usage = include_usage
        self.warnings: list[str] = []
        self._parts: tuple[bytes, bytes, bytes, str] | None = None

    def prepare(self) -> None:
        """Ids and the constant parts of every chunk. The gateway calls it while the upstream
        thinks (``Gateway.open``'s ``while_waiting``), off the way to the first token."""
        if self._parts is not None:
            return
        self.id = f"chatcmpl-{hex_id(24)}"
        self.created = int(time.time())
        model = orjson.dumps(self.request.model).decode()
        tail_usage = ',"usage":null' if self.include_usage else ""
        head = (
            f'data: {{"id":"{self.id}","object":"chat.completion.chunk","created":{self.created},'
            f'"model":{model},"system_fingerprint":null,"choices":[{{"index":0,"delta":'
        ).encode()
        open_tail = f',"logprobs":null,"finish_reason":null}}]{tail_usage}}}\n\n'.encode()
        first = head + b'{"role":"assistant","content":""}' + open_tail
        self._parts = (head, open_tail, first, tail_usage)

    def chunk_parts(self) -> tuple[bytes, bytes, bytes, str]:
        """``(head, open_tail, first, tail_usage)``: a chunk is head + delta JSON + open_tail;
        ``first`` is the role chunk."""
        if self._parts is None:
            self.prepare()
        assert self._parts is not None
        return self._parts


class ChatCompletionsService:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def open(
        self, request: ChatRequest, *, include_usage: bool, conversation_header: str | None
    ) -> OpenChat:
        chat = OpenChat(request, include_usage)
        chat.stream = await open_answer(
            self.gateway,
            request,
            conversation_header=conversation_header,
            while_waiting=chat.prepare,
        )
        chat.prepare()  # a no-op unless the gateway had no moment for it
        return chat

    async def sse(self, chat: OpenChat) -> AsyncIterator[bytes]:
        head, open_tail, first, tail_usage = chat.chunk_parts()
        dumps = orjson.dumps

        def chunk(delta: dict[str, Any]) -> bytes:
            return head + dumps(delta) + open_tail

        usage: Usage | None = None
        stream = chat.stream
        called: list[str] = []
        parts = [first]  # goes out with the first batch
        # Only a request with web search keeps its text: the citations point into it.
        said: list[str] | None = None if chat.request.web_search is None else []
        hits: list[SearchHit] = []
        try:
            async for batch in stream.batches():
                for delta in batch:
                    if isinstance(delta, TextDelta):
                        parts.append(chunk({"content": delta.text}))
                        if said is not None:
                            said.append(delta.text)
                    elif delta is KEEP_ALIVE:
                        parts.append(KEEPALIVE)
                    elif isinstance(delta, ReasoningDelta):
                        if delta.text:
                            parts.append(chunk({"reasoning_content": delta.text}))
                    elif isinstance(delta, ToolCallArgs):
                        call = {"index": delta.index, "function": {"arguments": delta.fragment}}
                        parts.append(chunk({"tool_calls": [call]}))
                    elif isinstance(delta, ToolCallStart):
                        called.append(delta.name)
                        call = {
                            "index": delta.index,
                            "id": delta.id,
                            "type": "function",
                            "function": {"name": delta.name, "arguments": ""},
                        }
                        parts.append(chunk({"tool_calls": [call]}))
                    elif isinstance(delta, Usage):
                        usage = delta
                    elif isinstance(delta, Stop):
                        if said is not None and hits:
                            notes = url_citations("".join(said), hits)
                            if notes:
                                parts.append(chunk({"annotations": notes}))
                        parts.append(
                            head
                            + b'{},"logprobs":null,"finish_reason":'
                            + dumps(FINISH_REASONS[delta.reason])
                            + f"}}]{tail_usage}}}\n\n".encode()
                        )
                        if chat.include_usage and usage is not None:
                            body = {
                                "id": chat.id,
                                "object": "chat.completion.chunk",
                                "created": chat.created,
                                "model": chat.request.model,
                                "system_fingerprint": None,
                                "choices": [],
                                "usage": usage_body(usage),
                            }
                            parts.append(b"data: " + dumps(body) + b"\n\n")
                        problem = tool_choice_problem(chat.request, called)
                        if problem:
                            log.warning("%s (%s)", problem, chat.id)
                            parts.append(f": warning: {problem}\n\n".encode())
                        parts.append(DONE)
                        yield LastPiece(b"".join(parts))
                        return
                    elif isinstance(delta, StreamError):
                        parts.append(b"data: " + dumps(openai_error_body(delta.error)) + b"\n\n")
                        yield LastPiece(b"".join(parts))
                        return
                    elif isinstance(delta, ServerToolResult):
                        hits.extend(delta.hits)
                if parts:
                    yield b"".join(parts)
                    parts = []
            if parts:
                yield b"".join(parts)
        finally:
            await stream.aclose()

    async def complete(self, chat: OpenChat) -> dict[str, Any]:
        done = await collect(chat.stream, close=False)
        problems = [tool_choice_problem(chat.request, [c.name for c in done.tool_calls])]
        if chat.request.response_schema is not None and done.text:
            done.text, problem = normalise_json_answer(done.text, chat.request.response_schema)
            problems.append(problem)
        chat.warnings = [p for p in problems if p]
        for problem in chat.warnings:
            log.warning("%s (%s)", problem, chat.id)
        return render_completion(chat, done)


def url_citations(text: str, hits: list[SearchHit]) -> list[dict[str, Any]]:
    """OpenAI's ``url_citation`` annotations for the result URLs the answer names."""
    return [
        {
            "type": "url_citation",
            "url_citation": {"start_index": a, "end_index": b, "url": h.url, "title": h.title},
        }
        for a, b, h in citations(text, hits)
    ]


def render_completion(chat: OpenChat, done: Completion) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": done.text or None}
    if done.reasoning:
        message["reasoning_content"] = done.reasoning
    if done.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in done.tool_calls
        ]
    message["refusal"] = None
    hits = [h for s in done.server_tools if isinstance(s, ServerToolResult) for h in s.hits]
    if hits:
        message["annotations"] = url_citations(done.text, hits)
    return {
        "id": chat.id,
        "object": "chat.completion",
        "created": chat.created,
        "model": chat.request.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": FINISH_REASONS[done.stop.reason],
            }
        ],
        "usage": usage_body(done.usage),
    }
