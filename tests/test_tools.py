"""Tool names, schemas and descriptions as the service accepts them."""

from __future__ import annotations

import re

import pytest

from ki2api.kiro.wire.tools import (
    HISTORY_TOOL_DESCRIPTION,
    MAX_DESCRIPTION_CHARS,
    ToolNames,
    build_tool_specs,
    clean_schema,
)
from ki2api.model.request import ToolSpec

SAFE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


@pytest.mark.parametrize("name", ["Read", "bash", "mcp__github__create_issue", "a" * 64, "x-1_y"])
def test_safe_names_are_sent_as_they_are(name: str) -> None:
    names = ToolNames()
    assert names.upstream(name) == name
    assert names.reverse == {name: name}


@pytest.mark.parametrize(
    "name",
    [
        "a" * 65,
        "mcp__" + "very_long_server_name_" * 5 + "tool",
        "server.tool",
        "my tool",
        "1password",
        "_private",
        "工具",
        "",
        "emoji😀" * 20,
    ],
)
def test_other_names_are_shortened_reversibly_and_stably(name: str) -> None:
    names = ToolNames()
    sent = names.upstream(name)
    assert SAFE.fullmatch(sent), sent
    assert names.reverse[sent] == name
    assert names.upstream(name) == sent  # same request: same name
    assert ToolNames().upstream(name) == sent  # next request: same name


def test_long_names_keep_a_readable_prefix_and_distinct_hashes() -> None:
    base = "mcp__filesystem__" + "x" * 60
    a, b = ToolNames().upstream(base + "_read"), ToolNames().upstream(base + "_write")
    assert a != b and len(a) == len(b) == 64
    assert a.startswith("mcp__filesystem__x")


def test_case_insensitive_clash_is_renamed() -> None:
    names = ToolNames()
    assert names.upstream("Read") == "Read"
    other = names.upstream("read")
    assert other != "read" and other.lower() != "read" and SAFE.fullmatch(other)
    assert names.reverse == {"Read": "Read", other: "read"}


def test_clean_schema_removes_only_what_is_refused() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "additionalProperties": False,
        "cache_control": {"type": "ephemeral"},
        "required": ["path"],
        "properties": {
            "path": {"type": "string", "description": "where"},
            # a property that happens to carry a keyword's name is data, not a keyword
            "additionalProperties": {"type": "boolean", "additionalProperties": True},
            "opts": {
                "type": "object",
                "properties": {"n": {"type": "integer"}},
                "required": [],
                "additionalProperties": {"type": "string"},
            },
            "mode": {"enum": ["$schema", "additionalProperties"], "default": {"$schema": 1}},
            "list": {"type": "array", "items": {"type": "object", "additionalProperties": False}},
            "either": {"anyOf": [{"type": "string"}, {"type": "object", "$schema": "x"}]},
        },
        "$defs": {"thing": {"type": "object", "additionalProperties": False}},
    }
    assert clean_schema(schema) == {
        "type": "object",
        "required": ["path"],
        "properties": {
            "path": {"type": "string", "description": "where"},
            "additionalProperties": {"type": "boolean"},
            "opts": {"type": "object", "properties": {"n": {"type": "integer"}}},
            "mode": {"enum": ["$schema", "additionalProperties"], "default": {"$schema": 1}},
            "list": {"type": "array", "items": {"type": "object"}},
            "either": {"anyOf": [{"type": "string"}, {"type": "object"}]},
        },
        "$defs": {"thing": {"type": "object"}},
    }


@pytest.mark.parametrize("schema", [None, {}, [], "x", {"properties": None}])
def test_clean_schema_always_gives_an_object_schema(schema: object) -> None:
    cleaned = clean_schema(schema)
    assert cleaned["type"] == "object" and cleaned["properties"] == {}


def test_specs_descriptions_and_history_tools() -> None:
    names = ToolNames()
    tools = [
        ToolSpec("Read", "Read a file.", {"type": "object", "properties": {}}),
        ToolSpec("empty", "  ", {}),
        ToolSpec("Read", "a duplicate definition", {}),
    ]
    specs, overflow = build_tool_specs(tools, names, ["Read", "old_tool"])
    assert overflow == ""
    assert [s["toolSpecification"]["name"] for s in specs] == ["Read", "empty", "old_tool"]
    assert specs[0]["toolSpecification"]["description"] == "Read a file."
    assert specs[1]["toolSpecification"]["description"] == "The empty tool."
    assert specs[2] == {
        "toolSpecification": {
            "name": "old_tool",
            "description": HISTORY_TOOL_DESCRIPTION,
            "inputSchema": {"json": {"type": "object", "properties": {}}},
        }
    }


def test_long_description_overflows_into_the_system_text() -> None:
    words = [f"word{i}" for i in range(3000)]  # ~26,000 characters
    description = " ".join(words)
    specs, overflow = build_tool_specs([ToolSpec("Big", description, {})], ToolNames())
    sent = specs[0]["toolSpecification"]["description"]
    assert len(sent) <= MAX_DESCRIPTION_CHARS
    assert "continues in the system prompt under 'Tool Big'" in sent
    assert overflow.startswith("## Tool Big (description, continued)\n")
    head = sent.split("\n[This description continues")[0]
    rest = overflow.split("\n", 1)[1]
    # Nothing lost, nothing cut mid-word.
    assert (head + " " + rest).split() == words
