"""The HTTP flow every chat front door shares, as a bare ASGI app, and the lane that serves it.

Every answer goes the same way: check the key, read the JSON body, then (cancelled at once if
the client leaves) let the front door parse it and open the upstream answer (:class:`Opened`:
the request, its delta stream, and the format's renderer), and either stream it through the
renderer (:meth:`_Exchange.stream`, the one loop for every format) or collect it and send the
renderer's whole answer as one JSON body. A front door (:class:`ChatDoor`) only parses; its
renderer (:mod:`ki2api.api.renderer`) only renders.

The chat routes are the hot path: the app (:class:`ki2api.app.Ki2API`) hands them to their
endpoint through its API middleware only. They stay registered with FastAPI too
(:func:`add_documented_route`), for the OpenAPI schema and for any app built without the lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import orjson
from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ki2api.api.auth import authenticate, key_from
from ki2api.api.common import CLIENT_CLOSED, read_json
from ki2api.api.renderer import Renderer
from ki2api.model.context import current_request
from ki2api.model.errors import GatewayError
from ki2api.model.logsafe import printable
from ki2api.model.request import ChatRequest
from ki2api.pipeline.gateway import DeltaStream, Gateway, collect
from ki2api.pipeline.websearch import open_answer
from ki2api.settings import Settings
from ki2api.teams.gate import Teams

RendererT = TypeVar("RendererT", bound=Renderer)
log = logging.getLogger("ki2api")

_SSE_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ],
}


@dataclass(slots=True)
class Opened(Generic[RendererT]):
    """An answer a front door has opened: what the flow streams or collects."""

    request: ChatRequest
    stream: DeltaStream
    renderer: RendererT


async def open_rendered(
    gateway: Gateway,
    request: ChatRequest,
    renderer: RendererT,
    conversation_header: str | None,
) -> Opened[RendererT]:
    """Open the upstream answer for ``renderer``, which prepares while the upstream thinks."""
    stream = await open_answer(
        gateway,
        request,
        conversation_header=conversation_header,
        while_waiting=renderer.prepare,
    )
    renderer.prepare()  # a no-op unless the gateway had no moment for it
    return Opened(request, stream, renderer)


class ChatDoor(Protocol):
    """What a front door adds to the shared flow: its parsing and its errors."""

    def error_response(self, error: GatewayError) -> Response: ...

    async def open(self, body: Any, conversation_header: str | None) -> Opened[Any]:
        """Parse the body into the internal request and open the upstream answer
        (``conversation_header``: the client's ``X-Conversation-Id``, if it sent one)."""
        ...


class CancelOnDisconnect:
    """``async with CancelOnDisconnect(receive) as watch``: the body is cancelled as soon as the
    client disconnects, and ``watch.disconnected`` says so afterwards.

    Servers do not cancel a handler whose client left while it waits on the upstream; without
    this an abandoned request would run on for nothing. One watcher task per request, which
    cancels the handler's own task (no second task for the work).
    """

    __slots__ = ("_receive", "_task", "_watcher", "disconnected")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.disconnected = False

    async def __aenter__(self) -> CancelOnDisconnect:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                self._task.cancel()
                return

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._watcher.cancel()
        if (
            self.disconnected
            and exc_type is not None
            and issubclass(exc_type, asyncio.CancelledError)
        ):
            # Swallow only our own cancellation, not a server shutdown's.
            return self._task.uncancel() == 0
        return False


class ChatEndpoint:
    """The ASGI app for one chat route (``POST`` only; the app and the router see to that)."""

    def __init__(self, door: ChatDoor, settings: Settings, teams: Teams | None = None) -> None:
        self.door = door
        self.settings = settings
        self.teams = teams  # client keys; None: API_KEY only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = _Exchange(self.door, send)
        try:
            await exchange.serve(self.settings, self.teams, scope, receive)
        except Exception:
            # Last line of defence (this route bypasses the app's error middleware): a bug
            # still answers in the client's format, without a trace, if nothing went out yet.
            log.exception("unexpected error on POST %s", printable(scope.get("path")))
            if exchange.started:
                raise  # the server cuts the connection: the client sees a broken stream
            error = self.door.error_response(GatewayError("Internal error in the gateway."))
            await error(scope, receive, send)


class _Exchange:
    """One request on a chat route."""

    __slots__ = ("door", "send", "started")

    def __init__(self, door: ChatDoor, send: Send) -> None:
        self.door = door
        self.send = send
        self.started = False

    async def serve(
        self, settings: Settings, teams: Teams | None, scope: Scope, receive: Receive
    ) -> None:
        door = self.door
        x_api_key, authorization, length, conversation = _wanted_headers(scope)
        try:
            caller = await authenticate(key_from(x_api_key, authorization), settings, teams)
            ctx = current_request.get()
            if ctx is not None:
                ctx.caller = caller  # Gateway.open admits it; the access log settles it
            body = await read_json(receive, length, settings.max_body_bytes)
        except GatewayError as exc:
            await self.respond(door.error_response(exc), scope, receive)
            return
        except ClientDisconnect:  # gone while sending the body
            await self.respond(Response(status_code=CLIENT_CLOSED), scope, receive)
            return
        response: Response | None = None
        opened: Opened[Renderer] | None = None
        async with CancelOnDisconnect(receive) as watch:
            try:
                opened = await door.open(body, conversation)
                if opened.request.stream:
                    await self.stream(opened)
                    return
                response = await self.whole(opened)
            except GatewayError as exc:
                response = door.error_response(exc)
        if watch.disconnected:
            response = Response(status_code=CLIENT_CLOSED)  # for the access log; nobody reads it
        assert response is not None
        try:
            await self.respond(response, scope, receive)
        finally:
            if opened is not None:
                # Closing the upstream answer (the connection back to the pool, the account's
                # record, the stats) comes after the client has its answer.
                await opened.stream.aclose()

    async def whole(self, opened: Opened[Renderer]) -> Response:
        """The answer collected, as one JSON body (the stream stays open: see :meth:`serve`)."""
        try:
            done = await collect(opened.stream, close=False)
        except GatewayError as exc:
            raise opened.renderer.status_error(exc) from None
        answer, headers = opened.renderer.whole(done)
        return Response(orjson.dumps(answer), media_type="application/json", headers=headers)

    async def respond(self, response: Response, scope: Scope, receive: Receive) -> None:
        self.started = True
        await response(scope, receive, self.send)

    async def stream(self, opened: Opened[Renderer]) -> None:
        """The one streaming loop: the renderer's bytes for each batch of deltas, one write
        per batch; the stream closed once the last piece (sent with the end of the body) is
        out. The renderer's preamble and the response head go out with the first batch: on
        the way to the first token every write costs a wake-up of the client, and there is
        nothing to tell it before then. Keep-alives are deltas like any other. Before the
        first write a :class:`GatewayError` (the renderer's refusal of a first batch) is still
        an HTTP error; after it, the renderer's in-stream error ends the answer."""
        renderer, stream = opened.renderer, opened.stream
        pending = renderer.start()
        with contextlib.suppress(OSError):  # the client went away mid-write (some servers raise)
            try:
                async for batch in stream.batches():
                    try:
                        piece = renderer.feed(batch)
                    except GatewayError as exc:
                        if not self.started:
                            raise
                        piece = renderer.error(exc)
                    if renderer.done:
                        await self.write(renderer, pending + piece, more=False)
                        return
                    if pending or piece:
                        await self.write(renderer, pending + piece, more=True)
                        pending = b""
                await self.write(renderer, pending + renderer.end(), more=False)
            finally:
                await stream.aclose()

    async def write(self, renderer: Renderer, piece: bytes, *, more: bool) -> None:
        send = self.send
        if not self.started:
            self.started = True
            extra = renderer.headers()
            await send(
                {**_SSE_START, "headers": _SSE_START["headers"] + extra} if extra else _SSE_START
            )
        await send({"type": "http.response.body", "body": piece, "more_body": more})


_WANTED = {b"x-api-key": 0, b"authorization": 1, b"content-length": 2, b"x-conversation-id": 3}


def _wanted_headers(scope: Scope) -> list[str | None]:
    """x-api-key, authorization, content-length and x-conversation-id, in one pass over the raw
    headers (ASGI names are lower case); of a repeated header the first, as Starlette reads."""
    found: list[str | None] = [None, None, None, None]
    for name, value in scope["headers"]:
        i = _WANTED.get(name)
        if i is not None and found[i] is None:
            found[i] = value.decode("latin-1")
    return found


class _Delegate(Response):
    """A "response" that hands the exchange to an ASGI app (the route's body is not read yet)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def add_documented_route(
    router: APIRouter, path: str, endpoint: ASGIApp, *, name: str, summary: str
) -> None:
    """Register ``POST path`` with FastAPI (schema, 405s) while ``endpoint`` does the work."""

    async def route(request: Request) -> Response:
        return _Delegate(endpoint)

    router.add_api_route(
        path,
        route,
        methods=["POST"],
        name=name,
        summary=summary,
        response_class=Response,
    )
