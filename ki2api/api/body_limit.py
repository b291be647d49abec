"""One body limit for every route of the app, as a pure ASGI middleware.

The API's routes read their JSON with ``MAX_BODY_BYTES`` already (and the chat routes bypass
this layer: they count their own bytes); the page's routes (Gradio's) read whatever they are
sent. This layer counts the bytes as they arrive — a chunked body or a lying ``content-length``
too — and answers 413 once a route's limit is passed, without ever holding the body itself.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ki2api.api.errors import error_response_for_path
from ki2api.model.errors import RequestTooLarge


class _TooLarge(Exception):
    """Raised into the app from ``receive`` once the body passed its limit."""


class BodyLimitMiddleware:
    """``limit_for(path)`` is the largest body (bytes) a request to ``path`` may send."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = self.limit_for(path)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(path, limit, scope, receive, send)  # the body is never read
            return

        size = 0
        exceeded = False
        started = False

        async def counted_receive() -> Message:
            nonlocal size, exceeded
            if exceeded:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # whatever the app makes of our error, the client gets the 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _TooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
            # the app wrapped our error in one of its own
        if exceeded and not started:
            await _refuse(path, limit, scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


async def _refuse(path: str, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    error = RequestTooLarge(f"Request body is larger than the limit of {limit} bytes.")
    response = error_response_for_path(path, error)
    response.headers["connection"] = "close"  # the rest of the body is not read
    await response(scope, receive, send)
