"""uvicorn's HTTP protocols with a deadline for each request's head, and (httptools) sending each
response's head together with its first body bytes.

uvicorn times out an idle keep-alive connection, but not one that is sending a request head:
a client that opens a connection and trickles a few bytes (or none) holds it for ever, and a
few thousand of them exhaust the server's file descriptors. :class:`HeadDeadline` closes a
connection whose request head is not complete within ``header_timeout`` seconds of its start
(the connection's, or the first bytes of the next request on a kept-alive connection).

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

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_HEADER_TIMEOUT = 10.0

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


class HeadDeadline:
    """Mixed into a uvicorn protocol: the request head must be complete in ``header_timeout``.

    The timer starts with the connection, and again with the first bytes of a later request
    whose head does not come whole; a request's head is complete when uvicorn has made its
    request cycle. Only a connection
    waiting for a head has a timer, so an answer or a body upload can take as long as it needs.
    """

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    _head_timer: asyncio.TimerHandle | None = None
    # uvicorn's protocol provides these:
    cycle: Any
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not before:
            self._cancel_head_timer()  # a request's head is complete
        elif self._head_timer is None and (before is None or before.response_complete):
            # Part of the next head on a kept-alive connection (a head that comes whole, the
            # usual case, never needs a timer).
            if not self.transport.is_closing():
                self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_head_timer(self) -> None:
        if self.header_timeout > 0:
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class HeadWithBodyProtocol(HeadDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`HeadHoldingTransport` in front of the socket
    and a deadline for each request head.

    Pass it as ``uvicorn.run(..., http=HeadWithBodyProtocol)`` (or :func:`with_header_timeout`).
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        wrapped: Any = HeadHoldingTransport(transport, loop)  # type: ignore[arg-type]
        super().connection_made(wrapped)


class H11HeadDeadlineProtocol(HeadDeadline, H11Protocol):
    """uvicorn's h11 protocol (when httptools is not installed) with a deadline for each head."""


def with_header_timeout(protocol: type[HeadDeadline], seconds: float) -> type[HeadDeadline]:
    """``protocol`` with its own ``header_timeout`` (uvicorn builds protocols from a class)."""
    return type(protocol.__name__, (protocol,), {"header_timeout": seconds})
