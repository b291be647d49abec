"""A lean HTTP/1.1 load client: asyncio protocol + httptools, keep-alive pools, timestamps.

The client shares this 2-core machine with the servers it measures, so it must cost little
per request and per chunk: requests are pre-rendered bytes, responses are parsed by httptools
(C), and per read the client only takes a timestamp and counts a marker. Every target, direct
or through a gateway, is measured with this same code.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import cast

import httptools

_IDLE_LIMIT = 2.0  # servers close idle keep-alive connections after 5 s; never get close


@dataclass(frozen=True, slots=True)
class Target:
    """One request shape against one server: what to send and how to spot a token."""

    name: str
    host: str
    port: int
    raw: bytes  # the whole request, pre-rendered
    marker: bytes  # appears once per content chunk in the response body
    empty: bytes = b""  # a marker occurrence that carries no content (e.g. the role chunk)
    streamed: bool = True


def build_request(
    host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"host: {host}:{port}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass(slots=True)
class Result:
    start: float
    status: int = 0
    first_token: float | None = None  # arrival of the first read that carries content
    end: float | None = None
    tokens: int = 0
    token_times: list[float] = field(default_factory=list)  # arrival of each content read
    size: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200 and self.end is not None

    @property
    def latency(self) -> float:
        assert self.end is not None
        return self.end - self.start

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.closed = False
        self.idle_since = time.perf_counter()
        self._waiter: asyncio.Future[None] | None = None
        self._result: Result | None = None
        self._target: Target | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._keep_alive = False

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's ABCs: no isinstance check here.
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"bad response: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail("connection closed")

    # --- httptools callbacks ---
    def on_headers_complete(self) -> None:
        assert self._parser is not None and self._result is not None
        self._result.status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        result, target = self._result, self._target
        assert result is not None and target is not None
        result.size += len(body)
        n = body.count(target.marker)
        if n and target.empty:
            n -= body.count(target.empty)
        if n > 0:
            now = time.perf_counter()
            if result.first_token is None:
                result.first_token = now
            result.tokens += n
            result.token_times.append(now)

    def on_message_complete(self) -> None:
        assert self._result is not None
        self._result.end = time.perf_counter()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, message: str) -> None:
        if self._result is not None and self._result.end is None and self._result.error is None:
            self._result.error = message
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def send(self, target: Target, result: Result) -> bool:
        """Run one request; True when the connection can be reused."""
        assert self.transport is not None
        self._result, self._target = result, target
        self._parser = httptools.HttpResponseParser(self)
        self._keep_alive = False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(target.raw)
        try:
            await self._waiter
        finally:
            self._parser = None
        self.idle_since = time.perf_counter()
        return result.ok and self._keep_alive and not self.closed

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections to one server, opened on demand."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[_Connection] = []
        self.opened = 0

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port)
        self.opened += 1
        return conn

    async def _acquire(self) -> _Connection:
        now = time.perf_counter()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < _IDLE_LIMIT:
                return conn
            conn.close()
        return await self._connect()

    async def request(self, target: Target) -> Result:
        """One request; the clock starts before a connection is taken (a new connection's
        cost is part of the latency, as for any client)."""
        result = Result(time.perf_counter())
        try:
            conn = await self._acquire()
        except OSError as exc:
            result.error = f"connect: {exc}"
            return result
        reusable = False
        try:
            reusable = await conn.send(target, result)
        finally:
            if reusable:
                self._idle.append(conn)
            else:
                conn.close()
        return result

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
