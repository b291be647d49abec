"""OpenAI Responses request on the wire → the internal :class:`ChatRequest`. Stateless.

The gateway stores no responses and no conversations: ``previous_response_id``,
``conversation``, ``item_reference`` items, stored ``prompt`` templates and ``background`` mode
are refused with a 400 that says so; send the whole conversation as ``input`` items instead
(``store`` is accepted and ignored, as are ``prompt_cache_key``, ``client_metadata``, ``include``
apart from ``reasoning.encrypted_content``). Tools: ``function``, plus the kinds Codex sends
(``namespace``, ``custom``, ``local_shell``, ``web_search``; see :mod:`.tools`); other built-in
tools are dropped with a warning. ``reasoning`` items in the input are dropped (their sealed
content is checked, see :mod:`.sealed`): the service takes no reasoning in history. So are
``web_search_call`` items: the results they stood for are not in them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from ki2api.api.common import check_json_depth, parse_wire_model
from ki2api.api.openai_chat.protocol import EFFORT_BUDGETS
from ki2api.api.responses.sealed import ReasoningSeal
from ki2api.api.responses.tools import (
    ToolKinds,
    check_choice_offered,
    flat_name,
    parse_tools,
)
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
    WebSearch,
)

log = logging.getLogger("ki2api.responses")

ImageLoader = Callable[[str, str], Awaitable[ImagePart]]  # (url, param) → image

IMAGE_IN_RESULT = "(image attached to this message)"
STATELESS = (
    "This gateway does not store responses or conversations, so {what} cannot be used: send "
    "the whole conversation in 'input' (earlier messages, function_call and "
    "function_call_output items) on every request."
)
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text")
# Items standing for built-in tools that ran on the provider's side: nothing to replay.
_SKIPPED_ITEMS = frozenset({"web_search_call", "tool_search_call", "tool_search_output"})


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
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    client_metadata: dict[str, Any] | None = None


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


def _output_text(raw: Any) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, dict) and isinstance(raw.get("output"), str):
        return str(raw["output"])
    return orjson.dumps(raw).decode()


async def _items(
    items: list[dict[str, Any]], convert: _Converter, seal: ReasoningSeal | None = None
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
                flat_name(_str(item, "name", where), item.get("namespace")),
                _arguments(item.get("arguments")),
            )
            messages.append(Message("assistant", tool_calls=[call]))
        elif kind == "custom_tool_call":
            text = item.get("input")
            call = ToolCall(
                _str(item, "call_id", where),
                _str(item, "name", where),
                {"input": text if isinstance(text, str) else ""},
            )
            messages.append(Message("assistant", tool_calls=[call]))
        elif kind == "local_shell_call":
            action = item.get("action")
            action = action if isinstance(action, dict) else {}
            args = {"command": action.get("command") or []}
            if isinstance(action.get("working_directory"), str):
                args["workdir"] = action["working_directory"]
            call_id = item.get("call_id") or item.get("id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequest(f"{where}.call_id must be a string.", param=where)
            shell = ToolCall(call_id, "local_shell", args)
            messages.append(Message("assistant", tool_calls=[shell]))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            message = Message("user")
            content = await convert.output(item.get("output", ""), f"{where}.output", message)
            message.tool_results.append(ToolResult(_str(item, "call_id", where), content))
            messages.append(message)
        elif kind == "local_shell_call_output":
            content = _output_text(item.get("output", ""))
            result = ToolResult(_str(item, "call_id", where), content)
            messages.append(Message("user", tool_results=[result]))
        elif kind == "reasoning":
            if seal is not None and "encrypted_content" in item:
                if seal.open(item.get("encrypted_content")) is None:
                    log.info("%s: encrypted reasoning not sealed by this gateway; ignored", where)
            continue  # see the module docstring
        elif kind in _SKIPPED_ITEMS:
            continue
        elif kind == "item_reference":
            raise InvalidRequest(STATELESS.format(what="item_reference items"), param=where)
        else:
            raise InvalidRequest(
                f"{where}: input items of type {kind!r} are not supported (message, "
                "function_call, function_call_output, reasoning).",
                param=f"{where}.type",
            )
    return system, messages


def _tool_choice(raw: str | dict[str, Any] | None, kinds: ToolKinds) -> ToolChoice:
    if raw is None or raw == "auto":
        return ToolChoice("auto")
    if raw in ("none", "required"):
        return ToolChoice(raw)  # type: ignore[arg-type]
    check_choice_offered(raw, kinds)
    if isinstance(raw, dict) and raw.get("type") in ("function", "custom"):
        name = raw.get("name")
        if isinstance(name, str) and name:
            return ToolChoice("tool", flat_name(name, raw.get("namespace")))
    if isinstance(raw, dict) and raw.get("type") == "local_shell" and kinds.local_shell:
        return ToolChoice("tool", "local_shell")
    raise InvalidRequest(
        "tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'name': ...}.",
        param="tool_choice",
    )


def _web_search(tool: dict[str, Any]) -> WebSearch:
    filters = tool.get("filters")
    allowed = filters.get("allowed_domains") if isinstance(filters, dict) else None
    domains = tuple(d for d in allowed if isinstance(d, str)) if isinstance(allowed, list) else ()
    return WebSearch(allowed_domains=domains)


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
    return (await parse_request(wire, load_image))[0]


async def parse_request(
    wire: ResponsesWire, load_image: ImageLoader, seal: ReasoningSeal | None = None
) -> tuple[ChatRequest, ToolKinds]:
    """The internal request, and what the answer needs to render calls as the client's
    item types."""
    convert = _Converter(load_image)
    tools, kinds = parse_tools(wire.tools)
    if isinstance(wire.input, str):
        system: list[str] = []
        messages = [Message("user", [TextPart(wire.input)] if wire.input else [])]
    else:
        system, messages = await _items(wire.input, convert, seal)
    if not messages:
        raise InvalidRequest("input must hold at least one message.", param="input")
    request = ChatRequest(
        model=wire.model,
        messages=messages,
        system="\n\n".join(t for t in [wire.instructions or "", *system] if t),
        tools=tools,
        tool_choice=_tool_choice(wire.tool_choice, kinds),
        max_tokens=wire.max_output_tokens,
        reasoning=_reasoning(wire),
        response_schema=_response_schema(wire.text),
        stream=wire.stream,
    )
    if kinds.web_search is not None:
        request.web_search = _web_search(kinds.web_search)
    return request, kinds
