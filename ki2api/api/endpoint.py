"""The HTTP flow every chat front door shares, as a bare ASGI app, and the lane that serves it.

Every answer goes the same way: check the key, read the JSON body, then (cancelled at once if
the client leaves) parse, open the upstream and either stream the rendered bytes or send one
JSON body. A front door (:class:`ChatDoor`) only parses and renders.

The chat routes are the hot path: the app (:class:`ki2api.app.Ki2API`) hands them to their
endpoint through its API middleware only. They stay registered with FastAPI too
(:func:`add_documented_route`), for the OpenAPI schema and for any app built without the lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Protocol, TypeVar

import orjson
from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ki2api.api.auth import authenticate, key_from
from ki2api.api.common import CLIENT_CLOSED, HeadedPiece, LastPiece, read_json
from ki2api.model.context import current_request
from ki2api.model.errors import GatewayError
from ki2api.model.logsafe import printable
from ki2api.settings import Settings
from ki2api.teams.gate import Teams

OpenT = TypeVar("OpenT")
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
_END_OF_BODY: Message = {"type": "http.response.body", "body": b"", "more_body": False}


class ChatDoor(Protocol[OpenT]):
    """What a front door adds to the shared flow: its parsing, its rendering, its errors."""

    def error_response(self, error: GatewayError) -> Response: ...

    async def open(self, body: Any, conversation_header: str | None) -> OpenT:
        """Parse the body into the internal request and open the upstream answer
        (``conversation_header``: the client's ``X-Conversation-Id``, if it sent one)."""
        ...

    def streamed(self, opened: OpenT) -> bool: ...

    def sse(self, opened: OpenT) -> AsyncIterator[bytes]:
        """The answer as server-sent events; errors after the first byte travel inside."""
        ...

    async def complete(self, opened: OpenT) -> tuple[Any, Mapping[str, str] | None]:
        """The whole answer as a JSON-ready body, and extra response headers. The upstream
        answer may stay open: :meth:`finish` closes it."""
        ...

    async def finish(self, opened: OpenT) -> None:
        """Close the upstream answer (again, harmlessly, if it is closed). The flow calls it
        once the client has its answer, so the bookkeeping that goes with closing (the
        connection back to the pool, the account's record, the stats) does not delay it."""
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

    def __init__(self, door: ChatDoor[Any], settings: Settings, teams: Teams | None = None) -> None:
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

    def __init__(self, door: ChatDoor[Any], send: Send) -> None:
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
        opened: Any = None
        async with CancelOnDisconnect(receive) as watch:
            try:
                opened = await door.open(body, conversation)
                if door.streamed(opened):
                    await self.stream(door.sse(opened))
                    return
                answer, headers = await door.complete(opened)
            except GatewayError as exc:
                response = door.error_response(exc)
            else:
                response = Response(
                    orjson.dumps(answer), media_type="application/json", headers=headers
                )
        if watch.disconnected:
            response = Response(status_code=CLIENT_CLOSED)  # for the access log; nobody reads it
        assert response is not None
        try:
            await self.respond(response, scope, receive)
        finally:
            if opened is not None:
                await door.finish(opened)

    async def respond(self, response: Response, scope: Scope, receive: Receive) -> None:
        self.started = True
        await response(scope, receive, self.send)

    async def stream(self, body: AsyncIterator[bytes]) -> None:
        # The head goes out with the first piece: on the way to the first token every write
        # costs a wake-up of the client, and there is nothing to tell it before then.
        send = self.send
        ended = False  # a LastPiece went out with the end of the body
        with contextlib.suppress(OSError):  # the client went away mid-write (some servers raise)
            try:
                async for piece in body:
                    if not self.started:
                        self.started = True
                        if type(piece) is HeadedPiece:
                            head = _SSE_START["headers"] + piece.headers
                            await send({**_SSE_START, "headers": head})
                        else:
                            await send(_SSE_START)
                    ended = type(piece) is LastPiece
                    more = not ended
                    await send({"type": "http.response.body", "body": piece, "more_body": more})
                    if ended:
                        break
            finally:
                await body.aclose()  # type: ignore[attr-defined]
            if not self.started:
                self.started = True
                await send(_SSE_START)
            if not ended:
                await send(_END_OF_BODY)


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
