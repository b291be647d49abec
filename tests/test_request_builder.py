"""The Kiro request builder: every rule of the protocol doc's "400 Improperly formed request" list,
on small hand-written conversations, plus golden bodies. Every body built here is also checked by
the simulator's strict validator."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ki2api.kiro.wire import request_builder as rb
from ki2api.kiro.wire.models import ModelCatalog, ModelInfo
from ki2api.kiro.wire.request_builder import KiroRequest, build_kiro_request
from ki2api.model.errors import ContextLengthExceeded
from ki2api.model.request import (
    ChatRequest,
    ImagePart,
    Message,
    Reasoning,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolResult,
    ToolSpec,
)
from ki2api.simulator.validator import validate_request

ARN = "arn:aws:codewhisperer:us-east-1:699475941385:profile/EHGA3GRVQMUK"
CATALOG = ModelCatalog()
SONNET = CATALOG.resolve("claude-sonnet-4-5")
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 8
BASH = ToolSpec(
    "bash",
    "Run a shell command.",
    {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
)


def user(text: str = "", *, images: int = 0, results: list[ToolResult] | None = None) -> Message:
    parts: list[Any] = [TextPart(text)] if text else []
    parts += [ImagePart("png", PNG)] * images
    return Message("user", parts, tool_results=results or [])


def asst(text: str = "", *calls: ToolCall) -> Message:
    return Message("assistant", [TextPart(text)] if text else [], tool_calls=list(calls))


def call(id: str, name: str = "bash", **args: Any) -> ToolCall:
    return ToolCall(id, name, args)


def result(id: str, content: str = "ok", error: bool = False) -> ToolResult:
    return ToolResult(id, content, error)


def build(
    messages: list[Message], model: ModelInfo = SONNET, **fields: Any
) -> tuple[dict[str, Any], KiroRequest]:
    max_body_bytes = fields.pop("max_body_bytes", rb.DEFAULT_MAX_BODY_BYTES)
    profile_arn = fields.pop("profile_arn", ARN)
    request = ChatRequest(model=model.id, messages=messages, **fields)
    built = build_kiro_request(
        request,
        model=model,
        profile_arn=profile_arn,
        conversation_id="conv-1",
        max_body_bytes=max_body_bytes,
    )
    body = orjson.loads(built.body)
    if profile_arn:
        assert validate_request(body) is None, validate_request(body)
    return body, built


def state(body: dict[str, Any]) -> dict[str, Any]:
    return body["conversationState"]  # type: ignore[no-any-return]


def current(body: dict[str, Any]) -> dict[str, Any]:
    return state(body)["currentMessage"]["userInputMessage"]  # type: ignore[no-any-return]


def history(body: dict[str, Any]) -> list[dict[str, Any]]:
    return state(body).get("history", [])  # type: ignore[no-any-return]


def contents(body: dict[str, Any]) -> list[str]:
    out = []
    for entry in history(body):
        msg = entry.get("userInputMessage") or entry["assistantResponseMessage"]
        out.append(msg["content"])
    return [*out, current(body)["content"]]


# --- golden bodies ------------------------------------------------------------------------------


def test_golden_single_turn() -> None:
    body, built = build([user("Hello")], system="You are terse.")
    assert body == {
        "profileArn": ARN,
        "conversationState": {
            "conversationId": "conv-1",
            "chatTriggerType": "MANUAL",
            "currentMessage": {
                "userInputMessage": {
                    "content": "You are terse.\n\nHello",
                    "modelId": "claude-sonnet-4.5",
                    "origin": "AI_EDITOR",
                }
            },
        },
    }
    # compact JSON, in the key order the IDE sends
    assert built.body.startswith(b'{"profileArn":"arn:aws:codewhisperer')
    assert built.tool_names == {} and built.trimmed_messages == 0
    assert built.prompt_chars == len("You are terse.\n\nHello")


def test_golden_agent_loop_with_parallel_calls() -> None:
    body, built = build(
        [
            user("What is in /tmp and /etc?"),
            asst("Let me look.", call("call_1", cmd="ls /tmp"), call("call_2", cmd="ls /etc")),
            user(results=[result("call_2", "passwd"), result("call_1", "", error=True)]),
        ],
        system="sys",
        tools=[BASH],
    )
    tool = {
        "toolSpecification": {
            "name": "bash",
            "description": "Run a shell command.",
            "inputSchema": {
                "json": {
                    "type": "object",
                    "properties": {"cmd": {"type": "string"}},
                    "required": ["cmd"],
                }
            },
        }
    }
    assert state(body) == {
        "conversationId": "conv-1",
        "chatTriggerType": "MANUAL",
        "currentMessage": {
            "userInputMessage": {
                "content": rb.RESULTS_ONLY,
                "modelId": "claude-sonnet-4.5",
                "origin": "AI_EDITOR",
                "userInputMessageContext": {
                    "tools": [tool],
                    "toolResults": [  # in call order
                        {
                            "toolUseId": "call_1",
                            "content": [{"text": "(no output)"}],
                            "status": "error",
                        },
                        {
                            "toolUseId": "call_2",
                            "content": [{"text": "passwd"}],
                            "status": "success",
                        },
                    ],
                },
            }
        },
        "history": [
            {
                "userInputMessage": {
                    "content": "sys\n\nWhat is in /tmp and /etc?",
                    "modelId": "claude-sonnet-4.5",
                    "origin": "AI_EDITOR",
                }
            },
            {
                "assistantResponseMessage": {
                    "content": "Let me look.",
                    "toolUses": [
                        {"toolUseId": "call_1", "name": "bash", "input": {"cmd": "ls /tmp"}},
                        {"toolUseId": "call_2", "name": "bash", "input": {"cmd": "ls /etc"}},
                    ],
                }
            },
        ],
    }
    assert built.tool_names == {"bash": "bash"}


# --- alternation, merging, placeholders ---------------------------------------------------------


def test_conversation_starting_with_the_assistant_gets_a_user_turn_holding_the_system() -> None:
    body, _ = build([asst("Hi! How can I help?"), user("Hello")], system="Be kind.")
    assert contents(body) == ["Be kind.", "Hi! How can I help?", "Hello"]
    body, _ = build([asst("Hi!"), user("Hello")])
    assert contents(body) == [rb.EMPTY_USER, "Hi!", "Hello"]


def test_consecutive_same_roles_are_merged_keeping_everything() -> None:
    body, _ = build(
        [
            user("one"),
            user("two", images=1),
            asst("a"),
            asst("b", call("c1")),
            user(results=[result("c1")]),
            user("three", images=2),
        ],
        tools=[BASH],
    )
    assert contents(body) == ["one\n\ntwo", "a\n\nb", "three"]
    assert len(history(body)[0]["userInputMessage"]["images"]) == 1
    assert history(body)[1]["assistantResponseMessage"]["toolUses"][0]["toolUseId"] == "c1"
    assert len(current(body)["images"]) == 2
    assert current(body)["userInputMessageContext"]["toolResults"][0]["toolUseId"] == "c1"


def test_multi_part_text_is_joined_and_empty_parts_ignored() -> None:
    msg = Message("user", [TextPart("a"), TextPart(""), ImagePart("png", PNG), TextPart("b")])
    body, _ = build([msg])
    assert current(body)["content"] == "a\n\nb"


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([user("")], [rb.EMPTY_CURRENT]),
        ([user("   \n")], [rb.EMPTY_CURRENT]),
        ([user(images=1)], [rb.IMAGES_ONLY]),
        ([user(""), asst(""), user("x")], [rb.EMPTY_USER, rb.EMPTY_ASSISTANT, "x"]),
        (
            [user("q"), asst("", call("c")), user(results=[result("c")])],
            ["q", ".", rb.RESULTS_ONLY],
        ),
        ([Message("user", []), Message("assistant", [])], [".", ".", rb.CONTINUE_PREFILL]),
        ([], [rb.EMPTY_CURRENT]),
    ],
)
def test_no_content_is_ever_empty(messages: list[Message], expected: list[str]) -> None:
    body, _ = build(messages, tools=[BASH])
    assert contents(body) == expected


def test_prefill_becomes_history_and_the_model_is_asked_to_continue() -> None:
    body, _ = build([user("Write a haiku"), asst("Autumn moon")])
    assert contents(body) == ["Write a haiku", "Autumn moon", rb.CONTINUE_PREFILL]


def test_prefill_with_unanswered_calls_gets_error_results() -> None:
    body, _ = build([user("go"), asst("", call("c1"))], tools=[BASH])
    assert current(body)["content"] == rb.CONTINUE_PREFILL
    assert current(body)["userInputMessageContext"]["toolResults"] == [
        {"toolUseId": "c1", "content": [{"text": rb.MISSING_RESULT}], "status": "error"}
    ]


def test_roles_other_than_assistant_are_user_turns() -> None:
    odd = Message("system", [TextPart("from a sloppy front door")])  # type: ignore[arg-type]
    body, _ = build([user("a"), odd])
    assert contents(body) == ["a\n\nfrom a sloppy front door"]


# --- tool pairing -------------------------------------------------------------------------------


def test_result_without_a_call_becomes_text_never_dropped() -> None:
    body, _ = build([user("hi", results=[result("ghost", "boo")])], tools=[BASH])
    assert current(body)["content"] == "hi\n\n[Tool result for call ghost]\nboo"
    assert "userInputMessageContext" in current(body)  # tools still offered
    assert "toolResults" not in current(body)["userInputMessageContext"]


def test_result_for_an_older_turns_call_becomes_text() -> None:
    body, _ = build(
        [
            user("a"),
            asst("", call("c1")),
            user(results=[result("c1")]),
            asst("", call("c2")),
            user(results=[result("c2"), result("c1", "late", error=True)]),
        ],
        tools=[BASH],
    )
    ctx = current(body)["userInputMessageContext"]
    assert [r["toolUseId"] for r in ctx["toolResults"]] == ["c2"]
    assert current(body)["content"] == "[Tool error for call c1]\nlate"


def test_call_without_result_gets_a_synthetic_error_result() -> None:
    body, _ = build(
        [user("a"), asst("", call("c1"), call("c2")), user("never mind", results=[result("c2")])],
        tools=[BASH],
    )
    results = current(body)["userInputMessageContext"]["toolResults"]
    assert results == [
        {"toolUseId": "c1", "content": [{"text": rb.MISSING_RESULT}], "status": "error"},
        {"toolUseId": "c2", "content": [{"text": "ok"}], "status": "success"},
    ]
    assert current(body)["content"] == "never mind"


def test_calls_followed_by_plain_text_in_history() -> None:
    body, _ = build(
        [user("a"), asst("", call("c1")), user("b"), asst("done"), user("c")], tools=[BASH]
    )
    first_results = history(body)[2]["userInputMessage"]["userInputMessageContext"]["toolResults"]
    assert first_results[0]["status"] == "error"


def test_repeated_ids_are_renamed_and_results_follow() -> None:
    """Some clients number calls per turn (call_0 every time): ids must be unique per body."""
    body, _ = build(
        [
            user("a"),
            asst("", call("call_0", cmd="1")),
            user(results=[result("call_0", "r1")]),
            asst("", call("call_0", cmd="2"), call("call_0", cmd="3")),
            user(results=[result("call_0", "r2"), result("call_0", "r3"), result("call_0", "r4")]),
        ],
        tools=[BASH],
    )
    uses = history(body)[3]["assistantResponseMessage"]["toolUses"]
    assert [u["toolUseId"] for u in uses] == ["call_0_2", "call_0_3"]
    ctx = current(body)["userInputMessageContext"]
    assert [(r["toolUseId"], r["content"][0]["text"]) for r in ctx["toolResults"]] == [
        ("call_0_2", "r2"),
        ("call_0_3", "r3"),
    ]
    assert current(body)["content"] == "[Tool result for call call_0]\nr4"  # the extra one


def test_ids_the_service_may_refuse_are_replaced_deterministically() -> None:
    weird = "call/with spaces/" + "x" * 80
    messages = [user("a"), asst("", call(weird)), user(results=[result(weird)])]
    body1, _ = build(messages, tools=[BASH])
    body2, _ = build(messages, tools=[BASH])
    sent = history(body1)[1]["assistantResponseMessage"]["toolUses"][0]["toolUseId"]
    assert sent.startswith("tooluse_") and len(sent) <= 64
    assert current(body1)["userInputMessageContext"]["toolResults"][0]["toolUseId"] == sent
    assert body1 == body2
    empty = [user("a"), asst("", call("")), user(results=[result("")])]
    body, _ = build(empty, tools=[BASH])
    assert current(body)["userInputMessageContext"]["toolResults"][0]["status"] == "success"


def test_without_tools_all_tool_traffic_becomes_text() -> None:
    messages = [
        user("a"),
        asst("checking", call("c1", cmd="ls")),
        user(results=[result("c1", "file.txt")]),
    ]
    options: list[dict[str, Any]] = [{}, {"tools": [BASH], "tool_choice": ToolChoice("none")}]
    for fields in options:
        body, built = build(messages, **fields)
        assert "userInputMessageContext" not in current(body)
        assert "toolUses" not in history(body)[1]["assistantResponseMessage"]
        assert contents(body) == [
            "a",
            'checking\n\n[Tool call bash (id c1) with arguments: {"cmd":"ls"}]',
            "[Tool result for call c1]\nfile.txt",
        ]
        assert built.tool_names == {}


def test_tools_used_in_history_but_not_declared_get_a_minimal_definition() -> None:
    body, built = build(
        [user("a"), asst("", call("c1", "old_tool")), user(results=[result("c1")])],
        tools=[BASH],
    )
    names = [
        t["toolSpecification"]["name"] for t in current(body)["userInputMessageContext"]["tools"]
    ]
    assert names == ["bash", "old_tool"]
    assert built.tool_names == {"bash": "bash", "old_tool": "old_tool"}


def test_long_tool_names_round_trip() -> None:
    long_name = "mcp__some_server__" + "do_something_really_specific_" * 3
    tool = ToolSpec(long_name, "d", {})
    body, built = build(
        [user("a"), asst("", call("c1", long_name)), user(results=[result("c1")])],
        tools=[tool],
        tool_choice=ToolChoice("tool", long_name),
    )
    sent = current(body)["userInputMessageContext"]["tools"][0]["toolSpecification"]["name"]
    assert len(sent) <= 64 and sent != long_name
    assert history(body)[1]["assistantResponseMessage"]["toolUses"][0]["name"] == sent
    assert built.tool_names[sent] == long_name
    assert current(body)["content"].endswith(f"Respond by calling the tool {sent}.")


def test_long_description_moves_into_the_system_text() -> None:
    description = "Use carefully. " * 1000  # 15,000 characters
    body, _ = build([user("a")], system="sys", tools=[ToolSpec("big", description, {})])
    spec = current(body)["userInputMessageContext"]["tools"][0]["toolSpecification"]
    assert len(spec["description"]) <= 10_000
    text = current(body)["content"]
    assert text.startswith("sys\n\n## Tool big (description, continued)\n")
    assert text.endswith("\n\na")
    assert text.count("Use carefully.") + spec["description"].count("Use carefully.") == 1000


@pytest.mark.parametrize(
    ("choice", "steer"),
    [
        (ToolChoice("auto"), None),
        (ToolChoice("required"), "Respond by calling one or more of the available tools."),
        (ToolChoice("tool", "bash"), "Respond by calling the tool bash."),
        (ToolChoice("tool", "missing"), "Respond by calling one or more of the available tools."),
    ],
)
def test_tool_choice_steering(choice: ToolChoice, steer: str | None) -> None:
    body, _ = build([user("list files")], tools=[BASH], tool_choice=choice)
    expected = "list files" if steer is None else f"list files\n\n{steer}"
    assert current(body)["content"] == expected


def test_tool_choice_without_tools_adds_nothing() -> None:
    body, _ = build([user("hi")], tool_choice=ToolChoice("required"))
    assert current(body)["content"] == "hi"


# --- reasoning, response format --------------------------------------------------------------


def test_reasoning_budget_tags_go_first_even_before_the_system_text() -> None:
    body, _ = build(
        [user("why?")], system="sys", reasoning=Reasoning("enabled", budget_tokens=5000)
    )
    assert current(body)["content"] == (
        "<thinking_mode>enabled</thinking_mode><max_thinking_length>5000</max_thinking_length>\n"
        "sys\n\nwhy?"
    )


def test_thinking_model_suffix_turns_reasoning_on() -> None:
    body, _ = build([user("why?")], model=CATALOG.resolve("claude-sonnet-4-5-thinking"))
    assert current(body)["content"].startswith(
        f"<thinking_mode>enabled</thinking_mode><max_thinking_length>{rb.DEFAULT_THINKING_BUDGET}<"
    )


def test_adaptive_reasoning_where_the_model_supports_it() -> None:
    adaptive = Reasoning("adaptive", effort="high")
    body, _ = build([user("q")], model=CATALOG.resolve("claude-sonnet-4-6"), reasoning=adaptive)
    assert current(body)["content"] == (
        "<thinking_mode>adaptive</thinking_mode><thinking_effort>high</thinking_effort>\nq"
    )
    body, _ = build([user("q")], reasoning=adaptive)  # 4.5: a budget instead
    assert "<max_thinking_length>32000</max_thinking_length>" in current(body)["content"]


@pytest.mark.parametrize(("asked", "sent"), [(10, 1024), (10**9, rb.MAX_THINKING_BUDGET)])
def test_reasoning_budget_is_clamped(asked: int, sent: int) -> None:
    body, _ = build([user("q")], reasoning=Reasoning("enabled", budget_tokens=asked))
    assert f"<max_thinking_length>{sent}</max_thinking_length>" in current(body)["content"]


def test_no_thinking_tags_on_a_message_with_tool_results() -> None:
    body, _ = build(
        [user("a"), asst("", call("c1")), user("b", results=[result("c1")])],
        tools=[BASH],
        reasoning=Reasoning("enabled", budget_tokens=2000),
    )
    assert "<thinking_mode>" not in orjson.dumps(body).decode()
    body, _ = build(
        [user("a"), asst("", call("c1")), user("b", results=[result("c1")]), asst("ok"), user("c")],
        tools=[BASH],
        reasoning=Reasoning("enabled", budget_tokens=2000),
    )
    assert current(body)["content"].startswith("<thinking_mode>enabled</thinking_mode>")


def test_response_schema_instruction() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    body, _ = build([user("count")], response_schema=schema)
    assert current(body)["content"] == (
        "count\n\nAnswer with a single JSON value only (no other text, no code fences) that "
        'matches this JSON schema:\n{"type":"object","properties":{"n":{"type":"integer"}}}'
    )
    body, _ = build([user("count")], response_schema={})
    assert "single JSON object only" in current(body)["content"]


# --- images -------------------------------------------------------------------------------------


def test_images_in_history_and_current() -> None:
    jpeg = ImagePart("jpeg", b"\xff\xd8\xff\xe0" + b"\1" * 4)
    body, _ = build(
        [
            Message("user", [TextPart("a"), jpeg]),
            asst(
                "nice",
            ),
            user("b", images=1),
        ]
    )
    assert history(body)[0]["userInputMessage"]["images"] == [
        {"format": "jpeg", "source": {"bytes": "/9j/4AEBAQE="}}
    ]
    assert current(body)["images"][0]["format"] == "png"


def test_images_on_assistant_turns_become_a_note() -> None:
    body, _ = build([user("a"), Message("assistant", [ImagePart("png", PNG)]), user("b")])
    assert contents(body) == ["a", "[image]", "b"]


# --- body limits --------------------------------------------------------------------------------


def _long_chat(turns: int, size: int) -> list[Message]:
    messages: list[Message] = []
    for i in range(turns):
        messages += [user(f"q{i} " + "x" * size), asst(f"a{i} " + "y" * size)]
    return [*messages, user("last question")]


def test_oldest_turns_are_dropped_to_fit() -> None:
    body, built = build(_long_chat(20, 1000), system="SYSTEM", max_body_bytes=10_000)
    assert len(built.body) <= 10_000
    assert built.trimmed_messages > 0 and built.trimmed_messages % 2 == 0
    assert len(history(body)) == 40 - built.trimmed_messages
    first = history(body)[0]["userInputMessage"]["content"]
    assert first.startswith("SYSTEM\n\n" + rb.TRIMMED_NOTE + "\n\nq")
    assert current(body)["content"] == "last question"
    # the newest turns are the ones kept, and as few as possible were dropped
    assert history(body)[-1]["assistantResponseMessage"]["content"].startswith("a19 ")
    _, more = build(_long_chat(20, 1000), system="SYSTEM", max_body_bytes=10_000 + 2100)
    assert more.trimmed_messages == built.trimmed_messages - 2


def test_trimming_never_splits_a_call_from_its_result() -> None:
    messages = [user("start")]
    for i in range(30):
        messages += [
            asst("", call(f"c{i}", cmd="x" * 300)),
            user(results=[result(f"c{i}", "y" * 300)]),
        ]
    body, built = build(messages, tools=[BASH], max_body_bytes=8_000)
    assert built.trimmed_messages > 0
    first = history(body)[0]["userInputMessage"]
    assert "userInputMessageContext" not in first  # its results' calls were dropped with them
    assert first["content"].startswith(rb.TRIMMED_NOTE)
    ids = [r["toolUseId"] for r in current(body)["userInputMessageContext"]["toolResults"]]
    assert ids == ["c29"]
    assert history(body)[-1]["assistantResponseMessage"]["toolUses"][0]["toolUseId"] == "c29"


def test_a_current_message_that_answers_calls_keeps_the_calls() -> None:
    messages = [
        user("x" * 5000),
        asst("", call("c1")),
        user(results=[result("c1", "z" * 3000)]),
    ]
    with pytest.raises(ContextLengthExceeded):
        build(messages, tools=[BASH], max_body_bytes=5000)
    body, built = build(messages, tools=[BASH], max_body_bytes=9000)
    assert built.trimmed_messages == 0


def test_current_message_alone_too_large() -> None:
    with pytest.raises(ContextLengthExceeded) as info:
        build([user("q"), asst("a"), user("x" * 5000)], system="s", max_body_bytes=3000)
    assert info.value.openai_code == "context_length_exceeded"
    assert info.value.status == 400


def test_everything_dropped_puts_the_system_text_on_the_current_message() -> None:
    body, built = build(
        [user("x" * 3000), asst("y" * 3000), user("now")], system="SYS", max_body_bytes=2000
    )
    assert built.trimmed_messages == 2
    assert "history" not in state(body)
    assert current(body)["content"] == f"SYS\n\n{rb.TRIMMED_NOTE}\n\nnow"


def test_default_limit_is_under_the_services() -> None:
    body, built = build(_long_chat(400, 2000))  # ~1.6 MB of text
    assert 1_100_000 < len(built.body) <= rb.DEFAULT_MAX_BODY_BYTES
    assert built.trimmed_messages > 0


# --- serialization ------------------------------------------------------------------------------


def test_unicode_control_characters_and_lone_surrogates_serialize() -> None:
    nasty = "日本語 🎉 \x00\x1b[31m \u2028 \ud800 end"
    body, _ = build(
        [
            user(nasty),
            asst(nasty, call("c1", "bash", cmd=nasty, n=2**70)),
            user(results=[result("c1", nasty)]),
        ],
        system=nasty,
        tools=[ToolSpec("bash", nasty, {"type": "object", "properties": {nasty: {}}})],
    )
    text = current(body)["userInputMessageContext"]["toolResults"][0]["content"][0]["text"]
    assert text == nasty.replace("\ud800", "\ufffd")
    assert history(body)[1]["assistantResponseMessage"]["toolUses"][0]["input"]["n"] == str(2**70)


def test_profile_arn_is_left_out_when_unknown() -> None:
    body, _ = build([user("a")], profile_arn=None)
    assert "profileArn" not in body


def test_prompt_chars_counts_the_text_the_model_reads() -> None:
    _, built = build(
        [user("12345"), asst("123", call("c1", cmd="x")), user(results=[result("c1", "1234567")])],
        system="1234",
        tools=[BASH],
    )
    assert built.prompt_chars > 5 + 3 + 4 + 7
    assert built.prompt_chars < len(built.body)
