"""uvicorn's httptools protocol, sending each response's head together with its first body bytes.

uvicorn writes the status line and headers as soon as the app sends ``http.response.start``,
and the body in a second write. Every write that reaches a waiting client wakes it up: the
client is scheduled for a head it cannot use yet, and on a busy host it may even preempt the
server before the body goes out (measured on the 2-core benchmark VM: ~0.2 ms per non-streamed
answer, see docs/benchmarks.md). Holding the head until the first body write (or the end of the
event loop's current pass, whichever comes first) sends both in one go.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# uvicorn writes a head (a response's, or an interim "100 Continue") in one piece, and a
# chunked body piece starts with its size in hex. A non-chunked body that happens to start
# with these bytes is only held until the next write or the end of the pass: harmless.
_HEAD_PREFIX = b"HTTP/1."


class HeadHoldingTransport:
    """Wraps a transport: a head is held and written with the next write, in one call."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))  # uvloop: one writev
        elif data[:7] == _HEAD_PREFIX:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)  # nothing else this pass: send it alone
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        # Everything else (flow control, extra info, abort, set_protocol) is the transport's.
        return getattr(self._transport, name)


class HeadWithBodyProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`HeadHoldingTransport` in front of the socket.

    Pass it as ``uvicorn.run(..., http=HeadWithBodyProtocol)``.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        wrapped: Any = HeadHoldingTransport(transport, loop)  # type: ignore[arg-type]
        super().connection_made(wrapped)
