"""The playground's chat handler: calls ``Gateway.open`` directly and streams the answer.

Gradio cancels the handler's task when the visitor presses Stop; the ``finally`` closes the
stream, which closes the upstream request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import gradio as gr

from ki2api.core.errors import GatewayError
from ki2api.core.request import ChatRequest, Message, Reasoning, TextPart, ToolSpec
from ki2api.kiro.credentials import AccountSpec
from ki2api.ui.answer import AnswerView, ChatMessages, history_to_messages

if TYPE_CHECKING:
    from ki2api.app import Runtime

log = logging.getLogger("ki2api.ui")

MAX_MESSAGE_CHARS = 100_000

EXAMPLE_TOOLS = [
    ToolSpec(
        name="get_weather",
        description="Current weather in a city.",
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    ),
    ToolSpec(
        name="get_time",
        description="Current time in an IANA time zone.",
        parameters={
            "type": "object",
            "properties": {"timezone": {"type": "string", "description": "e.g. Asia/Shanghai"}},
            "required": ["timezone"],
        },
    ),
]

ChatUpdate = tuple[ChatMessages, Any, str, AccountSpec | None]


def build_request(
    message: str, history: ChatMessages, model: str, system: str, thinking: bool, tools: bool
) -> ChatRequest:
    messages = history_to_messages(history)
    messages.append(Message(role="user", parts=[TextPart(message)]))
    return ChatRequest(
        model=model,
        messages=messages,
        system=(system or "").strip(),
        tools=list(EXAMPLE_TOOLS) if tools else [],
        reasoning=Reasoning(mode="enabled", budget_tokens=4000) if thinking else None,
        stream=True,
    )


def make_chat_handler(
    runtime: Callable[[], Runtime],
) -> Callable[..., AsyncIterator[ChatUpdate]]:
    async def chat(
        message: str,
        history: ChatMessages | None,
        model: str,
        system: str,
        thinking: bool,
        tools: bool,
        own: AccountSpec | None,
        lang: str,
    ) -> AsyncIterator[ChatUpdate]:
        """Yields (chat, cleared textbox, metrics line, the visitor's token spec)."""
        history = list(history or [])
        message = (message or "").strip()[:MAX_MESSAGE_CHARS]
        if not message:
            yield history, "", "", own
            return
        rt = runtime()
        model = model or rt.catalog.list()[0].id
        shown = [*history, {"role": "user", "content": message}]
        view = AnswerView(lang=lang)
        yield [*shown, *view.messages()], "", "", own
        lease = None
        stream = None
        try:
            request = build_request(message, history, model, system, thinking, tools)
            if own is not None:
                lease = await rt.pool.ephemeral_lease(own)
            stream = await rt.gateway.open(request, lease=lease)
            async for delta in stream:
                view.feed(delta)
                yield [*shown, *view.messages()], gr.update(), view.metrics(model), own
            view.finish()
        except GatewayError as exc:
            view.fail(exc.message)
        except Exception:  # a bug must not leave the chat hanging, nor show a trace
            log.exception("playground request failed")
            view.fail("internal error")
        finally:
            if stream is not None:
                await stream.aclose()  # also runs when Stop cancels this task
            if lease is not None:
                own = lease.spec  # keep a refreshed token for the next message
        yield [*shown, *view.messages()], gr.update(), view.metrics(model), own

    return chat
