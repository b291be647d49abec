"""A lean HTTP/1.1 transport for httpx: asyncio protocols and httptools instead of httpcore.

Why: under load httpcore's pool rescans every connection for every queued request (at 64
concurrent streams that was half the gateway's CPU), reads through anyio with a cancel scope
per read, parses with pure-Python h11 and writes a request's head and body separately. This
transport keeps everything the app uses from httpx (its client API, ``Request``/``Response``,
its exception classes, redirects, timeouts, limits) and does the wire work itself:

- one write per request; response body chunks are handed over as they arrive;
- idle connections kept per origin in a stack (taking and giving back one is O(1)),
  ``max_connections`` enforced with a FIFO of waiters, ``max_keepalive_connections`` and
  ``keepalive_expiry`` as in httpx;
- httpx's four timeouts (connect, write, read per chunk, pool) raise httpx's exceptions;
- a response closed before its end closes its connection (never reused half-read);
- a response head is limited to :data:`MAX_HEAD_BYTES`;
- an outbound proxy (HTTP CONNECT, SOCKS4, SOCKS5, SOCKS5h; python-socks does the handshake)
  tunnels every connection, TLS to the origin then runs inside the tunnel; an ``https://`` proxy
  is HTTP CONNECT over TLS to the proxy (done here), so TLS to the origin runs inside TLS.

:meth:`Http11Transport.exchange` is the same exchange without httpx's ``Request`` and
``Response`` objects, for the Kiro chat call (a pre-rendered request in, an :class:`Answer` out),
with optional idle ticks so a caller can send keep-alives while the server is silent.

HTTP/1.1 only: the app's clients are created with ``http2=False, trust_env=False``
(:func:`ki2api.kiro.http.client.create_http_client`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import httptools
import httpx
from python_socks import ProxyConnectionError, ProxyError, ProxyType
from python_socks.async_.asyncio import Proxy

from ki2api.kiro.accounts.proxy import ProxyUrl

Origin = tuple[str, str, int]  # scheme, host, port
_DEFAULT_PORTS = {"http": 80, "https": 443}
_READ_HIGH_WATER = 1024 * 1024  # stop reading from the socket past this much unread body
IDLE = b""  # what a read returns when its idle tick passes before any data
# A response's status line and headers together; Kiro's are under 2 KB. httptools has no limit
# of its own, so without this a broken or hostile server could grow one head without end.
MAX_HEAD_BYTES = 64 * 1024
Timeouts = dict[str, float | None]  # httpx's: connect, read, write, pool


class MalformedResponse(httpx.RemoteProtocolError):
    """The server's answer is not HTTP/1.1 as it must be, or its head is over the limit."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection, one exchange at a time. httptools calls the ``on_*`` methods."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.WriteTransport | None = None
        self.closed = False
        self.idle_since = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._parser: httptools.HttpResponseParser | None = None
        self._head: asyncio.Future[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._waiting_since: float | None = None  # the current read's start, across idle ticks
        self._ticked = False
        self._drained: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._error: httpx.TransportError | None = None
        self._until_close = False  # no length, not chunked: the body ends with the connection
        self._head_only = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.keep_alive = False
        self._head_bytes = 0  # received before the (final) head was complete

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's ABCs: no isinstance check.
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        if self._parser is None:  # bytes on an idle connection: it cannot be reused
            self.close()
            return
        in_head = self._head_bytes >= 0
        if in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(MalformedResponse(f"malformed HTTP response: {exc}"))
            self.close()
            return
        if in_head and self._head_bytes > MAX_HEAD_BYTES:  # and the head is still not complete
            limit = MAX_HEAD_BYTES // 1024
            self._fail(MalformedResponse(f"the response's headers are over {limit} KB"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is None or self.complete:
            return
        if self._until_close and self._head is not None and self._head.done():
            self.on_message_complete()
        elif exc is not None:
            self._fail(httpx.ReadError(f"connection lost: {exc}"))
        else:
            self._fail(httpx.RemoteProtocolError("the server closed the connection mid-answer"))
        self._wake()

    def pause_writing(self) -> None:
        self._drained = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # --- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        self.status = parser.get_status_code()
        if self.status < 200:  # 100 Continue and friends: the real answer follows
            self.headers = []
            return
        self._head_bytes = -1  # the head is complete: stop counting
        self.keep_alive = parser.should_keep_alive()
        names = {name.lower() for name, _ in self.headers}
        self._until_close = (
            b"content-length" not in names
            and b"transfer-encoding" not in names
            and self.status not in (204, 304)
        )
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        if self._head_only:
            self.keep_alive = False
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        if not body:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _READ_HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            cast(asyncio.ReadTransport, self.transport).pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.complete or self.status < 200:  # an interim 1xx answer ends here, not ours
            return
        self.complete = True
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        self._wake()

    # --- the exchange -------------------------------------------------------------------

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _fail(self, error: httpx.TransportError) -> None:
        if self._error is None:
            self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        self._wake()

    async def send(self, data: bytes, *, head_only: bool, write_timeout: float | None) -> None:
        """Write one request (head and body in one write) and start parsing its answer."""
        assert self.transport is not None
        if self.closed or self.transport.is_closing():
            raise httpx.RemoteProtocolError("the connection closed before the request was sent")
        self._parser = httptools.HttpResponseParser(self)
        self._head = self._loop.create_future()
        self._head_only = head_only
        self._head_bytes = 0
        self.transport.write(data)
        if self._drained is not None:
            try:
                async with asyncio.timeout(write_timeout):
                    await self._drained
            except TimeoutError:
                raise httpx.WriteTimeout("timed out sending the request") from None

    async def response_head(self, read_timeout: float | None, deadline: float | None) -> None:
        """Wait for the head, at most ``read_timeout`` seconds and not past ``deadline`` (loop
        time). One timer on the loop: ``asyncio.timeout`` costs several times more per call."""
        head = self._head
        assert head is not None
        if not head.done():
            loop = self._loop
            at = None if read_timeout is None else loop.time() + read_timeout
            if deadline is not None and (at is None or deadline < at):
                at = deadline
            timer = None if at is None else loop.call_at(at, self._head_timed_out)
            try:
                await head
            finally:
                if timer is not None:
                    timer.cancel()
        if self._error is not None and not self.status:
            raise self._error

    def _head_timed_out(self) -> None:
        self._fail(httpx.ReadTimeout("timed out waiting for the answer"))

    async def next_chunk(
        self, read_timeout: float | None, tick: float | None = None
    ) -> bytes | None:
        """The next piece of body as it arrived; None at the end; :data:`IDLE` when ``tick``
        seconds pass without data. The read timeout runs on across ticks."""
        while not self._chunks:
            if self.complete:
                return None
            if self._error is not None:
                raise self._error
            now = self._loop.time()
            if self._waiting_since is None:
                self._waiting_since = now
            wait = None if read_timeout is None else self._waiting_since + read_timeout - now
            ticking = tick is not None and (wait is None or tick < wait)
            if ticking:
                wait = tick
            self._wakeup = waiter = self._loop.create_future()
            timer = (
                None
                if wait is None
                else self._loop.call_later(max(0.0, wait), self._timer_fired, waiter, ticking)
            )
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
                self._wakeup = None
            if self._ticked:
                self._ticked = False
                return IDLE
        self._waiting_since = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered <= _READ_HIGH_WATER // 2 and self.transport:
            self._reading_paused = False
            cast(asyncio.ReadTransport, self.transport).resume_reading()
        return chunk

    def _timer_fired(self, waiter: asyncio.Future[None], tick: bool) -> None:
        if waiter.done():
            return
        if tick:
            self._ticked = True
            waiter.set_result(None)
        else:
            self._fail(httpx.ReadTimeout("timed out reading the answer"))

    def reset(self) -> None:
        """Ready for the next exchange (after a complete, reusable one)."""
        self._parser = None
        self._head = None
        self._chunks.clear()
        self._buffered = 0
        self._waiting_since = None
        self._ticked = False
        self.status = 0
        self.headers = []
        self.complete = False
        self.keep_alive = False
        self._until_close = False
        self.idle_since = time.monotonic()

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self._error is None

    def close(self, *, at_once: bool = False) -> None:
        """``at_once``: abort, skipping TLS's goodbye (close_notify and waiting for the peer's),
        which would outlive an event loop that ends next (the socket then leaks until GC)."""
        self.closed = True
        if self.transport is not None:
            if at_once:
                self.transport.abort()
            else:
                self.transport.close()


class _Pool:
    """Connections by origin; idle ones in a stack, the newest on top."""

    def __init__(
        self, limits: httpx.Limits, ssl_context: ssl.SSLContext, proxy: ProxyUrl | None = None
    ) -> None:
        self._max = limits.max_connections
        self._max_idle = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._ssl = ssl_context
        self._proxy = proxy
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._open = 0  # connections counted against max_connections (idle or in use)
        self._busy: set[_Connection] = set()  # handed out: closed too when the pool closes
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    def _take_idle(self, origin: Origin) -> _Connection | None:
        stack = self._idle.get(origin)
        now = time.monotonic()
        while stack:
            conn = stack.pop()
            self._idle_count -= 1
            expired = self._expiry is not None and now - conn.idle_since > self._expiry
            if not conn.closed and not expired:
                return conn
            self._discard(conn)
        return None

    def _evict_idle(self) -> bool:
        """Close the oldest idle connection of any origin, to make room for a new one."""
        oldest: _Connection | None = None
        for stack in self._idle.values():
            if stack and (oldest is None or stack[0].idle_since < oldest.idle_since):
                oldest = stack[0]
        if oldest is None:
            return False
        self._idle[oldest.origin].remove(oldest)
        self._idle_count -= 1
        self._discard(oldest)
        return True

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def acquire(
        self, origin: Origin, request: httpx.Request | None, timeouts: Timeouts
    ) -> _Connection:
        pool_timeout = timeouts.get("pool")
        deadline = None if pool_timeout is None else time.monotonic() + pool_timeout
        while True:
            if self._closed:
                raise httpx.ConnectError("the connection pool is closed", request=request)
            conn = self._take_idle(origin)
            if conn is not None:
                self._busy.add(conn)
                return conn
            if self._max is None or self._open < self._max or self._evict_idle():
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                async with asyncio.timeout(remaining):
                    await waiter
            except TimeoutError:
                raise httpx.PoolTimeout("no connection free in time", request=request) from None
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass the turn on
                raise
        self._open += 1
        try:
            conn = await self._connect(origin, request, timeouts.get("connect"))
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        if self._closed:  # closed while connecting: nobody will give this one back
            conn.close(at_once=True)
            raise httpx.ConnectError("the connection pool is closed", request=request)
        self._busy.add(conn)
        return conn

    async def _connect(
        self, origin: Origin, request: httpx.Request | None, timeout: float | None
    ) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = scheme == "https"
        context, name = (self._ssl, host) if tls else (None, None)
        via = "" if self._proxy is None else f" through the proxy {self._proxy}"
        try:
            async with asyncio.timeout(timeout):
                if self._proxy is None:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(origin), host, port, ssl=context, server_hostname=name
                    )
                elif self._proxy.tls:
                    tunnel = await _tls_tunnel(self._proxy, self._ssl, host, port, request)
                    conn = await _inside(tunnel, origin, context, name)
                else:
                    sock = await _tunnel(self._proxy, host, port, timeout, request)
                    try:
                        _, conn = await loop.create_connection(
                            lambda: _Connection(origin),
                            sock=sock,
                            ssl=context,
                            server_hostname=name,
                        )
                    except BaseException:
                        sock.close()
                        raise
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"timed out connecting to {host}{via}", request=request
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise httpx.ConnectError(
                f"the TLS certificate of {host} was not accepted ({exc.verify_message}); if a "
                "proxy or a private endpoint signs with its own CA, add that CA with "
                "KIRO_CA_BUNDLE",
                request=request,
            ) from exc
        except ssl.SSLError as exc:
            raise httpx.ConnectError(
                f"TLS with {host}{via} failed: {exc.reason or exc}", request=request
            ) from exc
        except OSError as exc:
            what = exc.strerror or str(exc) or type(exc).__name__
            raise httpx.ConnectError(
                f"cannot connect to {host}:{port}{via}: {what}", request=request
            ) from exc
        return conn

    def release(self, conn: _Connection) -> None:
        if conn not in self._busy:
            return  # given back already, or closed with the pool
        self._busy.discard(conn)
        if self._closed:
            conn.close(at_once=True)
        elif conn.reusable and (self._max_idle is None or self._idle_count < self._max_idle):
            conn.reset()
            self._idle.setdefault(conn.origin, []).append(conn)
            self._idle_count += 1
            self._wake_one()
        else:
            self._discard(conn)

    def close(self) -> None:
        """Close every connection, in use or idle (a stream still being read ends with a read
        error), and wake the waiters, who then find the pool closed."""
        self._closed = True
        for stack in self._idle.values():
            for conn in stack:
                conn.close(at_once=True)
        for conn in self._busy:
            conn.close(at_once=True)
        self._busy.clear()
        self._idle.clear()
        self._idle_count = 0
        self._open = 0
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()


async def _tunnel(
    proxy: ProxyUrl, host: str, port: int, timeout: float | None, request: httpx.Request | None
) -> socket.socket:
    """A socket connected to ``host:port`` through ``proxy``, the handshake done."""
    kinds = {"http": ProxyType.HTTP, "socks4": ProxyType.SOCKS4}
    client = Proxy(
        kinds.get(proxy.scheme, ProxyType.SOCKS5),
        proxy.host,
        proxy.port,
        proxy.username,
        proxy.password,
        rdns=proxy.remote_dns,
    )
    try:
        # Within the caller's connect timeout (python-socks would wait 60 s otherwise).
        return await client.connect(host, port, timeout=timeout or 3600.0)
    except ProxyConnectionError as exc:
        raise httpx.ProxyError(
            f"cannot reach the proxy {proxy}: {exc.strerror or exc}", request=request
        ) from exc
    except ProxyError as exc:
        raise httpx.ProxyError(
            f"the proxy {proxy} refused the connection to {host}:{port}: {exc}", request=request
        ) from exc


class _ProxyAnswer(asyncio.Protocol):
    """An ``https://`` proxy's answer to CONNECT: what it sent up to the blank line and after."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[tuple[bytes, bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        self._data = bytearray()

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        self._data += data
        head, blank, rest = self._data.partition(b"\r\n\r\n")
        if blank:
            self.answer.set_result((bytes(head), bytes(rest)))
        elif len(self._data) > MAX_HEAD_BYTES:
            self.answer.set_exception(ValueError("its answer to CONNECT is over the size limit"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ValueError("it closed the connection"))


async def _tls_tunnel(
    proxy: ProxyUrl, tls: ssl.SSLContext, host: str, port: int, request: httpx.Request | None
) -> asyncio.Transport:
    """A TLS connection to an ``https://`` proxy (its certificate checked with ``tls``, as
    Kiro's is) tunnelled by CONNECT to ``host:port``. Its errors name the proxy, masked.
    Not python-socks: its stream, cancelled during TLS to the proxy, waits for ever to close."""
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.create_connection(
            _ProxyAnswer, proxy.host, proxy.port, ssl=tls, server_hostname=proxy.host
        )
    except ssl.SSLCertVerificationError as exc:
        raise httpx.ProxyError(
            f"the TLS certificate of the proxy {proxy} was not accepted ({exc.verify_message}); "
            "if it signs with its own CA, add that CA with KIRO_CA_BUNDLE",
            request=request,
        ) from exc
    except ssl.SSLError as exc:
        raise httpx.ProxyError(
            f"TLS with the proxy {proxy} failed: {exc.reason or exc}", request=request
        ) from exc
    except OSError as exc:
        # asyncio's "Connect call failed (address)" says less than the errno's own words;
        # a name that does not resolve has a negative one (its strerror says it).
        code = exc.errno or 0
        why = os.strerror(code) if code > 0 else exc.strerror or str(exc)
        raise httpx.ProxyError(f"cannot reach the proxy {proxy}: {why}", request=request) from exc
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if proxy.username is not None:
        who = base64.b64encode(f"{proxy.username}:{proxy.password or ''}".encode()).decode()
        head += f"Proxy-Authorization: Basic {who}\r\n"
    try:
        transport.write(f"{head}\r\n".encode())
        try:
            answer, rest = await protocol.answer
        except ValueError as exc:
            raise httpx.ProxyError(
                f"the proxy {proxy} did not open a tunnel to {host}:{port}: {exc}",
                request=request,
            ) from exc
        line = answer.split(b"\r\n", 1)[0].decode("latin-1")
        version, _, status = line.partition(" ")
        if not version.startswith("HTTP/") or not status.startswith("200"):
            why = status.strip()[:200] if version.startswith("HTTP/") else "not an HTTP answer"
            raise httpx.ProxyError(
                f"the proxy {proxy} refused the connection to {host}:{port}: {why}",
                request=request,
            )
        if rest:  # the origin spoke before the request: not one of ours
            raise httpx.ProxyError(
                f"the proxy {proxy} sent data past its answer to CONNECT", request=request
            )
    except BaseException:
        transport.abort()
        raise
    return transport


async def _inside(
    tunnel: asyncio.Transport, origin: Origin, tls: ssl.SSLContext | None, name: str | None
) -> _Connection:
    """A connection over an ``https://`` proxy's tunnel, with TLS to the origin inside the
    proxy's own when ``tls`` is given (asyncio's start_tls takes a TLS transport)."""
    conn = _Connection(origin)
    transport = tunnel
    try:
        if tls is None:
            transport.set_protocol(conn)
        else:
            loop = asyncio.get_running_loop()
            started = await loop.start_tls(transport, conn, tls, server_hostname=name)
            if started is None:  # the tunnel closed meanwhile
                raise ConnectionResetError("the proxy closed the tunnel")
            transport = started
    except BaseException:
        tunnel.abort()
        raise
    conn.connection_made(transport)
    return conn


class Answer:
    """A response whose head has arrived; read its body with :meth:`read`, then :meth:`aclose`
    (which gives the connection back to the pool if the body was read to the end)."""

    __slots__ = ("status", "headers", "_pool", "_conn", "_timeout", "_released")

    def __init__(self, pool: _Pool, conn: _Connection, read_timeout: float | None) -> None:
        self.status = conn.status
        self.headers = conn.headers
        self._pool, self._conn, self._timeout = pool, conn, read_timeout
        self._released = False

    def read(self, tick: float | None = None) -> Awaitable[bytes | None]:
        """The next piece of body; None at the end; :data:`IDLE` after ``tick`` quiet seconds."""
        return self._conn.next_chunk(self._timeout, tick)

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._conn)  # closes it unless the answer was read to the end


class _Body(httpx.AsyncByteStream):
    def __init__(self, answer: Answer, request: httpx.Request) -> None:
        self._answer, self._request = answer, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = self._answer.read
        while True:
            try:
                chunk = await read()
            except httpx.TransportError as exc:
                exc.request = self._request
                raise
            if chunk is None:
                return
            yield chunk

    async def aclose(self) -> None:
        await self._answer.aclose()


def _request_bytes(request: httpx.Request, body: bytes) -> bytes:
    target = request.url.raw_path
    lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1"]
    chunked = False
    for name, value in request.headers.raw:
        if name.lower() == b"transfer-encoding" and value.lower() == b"chunked":
            chunked = True
        lines.append(name + b": " + value)
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if chunked:  # the body was read whole: send it as one chunk
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    return head + body


class Http11Transport(httpx.AsyncBaseTransport):
    """``httpx.AsyncClient(transport=Http11Transport(limits=...))``."""

    def __init__(
        self,
        *,
        limits: httpx.Limits | None = None,
        verify: ssl.SSLContext | bool = True,
        proxy: ProxyUrl | None = None,
    ) -> None:
        ctx = (
            verify
            if isinstance(verify, ssl.SSLContext)
            else httpx.create_ssl_context(verify, trust_env=False)
        )
        self._pool = _Pool(limits or httpx.Limits(), ctx, proxy)

    async def exchange(
        self,
        origin: Origin,
        data: bytes,
        timeouts: Timeouts,
        *,
        head_only: bool = False,
        request: httpx.Request | None = None,
        deadline: float | None = None,
        while_waiting: Callable[[], object] | None = None,
    ) -> Answer:
        """Send a whole pre-rendered request (head and body) and wait for the answer's head,
        giving up with :class:`httpx.ReadTimeout` at ``deadline`` (loop time) if one is given.
        ``while_waiting`` runs once the request is sent, before the wait."""
        conn = await self._pool.acquire(origin, request, timeouts)
        try:
            await conn.send(data, head_only=head_only, write_timeout=timeouts.get("write"))
            if while_waiting is not None:
                while_waiting()
            await conn.response_head(timeouts.get("read"), deadline)
        except httpx.TransportError as exc:
            if request is not None:
                exc.request = request
            self._pool.release(conn)  # not complete: closed
            raise
        except BaseException:  # cancelled (e.g. the caller's own deadline)
            self._pool.release(conn)
            raise
        return Answer(self._pool, conn, timeouts.get("read"))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        scheme = request.url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}", request=request)
        origin = (scheme, request.url.host, request.url.port or _DEFAULT_PORTS[scheme])
        timeouts = cast(Timeouts, request.extensions.get("timeout", {}))
        body = await request.aread()
        answer = await self.exchange(
            origin,
            _request_bytes(request, body),
            timeouts,
            head_only=request.method == "HEAD",
            request=request,
        )
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            stream=_Body(answer, request),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        self._pool.close()
