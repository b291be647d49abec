"""The Responses features Codex CLI relies on, through the real ``openai`` SDK (and raw SSE)
against the gateway on a real uvicorn server with the Kiro simulator behind it: ``namespace``
tools, ``custom`` tools (``apply_patch``), ``local_shell``, built-in tools the gateway cannot run,
encrypted reasoning that round-trips, and the fields Codex sends on every request."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from ki2api.api.responses.sealed import ReasoningSeal
from ki2api.app import create_app
from ki2api.simulator import SimulatorServer
from ki2api.simulator.scripts import text_answer, tool_use_answer
from ki2api.simulator.validator import validate_request
from tests.servers import ServerThread
from tests.sse_events import parse_sse
from tests.test_responses import KEY, MODEL, gateway_settings

PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hello\n*** End Patch\n"
NAMESPACE_TOOL: dict[str, Any] = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Tools for sub-agents.",
    "tools": [
        {
            "type": "function",
            "name": "spawn_agent",
            "description": "Start a sub-agent.",
            "strict": False,
            "parameters": {"type": "object", "properties": {"task": {"type": "string"}}},
        }
    ],
}
CUSTOM_TOOL: dict[str, Any] = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Use the `apply_patch` tool to edit files.",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: begin_patch"},
}
CODEX_EXTRAS: dict[str, Any] = {
    "store": False,
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "01a237be-ffd4-72a0-8b0f-5ee401683e9d",
    "client_metadata": {"session_id": "01a237be", "x-codex-window-id": "01a237be:0"},
    "parallel_tool_calls": True,
    "reasoning": {"summary": "auto"},
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server


@pytest.fixture(scope="module")
def gateway(sim: SimulatorServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = gateway_settings(
        sim, tmp_path_factory.mktemp("home"), reasoning_secret="test-reasoning-secret"
    )
    with ServerThread(create_app(settings, with_ui=False)) as server:
        yield server.url


@pytest.fixture(autouse=True)
def fresh(sim: SimulatorServer) -> None:
    sim.state.clear_queue()
    sim.state.reset_logs()


@pytest.fixture
def client(gateway: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway + "/v1", api_key=KEY, max_retries=0) as c:
        yield c


def post(gateway: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        gateway + "/v1/responses",
        json=body,
        headers={"authorization": f"Bearer {KEY}"},
        timeout=30,
    )


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return [e.json() for e in parse_sse(response.text)]


def kiro_body(sim: SimulatorServer) -> dict[str, Any]:
    record = sim.state.last_request
    assert record is not None and record.refusal is None, record
    body: dict[str, Any] = record.body
    return body


def kiro_tool_names(body: dict[str, Any]) -> list[str]:
    context = body["conversationState"]["currentMessage"]["userInputMessage"].get(
        "userInputMessageContext", {}
    )
    return [t["toolSpecification"]["name"] for t in context.get("tools", [])]


@pytest.mark.parametrize("stream", [False, True])
def test_namespace_tools_are_flattened_and_calls_named_back(sim, gateway, stream):
    sim.state.enqueue(tool_use_answer("multi_agent_v1__spawn_agent", "tooluse_ns1", '{"task":"x"}'))
    body = {
        "model": MODEL,
        "input": "spawn one",
        "tools": [NAMESPACE_TOOL, {"type": "web_search", "external_web_access": False}],
        "stream": stream,
        **CODEX_EXTRAS,
    }
    response = post(gateway, body)
    if stream:
        events = sse_events(response)
        output = events[-1]["response"]["output"]
        done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
        assert done and done[0]["name"] == "spawn_agent"
    else:
        assert response.status_code == 200, response.text
        output = response.json()["output"]
    call = next(item for item in output if item["type"] == "function_call")
    assert (call["namespace"], call["name"]) == ("multi_agent_v1", "spawn_agent")
    assert orjson.loads(call["arguments"]) == {"task": "x"}
    assert "multi_agent_v1__spawn_agent" in kiro_tool_names(kiro_body(sim))


def test_namespaced_call_in_history_goes_upstream_under_its_flat_name(sim, gateway):
    sim.state.enqueue(text_answer("spawned"))
    body = {
        "model": MODEL,
        "tools": [NAMESPACE_TOOL],
        "input": [
            {"type": "message", "role": "user", "content": "spawn"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "namespace": "multi_agent_v1",
                "name": "spawn_agent",
                "arguments": '{"task": "x"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "agent 7 started"},
        ],
        **CODEX_EXTRAS,
    }
    response = post(gateway, body)
    assert response.status_code == 200, response.text
    history = kiro_body(sim)["conversationState"]["history"]
    uses = [u for m in history for u in m.get("assistantResponseMessage", {}).get("toolUses", [])]
    assert [u["name"] for u in uses] == ["multi_agent_v1__spawn_agent"]


@pytest.mark.parametrize("stream", [False, True])
def test_custom_tool_call_comes_back_as_custom_tool_call_with_its_free_form_input(
    sim, gateway, stream
):
    sim.state.enqueue(
        tool_use_answer("apply_patch", "tooluse_p1", orjson.dumps({"input": PATCH}).decode())
    )
    body = {"model": MODEL, "input": "add hello.txt", "tools": [CUSTOM_TOOL], "stream": stream}
    response = post(gateway, body)
    if stream:
        events = sse_events(response)
        done = [e for e in events if e["type"] == "response.custom_tool_call_input.done"]
        assert [e["input"] for e in done] == [PATCH]
        assert not [e for e in events if e["type"] == "response.function_call_arguments.delta"]
        output = events[-1]["response"]["output"]
    else:
        assert response.status_code == 200, response.text
        output = response.json()["output"]
    call = next(item for item in output if item["type"] == "custom_tool_call")
    assert call["name"] == "apply_patch" and call["input"] == PATCH
    assert call["call_id"] == "tooluse_p1"
    # Offered to Kiro as a function with one string input; the grammar is in its description.
    context = kiro_body(sim)["conversationState"]["currentMessage"]["userInputMessage"][
        "userInputMessageContext"
    ]
    spec = context["tools"][0]["toolSpecification"]
    assert spec["name"] == "apply_patch"
    assert spec["inputSchema"]["json"]["properties"]["input"]["type"] == "string"
    assert "start: begin_patch" in spec["description"]


def test_custom_tool_call_round_trip_in_history(sim, gateway, client):
    sim.state.enqueue(text_answer("patched"))
    response = client.responses.create(
        model=MODEL,
        tools=[CUSTOM_TOOL],
        input=[
            {"type": "message", "role": "user", "content": "add hello.txt"},
            {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": PATCH},
            {"type": "custom_tool_call_output", "call_id": "c1", "output": "Success."},
        ],
    )
    assert response.output_text == "patched"
    body = kiro_body(sim)
    assert validate_request(body) is None
    history = body["conversationState"]["history"]
    uses = [u for m in history for u in m.get("assistantResponseMessage", {}).get("toolUses", [])]
    assert uses[0]["input"] == {"input": PATCH}
    results = body["conversationState"]["currentMessage"]["userInputMessage"][
        "userInputMessageContext"
    ]["toolResults"]
    assert results[0]["content"][0]["text"] == "Success."


def test_local_shell_call_and_its_output(sim, gateway):
    sim.state.enqueue(tool_use_answer("local_shell", "tooluse_sh", '{"command":["ls","-la"]}'))
    response = post(gateway, {"model": MODEL, "input": "list", "tools": [{"type": "local_shell"}]})
    assert response.status_code == 200, response.text
    call = response.json()["output"][-1]
    assert call["type"] == "local_shell_call"
    assert call["action"]["type"] == "exec" and call["action"]["command"] == ["ls", "-la"]
    sim.state.enqueue(text_answer("two files"))
    history = [
        {"type": "message", "role": "user", "content": "list"},
        call,
        {"type": "local_shell_call_output", "call_id": call["call_id"], "output": "a\nb"},
    ]
    response = post(gateway, {"model": MODEL, "input": history, "tools": [{"type": "local_shell"}]})
    assert response.status_code == 200, response.text
    body = kiro_body(sim)
    results = body["conversationState"]["currentMessage"]["userInputMessage"][
        "userInputMessageContext"
    ]["toolResults"]
    assert results[0]["content"][0]["text"] == "a\nb"


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_builtin_tool_is_dropped_with_a_warning_header(sim, gateway, stream, caplog):
    sim.state.enqueue(text_answer("fine"))
    body = {
        "model": MODEL,
        "input": "hi",
        "tools": [{"type": "tool_search"}, {"type": "function", "name": "f", "parameters": {}}],
        "stream": stream,
    }
    response = post(gateway, body)
    assert response.status_code == 200, response.text
    assert "tool_search" in response.headers["x-ki2api-warning"]
    assert kiro_tool_names(kiro_body(sim)) == ["f"]
    assert any("tool_search" in r.getMessage() for r in caplog.records)


def test_encrypted_reasoning_round_trips(sim, gateway):
    sim.state.enqueue(text_answer("four", reasoning="2+2 is 4"))
    body = {"model": MODEL, "input": "2+2?", **CODEX_EXTRAS}
    response = post(gateway, body)
    assert response.status_code == 200, response.text
    reasoning = response.json()["output"][0]
    assert reasoning["type"] == "reasoning"
    sealed = ReasoningSeal("test-reasoning-secret").open(reasoning["encrypted_content"])
    assert sealed is not None and sealed.text == "2+2 is 4"
    assert sealed.signature == "sim-signature"
    # The next turn (store: false) resends the whole history with the item as it came.
    sim.state.enqueue(text_answer("yes"))
    history = [
        {"type": "message", "role": "user", "content": "2+2?"},
        reasoning,
        {"type": "message", "role": "assistant", "content": "four"},
        {"type": "message", "role": "user", "content": "sure?"},
    ]
    response = post(gateway, {**body, "input": history, "stream": True})
    events = sse_events(response)
    assert events[-1]["type"] == "response.completed"
    assert validate_request(kiro_body(sim)) is None


def test_encrypted_content_only_when_asked(sim, gateway):
    sim.state.enqueue(text_answer("four", reasoning="thinking"))
    response = post(gateway, {"model": MODEL, "input": "2+2?"})
    assert "encrypted_content" not in response.json()["output"][0]


def test_forged_encrypted_reasoning_is_not_trusted():
    seal = ReasoningSeal("k")
    token = seal.seal("real", "sig")
    raw = bytearray(base64.b64decode(token))
    raw[-3] ^= 1  # change the content, keep the MAC
    assert seal.open(base64.b64encode(bytes(raw)).decode()) is None
    assert ReasoningSeal("other").open(token) is None
    assert seal.open("not base64!") is None
    assert seal.open(token) is not None


def test_forged_reasoning_item_is_ignored_not_refused(sim, gateway):
    sim.state.enqueue(text_answer("ok"))
    history = [
        {"type": "message", "role": "user", "content": "hi"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "Zm9yZ2Vk"},
        {"type": "message", "role": "assistant", "content": "hello"},
        {"type": "message", "role": "user", "content": "again"},
    ]
    response = post(gateway, {"model": MODEL, "input": history, **CODEX_EXTRAS})
    assert response.status_code == 200, response.text


def test_developer_messages_go_to_the_system_text(sim, gateway):
    sim.state.enqueue(text_answer("ok"))
    history = [
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": "Be terse."}],
        },
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    ]
    response = post(gateway, {"model": MODEL, "input": history, **CODEX_EXTRAS})
    assert response.status_code == 200, response.text
    current = kiro_body(sim)["conversationState"]
    sent = orjson.dumps(current).decode()
    assert "Be terse." in sent
