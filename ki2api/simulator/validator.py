"""A strict check of ``generateAssistantResponse`` bodies: the rules of ``docs/kiro-protocol.md``
("Rules learned from 400 Improperly formed request") plus the body shape of section 2.

The real service says little more than "Improperly formed request." when it refuses a body;
the simulator refuses the same bodies but records *why* (``Refusal.reason``), so a failing
gateway test points at the broken rule.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

# docs/kiro-protocol.md, section 2: both generations of model ids, and "auto".
KNOWN_MODEL_IDS: frozenset[str] = frozenset(
    {
        "CLAUDE_SONNET_4_20250514_V1_0",
        "CLAUDE_3_7_SONNET_20250219_V1_0",
        "CLAUDE_SONNET_4_5_20250929_V1_0",
        "claude-sonnet-4",
        "claude-sonnet-4.5",
        "claude-haiku-4.5",
        "claude-opus-4.5",
        "claude-sonnet-4.6",
        "claude-opus-4.6",
        "auto",
    }
)
MAX_BODY_BYTES = 1_250_000  # "roughly 1.25 MB"; taken in its stricter (decimal) reading
MAX_TOOL_NAME = 64
MAX_TOOL_DESCRIPTION = 10_000
IMAGE_FORMATS = frozenset({"png", "jpeg", "gif", "webp"})
ORIGINS = frozenset({"AI_EDITOR", "CLI"})
IMPROPERLY_FORMED = "Improperly formed request."

_TOP_KEYS = frozenset({"profileArn", "conversationState"})
_STATE_KEYS = frozenset(
    {
        "conversationId",
        "chatTriggerType",
        "currentMessage",
        "history",
        "customizationArn",
        "agentContinuationId",
        "agentTaskType",
        "workspaceId",
    }
)
_USER_KEYS = frozenset(
    {"content", "modelId", "origin", "images", "userInputMessageContext", "userIntent"}
)
_CONTEXT_KEYS = frozenset(
    {
        "tools",
        "toolResults",
        "editorState",
        "shellState",
        "gitState",
        "envState",
        "diagnostic",
        "consoleState",
        "additionalContext",
    }
)
_ASSISTANT_KEYS = frozenset(
    {"content", "toolUses", "messageId", "references", "supplementaryWebLinks", "followupPrompt"}
)
_TOOL_RESULT_KEYS = frozenset({"toolUseId", "content", "status"})
_TOOL_USE_KEYS = frozenset({"toolUseId", "name", "input"})
_TOOL_SPEC_KEYS = frozenset({"name", "description", "inputSchema"})
_THINKING_TAG = "<thinking_mode>"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a body is refused: ``reason`` for people, ``code`` and ``message`` for the wire."""

    reason: str
    code: str | None = None  # the service's "reason" field, e.g. INVALID_MODEL_ID
    message: str = IMPROPERLY_FORMED

    def body(self) -> dict[str, Any]:
        return {"message": self.message, "reason": self.code}


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal


def _fail(reason: str) -> _Refused:
    return _Refused(Refusal(reason))


def _filled(value: Any) -> TypeGuard[str]:
    """A string with something in it (empty and whitespace-only content is refused)."""
    return isinstance(value, str) and bool(value.strip())


def _only(obj: Mapping[str, Any], allowed: Collection[str], where: str) -> None:
    extra = sorted(set(obj) - set(allowed))
    if extra:
        raise _fail(f"{where}: unknown key(s) {', '.join(extra)}")


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _fail(f"{where} must be an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(f"{where} must be a list")
    return value


class _Checker:
    def __init__(self, model_ids: Collection[str]) -> None:
        self.model_ids = model_ids
        self.tool_use_ids: set[str] = set()
        self.saw_tool_results = False

    def check(self, body: Any) -> None:
        top = _obj(body, "body")
        if "systemPrompt" in top:
            raise _fail("top-level systemPrompt is not accepted")
        _only(top, _TOP_KEYS, "body")
        if not _filled(top.get("profileArn")):
            raise _fail("profileArn missing")
        state = _obj(top.get("conversationState"), "conversationState")
        _only(state, _STATE_KEYS, "conversationState")
        if not _filled(state.get("conversationId")):
            raise _fail("conversationState.conversationId missing")
        if state.get("chatTriggerType") != "MANUAL":
            raise _fail("conversationState.chatTriggerType must be MANUAL")

        history = _list(state.get("history", []), "history")
        self.check_history(history)

        current = _obj(state.get("currentMessage"), "currentMessage")
        if "assistantResponseMessage" in current:
            raise _fail("currentMessage is an assistant message (prefill is not accepted)")
        _only(current, {"userInputMessage"}, "currentMessage")
        previous = history[-1]["assistantResponseMessage"] if history else None
        tools = self.check_user(
            current.get("userInputMessage"), "currentMessage", previous, current=True
        )
        if self.saw_tool_results and not tools:
            raise _fail("toolResults without tools in the same request")

    def check_history(self, history: list[Any]) -> None:
        previous: Mapping[str, Any] | None = None
        for i, item in enumerate(history):
            where = f"history[{i}]"
            entry = _obj(item, where)
            if len(entry) != 1:
                raise _fail(f"{where} must hold exactly one message")
            expected = "userInputMessage" if i % 2 == 0 else "assistantResponseMessage"
            if expected not in entry:
                role = "user" if i % 2 == 0 else "assistant"
                raise _fail(f"{where}: expected a {role} message (history alternates from user)")
            if i % 2 == 0:
                self.check_user(entry[expected], where, previous, current=False)
            else:
                previous = self.check_assistant(entry[expected], where)
        if len(history) % 2:
            raise _fail("history ends with a user message (it must end with assistant)")

    def check_user(
        self,
        value: Any,
        where: str,
        previous: Mapping[str, Any] | None,
        *,
        current: bool,
    ) -> list[Any]:
        msg = _obj(value, f"{where}.userInputMessage")
        _only(msg, _USER_KEYS, where)
        content = msg.get("content")
        if not _filled(content):
            raise _fail(f"{where}: empty content")
        if current:
            self.check_model(msg.get("modelId"))
            if msg.get("origin") not in ORIGINS:
                raise _fail(f"{where}: origin must be one of {', '.join(sorted(ORIGINS))}")
        elif "modelId" in msg and not _filled(msg["modelId"]):
            raise _fail(f"{where}: modelId must be a string")
        for j, image in enumerate(_list(msg.get("images", []), f"{where}.images")):
            self.check_image(image, f"{where}.images[{j}]")

        context = _obj(msg.get("userInputMessageContext", {}), f"{where}.userInputMessageContext")
        _only(context, _CONTEXT_KEYS, f"{where}.userInputMessageContext")
        tools = _list(context.get("tools", []), f"{where}.tools")
        self.check_tools(tools, where)
        results = _list(context.get("toolResults", []), f"{where}.toolResults")
        if results:
            self.saw_tool_results = True
            if _THINKING_TAG in content:
                raise _fail(f"{where}: thinking tags on a message that carries toolResults")
            self.check_tool_results(results, where, previous)
        return tools

    def check_model(self, model_id: Any) -> None:
        if not _filled(model_id):
            raise _fail("currentMessage: modelId missing")
        if model_id not in self.model_ids:
            raise _Refused(
                Refusal(
                    f"unknown modelId {model_id!r}",
                    code="INVALID_MODEL_ID",
                    message="Invalid model. Please select a different model to continue.",
                )
            )

    def check_image(self, value: Any, where: str) -> None:
        image = _obj(value, where)
        _only(image, {"format", "source"}, where)
        if image.get("format") not in IMAGE_FORMATS:
            raise _fail(f"{where}: format must be one of {', '.join(sorted(IMAGE_FORMATS))}")
        source = _obj(image.get("source"), f"{where}.source")
        _only(source, {"bytes"}, f"{where}.source")
        data = source.get("bytes")
        if not _filled(data):
            raise _fail(f"{where}: no image bytes")
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise _fail(f"{where}: bytes are not base64") from None

    def check_tools(self, tools: list[Any], where: str) -> None:
        names: set[str] = set()
        for j, item in enumerate(tools):
            at = f"{where}.tools[{j}]"
            wrapper = _obj(item, at)
            _only(wrapper, {"toolSpecification"}, at)
            spec = _obj(wrapper.get("toolSpecification"), f"{at}.toolSpecification")
            _only(spec, _TOOL_SPEC_KEYS, f"{at}.toolSpecification")
            name = spec.get("name")
            if not _filled(name):
                raise _fail(f"{at}: tool name missing")
            if len(name) > MAX_TOOL_NAME:
                raise _fail(f"{at}: tool name longer than {MAX_TOOL_NAME} characters")
            if name in names:
                raise _fail(f"{at}: duplicate tool name {name!r}")
            names.add(name)
            description = spec.get("description", "")
            if not isinstance(description, str):
                raise _fail(f"{at}: description must be a string")
            if len(description) > MAX_TOOL_DESCRIPTION:
                raise _fail(f"{at}: description longer than {MAX_TOOL_DESCRIPTION} characters")
            schema = _obj(spec.get("inputSchema"), f"{at}.inputSchema")
            _only(schema, {"json"}, f"{at}.inputSchema")
            _obj(schema.get("json"), f"{at}.inputSchema.json")

    def check_tool_results(
        self, results: list[Any], where: str, previous: Mapping[str, Any] | None
    ) -> None:
        offered = {u.get("toolUseId") for u in (previous or {}).get("toolUses", [])}
        seen: set[str] = set()
        for j, item in enumerate(results):
            at = f"{where}.toolResults[{j}]"
            result = _obj(item, at)
            _only(result, _TOOL_RESULT_KEYS, at)
            use_id = result.get("toolUseId")
            if not _filled(use_id):
                raise _fail(f"{at}: toolUseId missing")
            if use_id in seen:
                raise _fail(f"{at}: duplicate toolUseId {use_id!r}")
            seen.add(use_id)
            if use_id not in offered:
                raise _fail(f"{at}: no toolUse {use_id!r} in the preceding assistant message")
            if result.get("status") not in ("success", "error"):
                raise _fail(f"{at}: status must be success or error")
            parts = _list(result.get("content"), f"{at}.content")
            if not parts:
                raise _fail(f"{at}: empty content")
            for part in parts:
                piece = _obj(part, f"{at}.content[]")
                _only(piece, {"text", "json"}, f"{at}.content[]")
                if "text" in piece and not _filled(piece["text"]):
                    raise _fail(f"{at}: empty text")
                if "text" not in piece and "json" not in piece:
                    raise _fail(f"{at}: a content item needs text or json")

    def check_assistant(self, value: Any, where: str) -> Mapping[str, Any]:
        msg = _obj(value, f"{where}.assistantResponseMessage")
        _only(msg, _ASSISTANT_KEYS, where)
        if not _filled(msg.get("content")):
            raise _fail(f"{where}: empty content")
        for j, item in enumerate(_list(msg.get("toolUses", []), f"{where}.toolUses")):
            at = f"{where}.toolUses[{j}]"
            use = _obj(item, at)
            _only(use, _TOOL_USE_KEYS, at)
            if not _filled(use.get("toolUseId")) or not _filled(use.get("name")):
                raise _fail(f"{at}: toolUseId and name are required")
            if not isinstance(use.get("input"), dict):
                raise _fail(f"{at}: input must be an object")
            if use["toolUseId"] in self.tool_use_ids:
                raise _fail(f"{at}: duplicate toolUseId {use['toolUseId']!r}")
            self.tool_use_ids.add(use["toolUseId"])
        return msg


def body_size(body: Any) -> int:
    return len(orjson.dumps(body))


def check_request(
    body: Any,
    *,
    size: int | None = None,
    model_ids: Collection[str] = KNOWN_MODEL_IDS,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Refusal | None:
    """``None`` if the service would accept ``body``, else the :class:`Refusal`.

    ``size`` is the body's length on the wire; when not given it is measured by serialising.
    """
    try:
        if size is None:
            size = body_size(body)
    except (TypeError, orjson.JSONEncodeError):
        return Refusal("body is not JSON-serialisable")
    if size > max_body_bytes:
        return Refusal(
            f"body of {size} bytes is over {max_body_bytes}",
            code="CONTENT_LENGTH_EXCEEDS_THRESHOLD",
            message="Input is too long.",
        )
    try:
        _Checker(model_ids).check(body)
    except _Refused as refused:
        return refused.refusal
    return None


def validate_request(body: Any, **options: Any) -> str | None:
    """``None`` if acceptable, else a short reason (see :func:`check_request`)."""
    refusal = check_request(body, **options)
    return None if refusal is None else refusal.reason


def parse_and_check(
    raw: bytes,
    *,
    model_ids: Collection[str] = KNOWN_MODEL_IDS,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> tuple[Any, Refusal | None]:
    """Parse a raw body and check it; the size limit applies before parsing, as upstream."""
    if len(raw) > max_body_bytes:
        return None, check_request(None, size=len(raw), max_body_bytes=max_body_bytes)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, Refusal("body is not valid JSON", code="REQUEST_BODY_INVALID")
    return body, check_request(
        body, size=len(raw), model_ids=model_ids, max_body_bytes=max_body_bytes
    )
