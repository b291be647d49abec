"""A LangChain `ChatOpenAI` tool loop pointed at the gateway (real package, real sockets)."""

from __future__ import annotations

import pytest

from ki2api.simulator import text_answer, tool_use_answer
from tests.stack import Stack

langchain_openai = pytest.importorskip("langchain_openai")
messages_mod = pytest.importorskip("langchain_core.messages")
tools_mod = pytest.importorskip("langchain_core.tools")


@tools_mod.tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.mark.parametrize("streaming", [False, True])
def test_chat_openai_tool_loop(stack: Stack, streaming: bool) -> None:
    stack.state.enqueue(tool_use_answer("add", "tooluse_add1", '{"a": 2, "b": 40}', fragments=4))
    stack.state.enqueue(text_answer("The sum is 42."))
    llm = langchain_openai.ChatOpenAI(
        model="claude-sonnet-4-5",
        base_url=stack.base_url,
        api_key=stack.api_key,
        max_retries=0,
        streaming=streaming,
    ).bind_tools([add])

    history: list = [messages_mod.HumanMessage("What is 2 + 40? Use the add tool.")]
    reply = llm.invoke(history)
    assert reply.tool_calls == [
        {"name": "add", "args": {"a": 2, "b": 40}, "id": "tooluse_add1", "type": "tool_call"}
    ]
    history.append(reply)
    for call in reply.tool_calls:
        history.append(add.invoke(call))
    final = llm.invoke(history)
    assert final.content == "The sum is 42."
    sent = stack.state.requests[-1]
    assert sent.refusal is None
    context = sent.body["conversationState"]["currentMessage"]["userInputMessage"][
        "userInputMessageContext"
    ]
    assert context["toolResults"][0]["content"] == [{"text": "42"}]
    assert context["tools"][0]["toolSpecification"]["name"] == "add"
