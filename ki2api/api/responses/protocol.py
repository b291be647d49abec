"""OpenAI Responses request on the wire → the internal :class:`ChatRequest`. Stateless.

The gateway stores no responses and no conversations: ``previous_response_id``,
``conversation``, ``item_reference`` items, stored ``prompt`` templates and ``background`` mode
are refused with a 400 that says so; send the whole conversation as ``input`` items instead
(``store`` is accepted and ignored). Only ``function`` tools exist (flat: ``{type, name,
description, parameters}``); built-in tools (web search, file search, computer use ...) are a 400.
``reasoning`` items in the input are dropped: the service takes no reasoning in history.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from ki2api.api.common import check_json_depth, parse_wire_model
from ki2api.api.openai_chat.protocol import EFFORT_BUDGETS
from ki2api.core.errors import InvalidRequest
from ki2api.core.request import (
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
)

ImageLoader = Callable[[str, str], Awaitable[ImagePart]]  # (url, param) → image

EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
IMAGE_IN_RESULT = "(image attached to this message)"
STATELESS = (
    "This gateway does not store responses or conversations, so {what} cannot be used: send "
    "the whole conversation in 'input' (earlier messages, function_call and "
    "function_call_output items) on every request."
)
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text")


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class ReasoningWire(_Wire):
    effort: str | None = None
    summary: str | None = None


class ResponsesWire(_Wire):
    model: str = Field(min_length=1, max_length=256)
    input: str | list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    reasoning: ReasoningWire | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    text: dict[str, Any] | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    background: bool | None = None
    # Accepted for compatibility and echoed where the response has the field.
    store: bool | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None


def parse_wire(body: Any) -> ResponsesWire:
    wire = parse_wire_model(body, ResponsesWire)
    for field, what in (
        ("previous_response_id", "previous_response_id"),
        ("conversation", "conversation"),
        ("prompt", "stored prompts ('prompt')"),
    ):
        if getattr(wire, field):
            raise InvalidRequest(STATELESS.format(what=what), param=field)
    if wire.background:
        raise InvalidRequest(
            "background mode needs stored responses, which this gateway does not keep.",
            param="background",
        )
    return wire


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}.{key} must be a string.", param=f"{where}.{key}")
    return value


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"_raw_arguments": raw}  # keep what the model sent; Kiro needs an object
    check_json_depth(value, "arguments")  # a JSON string escapes the body's own depth check
    return value if isinstance(value, dict) else {"value": value}


class _Converter:
    def __init__(self, load_image: ImageLoader) -> None:
        self.load_image = load_image

    async def image(self, part: dict[str, Any], where: str) -> ImagePart:
        url = part.get("image_url")
        if isinstance(url, dict):  # tolerate the chat-completions shape
            url = url.get("url")
        if not isinstance(url, str) or not url:
            if part.get("file_id"):
                raise InvalidRequest(
                    f"{where}: images by file_id are not supported (no file storage); send "
                    "image_url as an http(s) or data URL.",
                    param=where,
                )
            raise InvalidRequest(f"{where}.image_url must be a URL.", param=f"{where}.image_url")
        return await self.load_image(url, f"{where}.image_url")

    async def parts(self, content: Any, where: str) -> list[ContentPart]:
        if isinstance(content, str):
            return [TextPart(content)] if content else []
        if not isinstance(content, list):
            raise InvalidRequest(f"{where} must be a string or a list of parts.", param=where)
        parts: list[ContentPart] = []
        for j, part in enumerate(content):
            at = f"{where}[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if not isinstance(part, dict):
                raise InvalidRequest(f"{at} must be an object.", param=at)
            if kind in _TEXT_PARTS:
                text = _str(part, "text", at)
                if text:
                    parts.append(TextPart(text))
            elif kind == "refusal":
                parts.append(TextPart(_str(part, "refusal", at)))
            elif kind == "input_image":
                parts.append(await self.image(part, at))
            else:
                raise InvalidRequest(
                    f"{at}: content parts of type {kind!r} are not supported (input_text, "
                    "output_text, input_image).",
                    param=at,
                )
        return parts

    async def output(self, raw: Any, where: str, into: Message) -> str:
        """A function_call_output's ``output``: text, or parts whose images go on the turn."""
        if isinstance(raw, str):
            return raw
        texts: list[str] = []
        for part in await self.parts(raw, where):
            if isinstance(part, TextPart):
                texts.append(part.text)
            else:
                into.parts.append(part)
                texts.append(IMAGE_IN_RESULT)
        return "\n\n".join(texts)


async def _items(
    items: list[dict[str, Any]], convert: _Converter
) -> tuple[list[str], list[Message]]:
    system: list[str] = []
    messages: list[Message] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            parts = await convert.parts(item.get("content"), f"{where}.content")
            if role in ("system", "developer"):
                system.append("".join(p.text for p in parts if isinstance(p, TextPart)))
            elif role in ("user", "assistant"):
                messages.append(Message(role, parts))
            else:
                raise InvalidRequest(
                    f"{where}.role must be user, assistant, system or developer.",
                    param=f"{where}.role",
                )
        elif kind == "function_call":
            call = ToolCall(
                _str(item, "call_id", where),
                _str(item, "name", where),
                _arguments(item.get("arguments")),
            )
            messages.append(Message("assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            message = Message("user")
            content = await convert.output(item.get("output", ""), f"{where}.output", message)
            message.tool_results.append(ToolResult(_str(item, "call_id", where), content))
            messages.append(message)
        elif kind == "reasoning":
            continue  # see the module docstring
        elif kind == "item_reference":
            raise InvalidRequest(STATELESS.format(what="item_reference items"), param=where)
        else:
            raise InvalidRequest(
                f"{where}: input items of type {kind!r} are not supported (message, "
                "function_call, function_call_output, reasoning).",
                param=f"{where}.type",
            )
    return system, messages


def _tools(wire: ResponsesWire) -> list[ToolSpec]:
    tools: list[ToolSpec] = []
    for i, tool in enumerate(wire.tools or []):
        where = f"tools[{i}]"
        if tool.get("type") != "function":
            raise InvalidRequest(
                f"{where}: tools of type {tool.get('type')!r} are not supported; only "
                "'function' tools are (built-in tools run on OpenAI's servers).",
                param=f"{where}.type",
            )
        name = _str(tool, "name", where)
        if not name:
            raise InvalidRequest(f"{where}.name must not be empty.", param=f"{where}.name")
        description = tool.get("description")
        parameters = tool.get("parameters")
        tools.append(
            ToolSpec(
                name,
                description if isinstance(description, str) else "",
                parameters if isinstance(parameters, dict) else EMPTY_SCHEMA,
            )
        )
    return tools


def _tool_choice(raw: str | dict[str, Any] | None) -> ToolChoice:
    if raw is None or raw == "auto":
        return ToolChoice("auto")
    if raw in ("none", "required"):
        return ToolChoice(raw)  # type: ignore[arg-type]
    if isinstance(raw, dict) and raw.get("type") == "function":
        name = raw.get("name")
        if isinstance(name, str) and name:
            return ToolChoice("tool", name)
    raise InvalidRequest(
        "tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'name': ...}.",
        param="tool_choice",
    )


def _reasoning(wire: ResponsesWire) -> Reasoning | None:
    effort = wire.reasoning.effort if wire.reasoning else None
    if effort is None or effort == "none":
        return None
    effort = "high" if effort == "xhigh" else effort
    if effort not in EFFORT_BUDGETS:
        raise InvalidRequest(
            "reasoning.effort must be one of none, minimal, low, medium, high, xhigh.",
            param="reasoning.effort",
        )
    return Reasoning("enabled", budget_tokens=EFFORT_BUDGETS[effort])


def _response_schema(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = text.get("format") if text else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_object":
        return {}
    if fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        return schema if isinstance(schema, dict) else {}
    raise InvalidRequest(
        "text.format.type must be text, json_object or json_schema.", param="text.format"
    )


async def to_chat_request(wire: ResponsesWire, load_image: ImageLoader) -> ChatRequest:
    convert = _Converter(load_image)
    if isinstance(wire.input, str):
        system: list[str] = []
        messages = [Message("user", [TextPart(wire.input)] if wire.input else [])]
    else:
        system, messages = await _items(wire.input, convert)
    if not messages:
        raise InvalidRequest("input must hold at least one message.", param="input")
    return ChatRequest(
        model=wire.model,
        messages=messages,
        system="\n\n".join(t for t in [wire.instructions or "", *system] if t),
        tools=_tools(wire),
        tool_choice=_tool_choice(wire.tool_choice),
        max_tokens=wire.max_output_tokens,
        reasoning=_reasoning(wire),
        response_schema=_response_schema(wire.text),
        stream=wire.stream,
    )
