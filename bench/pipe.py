"""The floor: a TCP proxy that forwards bytes both ways and does nothing else (no HTTP parsing),
in its own process on uvloop. What it adds is the price of one more process hop on this
machine, which any gateway pays before doing any work.

    python -m bench.pipe --upstream-port 8991     # prints READY http://127.0.0.1:<port>
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast


class _Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.WriteTransport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    def __init__(self, port: int) -> None:
        self.port = port
        self.upstream: asyncio.WriteTransport | None = None
        self.pending: list[bytes] = []
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.WriteTransport, transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        client = self.transport
        loop = asyncio.get_running_loop()
        try:
            upstream, _ = await loop.create_connection(
                lambda: _Upstream(client),
                "127.0.0.1",
                self.port,
            )
        except OSError:
            self.transport.close()
            return
        self.upstream = cast(asyncio.WriteTransport, upstream)
        for data in self.pending:
            self.upstream.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def serve(upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(upstream_port), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"READY http://127.0.0.1:{port}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="byte-forwarding TCP proxy (the floor)")
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.upstream_port))
    except ImportError:
        asyncio.run(serve(args.upstream_port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
