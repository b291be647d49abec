"""ChatRequest -> the ``generateAssistantResponse`` body, shaped so the service never refuses it.

The rules (protocol doc, "400 Improperly formed request") and how each is met:

1. History starts with a user turn and alternates: consecutive same-role messages are merged
   (text joined, images, calls and results kept); a conversation that starts with the assistant
   gets a "." user turn in front.
2. No empty content: short placeholders that read naturally to the model ("Tool results are
   attached.", "See the attached image.", "Continue." ...).
3. The system prompt goes in front of the first user turn's text. Not as a leading user/assistant
   pair: that would put words in the assistant's mouth and add a turn to every request; and it
   survives trimming because it is re-attached to whichever user turn ends up first.
4. Tool traffic. When tools are offered (``tools`` non-empty and ``tool_choice`` is not
   ``none``): calls stay structured ``toolUses``, results become ``toolResults`` of the next user
   turn, ordered as the calls were; a result whose call is not in the immediately preceding
   assistant turn (or a second result for the same call) becomes plain text in its turn, never
   dropped; a call left without a result gets a synthetic ``error`` result; ids that repeat or
   that the service may not take are renamed deterministically; tools the history used but the
   request no longer declares get a minimal definition. When no tools are offered, all tool
   traffic in the history is written out as text: then no ``toolResults`` or ``toolUses`` exist
   without ``tools``, and the model is really offered nothing.
5. Tool names, descriptions and schemas: see :mod:`ki2api.kiro.wire.tools`.
6. A trailing assistant message (prefill) becomes history; the current message asks to continue.
7. Bodies above ``max_body_bytes`` lose their oldest turns first, a user/assistant pair at a time;
   a tool call and its result always go together; the system prompt and the current message are
   always kept. If that cannot fit, :class:`ContextLengthExceeded`.

Reasoning tags, ``tool_choice`` steering and the ``response_schema`` instruction go into the
current message's text; the reasoning tags only when it carries no tool results (the service has
answered 400 to that combination).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from ki2api.kiro.wire.models import ModelInfo
from ki2api.kiro.wire.tools import ToolNames, build_tool_specs
from ki2api.model.errors import ContextLengthExceeded, InvalidRequest
from ki2api.model.request import (
    ChatRequest,
    ImagePart,
    Message,
    Role,
    TextPart,
    ToolCall,
    ToolResult,
)

DEFAULT_MAX_BODY_BYTES = 1_200_000  # the service fails somewhere above 1.25 MB

# Placeholders for content that would otherwise be empty.
EMPTY_USER = "."
EMPTY_ASSISTANT = "."
EMPTY_CURRENT = "Continue."
RESULTS_ONLY = "Tool results are attached."
IMAGES_ONLY = "See the attached image."
CONTINUE_PREFILL = "Continue from where your last message ends."
TRIMMED_NOTE = "[Earlier messages of this conversation were left out because of its length.]"
MISSING_RESULT = "No result was provided for this tool call."
EMPTY_RESULT = "(no output)"

DEFAULT_THINKING_BUDGET = 16_000
EFFORT_BUDGET = {"low": 4_000, "medium": 16_000, "high": 32_000}
MAX_THINKING_BUDGET = 128_000

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TAG = re.compile(r"<thinking_mode>", re.IGNORECASE)


@dataclass(slots=True)
class KiroRequest:
    body: bytes
    tool_names: dict[str, str]  # name sent upstream -> the client's name
    trimmed_messages: int = 0  # history turns left out to fit the body limit
    prompt_chars: int = 0  # characters of prompt text, for usage estimates


@dataclass(slots=True)
class _Turn:
    role: Role
    texts: list[str] = field(default_factory=list)
    images: list[ImagePart] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    results: list[ToolResult] = field(default_factory=list)


@dataclass(slots=True)
class _User:
    text: str  # without placeholder
    images: list[ImagePart]
    results: list[dict[str, Any]]  # Kiro toolResults


@dataclass(slots=True)
class _Assistant:
    text: str
    uses: list[dict[str, Any]]


def build_kiro_request(
    request: ChatRequest,
    *,
    model: ModelInfo,
    profile_arn: str | None,
    conversation_id: str,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> KiroRequest:
    tools_on = bool(request.tools) and request.tool_choice.mode != "none"
    turns = _alternate(_merge(request.messages))
    names = ToolNames()
    for tool in request.tools if tools_on else ():
        names.upstream(tool.name)
    history, current, used_names = _pair_tools(turns, names, tools_on)

    specs: list[dict[str, Any]] = []
    system = request.system
    if tools_on:
        specs, overflow = build_tool_specs(request.tools, names, used_names)
        if overflow:
            system = _join(system, overflow)

    current_text = _current_text(request, current, names, tools_on)
    # Tags go first in the text, before any system text; never on a turn with tool results.
    thinking = "" if current.results else _thinking_tags(request, model)
    builder = _BodyBuilder(
        model=model,
        profile_arn=profile_arn,
        conversation_id=conversation_id,
        system=system,
        history=history,
        current=current,
        current_text=current_text,
        thinking=thinking,
        specs=specs,
    )
    body, raw, dropped = builder.fit(max_body_bytes)
    return KiroRequest(
        body=raw,
        tool_names=names.reverse,
        trimmed_messages=dropped,
        prompt_chars=_prompt_chars(body),
    )


# --- 1. merge and alternate -------------------------------------------------------------------


def _merge(messages: list[Message]) -> list[_Turn]:
    """One turn per run of same-role messages; tool traffic on the wrong role becomes text."""
    turns: list[_Turn] = []
    for msg in messages:
        role: Role = "assistant" if msg.role == "assistant" else "user"
        if not turns or turns[-1].role != role:
            turns.append(_Turn(role))
        turn = turns[-1]
        text = "\n\n".join(p.text for p in msg.parts if isinstance(p, TextPart) and p.text)
        if text:
            turn.texts.append(text)
        images = [p for p in msg.parts if isinstance(p, ImagePart)]
        if role == "user":
            turn.images.extend(images)
            turn.results.extend(msg.tool_results)
            turn.texts.extend(_call_text(c) for c in msg.tool_calls)
        else:
            # Kiro has no images on assistant turns.
            turn.texts.extend("[image]" for _ in images)
            turn.calls.extend(msg.tool_calls)
            turn.texts.extend(_result_text(r) for r in msg.tool_results)
    return turns


def _alternate(turns: list[_Turn]) -> list[_Turn]:
    """user, assistant, ..., user: a user turn in front if needed, a continuation turn after a
    trailing assistant turn (prefill)."""
    if not turns or turns[0].role != "user":
        turns.insert(0, _Turn("user"))
    if turns[-1].role == "assistant":
        turns.append(_Turn("user", texts=[CONTINUE_PREFILL]))
    return turns


# --- 2. tool pairing ----------------------------------------------------------------------------


def _pair_tools(
    turns: list[_Turn], names: ToolNames, tools_on: bool
) -> tuple[list[_User | _Assistant], _User, list[str]]:
    out: list[_User | _Assistant] = []
    used_ids: set[str] = set()
    used_names: list[str] = []
    # client call id -> queue of (sent id) for the calls of the preceding assistant turn
    pending: dict[str, deque[str]] = {}
    call_order: list[str] = []
    for turn in turns:
        if turn.role == "assistant":
            texts = list(turn.texts)
            uses: list[dict[str, Any]] = []
            pending, call_order = {}, []
            for call in turn.calls:
                if not tools_on:
                    texts.append(_call_text(call))
                    continue
                sent_id = _unique_id(call.id, used_ids)
                pending.setdefault(call.id, deque()).append(sent_id)
                call_order.append(sent_id)
                if call.name not in used_names:
                    used_names.append(call.name)
                uses.append(
                    {
                        "toolUseId": sent_id,
                        "name": names.upstream(call.name),
                        "input": call.arguments if isinstance(call.arguments, dict) else {},
                    }
                )
            out.append(_Assistant(text="\n\n".join(texts), uses=uses))
            continue

        texts = list(turn.texts)
        answered: dict[str, dict[str, Any]] = {}
        for result in turn.results:
            queue = pending.get(result.tool_call_id)
            if tools_on and queue:
                sent_id = queue.popleft()
                answered[sent_id] = _kiro_result(sent_id, result.content, result.is_error)
            else:
                texts.append(_result_text(result))
        # Every call of the preceding assistant turn gets exactly one result, in call order.
        results = [
            answered.get(sent_id) or _kiro_result(sent_id, MISSING_RESULT, True)
            for sent_id in call_order
        ]
        pending, call_order = {}, []
        out.append(_User(text="\n\n".join(texts), images=list(turn.images), results=results))
    current = out.pop()
    assert isinstance(current, _User)
    return out, current, used_names


def _unique_id(client_id: str, used: set[str]) -> str:
    """A toolUseId the service takes and that is unique in the whole body; deterministic, so
    one conversation's ids stay the same from turn to turn."""
    base = client_id if _SAFE_ID.fullmatch(client_id) else _hashed_id(client_id)
    sent, n = base, 1
    while sent in used:
        n += 1
        sent = f"{base[:56]}_{n}"
    used.add(sent)
    return sent


def _hashed_id(client_id: str) -> str:
    raw = client_id.encode("utf-8", "surrogatepass")
    return "tooluse_" + hashlib.sha256(raw).hexdigest()[:24]


def _kiro_result(sent_id: str, content: str, is_error: bool) -> dict[str, Any]:
    return {
        "toolUseId": sent_id,
        "content": [{"text": content if content.strip() else EMPTY_RESULT}],
        "status": "error" if is_error else "success",
    }


def _call_text(call: ToolCall) -> str:
    args = _dumps(call.arguments).decode()
    return f"[Tool call {call.name} (id {call.id}) with arguments: {args}]"


def _result_text(result: ToolResult) -> str:
    kind = "Tool error" if result.is_error else "Tool result"
    return f"[{kind} for call {result.tool_call_id}]\n{result.content or EMPTY_RESULT}"


# --- 3. the current message's own text ----------------------------------------------------------


def _current_text(request: ChatRequest, current: _User, names: ToolNames, tools_on: bool) -> str:
    text = current.text
    if tools_on and request.tool_choice.mode in ("required", "tool"):
        wanted = request.tool_choice.name
        declared = {t.name for t in request.tools}
        if request.tool_choice.mode == "tool" and wanted in declared:
            steer = f"Respond by calling the tool {names.upstream(wanted or '')}."
        else:
            steer = "Respond by calling one or more of the available tools."
        text = _join(text, steer)
    if request.response_schema is not None:
        text = _join(text, _json_instruction(request.response_schema))
    return text


def _json_instruction(schema: dict[str, Any]) -> str:
    if not schema:
        return "Answer with a single JSON object only: no other text, no code fences."
    return (
        "Answer with a single JSON value only (no other text, no code fences) that matches "
        "this JSON schema:\n" + _dumps(schema).decode()
    )


def _thinking_tags(request: ChatRequest, model: ModelInfo) -> str:
    reasoning = request.reasoning
    if reasoning is None and not model.thinking:
        return ""
    if reasoning is not None and reasoning.mode == "adaptive" and model.adaptive_thinking:
        effort = reasoning.effort or "medium"
        return f"<thinking_mode>adaptive</thinking_mode><thinking_effort>{effort}</thinking_effort>"
    budget = DEFAULT_THINKING_BUDGET
    if reasoning is not None and reasoning.budget_tokens:
        budget = reasoning.budget_tokens
    elif reasoning is not None and reasoning.effort:
        budget = EFFORT_BUDGET[reasoning.effort]
    budget = max(1_024, min(int(budget), MAX_THINKING_BUDGET))
    return (
        f"<thinking_mode>enabled</thinking_mode><max_thinking_length>{budget}</max_thinking_length>"
    )


def _join(first: str, second: str) -> str:
    if not first.strip():
        return second
    if not second.strip():
        return first
    return f"{first}\n\n{second}"


# --- 4. the body, and trimming ----------------------------------------------------------------


@dataclass(slots=True)
class _BodyBuilder:
    model: ModelInfo
    profile_arn: str | None
    conversation_id: str
    system: str
    history: list[_User | _Assistant]
    current: _User
    current_text: str
    thinking: str
    specs: list[dict[str, Any]]

    def fit(self, max_bytes: int) -> tuple[dict[str, Any], bytes, int]:
        """The body with the fewest oldest turns dropped that fits in ``max_bytes``."""
        plain = [self._entry(turn) for turn in self.history]
        body = self._body(0, plain)
        raw = _dumps(body)
        if len(raw) <= max_bytes:  # the usual case: nothing to leave out
            return body, raw, 0
        sizes = [len(_dumps(e)) for e in plain]
        # bytes of history[i:] when serialized as part of the list (commas included)
        tail = [0] * (len(plain) + 1)
        for i in range(len(plain) - 1, -1, -1):
            tail[i] = tail[i + 1] + sizes[i] + 1
        skeleton = len(_dumps(self._body(len(plain), plain, bare=True)))
        # A current message answering tool calls keeps the assistant turn that made them.
        last = len(plain) if not self.current.results else len(plain) - 2
        for start in range(0, max(last, 0) + 1, 2):
            size = self._size(start, plain, tail, skeleton)
            if size <= max_bytes:
                body = self._body(start, plain)
                return body, _dumps(body), start
        raise ContextLengthExceeded(
            f"The conversation is too long for the service even after leaving out its older "
            f"messages (the smallest request is {self._size(max(last, 0), plain, tail, skeleton)} "
            "bytes, "
            f"the limit is {max_bytes}). Shorten the latest message, the system prompt or the "
            "tool results.",
            param="messages",
        )

    def _size(self, start: int, plain: list[dict[str, Any]], tail: list[int], skeleton: int) -> int:
        if start >= len(plain):
            return len(_dumps(self._body(start, plain)))
        first = len(_dumps(self._first(start)))
        # skeleton has "history":[]; add entries and the commas between them (tail counts one
        # comma per entry, the last entry has none).
        return skeleton + first + tail[start + 1]

    def _first(self, start: int) -> dict[str, Any]:
        """history[start] as the first turn: system text in front, results of dropped calls gone."""
        turn = self.history[start]
        assert isinstance(turn, _User)
        if start:
            turn = _User(text=turn.text, images=turn.images, results=[])
        preamble = _join(self.system, TRIMMED_NOTE if start else "")
        return self._entry(turn, preamble)

    def _body(
        self, start: int, plain: list[dict[str, Any]], *, bare: bool = False
    ) -> dict[str, Any]:
        if bare or start >= len(plain):
            history: list[dict[str, Any]] = []
        else:
            history = [self._first(start), *plain[start + 1 :]]
        if history or bare:
            current = self._entry(self.current, "", self.current_text, current=True)
        else:
            preamble = _join(self.system, TRIMMED_NOTE if start else "")
            current = self._entry(self.current, preamble, self.current_text, current=True)
        state: dict[str, Any] = {
            "conversationId": self.conversation_id,
            "chatTriggerType": "MANUAL",
            "currentMessage": current,
        }
        if history or bare:
            state["history"] = history
        body: dict[str, Any] = {}
        if self.profile_arn:
            body["profileArn"] = self.profile_arn
        body["conversationState"] = state
        return body

    def _entry(
        self,
        turn: _User | _Assistant,
        preamble: str = "",
        text: str | None = None,
        *,
        current: bool = False,
    ) -> dict[str, Any]:
        if isinstance(turn, _Assistant):
            msg: dict[str, Any] = {"content": turn.text if turn.text.strip() else EMPTY_ASSISTANT}
            if turn.uses:
                msg["toolUses"] = turn.uses
            return {"assistantResponseMessage": msg}
        body_text = turn.text if text is None else text
        content = _join(preamble, body_text) if preamble else body_text
        if not body_text.strip():
            # A history turn holding only the system text needs no placeholder after it.
            placeholder = "" if preamble and not current else _user_placeholder(turn, current)
            content = _join(preamble, placeholder)
        if turn.results:
            # Thinking tags on a turn with tool results are refused: defuse any in quoted text.
            content = _TAG.sub("<thinking_mode\u200b>", content)
        elif current and self.thinking:
            content = f"{self.thinking}\n{content}"
        user: dict[str, Any] = {
            "content": content,
            "modelId": self.model.kiro_id,
            "origin": "AI_EDITOR",
        }
        if turn.images:
            user["images"] = [_kiro_image(img) for img in turn.images]
        context: dict[str, Any] = {}
        if current and self.specs:
            context["tools"] = self.specs
        if turn.results:
            context["toolResults"] = turn.results
        if context:
            user["userInputMessageContext"] = context
        return {"userInputMessage": user}


def _prompt_chars(body: dict[str, Any]) -> int:
    """Characters of text the model reads (for a local token estimate)."""
    state = body["conversationState"]
    total = 0
    for entry in [*state.get("history", []), state["currentMessage"]]:
        msg = entry.get("userInputMessage") or entry["assistantResponseMessage"]
        total += len(msg["content"])
        total += sum(len(u["name"]) + len(_dumps(u["input"])) for u in msg.get("toolUses", []))
        context = msg.get("userInputMessageContext", {})
        total += sum(len(r["content"][0]["text"]) for r in context.get("toolResults", []))
        if context.get("tools"):
            total += len(_dumps(context["tools"]))
    return total


def _user_placeholder(turn: _User, current: bool) -> str:
    if turn.results:
        return RESULTS_ONLY
    if turn.images:
        return IMAGES_ONLY
    return EMPTY_CURRENT if current else EMPTY_USER


def _kiro_image(image: ImagePart) -> dict[str, Any]:
    return {"format": image.format, "source": {"bytes": base64.b64encode(image.data).decode()}}


# --- JSON that never fails ----------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        # Lone surrogates (legal in Python strings parsed from JSON escapes), integers beyond
        # 64 bits, or odd types in tool arguments: make them serializable instead of failing.
        pass
    try:
        return orjson.dumps(_jsonable(value))
    except (TypeError, RecursionError):
        # Nesting past orjson's limit (255 levels); the front doors refuse such bodies first.
        raise InvalidRequest(
            "The request nests JSON (a tool schema or tool-call arguments) too deeply for the "
            "service."
        ) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, dict):
        return {_jsonable(str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return _jsonable(str(value))
