"""An OpenAI-compatible ``/v1/chat/completions`` over the same scripts, latency and cadence.

It exists for benchmarks: another gateway (LiteLLM) can sit in front of it, so its overhead is
measured on exactly the upstream Ki2API sees. The script's event-stream bytes are decoded and
re-rendered as chat-completion chunks (streamed) or one completion (not streamed); bytes that
cannot be rendered (a corrupt or cut frame) drop the connection, the nearest OpenAI-side fault.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from ki2api.kiro.wire.eventstream import EventStreamDecoder, EventStreamError
from ki2api.simulator.player import RenderError
from ki2api.simulator.scripts import HttpError

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def openai_error_body(status: int, message: str, code: str | None = None) -> bytes:
    error_type = _ERROR_TYPES.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    )


def _tokens(chars: int) -> int:
    return max(1, chars // 4)


class OpenAIRenderer:
    """Event-stream bytes in, OpenAI chat-completion chunks (or one completion) out."""

    def __init__(self, *, model: str, stream: bool, include_usage: bool, prompt_size: int) -> None:
        self.media_type = "text/event-stream" if stream else "application/json"
        self.buffered = not stream
        self.stream = stream
        self.include_usage = include_usage
        self.prompt_size = prompt_size
        self._decoder = EventStreamDecoder()
        self._head = {
            "id": f"chatcmpl-sim{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self._role_sent = False
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._tools: dict[str, dict[str, Any]] = {}  # toolUseId -> index, id, name, args, stopped

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk = {**self._head, "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def _deltas(self, event_type: str | None, payload: dict[str, Any]) -> list[dict[str, Any]]:
        if event_type == "assistantResponseEvent" and isinstance(payload.get("content"), str):
            self._text.append(payload["content"])
            return [{"content": payload["content"]}]
        if event_type == "reasoningContentEvent" and payload.get("text"):
            self._reasoning.append(str(payload["text"]))
            return [{"reasoning_content": payload["text"]}]
        if event_type != "toolUseEvent" or not isinstance(payload.get("toolUseId"), str):
            return []
        deltas: list[dict[str, Any]] = []
        tool = self._tools.get(payload["toolUseId"])
        if tool is None:
            tool = {
                "index": len(self._tools),
                "id": payload["toolUseId"],
                "name": str(payload.get("name", "")),
                "args": [],
                "stopped": False,
            }
            self._tools[tool["id"]] = tool
            function = {"name": tool["name"], "arguments": ""}
            call = {
                "index": tool["index"],
                "id": tool["id"],
                "type": "function",
                "function": function,
            }
            deltas.append({"tool_calls": [call]})
        if isinstance(payload.get("input"), str) and payload["input"]:
            tool["args"].append(payload["input"])
            args = {"index": tool["index"], "function": {"arguments": payload["input"]}}
            deltas.append({"tool_calls": [args]})
        if payload.get("stop"):
            tool["stopped"] = True
        return deltas

    def render(self, data: bytes) -> bytes:
        try:
            frames = self._decoder.feed(data)
        except EventStreamError as exc:
            raise RenderError(str(exc)) from exc
        out: list[bytes] = []
        for frame in frames:
            if frame.message_type != "event":
                raise RenderError(f"{frame.message_type} frame in the stream")
            try:
                payload = orjson.loads(frame.payload)
            except orjson.JSONDecodeError as exc:
                raise RenderError("frame payload is not JSON") from exc
            if not isinstance(payload, dict):
                continue
            for delta in self._deltas(frame.event_type, payload):
                if self.stream:
                    out.append(self._chunk(delta))
        return b"".join(out)

    def _finish_reason(self) -> str:
        if any(not t["stopped"] for t in self._tools.values()):
            return "length"
        return "tool_calls" if self._tools else "stop"

    def _usage(self) -> dict[str, int]:
        prompt = _tokens(self.prompt_size)
        completion = _tokens(
            len("".join(self._text)) + sum(len("".join(t["args"])) for t in self._tools.values())
        )
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def finish(self) -> bytes | None:
        if self._decoder.buffered:
            return None  # cut mid-frame
        reason = self._finish_reason()
        if self.stream:
            out = [self._chunk({}, reason)]
            if self.include_usage:
                out.append(
                    b"data: "
                    + orjson.dumps({**self._head, "choices": [], "usage": self._usage()})
                    + b"\n\n"
                )
            out.append(b"data: [DONE]\n\n")
            return b"".join(out)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self._text) or None}
        if self._reasoning:
            message["reasoning_content"] = "".join(self._reasoning)
        if self._tools:
            message["tool_calls"] = [
                {
                    "id": t["id"],
                    "type": "function",
                    "function": {"name": t["name"], "arguments": "".join(t["args"])},
                }
                for t in self._tools.values()
            ]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
        completion = {
            **self._head,
            "object": "chat.completion",
            "choices": [choice],
            "usage": self._usage(),
        }
        return orjson.dumps(completion)

    def error(self, step: HttpError) -> tuple[int, dict[str, str], bytes]:
        message = str(step.body.get("message", "upstream error"))
        reason = step.body.get("reason")
        body = openai_error_body(step.status, message, reason if isinstance(reason, str) else None)
        headers = {k: v for k, v in step.headers.items() if k.lower() == "retry-after"}
        return step.status, headers, body
