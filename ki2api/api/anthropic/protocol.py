"""Anthropic Messages request on the wire → the internal :class:`ChatRequest`.

Pydantic checks the top-level shape (unknown fields are accepted and ignored, as Anthropic's
own ``metadata``, ``temperature``, ``top_p``, ``top_k`` and ``service_tier`` are here); content
blocks are converted one by one below, each refusal naming the block's path.

Claude Code's extras are accepted: ``context_management`` (its ``clear_thinking`` edit is what
happens anyway, since thinking never goes upstream; other edits are ignored), ``cache_control``
on any block or tool, ``metadata``, a tool's ``defer_loading`` (every tool is sent in full) and
``tool_reference`` blocks in tool results (told to the model as text). ``thinking`` maps to
Kiro's thinking tags (``enabled`` with ``budget_tokens``, or ``adaptive`` with
``output_config.effort``); its ``display`` is ignored.

What cannot travel to Kiro is handled openly: ``thinking`` / ``redacted_thinking`` blocks in the
history are dropped (the service takes no reasoning in history, and as text the model would echo
it); images inside a ``tool_result`` ride on the user turn that carries the result (Kiro's tool
results hold text only); the web-search server tool (``web_search_…``) is run by the gateway
(:mod:`.server_tools`, :mod:`ki2api.pipeline.websearch`) and its blocks in the history become text;
other server tools (``bash_…``, ``code_execution_…`` and the like) and non-text documents are
refused with a 400 that says so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ki2api.api.anthropic.server_tools import history_text, is_web_search, web_search_spec
from ki2api.api.common import parse_wire_model
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
from ki2api.pipeline.images import decode_base64_image
from ki2api.pipeline.websearch import direct_query

ImageLoader = Callable[[str, str], Awaitable[ImagePart]]  # (url, param) → image
Base64Loader = Callable[[str, str, str], Awaitable[ImagePart]]  # (media type, data, param)

EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
IMAGE_IN_RESULT = "(image attached to this message)"
# Anthropic's effort levels → the internal ones ("max" has no Kiro counterpart above high).
EFFORTS: dict[str, Literal["low", "medium", "high"]] = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "high",
}


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class MessageWire(_Wire):
    # "system" is not Anthropic's, but clients that mix formats send it: its text joins `system`.
    role: Literal["user", "assistant", "system"]
    content: str | list[dict[str, Any]]


class ToolWire(_Wire):
    type: str | None = None
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class ToolChoiceWire(_Wire):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingWire(_Wire):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=1)


class OutputConfigWire(_Wire):
    effort: Literal["low", "medium", "high", "max"] | None = None


class CountTokensWire(_Wire):
    """``/v1/messages/count_tokens``: the same body without ``max_tokens``."""

    model: str = Field(min_length=1, max_length=256)
    messages: list[MessageWire] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[ToolWire] | None = None
    tool_choice: ToolChoiceWire | None = None
    thinking: ThinkingWire | None = None
    output_config: OutputConfigWire | None = None
    # Accepted and ignored (see the module docstring): context edits happen here anyway.
    context_management: dict[str, Any] | None = None


class MessagesWire(CountTokensWire):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    stream: bool = False
    metadata: dict[str, Any] | None = None
    # Accepted for compatibility; the service has no such knobs.
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None


def parse_wire(body: Any) -> MessagesWire:
    return parse_wire_model(body, MessagesWire)


def parse_count_wire(body: Any) -> CountTokensWire:
    return parse_wire_model(body, CountTokensWire)


def _str(block: dict[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}.{key} must be a string.", param=f"{where}.{key}")
    return value


class _Converter:
    """Turns content blocks into parts, calls and results; images go to the loaders as they
    come (the routers hand placeholders out and load them together, see ki2api.api.images)."""

    def __init__(
        self, load_image: ImageLoader, max_image_bytes: int, load_base64: Base64Loader | None
    ) -> None:
        self.load_image = load_image
        self.max_image_bytes = max_image_bytes
        self.load_base64 = load_base64

    async def image(self, block: dict[str, Any], where: str) -> ImagePart:
        source = block.get("source")
        if not isinstance(source, dict):
            raise InvalidRequest(f"{where}.source must be an object.", param=f"{where}.source")
        kind = source.get("type")
        param = f"{where}.source"
        if kind == "base64":
            media_type = _str(source, "media_type", param)
            data = _str(source, "data", param)
            if self.load_base64 is not None:
                return await self.load_base64(media_type, data, param)
            return decode_base64_image(
                media_type, data, max_bytes=self.max_image_bytes, param=param
            )
        if kind == "url":
            return await self.load_image(_str(source, "url", param), param)
        raise InvalidRequest(
            f"{param}.type {kind!r} is not supported for images (base64, url).", param=param
        )

    def document(self, block: dict[str, Any], where: str) -> str:
        """Plain-text documents become text; other kinds cannot reach the model."""
        source = block.get("source")
        kind = source.get("type") if isinstance(source, dict) else None
        title = block.get("title")
        head = f"[Document: {title}]\n" if isinstance(title, str) and title else ""
        if isinstance(source, dict) and kind == "text":
            return head + _str(source, "data", f"{where}.source")
        if isinstance(source, dict) and kind == "content":
            inner = source.get("content")
            if isinstance(inner, str):
                return head + inner
            if isinstance(inner, list) and all(
                isinstance(b, dict) and b.get("type") == "text" for b in inner
            ):
                return head + "\n\n".join(_str(b, "text", f"{where}.source") for b in inner)
        raise InvalidRequest(
            f"{where}: only plain-text documents (source type 'text' or text 'content') are "
            f"supported; the service cannot read {kind!r} documents (e.g. PDF).",
            param=where,
        )

    async def result(
        self, block: dict[str, Any], where: str, images: list[ContentPart]
    ) -> ToolResult:
        call_id = _str(block, "tool_use_id", where)
        content = block.get("content")
        is_error = block.get("is_error") is True
        if content is None or isinstance(content, str):
            return ToolResult(call_id, content or "", is_error)
        if not isinstance(content, list):
            raise InvalidRequest(
                f"{where}.content must be a string or a list of blocks.", param=f"{where}.content"
            )
        texts: list[str] = []
        for j, inner in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = inner.get("type") if isinstance(inner, dict) else None
            if not isinstance(inner, dict):
                raise InvalidRequest(f"{at} must be an object.", param=at)
            if kind == "text":
                texts.append(_str(inner, "text", at))
            elif kind == "image":
                images.append(await self.image(inner, at))
                texts.append(IMAGE_IN_RESULT)
            elif kind == "document":
                texts.append(self.document(inner, at))
            elif kind == "search_result":
                texts.append(_search_result_text(inner))
            elif kind == "tool_reference":
                # Tool search (advanced-tool-use) loading a deferred tool: Kiro already has
                # every tool in full, so the model only needs to know it may call it now.
                name = inner.get("tool_name")
                texts.append(f"Tool {name!s} is loaded: call it directly.")
            else:
                raise InvalidRequest(
                    f"{at}: blocks of type {kind!r} are not supported in a tool_result "
                    "(text, image, document, search_result, tool_reference).",
                    param=at,
                )
        return ToolResult(call_id, "\n\n".join(t for t in texts if t), is_error)

    async def message(self, role: str, content: str | list[dict[str, Any]], i: int) -> Message:
        msg = Message("assistant" if role == "assistant" else "user")
        if isinstance(content, str):
            if content:
                msg.parts.append(TextPart(content))
            return msg
        for j, block in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = block.get("type")
            if kind == "text":
                text = _str(block, "text", where)
                if text:
                    msg.parts.append(TextPart(text))
            elif kind == "image":
                msg.parts.append(await self.image(block, where))
            elif kind == "document":
                msg.parts.append(TextPart(self.document(block, where)))
            elif kind == "search_result":
                msg.parts.append(TextPart(_search_result_text(block)))
            elif kind == "tool_use":
                arguments = block.get("input")
                msg.tool_calls.append(
                    ToolCall(
                        _str(block, "id", where),
                        _str(block, "name", where),
                        arguments if isinstance(arguments, dict) else {},
                    )
                )
            elif kind == "tool_result":
                msg.tool_results.append(await self.result(block, where, msg.parts))
            elif kind in ("thinking", "redacted_thinking"):
                continue  # reasoning cannot go upstream in history (see the module docstring)
            elif kind in ("server_tool_use", "web_search_tool_result"):
                msg.parts.append(TextPart(history_text(block) or ""))
            else:
                raise InvalidRequest(
                    f"{where}: content blocks of type {kind!r} are not supported (text, image, "
                    "document, tool_use, tool_result, thinking).",
                    param=where,
                )
        return msg


def _search_result_text(block: dict[str, Any]) -> str:
    title = block.get("title") if isinstance(block.get("title"), str) else ""
    inner = block.get("content")
    texts = (
        [b.get("text", "") for b in inner if isinstance(b, dict)] if isinstance(inner, list) else []
    )
    body = "\n".join(t for t in texts if isinstance(t, str))
    source = block.get("source") if isinstance(block.get("source"), str) else ""
    return f"[Search result: {title} ({source})]\n{body}"


def system_text(system: str | list[dict[str, Any]] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    texts: list[str] = []
    for i, block in enumerate(system):
        if block.get("type") != "text":
            raise InvalidRequest(
                f"system[{i}]: only text blocks are allowed in system.", param=f"system[{i}]"
            )
        texts.append(_str(block, "text", f"system[{i}]"))
    return "\n\n".join(t for t in texts if t)


def _tools(wire: CountTokensWire) -> list[ToolSpec]:
    tools: list[ToolSpec] = []
    for i, tool in enumerate(wire.tools or []):
        if is_web_search(tool.type):
            continue  # run by the gateway: see _web_search
        if tool.type not in (None, "custom"):
            raise InvalidRequest(
                f"tools[{i}]: tools of type {tool.type!r} (Anthropic server or built-in tools) "
                "are not supported by this gateway; declare client tools with name, "
                "description and input_schema.",
                param=f"tools[{i}].type",
            )
        schema = tool.input_schema if tool.input_schema is not None else EMPTY_SCHEMA
        tools.append(ToolSpec(tool.name, tool.description or "", schema))
    return tools


def _web_search(wire: CountTokensWire) -> WebSearch | None:
    for i, tool in enumerate(wire.tools or []):
        if is_web_search(tool.type):
            return web_search_spec(tool.model_extra or {}, f"tools[{i}]")
    return None


def _tool_choice(wire: CountTokensWire) -> ToolChoice:
    choice = wire.tool_choice
    if choice is not None and choice.type == "tool" and _is_server_tool(wire, choice.name):
        return ToolChoice("auto")  # the gateway runs that tool itself
    if choice is None or choice.type == "auto":
        return ToolChoice("auto")
    if choice.type == "none":
        return ToolChoice("none")
    if choice.type == "any":
        return ToolChoice("required")
    if not choice.name:
        raise InvalidRequest(
            "tool_choice.name is required when tool_choice.type is 'tool'.",
            param="tool_choice.name",
        )
    return ToolChoice("tool", choice.name)


def _is_server_tool(wire: CountTokensWire, name: str | None) -> bool:
    return any(is_web_search(t.type) and t.name == name for t in wire.tools or [])


def _reasoning(wire: CountTokensWire) -> Reasoning | None:
    thinking = wire.thinking
    if thinking is None or thinking.type == "disabled":
        return None
    effort = wire.output_config.effort if wire.output_config else None
    if thinking.type == "adaptive":
        return Reasoning("adaptive", effort=EFFORTS[effort] if effort else None)
    if thinking.budget_tokens is None:
        raise InvalidRequest(
            "thinking.budget_tokens is required when thinking.type is 'enabled'.",
            param="thinking.budget_tokens",
        )
    return Reasoning("enabled", budget_tokens=thinking.budget_tokens)


async def to_chat_request(
    wire: CountTokensWire,
    load_image: ImageLoader,
    *,
    max_image_bytes: int,
    load_base64: Base64Loader | None = None,
) -> ChatRequest:
    """``load_base64`` takes base64 sources (else they are decoded here, within
    ``max_image_bytes``)."""
    convert = _Converter(load_image, max_image_bytes, load_base64)
    system = [system_text(wire.system)]
    messages: list[Message] = []
    for i, m in enumerate(wire.messages):
        if m.role == "system":
            system.append(system_text(m.content))
        else:
            messages.append(await convert.message(m.role, m.content, i))
    if not messages:
        raise InvalidRequest(
            "messages: at least one user or assistant message is required.", param="messages"
        )
    request = ChatRequest(
        model=wire.model,
        messages=messages,
        system="\n\n".join(s for s in system if s),
        tools=_tools(wire),
        tool_choice=_tool_choice(wire),
        reasoning=_reasoning(wire),
    )
    search = _web_search(wire) if wire.tools else None
    if search is not None:
        request.web_search = replace(search, direct_query=direct_query(request))
    if isinstance(wire, MessagesWire):
        request.max_tokens = wire.max_tokens
        request.stop = [s for s in wire.stop_sequences or [] if s]  # "" would stop at once
        request.stream = wire.stream
    return request
