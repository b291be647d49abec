"""uvicorn's HTTP protocols with a deadline for each request's head.

uvicorn times out an idle keep-alive connection, but not one that is sending a request head:
a client that opens a connection and trickles a few bytes (or none) holds it for ever, and a
few thousand of them exhaust the server's file descriptors. :class:`HeadDeadline` closes a
connection whose request head is not complete within ``header_timeout`` seconds of its start
(the connection's, or the first bytes of the next request on a kept-alive connection).

uvicorn's protocol classes are not a documented API. What :class:`HeadDeadline` relies on:
asyncio's ``connection_made`` / ``data_received`` / ``connection_lost``, ``self.transport``,
and ``self.cycle``, the request cycle uvicorn makes once a head is complete (``None`` before
the first), with its ``response_complete`` flag. pyproject.toml pins uvicorn to the versions
this was tested with, and ``tests/test_http_protocol.py`` checks that shape on the installed
one, for both parsers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_HEADER_TIMEOUT = 10.0


class HeadDeadline:
    """Mixed into a uvicorn protocol: the request head must be complete in ``header_timeout``.

    The timer starts with the connection, and again with the first bytes of a later request
    whose head does not come whole; a request's head is complete when uvicorn has made its
    request cycle. Only a connection waiting for a head has a timer, so an answer or a body
    upload can take as long as it needs.
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


class HttpToolsHeadDeadlineProtocol(HeadDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request head.

    Pass it as ``uvicorn.run(..., http=HttpToolsHeadDeadlineProtocol)`` (or
    :func:`with_header_timeout`)."""


class H11HeadDeadlineProtocol(HeadDeadline, H11Protocol):
    """uvicorn's h11 protocol (when httptools is not installed) with a deadline for each head."""


def with_header_timeout(protocol: type[HeadDeadline], seconds: float) -> type[HeadDeadline]:
    """``protocol`` with its own ``header_timeout`` (uvicorn builds protocols from a class)."""
    return type(protocol.__name__, (protocol,), {"header_timeout": seconds})
