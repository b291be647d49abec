"""OpenAI chat completions: the delta stream as ``chat.completion.chunk`` events, or as one
``chat.completion`` (no I/O; see :mod:`ki2api.api.renderer`).

A streamed answer is a role chunk, one chunk per text, reasoning or tool-call delta, the finish
chunk, a usage chunk when the client asked (``stream_options.include_usage``), then ``[DONE]``;
an SSE comment while the upstream is silent, and an ``error`` object (then nothing) for a
failure after the first byte. The constant part of every chunk is serialised once per answer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from ki2api.api.errors import openai_error_body
from ki2api.api.renderer import Renderer
from ki2api.model import deltas
from ki2api.model.errors import GatewayError
from ki2api.model.ids import hex_id
from ki2api.model.request import ChatRequest
from ki2api.pipeline.compliance import normalise_json_answer, tool_choice_problem
from ki2api.pipeline.gateway import Completion
from ki2api.pipeline.websearch import citations

log = logging.getLogger("ki2api.openai")

FINISH_REASONS = {
    deltas.StopReason.END_TURN: "stop",
    deltas.StopReason.STOP_SEQUENCE: "stop",
    deltas.StopReason.TOOL_USE: "tool_calls",
    deltas.StopReason.MAX_TOKENS: "length",
    deltas.StopReason.CONTENT_FILTERED: "content_filter",
}
DONE = b"data: [DONE]\n\n"
WARNING_HEADER = "x-ki2api-warning"

dumps = orjson.dumps


def usage_body(usage: deltas.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
    }


def url_citations(text: str, hits: list[deltas.SearchHit]) -> list[dict[str, Any]]:
    """OpenAI's ``url_citation`` annotations for the result URLs the answer names."""
    return [
        {
            "type": "url_citation",
            "url_citation": {"start_index": a, "end_index": b, "url": h.url, "title": h.title},
        }
        for a, b, h in citations(text, hits)
    ]


class ChatRenderer(Renderer):
    """One answer to ``/v1/chat/completions``."""

    id: str
    created: int

    def __init__(self, request: ChatRequest, include_usage: bool) -> None:
        super().__init__()
        self.request = request
        self.include_usage = include_usage
        self.called: list[str] = []  # the tools called, for the tool_choice check
        # Only a request with web search keeps its text: the citations point into it.
        self.said: list[str] | None = None if request.web_search is None else []
        self.hits: list[deltas.SearchHit] = []
        # a chunk is head + delta JSON + open_tail; ``first`` is the role chunk
        self._head = self._open_tail = self._first = b""
        self._tail_usage = ""

    def prepare(self) -> None:
        if self._first:
            return
        self.id = f"chatcmpl-{hex_id(24)}"
        self.created = int(time.time())
        model = dumps(self.request.model).decode()
        self._tail_usage = ',"usage":null' if self.include_usage else ""
        self._head = (
            f'data: {{"id":"{self.id}","object":"chat.completion.chunk","created":{self.created},'
            f'"model":{model},"system_fingerprint":null,"choices":[{{"index":0,"delta":'
        ).encode()
        self._open_tail = (
            f',"logprobs":null,"finish_reason":null}}]{self._tail_usage}}}\n\n'.encode()
        )
        self._first = self._head + b'{"role":"assistant","content":""}' + self._open_tail

    def start(self) -> bytes:
        self.prepare()
        return self._first

    def _chunk(self, delta: dict[str, Any]) -> None:
        self.out.append(self._head + dumps(delta) + self._open_tail)

    def on_text(self, delta: deltas.TextDelta) -> None:
        self._chunk({"content": delta.text})
        if self.said is not None:
            self.said.append(delta.text)

    def on_reasoning(self, delta: deltas.ReasoningDelta) -> None:
        if delta.text:
            self._chunk({"reasoning_content": delta.text})

    def on_tool_start(self, delta: deltas.ToolCallStart) -> None:
        self.called.append(delta.name)
        call = {
            "index": delta.index,
            "id": delta.id,
            "type": "function",
            "function": {"name": delta.name, "arguments": ""},
        }
        self._chunk({"tool_calls": [call]})

    def on_tool_args(self, delta: deltas.ToolCallArgs) -> None:
        self._chunk(
            {"tool_calls": [{"index": delta.index, "function": {"arguments": delta.fragment}}]}
        )

    def on_search_result(self, delta: deltas.ServerToolResult) -> None:
        self.hits.extend(delta.hits)

    def on_stop(self, stop: deltas.Stop) -> None:
        out = self.out
        if self.said is not None and self.hits:
            notes = url_citations("".join(self.said), self.hits)
            if notes:
                self._chunk({"annotations": notes})
        out.append(
            self._head
            + b'{},"logprobs":null,"finish_reason":'
            + dumps(FINISH_REASONS[stop.reason])
            + f"}}]{self._tail_usage}}}\n\n".encode()
        )
        if self.include_usage and self.usage is not None:
            body = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.request.model,
                "system_fingerprint": None,
                "choices": [],
                "usage": usage_body(self.usage),
            }
            out.append(b"data: " + dumps(body) + b"\n\n")
        problem = tool_choice_problem(self.request, self.called)
        if problem:
            log.warning("%s (%s)", problem, self.id)
            out.append(f": warning: {problem}\n\n".encode())
        out.append(DONE)

    def render_error(self, error: GatewayError) -> bytes:
        return b"data: " + dumps(openai_error_body(error)) + b"\n\n"

    def whole(self, done: Completion) -> tuple[dict[str, Any], dict[str, str] | None]:
        request = self.request
        problems = [tool_choice_problem(request, [c.name for c in done.tool_calls])]
        if request.response_schema is not None and done.text:
            done.text, problem = normalise_json_answer(done.text, request.response_schema)
            problems.append(problem)
        warnings = [p for p in problems if p]
        for problem in warnings:
            log.warning("%s (%s)", problem, self.id)
        headers = {WARNING_HEADER: "; ".join(warnings)} if warnings else None
        return self.completion(done), headers

    def completion(self, done: Completion) -> dict[str, Any]:
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
        hits = [
            h for s in done.server_tools if isinstance(s, deltas.ServerToolResult) for h in s.hits
        ]
        if hits:
            message["annotations"] = url_citations(done.text, hits)
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.request.model,
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
