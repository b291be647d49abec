"""Plays a :class:`Script` as one HTTP response, on raw ASGI, watching for the client leaving.

Three things run side by side while an answer plays: the script, a listener for
``http.disconnect`` (so a client that leaves is noticed at once, even during a ``Delay`` or a
``Stall``), and the server's stop signal. Whichever ends first ends the response.

Dropping a connection needs the socket: :class:`~ki2api.simulator.server.SimulatorServer` puts
the connection's transport into the ASGI scope under ``TRANSPORT_SCOPE_KEY``. Embedded in
another server (the gateway's demo mode) there is no transport, and a drop raises
:class:`ConnectionDropped` for that server to handle (it closes the connection).
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ki2api.simulator.scripts import (
    FRAME_STEPS,
    ConnectionDrop,
    CorruptCrc,
    CutMidFrame,
    Delay,
    Event,
    Flood,
    Garbage,
    HttpError,
    Raw,
    Script,
    SlowFirstByte,
    Stall,
    event_text,
    raw_text,
)
from ki2api.simulator.state import RequestRecord, SimulatorState

TRANSPORT_SCOPE_KEY = "ki2api.simulator.transport"
_SETTLE_TIMEOUT = 1.0


class ConnectionDropped(Exception):
    """A scripted connection drop, raised when the server gave no transport to close."""


class RenderError(Exception):
    """The renderer cannot express these bytes (a corrupt frame in OpenAI format)."""


class Renderer(Protocol):
    """Turns event-stream bytes into what one endpoint sends."""

    media_type: str
    buffered: bool  # True: nothing goes out before the end (a non-streamed answer)

    def render(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes | None:
        """The closing bytes, or None when the answer cannot end cleanly (drop instead)."""
        ...

    def error(self, step: HttpError) -> tuple[int, dict[str, str], bytes]: ...


class KiroRenderer:
    """The service's own format: event-stream bytes, sent as they are."""

    media_type = "application/vnd.amazon.eventstream"
    buffered = False

    def render(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes | None:
        return b""

    def error(self, step: HttpError) -> tuple[int, dict[str, str], bytes]:
        return step.status, dict(step.headers), orjson.dumps(step.body)


def with_bad_crc(frame: bytes) -> bytes:
    """The same frame with a message CRC that cannot match."""
    if len(frame) < 4:
        return frame
    good = zlib.crc32(frame[:-4])
    return frame[:-4] + ((good ^ 0xDEADBEEF) & 0xFFFFFFFF).to_bytes(4, "big")


class _Channel:
    """One response: lazy start, body writes, clean end, error answer or dropped connection."""

    def __init__(
        self,
        scope: Scope,
        send: Send,
        renderer: Renderer,
        record: RequestRecord,
        on_end: Callable[[], None],
    ) -> None:
        self.scope = scope
        self.send = send
        self.renderer = renderer
        self.record = record
        # Called just before the last byte leaves (or the connection drops), so a client that
        # has the whole answer finds the request log already complete.
        self.on_end = on_end
        self.started = False
        self.dropped = False
        # After a corrupt frame or garbage no client can decode more: later text is not "sent".
        self.poisoned = False

    async def _start(self, status: int, headers: dict[str, str]) -> None:
        self.started = True
        self.record.status = status
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await self.send({"type": "http.response.start", "status": status, "headers": raw})

    async def write(self, data: bytes, text: str, frames: int = 1, poison: bool = False) -> None:
        try:
            out = self.renderer.render(data)
        except RenderError:
            await self.drop()
            return
        self.poisoned = self.poisoned or poison
        record = self.record
        record.bytes_sent += len(data)
        record.frames_sent += frames
        if not self.poisoned:
            record.sent_text += text
        if self.renderer.buffered:
            return
        if not self.started:
            await self._start(200, {"content-type": self.renderer.media_type})
        if out:
            await self.send({"type": "http.response.body", "body": out, "more_body": True})

    async def finish(self) -> None:
        tail = self.renderer.finish()
        if tail is None:
            await self.drop()
            return
        if not self.started:
            headers = {"content-type": self.renderer.media_type}
            if self.renderer.buffered:
                headers["content-length"] = str(len(tail))
            await self._start(200, headers)
        self.on_end()
        await self.send({"type": "http.response.body", "body": tail, "more_body": False})

    async def http_error(self, step: HttpError) -> None:
        if self.started:  # too late for a status: the closest thing is a broken stream
            await self.drop()
            return
        status, headers, body = self.renderer.error(step)
        headers.setdefault("content-type", "application/json")
        headers["content-length"] = str(len(body))
        await self._start(status, headers)
        self.on_end()
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def drop(self) -> None:
        transport = self.scope.get(TRANSPORT_SCOPE_KEY)
        self.dropped = True
        self.on_end()
        if transport is None:
            raise ConnectionDropped("scripted connection drop")
        transport.close()


async def play(
    script: Script, channel: _Channel, *, latency: float = 0.0, chunk_interval: float = 0.0
) -> None:
    """Play every step; the response always ends (cleanly, with an error, or dropped) unless
    a ``Stall`` keeps it open until cancelled.

    Frames keep to a clock started with the answer: the first is due ``latency`` after the
    start, each next one ``chunk_interval`` after the previous one was due, and a ``Delay``
    moves the rest of the clock on. A remote service's cadence does not stretch with this
    machine's load; sleeping a fixed interval after each write would let every write, and every
    other process that took the CPU meanwhile, push all later frames back (with a gateway on the
    same 2 cores that drift came to ~0.4 ms over 20 frames and was counted as the gateway's).
    """
    loop = asyncio.get_running_loop()
    due = loop.time() + latency
    corrupt_next = False
    wrote = False
    for step in script.steps:
        if isinstance(step, (*FRAME_STEPS, Garbage)):
            if wrote:
                due += chunk_interval
            await _sleep_until(loop, due)
            wrote = True
            data = step.encode()
            if isinstance(step, Garbage):
                await channel.write(data, "", frames=0, poison=True)
                continue
            if corrupt_next:
                corrupt_next = False
                await channel.write(with_bad_crc(data), "", poison=True)
                continue
            if isinstance(step, Event):
                text = event_text(step.event_type, step.payload)
            elif isinstance(step, Raw):
                text = raw_text(data)
            else:
                text = ""
            await channel.write(data, text)
        elif isinstance(step, (Delay, SlowFirstByte)):
            due = max(due, loop.time()) + step.seconds
            await _sleep_until(loop, due)
        elif isinstance(step, CorruptCrc):
            corrupt_next = True
        elif isinstance(step, CutMidFrame):
            await _sleep_until(loop, due)
            await channel.write(step.half(), "", frames=0, poison=True)
            if step.abort:
                await channel.drop()
            else:
                await channel.finish()
            return
        elif isinstance(step, Flood):
            await _sleep_until(loop, due)
            await _flood(step, channel)
        elif isinstance(step, Stall):
            await asyncio.Event().wait()  # until cancelled
        elif isinstance(step, HttpError):
            await _sleep_until(loop, due)
            await channel.http_error(step)
            return
        elif isinstance(step, ConnectionDrop):
            await _sleep_until(loop, due)
            await channel.drop()
            return
        if channel.dropped:
            return
    await _sleep_until(loop, due)
    await channel.finish()


async def _flood(step: Flood, channel: _Channel) -> None:
    if channel.renderer.buffered:  # a buffered rendering would never answer: cut instead
        await channel.drop()
        return
    data = step.event.encode() * step.frames_per_write
    sent = 0
    while not channel.dropped and (step.total_bytes is None or sent < step.total_bytes):
        await channel.write(data, "", frames=step.frames_per_write)
        sent += len(data)
        await asyncio.sleep(0)  # the send waits while the client is not reading; this lets
        # a client that left cancel us even when it never has to


async def _sleep_until(loop: asyncio.AbstractEventLoop, due: float) -> None:
    delay = due - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


class LiveStreams:
    """The answers being played, so a stopping server can end them all at once (from any
    thread) instead of waiting for stalled streams."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def add(self, item: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._lock:
            self._live.add(item)

    def discard(self, item: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._lock:
            self._live.discard(item)

    def close_all(self) -> None:
        with self._lock:
            live = list(self._live)
        for loop, stop in live:
            if not loop.is_closed():
                loop.call_soon_threadsafe(stop.set)


async def _disconnected(receive: Receive) -> float:
    """When the client went away (the request body has already been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return time.monotonic()


class ScriptResponse(Response):
    """A Starlette response that plays a script (see the module docstring)."""

    def __init__(
        self,
        script: Script,
        *,
        state: SimulatorState,
        record: RequestRecord,
        renderer: Renderer,
        live: LiveStreams,
    ) -> None:
        super().__init__(status_code=200)
        self.script = script
        self.state = state
        self.record = record
        self.renderer = renderer
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state, record = self.state, self.record
        stop = asyncio.Event()
        handle = (asyncio.get_running_loop(), stop)
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                self.live.discard(handle)
                state.stream_closed()
                state.finish_record(record)

        channel = _Channel(scope, send, self.renderer, record, end)
        self.live.add(handle)
        state.stream_opened()
        player = asyncio.ensure_future(
            play(
                self.script,
                channel,
                latency=state.latency,
                chunk_interval=state.chunk_interval,
            )
        )
        watcher = asyncio.ensure_future(_disconnected(receive))
        stopper = asyncio.ensure_future(stop.wait())
        tasks: set[asyncio.Future[Any]] = {player, watcher, stopper}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if player in done:
                player.result()  # re-raises ConnectionDropped (no transport) and bugs
                if channel.dropped:
                    # Let the server see the connection go before returning, so it does not
                    # report an unfinished response.
                    await asyncio.wait({watcher}, timeout=_SETTLE_TIMEOUT)
            elif watcher in done and not channel.dropped:
                record.closed_by_client = True
                record.closed_by_client_at = watcher.result()
            elif stopper in done and not channel.dropped:
                player.cancel()
                await channel.drop()
                await asyncio.wait({watcher}, timeout=_SETTLE_TIMEOUT)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            end()
