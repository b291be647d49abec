"""Tool definitions as Kiro accepts them: safe names, cleaned schemas, bounded descriptions.

What the service refuses, as peers learned it from "400 Improperly formed request":
- names longer than 64 characters. Peers also report that only ``[A-Za-z0-9_-]`` names starting
  with a letter are safe and that names are compared case-insensitively (``Read`` and ``read``
  clash). Every other name is renamed reversibly: readable prefix + a stable hash of the client's
  name; :attr:`ToolNames.reverse` maps it back for the answers.
- descriptions above about 10,000 characters. The rest of a long description is not cut off: it
  moves into the system text (:func:`build_tool_specs` returns it), where the model still reads it.
- empty descriptions: a short placeholder is sent.
- schema extras: ``additionalProperties`` and empty ``required`` lists (reported by several
  peers), ``$schema`` and Anthropic's ``cache_control``. Cleaning is deliberately conservative:
  only these keys are removed, only where a schema keyword can stand (a property that happens
  to be *named* ``additionalProperties`` is kept), and ``enum`` / ``default`` / ``examples`` /
  ``const`` values are data, copied untouched.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ki2api.model.request import ToolSpec

MAX_NAME_CHARS = 64
MAX_DESCRIPTION_CHARS = 10_000
HISTORY_TOOL_DESCRIPTION = "A tool used earlier in this conversation."

_SAFE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_HASH_CHARS = 8

# Keys removed wherever a schema object stands.
_DROP_KEYS = frozenset({"$schema", "additionalProperties", "cache_control"})
# Keywords whose value is one schema / a list of schemas / a map of name -> schema.
_SCHEMA_ONE = frozenset(
    {"items", "not", "if", "then", "else", "contains", "propertyNames", "additionalItems"}
)
_SCHEMA_LIST = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SCHEMA_MAP = frozenset({"properties", "patternProperties", "$defs", "definitions"})


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]


class ToolNames:
    """Client tool name -> the name sent upstream, stable for a given request."""

    def __init__(self) -> None:
        self._upstream: dict[str, str] = {}
        self._taken: dict[str, str] = {}  # lower-cased sent name -> client name

    def upstream(self, name: str) -> str:
        if name in self._upstream:
            return self._upstream[name]
        sent = name if _SAFE_NAME.fullmatch(name) else _shorten(name)
        attempt = 0
        while sent.lower() in self._taken:
            attempt += 1
            sent = _shorten(name, salt=str(attempt) if attempt > 1 else "")
        self._taken[sent.lower()] = name
        self._upstream[name] = sent
        return sent

    @property
    def reverse(self) -> dict[str, str]:
        """Sent name -> client name, for every tool name this request used."""
        return {sent: client for client, sent in self._upstream.items()}


def _shorten(name: str, salt: str = "") -> str:
    readable = _UNSAFE_CHARS.sub("_", name).strip("_") or "tool"
    if not readable[0].isalpha():
        readable = "t_" + readable
    suffix = "_" + _digest(name + salt)
    return readable[: MAX_NAME_CHARS - len(suffix)] + suffix


def clean_schema(schema: Any) -> dict[str, Any]:
    """The tool's input schema without the keys the service rejects; always an object schema."""
    cleaned = _clean(schema) if isinstance(schema, dict) else {}
    cleaned.setdefault("type", "object")
    if cleaned.get("type") == "object" and not isinstance(cleaned.get("properties"), dict):
        cleaned["properties"] = {}
    return cleaned


def _clean(node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "required" and isinstance(value, list) and not value:
            continue
        if key in _SCHEMA_ONE and isinstance(value, dict):
            out[key] = _clean(value)
        elif key in _SCHEMA_ONE and key == "items" and isinstance(value, list):
            out[key] = [_clean(v) if isinstance(v, dict) else v for v in value]
        elif key in _SCHEMA_LIST and isinstance(value, list):
            out[key] = [_clean(v) if isinstance(v, dict) else v for v in value]
        elif key in _SCHEMA_MAP and isinstance(value, dict):
            out[key] = {k: _clean(v) if isinstance(v, dict) else v for k, v in value.items()}
        else:
            out[key] = value
    return out


def _description(tool: ToolSpec, sent: str) -> tuple[str, str]:
    """(description to send, overflow for the system text)."""
    text = tool.description or ""
    if not text.strip():
        return f"The {sent} tool.", ""
    if len(text) <= MAX_DESCRIPTION_CHARS:
        return text, ""
    note = f"\n[This description continues in the system prompt under 'Tool {sent}'.]"
    cut = MAX_DESCRIPTION_CHARS - len(note)
    # Cut at a line or word break when one is near, so neither half starts mid-word.
    brk = max(text.rfind("\n", cut - 500, cut), text.rfind(" ", cut - 200, cut))
    if brk > 0:
        cut = brk
    return text[:cut] + note, f"## Tool {sent} (description, continued)\n{text[cut:].lstrip()}"


def kiro_tool(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "toolSpecification": {
            "name": name,
            "description": description,
            "inputSchema": {"json": schema},
        }
    }


def build_tool_specs(
    tools: Sequence[ToolSpec], names: ToolNames, history_names: Iterable[str] = ()
) -> tuple[list[dict[str, Any]], str]:
    """Kiro tool entries for the declared tools, plus minimal entries for tools the history used
    but the request no longer declares (the service wants every tool in history defined).
    Returns the entries and the description overflow to add to the system text."""
    specs: list[dict[str, Any]] = []
    overflow: list[str] = []
    seen: set[str] = set()
    for tool in tools:
        sent = names.upstream(tool.name)
        if sent in seen:  # a repeated definition: the first one wins
            continue
        seen.add(sent)
        description, extra = _description(tool, sent)
        if extra:
            overflow.append(extra)
        specs.append(kiro_tool(sent, description, clean_schema(tool.parameters)))
    for name in history_names:
        sent = names.upstream(name)
        if sent not in seen:
            seen.add(sent)
            specs.append(kiro_tool(sent, HISTORY_TOOL_DESCRIPTION, clean_schema({})))
    return specs, "\n\n".join(overflow)
