"""The answer given when nothing is scripted: a deterministic fake model.

It says plainly that it is the Ki2API simulator and echoes the last user message (in Chinese
when the user wrote Chinese). When the request offers tools it calls one if the user names it,
else the one whose name and description share the most words with the message (none shared:
no call), and always one when the request requires it (the gateway's "Respond by calling ..."
line, or ``tool_choice`` on the OpenAI-compatible endpoint). Arguments come from the tool's JSON
schema, with values taken from the message where a property asks for one (a city after "in",
an IANA zone, numbers, a query). When the message carries tool results, it answers about them.
Thinking tags (``<thinking_mode>...``) add reasoning events. The same input always gives the
same bytes, so tests can compare whole answers.

The gateway puts the system prompt in front of the first user turn's text, as Kiro expects; on
a first turn the echo is the text's last paragraph, so it does not repeat the system prompt.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ki2api.simulator.scripts import (
    Script,
    Step,
    initial_response,
    reasoning_events,
    text_events,
    tool_use_events,
    trailer,
)

SIMULATOR_TAG = "[Ki2API simulator]"
SIMULATOR_TAG_ZH = "【Ki2API 模拟器】"
_ECHO_LIMIT = 160
_CONTEXT_TOKENS = 200_000
_THINKING_TAGS = re.compile(
    r"<(thinking_mode|max_thinking_length|thinking_effort)>.*?</\1>", re.DOTALL
)
_THINKING_ON = re.compile(r"<thinking_mode>\s*(enabled|adaptive)\s*</thinking_mode>")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
# The gateway's tool_choice steering (ki2api/kiro/wire/request_builder.py), read as a model would.
_STEER_ANY = re.compile(r"\s*Respond by calling one or more of the available tools\.")
_STEER_TOOL = re.compile(r"\s*Respond by calling the tool (\S+?)\.(?=\s|$)")
ANY_TOOL = "*"  # Prompt.tool_choice: some tool must be called


@dataclass(frozen=True, slots=True)
class Prompt:
    """What the fake model looks at, from either wire format."""

    text: str = ""
    tools: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # name -> JSON schema
    tool_results: tuple[str, ...] = ()
    thinking: bool = False
    model_id: str | None = None
    conversation_id: str | None = None
    size: int = 0  # request size in bytes, for the context-usage figure
    said: str | None = None  # the user's own words, when ``text`` may carry a system prompt
    tool_choice: str | None = None  # ANY_TOOL, a tool's name, or None (the model decides)
    descriptions: Mapping[str, str] = field(default_factory=dict)  # tool name -> description

    @property
    def words(self) -> str:
        return self.text if self.said is None else self.said


def _result_text(result: Any) -> str:
    parts = result.get("content") if isinstance(result, dict) else None
    texts = []
    for part in parts if isinstance(parts, list) else []:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part, dict) and "json" in part:
            texts.append(orjson.dumps(part["json"]).decode())
    return " ".join(texts)


def _thinking(text: str) -> tuple[str, bool]:
    return _THINKING_TAGS.sub("", text).strip(), bool(_THINKING_ON.search(text))


def _steering(text: str) -> tuple[str, str | None]:
    """The text without the gateway's tool_choice line, and what that line asks."""
    named = _STEER_TOOL.search(text)
    if named is not None:
        return (text[: named.start()] + text[named.end() :]).strip(), named.group(1)
    if _STEER_ANY.search(text):
        return _STEER_ANY.sub("", text).strip(), ANY_TOOL
    return text, None


def _openai_tool_choice(choice: Any) -> str | None:
    if choice == "required":
        return ANY_TOOL
    if isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return str(function["name"])
    return None


def prompt_from_kiro(body: Any, size: int = 0) -> Prompt:
    """Read a (validated) ``generateAssistantResponse`` body."""
    try:
        state = body["conversationState"]
        message = state["currentMessage"]["userInputMessage"]
        context = message.get("userInputMessageContext") or {}
        specs = [t["toolSpecification"] for t in context.get("tools", [])]
        tools = {spec["name"]: spec["inputSchema"]["json"] for spec in specs}
        descriptions = {spec["name"]: str(spec.get("description") or "") for spec in specs}
        results = tuple(_result_text(r) for r in context.get("toolResults", []))
        text, thinking = _thinking(str(message.get("content", "")))
        text, choice = _steering(text)
        first_turn = not state.get("history")
        return Prompt(
            text,
            tools,
            results,
            thinking,
            message.get("modelId"),
            state.get("conversationId"),
            size,
            said=text.rsplit("\n\n", 1)[-1].strip() if first_turn else None,
            tool_choice=choice if tools else None,
            descriptions=descriptions,
        )
    except (KeyError, TypeError, AttributeError):
        return Prompt(size=size)


def _openai_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def prompt_from_openai(body: Any, size: int = 0) -> Prompt:
    """Read an OpenAI chat-completions body (for the OpenAI-compatible endpoint)."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return Prompt(size=size)
    messages = [m for m in body["messages"] if isinstance(m, dict)]
    tools: dict[str, Mapping[str, Any]] = {}
    descriptions: dict[str, str] = {}
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            params = function.get("parameters")
            tools[function["name"]] = params if isinstance(params, dict) else {}
            descriptions[function["name"]] = str(function.get("description") or "")
    results: list[str] = []
    while messages and messages[-1].get("role") == "tool":
        results.insert(0, _openai_text(messages.pop().get("content")))
    text = next(
        (_openai_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    text, thinking = _thinking(text)
    thinking = thinking or bool(body.get("reasoning_effort"))
    model = body.get("model") if isinstance(body.get("model"), str) else None
    if body.get("tool_choice") == "none":
        tools = {}
    choice = _openai_tool_choice(body.get("tool_choice")) if tools else None
    return Prompt(
        text,
        tools,
        tuple(results),
        thinking,
        model,
        None,
        size,
        tool_choice=choice,
        descriptions=descriptions,
    )


# --- arguments from a JSON schema ---------------------------------------------------------------


def example_arguments(schema: Any, depth: int = 0) -> Any:
    """A small value that satisfies common JSON schemas (deterministic)."""
    if not isinstance(schema, dict) or depth > 6:
        return {} if depth == 0 else None
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return example_arguments(schema[key][0], depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        return {name: example_arguments(sub, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [example_arguments(schema.get("items", {}), depth + 1)]
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _example_string(schema)


def _example_string(schema: Mapping[str, Any]) -> str:
    formats = {
        "uri": "https://example.com/",
        "url": "https://example.com/",
        "email": "user@example.com",
        "date": "2026-01-01",
        "date-time": "2026-01-01T00:00:00Z",
        "uuid": "00000000-0000-4000-8000-000000000000",
    }
    value = formats.get(str(schema.get("format")), "example")
    min_length = schema.get("minLength")
    if isinstance(min_length, int) and len(value) < min_length:
        value = value.ljust(min_length, "x")
    return value


# --- the answer ---------------------------------------------------------------------------------


def _clip(text: str) -> str:
    """The end of the text: that is where the question is when a system prompt comes first."""
    text = " ".join(text.split())
    return text if len(text) <= _ECHO_LIMIT else "…" + text[-_ECHO_LIMIT:]


def _named_tool(prompt: Prompt) -> str | None:
    lowered = prompt.words.lower()
    for name in sorted(prompt.tools, key=len, reverse=True):
        if re.search(rf"(?<![\w-]){re.escape(name.lower())}(?![\w-])", lowered):
            return name
    return None


# Words that say nothing about which tool fits ("get" in get_weather, "the" in a question).
_STOP_WORDS = frozenset(
    "a an and are as at be by can could current do does for from get give how i in is it "
    "list me my of on or please show tell that the this to tool tools use what whats when "
    "where which who will with would you your".split()
)


def _keywords(text: str) -> set[str]:
    words = re.findall(r"[a-z0-9]+", re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text).lower())
    # "cities" / "city", "times" / "time": a plural names the same thing.
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words} - _STOP_WORDS


def best_tool(prompt: Prompt) -> str | None:
    """The tool the message asks for: named, else the most words in common with its name
    (counted twice) and description; when the request requires a call, never None."""
    if not prompt.tools:
        return None
    if prompt.tool_choice in prompt.tools:
        return prompt.tool_choice
    named = _named_tool(prompt)
    if named is not None:
        return named
    asked = _keywords(prompt.words)
    best, best_score = None, 0
    for name, _schema in prompt.tools.items():
        about = prompt.descriptions.get(name, "")
        score = 2 * len(asked & _keywords(name)) + len(asked & _keywords(about))
        if score > best_score:
            best, best_score = name, score
    if best is None and prompt.tool_choice is not None:
        best = next(iter(prompt.tools))
    return best


_PLACE = re.compile(r"\b(?:in|for|at|near|of|from|to)\s+([A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)")
_CAPITALIZED = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-z][\w'-]*)")
_TIME_ZONE = re.compile(r"\b[A-Z][A-Za-z]+/[A-Z][A-Za-z_]+(?:/[A-Z][A-Za-z_]+)?\b")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_PLACE_WORDS = ("city", "location", "place", "town", "country", "region", "address", "where")
_QUERY_WORDS = ("query", "search", "question", "prompt", "text", "message", "topic", "keyword")


def _value_from_text(name: str, schema: Mapping[str, Any], text: str, numbers: list[str]) -> Any:
    """A value for one property taken from the message, or None to keep the placeholder."""
    if any(k in schema for k in ("const", "default", "enum")):
        return None
    kind = schema.get("type", "string")
    about = f"{name} {schema.get('description', '')}".lower()
    if kind in ("integer", "number") and numbers:
        number = float(numbers.pop(0))
        return int(number) if kind == "integer" else number
    if kind != "string":
        return None
    if "zone" in about or name.lower() in ("tz", "timezone"):
        zone = _TIME_ZONE.search(text)
        return zone.group(0) if zone else "UTC"
    if any(word in about for word in _PLACE_WORDS):
        place = _PLACE.search(text) or _CAPITALIZED.search(text)
        return place.group(1) if place else None
    if any(word in about for word in _QUERY_WORDS):
        return _clip(text)
    return None


def tool_arguments(schema: Any, text: str) -> Any:
    """Arguments that satisfy the schema, filled from the message where it has the value."""
    arguments = example_arguments(schema)
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(arguments, dict) or not isinstance(properties, dict):
        return arguments
    numbers = _NUMBER.findall(text)
    for name, sub in properties.items():
        if isinstance(sub, dict):
            value = _value_from_text(name, sub, text, numbers)
            if value is not None:
                arguments[name] = value
    return arguments


def _tool_use_id(prompt: Prompt, name: str) -> str:
    seed = f"{prompt.conversation_id}|{name}|{prompt.text}".encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(seed).digest()).decode()
    return "tooluse_" + digest[:22]


def answer_text(prompt: Prompt) -> str:
    chinese = bool(_CJK.search(prompt.words))
    if prompt.tool_results:
        joined = _clip(" | ".join(prompt.tool_results))
        if chinese:
            return f"{SIMULATOR_TAG_ZH}收到 {len(prompt.tool_results)} 个工具结果：「{joined}」。"
        count = len(prompt.tool_results)
        return f"{SIMULATOR_TAG} Received {count} tool result(s): “{joined}”. Done."
    said = prompt.words
    if chinese:
        return (
            f"{SIMULATOR_TAG_ZH}这是模拟回答，不是真实模型的输出。"
            f"你说：「{_clip(said)}」（共 {len(said)} 个字符）。"
        )
    words = len(said.split())
    unit = "word" if words == 1 else "words"
    return (
        f"{SIMULATOR_TAG} This is a simulated answer, not a real model. "
        f"You said: “{_clip(said)}” ({words} {unit})."
    )


def default_answer(prompt: Prompt) -> Script:
    steps: list[Step] = []
    if prompt.conversation_id:
        steps.append(initial_response(prompt.conversation_id))
    if prompt.thinking:
        steps += reasoning_events(f"Simulated reasoning about: {_clip(prompt.text)}", 3)
    context = round(min(99.0, 100 * prompt.size / 4 / _CONTEXT_TOKENS), 4)
    tool = None if prompt.tool_results else best_tool(prompt)
    if tool is not None:
        arguments = orjson.dumps(tool_arguments(prompt.tools[tool], prompt.words)).decode()
        steps += text_events(f"{SIMULATOR_TAG} Calling {tool}.", 2, model_id=prompt.model_id)
        steps += tool_use_events(tool, _tool_use_id(prompt, tool), arguments, 3)
        steps += trailer(0.0058, context)
        return Script(tuple(steps), "default:tool_use")
    text = answer_text(prompt)
    chunks = max(3, min(8, len(text) // 24))
    steps += text_events(text, chunks, model_id=prompt.model_id)
    usage = round(0.0058 + len(prompt.text) / 1_000_000, 6)
    steps += trailer(usage, context)
    return Script(tuple(steps), "default:text")
