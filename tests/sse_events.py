"""Parse a raw SSE body into events, and tell how each client format's stream ended."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass
class SseEvent:
    event: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


def parse_sse(text: str) -> list[SseEvent]:
    events: list[SseEvent] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith(":"):
                continue  # a comment (keep-alive)
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append(SseEvent(name, "\n".join(data)))
    return events


def openai_stream_text(events: list[SseEvent]) -> str:
    out = []
    for e in events:
        if e.data == "[DONE]":
            continue
        body = e.json()
        for choice in body.get("choices") or []:
            out.append(choice["delta"].get("content") or "")
    return "".join(out)


def anthropic_stream_text(events: list[SseEvent]) -> str:
    out = []
    for e in events:
        body = e.json()
        if body.get("type") == "content_block_delta" and body["delta"]["type"] == "text_delta":
            out.append(body["delta"]["text"])
    return "".join(out)


def openai_stream_error(events: list[SseEvent]) -> dict[str, Any] | None:
    """The error a stream ended with, checking nothing followed it and it did not also 'stop'."""
    errors = [i for i, e in enumerate(events) if e.data != "[DONE]" and "error" in e.json()]
    if not errors:
        assert events and events[-1].data == "[DONE]", "stream neither finished nor failed"
        return None
    assert errors == [len(events) - 1], "the error event is the last one"
    finishes = [
        e for e in events[:-1] if any(c.get("finish_reason") for c in e.json().get("choices") or [])
    ]
    assert not finishes, "a failed stream must not also report a finish_reason"
    error: dict[str, Any] = events[-1].json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def anthropic_stream_error(events: list[SseEvent]) -> dict[str, Any] | None:
    names = [e.event for e in events]
    if "error" not in names:
        assert names and names[-1] == "message_stop", "stream neither finished nor failed"
        return None
    assert names.index("error") == len(names) - 1, "the error event is the last one"
    assert "message_stop" not in names and "message_delta" not in names
    body = events[-1].json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    error: dict[str, Any] = body["error"]
    return error
