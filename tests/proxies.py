"""Real outbound proxies on loopback for tests: an HTTP CONNECT proxy and a SOCKS5 proxy (RFC
1928, user/password per RFC 1929), each in its own thread and event loop.

Each keeps what it saw: the targets it was asked for (a SOCKS5 proxy also whether the name came
unresolved, as socks5h sends it) and the bytes its clients sent through each tunnel, so a test
over plain HTTP can tell whose requests went through which proxy. ``refuse=True`` makes one
refuse every tunnel (403 / SOCKS "not allowed by ruleset"). ``tls=`` (a server context, e.g.
:meth:`tests.tls.TlsFiles.server_context`) makes the HTTP CONNECT proxy an ``https://`` one: TLS
to the proxy itself, the CONNECT inside it.

    with Socks5Proxy(username="u", password="p") as proxy:
        proxy.url  # socks5h://u:p@127.0.0.1:PORT
    with HttpConnectProxy(tls=tls_files.server_context()) as proxy:
        proxy.url  # https://127.0.0.1:PORT
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass, field

_MAX_KEPT = 1024 * 1024  # bytes kept per tunnel


@dataclass
class Tunnel:
    host: str
    port: int
    by_name: bool = False  # the client sent a host name (socks5h), not an address
    sent: bytearray = field(default_factory=bytearray)  # client -> target, as seen


Opened = tuple[Tunnel, asyncio.StreamReader, asyncio.StreamWriter]  # and the target's streams


class _Proxy:
    scheme = ""

    def __init__(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        refuse: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.username, self.password, self.refuse, self.tls = username, password, refuse, tls
        self.tunnels: list[Tunnel] = []
        self.refused: list[str] = []  # why each refused attempt was refused
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        who = f"{self.username}:{self.password}@" if self.username else ""
        return f"{self.scheme}://{who}127.0.0.1:{self.port}"

    def sent_by_all(self) -> bytes:
        return b"".join(bytes(t.sent) for t in self.tunnels)

    def start(self) -> _Proxy:
        self._thread.start()

        async def listen() -> asyncio.base_events.Server:
            return await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)

        self._server = asyncio.run_coroutine_threadsafe(listen(), self._loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> _Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            opened = await self._handshake(reader, writer)
            if opened is not None:
                await self._pipe(reader, writer, *opened)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Opened | None:
        raise NotImplementedError

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tunnel: Tunnel,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        self._writers.add(up_writer)

        async def forward(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if keep and len(tunnel.sent) < _MAX_KEPT:
                        tunnel.sent += data
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        try:
            await asyncio.gather(
                forward(reader, up_writer, True), forward(up_reader, writer, False)
            )
        finally:
            self._writers.discard(up_writer)

    async def _connect(self, tunnel: Tunnel) -> Opened | None:
        try:
            up_reader, up_writer = await asyncio.open_connection(tunnel.host, tunnel.port)
        except OSError:
            return None
        self.tunnels.append(tunnel)
        return tunnel, up_reader, up_writer


class HttpConnectProxy(_Proxy):
    @property
    def scheme(self) -> str:  # type: ignore[override]
        return "https" if self.tls else "http"

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Opened | None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        line, *fields = head.split("\r\n")
        method, target, _ = line.split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            self.refused.append(f"method {method}")
            return None
        if self.username is not None:
            expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            if headers.get("proxy-authorization") != f"Basic {expected}":
                writer.write(  # with a body, as real proxies send (the client ignores it)
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="tests"\r\ncontent-length: 12\r\n\r\n'
                    b"log in first"
                )
                self.refused.append("credentials")
                return None
        if self.refuse:
            writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            self.refused.append("policy")
            return None
        host, _, port = target.rpartition(":")
        opened = await self._connect(Tunnel(host.strip("[]"), int(port), by_name=True))
        if opened is None:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            return None
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        return opened


class Socks5Proxy(_Proxy):
    scheme = "socks5h"

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Opened | None:
        version, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        wanted = 0x02 if self.username is not None else 0x00
        if version != 5 or wanted not in methods:
            writer.write(b"\x05\xff")
            self.refused.append("method")
            return None
        writer.write(bytes([5, wanted]))
        if wanted == 0x02:
            _, ulen = await reader.readexactly(2)
            user = (await reader.readexactly(ulen)).decode()
            (plen,) = await reader.readexactly(1)
            password = (await reader.readexactly(plen)).decode()
            if (user, password) != (self.username, self.password):
                writer.write(b"\x01\x01")
                self.refused.append("credentials")
                return None
            writer.write(b"\x01\x00")
        _, command, _, kind = await reader.readexactly(4)
        if kind == 1:
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
        elif kind == 4:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
        else:
            (size,) = await reader.readexactly(1)
            host = (await reader.readexactly(size)).decode()
        port = int.from_bytes(await reader.readexactly(2), "big")
        reply = b"\x00\x01" + socket.inet_aton("0.0.0.0") + b"\x00\x00"
        if command != 1 or self.refuse:
            writer.write(b"\x05\x02" + reply)  # connection not allowed by ruleset
            self.refused.append("policy")
            return None
        opened = await self._connect(Tunnel(host, port, by_name=kind == 3))
        if opened is None:
            writer.write(b"\x05\x05" + reply)  # connection refused
            return None
        writer.write(b"\x05\x00" + reply)
        return opened
