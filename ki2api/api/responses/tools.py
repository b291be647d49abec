"""The tool kinds of the Responses API beyond plain ``function`` tools, as Codex sends them.

Kiro knows only functions with a JSON-schema input, so each kind becomes one and the answer maps
the calls back to the item the client expects:

- ``namespace``: a named group of function tools. Each member goes upstream as
  ``<namespace>__<name>``; its calls come back as ``function_call`` items with ``name`` and
  ``namespace`` as the client declared them.
- ``custom``: free-form input (Codex's ``apply_patch``). Offered as a function taking one string,
  ``input``; its calls come back as ``custom_tool_call`` items whose ``input`` is that string.
- ``local_shell``: offered as a function taking ``command`` (argv), ``workdir``, ``timeout_ms``;
  its calls come back as ``local_shell_call`` items.
- ``web_search``: run by the gateway (see :mod:`ki2api.pipeline.websearch`); only its settings are
  kept here.
- any other built-in tool (file search, computer use, ``tool_search`` ...): it runs on OpenAI's
  servers, so it is dropped with a warning (a header and a log line), unless ``tool_choice``
  names it, which stays a 400.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ki2api.model.errors import InvalidRequest
from ki2api.model.request import ToolSpec

EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
NAMESPACE_SEPARATOR = "__"
LOCAL_SHELL = "local_shell"
WEB_SEARCH_TYPES = frozenset({"web_search", "web_search_preview", "web_search_2025_08_26"})
_CUSTOM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The tool's whole input, as text."}},
    "required": ["input"],
}
_LOCAL_SHELL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "command": {
            "type": "array",
            "items": {"type": "string"},
            "description": 'The command and its arguments, e.g. ["bash", "-lc", "ls"].',
        },
        "workdir": {"type": "string", "description": "Working directory."},
        "timeout_ms": {"type": "integer", "description": "Time limit in milliseconds."},
    },
    "required": ["command"],
}
_LOCAL_SHELL_DESCRIPTION = "Run a command on the user's machine and return its output."


@dataclass(slots=True)
class ToolKinds:
    """What the answer needs to render calls as the client's own item types."""

    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)  # flat → (ns, name)
    custom: set[str] = field(default_factory=set)
    local_shell: bool = False
    web_search: dict[str, Any] | None = None  # the web_search tool as the client sent it
    dropped: list[str] = field(default_factory=list)  # types of built-in tools not offered

    def warnings(self) -> list[str]:
        return [
            f"tool type {kind!r} is not supported by this gateway and was ignored"
            for kind in self.dropped
        ]


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{where}.{key} must be a non-empty string.", param=f"{where}.{key}")
    return value


def _function(tool: dict[str, Any], where: str, name: str | None = None) -> ToolSpec:
    description = tool.get("description")
    parameters = tool.get("parameters")
    return ToolSpec(
        name or _str(tool, "name", where),
        description if isinstance(description, str) else "",
        parameters if isinstance(parameters, dict) else EMPTY_SCHEMA,
    )


def _custom_description(tool: dict[str, Any]) -> str:
    description = tool.get("description")
    text = description if isinstance(description, str) else ""
    fmt = tool.get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "grammar":
        # The model cannot be constrained by the grammar; it can read it.
        grammar = fmt.get("definition")
        if isinstance(grammar, str) and grammar:
            text += f"\n\nThe input must follow this {fmt.get('syntax', '')} grammar:\n{grammar}"
    return (
        text + "\n\nPut the whole free-form input, exactly as it should be used, in the "
        "'input' string."
    ).strip()


def parse_tools(raw: list[dict[str, Any]] | None) -> tuple[list[ToolSpec], ToolKinds]:
    tools: list[ToolSpec] = []
    kinds = ToolKinds()
    for i, tool in enumerate(raw or []):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"{where} must be an object.", param=where)
        kind = tool.get("type")
        if kind == "function":
            tools.append(_function(tool, where))
        elif kind == "namespace":
            namespace = _str(tool, "name", where)
            members = tool.get("tools")
            if not isinstance(members, list):
                raise InvalidRequest(f"{where}.tools must be a list.", param=f"{where}.tools")
            for j, member in enumerate(members):
                at = f"{where}.tools[{j}]"
                if not isinstance(member, dict) or member.get("type", "function") != "function":
                    raise InvalidRequest(f"{at} must be a function tool.", param=at)
                name = _str(member, "name", at)
                flat = f"{namespace}{NAMESPACE_SEPARATOR}{name}"
                kinds.namespaced[flat] = (namespace, name)
                tools.append(_function(member, at, flat))
        elif kind == "custom":
            name = _str(tool, "name", where)
            kinds.custom.add(name)
            tools.append(ToolSpec(name, _custom_description(tool), _CUSTOM_SCHEMA))
        elif kind == LOCAL_SHELL:
            kinds.local_shell = True
            tools.append(ToolSpec(LOCAL_SHELL, _LOCAL_SHELL_DESCRIPTION, _LOCAL_SHELL_SCHEMA))
        elif kind in WEB_SEARCH_TYPES:
            kinds.web_search = tool
        elif isinstance(kind, str) and kind:
            kinds.dropped.append(kind)
        else:
            raise InvalidRequest(f"{where}.type must be a string.", param=f"{where}.type")
    return tools, kinds


def check_choice_offered(choice: str | dict[str, Any] | None, kinds: ToolKinds) -> None:
    """A ``tool_choice`` that names a dropped built-in tool cannot be honoured: a 400."""
    if isinstance(choice, dict):
        kind = choice.get("type")
        if isinstance(kind, str) and kind in kinds.dropped:
            raise InvalidRequest(
                f"tool_choice names a tool of type {kind!r}, which this gateway does not "
                "support (built-in tools run on OpenAI's servers).",
                param="tool_choice",
            )


def flat_name(name: str, namespace: Any) -> str:
    """The name a history item's call had upstream."""
    if isinstance(namespace, str) and namespace:
        return f"{namespace}{NAMESPACE_SEPARATOR}{name}"
    return name


def custom_input(arguments: str) -> str:
    """The free-form text of a custom tool call from the JSON arguments the model wrote."""
    try:
        value = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        return arguments
    if isinstance(value, dict):
        text = value.get("input")
        if isinstance(text, str):
            return text
    return arguments


def local_shell_action(arguments: str) -> dict[str, Any]:
    try:
        value = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        value = {}
    value = value if isinstance(value, dict) else {}
    command = value.get("command")
    if isinstance(command, str):
        command = ["bash", "-lc", command]
    workdir, timeout = value.get("workdir"), value.get("timeout_ms")
    return {
        "type": "exec",
        "command": [str(c) for c in command] if isinstance(command, list) else [],
        "working_directory": workdir if isinstance(workdir, str) else None,
        "timeout_ms": timeout if isinstance(timeout, int) else None,
        "env": {},
        "user": None,
    }
