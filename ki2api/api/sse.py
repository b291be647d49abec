"""Server-sent events helpers: keep-alive ticks, and a response that notices disconnects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


async def with_heartbeat(source: AsyncIterator[T], interval: float) -> AsyncIterator[T | None]:
    """Yield the items of ``source``, and ``None`` whenever ``interval`` seconds pass without one.

    The pending read is never cancelled by a tick (that would break the source); it is
    cancelled only when this generator is closed, e.g. because the client disconnected.
    """
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait((pending,), timeout=interval)
            if not done:
                yield None
                continue
            future, pending = pending, None
            try:
                item = future.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            # Wait, shielded, for the read to unwind: the source must be closed by the time
            # this generator is (it owns the upstream connection).
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                    await pending


class EventStreamResponse(StreamingResponse):
    """An SSE response that stops its body as soon as the client disconnects.

    Under ASGI spec 2.4+ Starlette notices a departed client only on its next write; with a
    silent upstream that can be many seconds of a Kiro request running for nobody. Listening
    for ``http.disconnect`` alongside the body cancels it at once, and closing the body closes
    the upstream request.
    """

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def stream_then_stop() -> None:
                with contextlib.suppress(OSError):  # the client went away mid-write
                    await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(stream_then_stop)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()
