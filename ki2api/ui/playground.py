"""The playground's chat handler: calls ``Gateway.open`` directly and streams the answer.

Who may chat on the pool, and the API's checks on each chat: :mod:`ki2api.ui.access`. The
upstream request starts only once the visitor's answer stream is open (:class:`Readers`), and is
closed as soon as they stop reading: Stop (Gradio closes the handler) or a closed tab / dropped
connection (the stream ends).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import gradio as gr

from ki2api.api.common import CLIENT_CLOSED
from ki2api.kiro.accounts.credentials import AccountSpec
from ki2api.model.context import RequestContext, current_request, note_error
from ki2api.model.deltas import Delta
from ki2api.model.errors import GatewayError, NotConfigured
from ki2api.model.ids import hex_id
from ki2api.model.request import ChatRequest, Message, Reasoning, TextPart, ToolSpec
from ki2api.ui.access import NotSignedIn, Playground
from ki2api.ui.answer import AnswerView, ChatMessages, history_to_messages
from ki2api.ui.guard import Readers
from ki2api.ui.i18n import t
from ki2api.ui.tokens import PageKey

if TYPE_CHECKING:
    from ki2api.runtime import Runtime

log = logging.getLogger("ki2api.ui")

MAX_MESSAGE_CHARS = 100_000
READER_GRACE = 5.0  # seconds a chat waits for its visitor to open the answer stream

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


class _Chat:
    """One chat: the upstream answer is read by a task of its own (the pump) into a queue the
    handler drains, so that the pump can be cancelled — the upstream closed, the account's slot
    given back — the moment the visitor stops reading, even when Gradio has stopped calling
    the handler (it leaves a generator whose reader left suspended, never closed)."""

    def __init__(self, rt: Runtime, playground: Playground, request: ChatRequest) -> None:
        self.rt = rt
        self.playground = playground
        self.request = request
        self.ctx = RequestContext(f"req_{hex_id()}")
        self.started = time.perf_counter()
        self.deltas: asyncio.Queue[Delta | None] = asyncio.Queue()  # None: the pump is done
        self.error: GatewayError | None = None
        self.spec: AccountSpec | None = None  # the visitor's token after use (maybe refreshed)
        self.status = CLIENT_CLOSED  # unless the answer ends or fails on its own
        self.recorded = False

    def record(self, status: int) -> None:
        if not self.recorded:
            self.recorded = True
            self.playground.record(self.ctx, status, time.perf_counter() - self.started)

    def start(self, own: AccountSpec | None, release: Callable[[], None]) -> Callable[[], None]:
        """Start the pump; returns what stops it (once; later calls do nothing). However the
        pump ends — even cancelled before it ran — the slot is given back, the chat counted
        and the handler woken (a ``None`` in the queue)."""
        pump = asyncio.create_task(self._pump(own))

        def finished(_: object) -> None:
            release()
            self.record(self.status)
            self.deltas.put_nowait(None)

        pump.add_done_callback(finished)
        stopped = False

        def stop() -> None:
            nonlocal stopped
            if not stopped:  # one cancellation: a second would cut the closing short
                stopped = True
                pump.cancel()

        return stop

    async def _pump(self, own: AccountSpec | None) -> None:
        current_request.set(self.ctx)  # this task's own context: the gateway fills it in
        stream = None
        try:
            lease = await self.rt.pool.ephemeral_lease(own) if own is not None else None
            stream = await self.rt.gateway.open(self.request, lease=lease)
            async for delta in stream:
                self.deltas.put_nowait(delta)
            self.status = 200
            if lease is not None:
                self.spec = lease.spec  # keep a refreshed token for the next message
        except GatewayError as exc:
            self.error = exc
            self.status = exc.status
            note_error(exc.openai_code)
        except Exception:  # a bug must not leave the chat hanging, nor show a trace
            log.exception("playground request failed")
            self.error = GatewayError("internal error")
            self.status = 500
        finally:
            if stream is not None:
                # Closing returns the connection and the account's slot: it must finish.
                await asyncio.shield(stream.aclose())


def make_chat_handler(
    runtime: Runtime,
    playground: Playground,
    readers: Readers,
) -> Callable[..., AsyncIterator[ChatUpdate]]:
    async def chat(
        message: str,
        history: ChatMessages | None,
        model: str,
        system: str,
        thinking: bool,
        tools: bool,
        own: AccountSpec | None,
        signed: PageKey | None,
        lang: str,
        request: gr.Request,
    ) -> AsyncIterator[ChatUpdate]:
        """Yields (chat, cleared textbox, metrics line, the visitor's token spec)."""
        history = list(history or [])
        message = (message if isinstance(message, str) else "").strip()[:MAX_MESSAGE_CHARS]
        if not message:
            yield history, "", "", own
            return
        rt = runtime
        models = [m.id for m in rt.catalog.list()]
        model = model if model in models else models[0]  # raw calls may send anything
        shown = [*history, {"role": "user", "content": message}]
        view = AnswerView(lang=lang)
        run = _Chat(rt, playground, build_request(message, history, model, system, thinking, tools))
        try:
            if own is None:
                # the API's key check and rate limit; a client key's limits and usage
                run.ctx.caller = await playground.caller(signed)
            # Nothing goes upstream for a visitor who does not read the answer.
            session = request.session_hash if request is not None else None
            if session is None or not await readers.wait_for_reader(session, READER_GRACE):
                run.record(CLIENT_CLOSED)
                return
            release = playground.take_slot() if own is None else _nothing
        except GatewayError as exc:
            run.ctx.error = exc.openai_code or "error"
            run.record(exc.status)
            view.fail(page_message(exc, rt, lang))
            yield [*shown, *view.messages()], "", "", own
            return
        yield [*shown, *view.messages()], "", "", own
        stop = run.start(own, release)
        gone = asyncio.create_task(readers.wait_until_gone(session))
        gone.add_done_callback(lambda _: stop())  # the visitor stopped reading: close it now
        try:
            done = False
            while not done:
                batch = [await run.deltas.get()]
                while not run.deltas.empty():
                    batch.append(run.deltas.get_nowait())
                for delta in batch:
                    if delta is None:
                        done = True
                    else:
                        view.feed(delta)
                if not done:
                    yield [*shown, *view.messages()], gr.update(), view.metrics(model), own
        finally:
            stop()  # Stop (Gradio closes this generator), or the answer is over
            gone.cancel()
        if run.error is not None:
            view.fail(page_message(run.error, rt, lang))
        view.finish()
        own = run.spec or own
        yield [*shown, *view.messages()], gr.update(), view.metrics(model), own

    return chat


def page_message(exc: GatewayError, rt: Runtime, lang: str) -> str:
    """What the visitor reads in the chat, in their language, for the errors a newcomer meets
    first: no sign-in, no account on the server (signing in would not help then); the API's
    own message otherwise."""
    if isinstance(exc, NotSignedIn | NotConfigured) and not rt.pool.has_accounts():
        return t("chat_no_accounts", lang)
    if isinstance(exc, NotSignedIn):
        return t("chat_sign_in", lang)
    return exc.message


def _nothing() -> None:
    pass
