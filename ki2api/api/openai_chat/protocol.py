"""OpenAI chat request on the wire → the internal :class:`ChatRequest`.

Pydantic validates the shape at this edge only (unknown fields are accepted and ignored, as
OpenAI-compatible servers do); the conversion below maps roles onto Kiro's two.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from ki2api.api.common import check_json_depth, parse_wire_model
from ki2api.model.errors import InvalidRequest
from ki2api.model.request import (
    ChatRequest,
    ContentPart,
    ImagePart,
    Message,
    Reasoning,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolResult,
    ToolSpec,
    WebSearch,
)

ImageLoader = Callable[[str, str], Awaitable[ImagePart]]  # (url, param) → image

EFFORT_BUDGETS = {"minimal": 2048, "low": 4096, "medium": 16384, "high": 32768}


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionCallWire(_Wire):
    name: str = ""
    arguments: str | dict[str, Any] | None = None


class ToolCallWire(_Wire):
    id: str = ""
    type: str = "function"
    function: FunctionCallWire


class MessageWire(_Wire):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallWire] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCallWire | None = None


class FunctionWire(_Wire):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolWire(_Wire):
    type: str = "function"
    function: FunctionWire


class StreamOptionsWire(_Wire):
    include_usage: bool = False


class ChatCompletionWire(_Wire):
    model: str = Field(min_length=1, max_length=256)
    messages: list[MessageWire] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptionsWire | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    tools: list[ToolWire] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[FunctionWire] | None = None
    function_call: str | dict[str, Any] | None = None
    reasoning_effort: str | None = None
    response_format: dict[str, Any] | None = None
    # The gateway runs the searches (ki2api/pipeline/websearch.py); the options' fields are ignored.
    web_search_options: dict[str, Any] | None = None
    n: int | None = Field(default=None, ge=1)
    # Accepted for compatibility; the service has no such knobs (documented in the README).
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None


def parse_wire(body: Any) -> ChatCompletionWire:
    return parse_wire_model(body, ChatCompletionWire)


def _arguments(raw: str | dict[str, Any] | None) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not raw:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"_raw_arguments": raw}  # keep what the model sent; Kiro needs an object
    check_json_depth(value, "arguments")  # a JSON string escapes the body's own depth check
    return value if isinstance(value, dict) else {"value": value}


def _text_of(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text", "")) for p in content if p.get("type") in ("text", None))


async def _parts(
    content: str | list[dict[str, Any]] | None, param: str, load_image: ImageLoader
) -> list[ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    parts: list[ContentPart] = []
    for i, part in enumerate(content):
        kind = part.get("type")
        where = f"{param}[{i}]"
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequest(f"{where}.text must be a string.", param=where)
            if text:
                parts.append(TextPart(text))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise InvalidRequest(f"{where}.image_url.url must be a URL.", param=where)
            parts.append(await load_image(url, f"{where}.image_url"))
        else:
            raise InvalidRequest(
                f"{where}: content parts of type {kind!r} are not supported (text, image_url).",
                param=where,
            )
    return parts


def _tool_choice(wire: ChatCompletionWire) -> ToolChoice:
    raw = wire.tool_choice if wire.tool_choice is not None else wire.function_call
    if raw is None or raw == "auto":
        return ToolChoice("auto")
    if raw == "none":
        return ToolChoice("none")
    if raw == "required":
        return ToolChoice("required")
    if isinstance(raw, dict):
        name = raw.get("name") or (raw.get("function") or {}).get("name")
        if isinstance(name, str) and name:
            return ToolChoice("tool", name)
    raise InvalidRequest(
        "tool_choice must be 'none', 'auto', 'required' or {'type': 'function', "
        "'function': {'name': ...}}.",
        param="tool_choice",
    )


def _reasoning(effort: str | None) -> Reasoning | None:
    if effort is None or effort == "none":
        return None
    if effort not in EFFORT_BUDGETS:
        raise InvalidRequest(
            "reasoning_effort must be one of none, minimal, low, medium, high.",
            param="reasoning_effort",
        )
    return Reasoning("enabled", budget_tokens=EFFORT_BUDGETS[effort])


def _response_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {}
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) else {}
    raise InvalidRequest(
        "response_format.type must be text, json_object or json_schema.",
        param="response_format",
    )


async def to_chat_request(wire: ChatCompletionWire, load_image: ImageLoader) -> ChatRequest:
    if wire.n is not None and wire.n > 1:
        raise InvalidRequest("n > 1 is not supported: send n requests instead.", param="n")
    system: list[str] = []
    messages: list[Message] = []
    legacy_calls: dict[str, list[str]] = {}  # function name → ids of unanswered legacy calls
    for i, m in enumerate(wire.messages):
        param = f"messages[{i}].content"
        if m.role in ("system", "developer"):
            text = _text_of(m.content)
            if text:
                system.append(text)
        elif m.role == "user":
            messages.append(Message("user", await _parts(m.content, param, load_image)))
        elif m.role == "assistant":
            calls = [
                ToolCall(c.id or f"call_{i}_{j}", c.function.name, _arguments(c.function.arguments))
                for j, c in enumerate(m.tool_calls or [])
            ]
            if m.function_call is not None:
                call_id = f"call_legacy_{i}"
                legacy_calls.setdefault(m.function_call.name, []).append(call_id)
                calls.append(
                    ToolCall(call_id, m.function_call.name, _arguments(m.function_call.arguments))
                )
            parts: list[ContentPart] = [TextPart(t) for t in [_text_of(m.content)] if t]
            messages.append(Message("assistant", parts, tool_calls=calls))
        elif m.role == "tool":
            if not m.tool_call_id:
                raise InvalidRequest(
                    f"messages[{i}].tool_call_id is required for role 'tool'.",
                    param=f"messages[{i}].tool_call_id",
                )
            result = ToolResult(m.tool_call_id, _text_of(m.content))
            messages.append(Message("user", tool_results=[result]))
        else:  # legacy "function" result
            pending = legacy_calls.get(m.name or "", [])
            call_id = pending.pop(0) if pending else f"call_legacy_{m.name}_{i}"
            messages.append(
                Message("user", tool_results=[ToolResult(call_id, _text_of(m.content))])
            )
    functions = [t.function for t in wire.tools or []] + list(wire.functions or [])
    tools = [
        ToolSpec(f.name, f.description or "", f.parameters or {"type": "object", "properties": {}})
        for f in functions
    ]
    stop = [wire.stop] if isinstance(wire.stop, str) else list(wire.stop or [])
    return ChatRequest(
        model=wire.model,
        messages=messages,
        system="\n\n".join(system),
        tools=tools,
        tool_choice=_tool_choice(wire),
        max_tokens=wire.max_completion_tokens or wire.max_tokens,
        stop=stop,
        reasoning=_reasoning(wire.reasoning_effort),
        response_schema=_response_schema(wire.response_format),
        stream=wire.stream,
        web_search=None if wire.web_search_options is None else WebSearch(),
    )
