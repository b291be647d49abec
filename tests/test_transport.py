"""Http11Transport (ki2api/kiro/http/transport.py) on real sockets: streaming, keep-alive,
timeouts, pool limits and early closes behave as httpx's own transport does."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ki2api.kiro.http.transport import Http11Transport
from tests.servers import ServerThread

release_last = threading.Event()
BIG = bytes(range(256)) * 12_000  # ~3 MB: past the transport's read high-water mark


async def echo(request: Request) -> Response:
    body = await request.body()
    port = request.client.port if request.client else 0
    headers = {"x-client-port": str(port), "x-seen-type": request.headers.get("content-type", "")}
    return Response(body, headers=headers)


async def stream(request: Request) -> Response:
    async def parts() -> AsyncIterator[bytes]:
        yield b"first;"
        yield b"second;"
        await asyncio.to_thread(release_last.wait, 5)  # only after the client saw "first"
        yield b"last"

    return StreamingResponse(parts())


async def big(request: Request) -> Response:
    async def parts() -> AsyncIterator[bytes]:
        for i in range(0, len(BIG), 65536):
            yield BIG[i : i + 65536]

    return StreamingResponse(parts())


async def slow_head(request: Request) -> Response:
    await asyncio.sleep(1.0)
    return Response(b"late")


async def stall(request: Request) -> Response:
    async def parts() -> AsyncIterator[bytes]:
        yield b"one"
        await asyncio.sleep(2.0)
        yield b"two"

    return StreamingResponse(parts())


async def close(request: Request) -> Response:
    return Response(b"bye", headers={"connection": "close"})


app = Starlette(
    routes=[
        Route("/echo", echo, methods=["GET", "POST"]),
        Route("/stream", stream),
        Route("/big", big),
        Route("/slow-head", slow_head),
        Route("/stall", stall),
        Route("/close", close),
    ]
)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(app) as running:
        yield running


def client(**limits: int | None) -> httpx.AsyncClient:
    transport = Http11Transport(limits=httpx.Limits(**limits) if limits else None)
    return httpx.AsyncClient(transport=transport, timeout=5.0)


async def test_post_body_headers_and_keep_alive(server: ServerThread) -> None:
    async with client() as http:
        first = await http.post(f"{server.url}/echo", json={"a": 1})
        second = await http.post(f"{server.url}/echo", content=b"x" * 10_000)
    assert first.status_code == 200 and first.json() == {"a": 1}
    assert first.headers["x-seen-type"] == "application/json"
    assert second.content == b"x" * 10_000
    assert first.headers["x-client-port"] == second.headers["x-client-port"]  # reused


async def test_body_chunks_arrive_as_they_are_sent(server: ServerThread) -> None:
    release_last.clear()
    async with client() as http, http.stream("GET", f"{server.url}/stream") as response:
        seen = b""
        async for chunk in response.aiter_raw():
            seen += chunk
            if seen == b"first;second;":
                release_last.set()  # the server sends "last" only now
        assert seen == b"first;second;last"


async def test_a_large_body_survives_flow_control(server: ServerThread) -> None:
    async with client() as http, http.stream("GET", f"{server.url}/big") as response:
        data = b""
        async for chunk in response.aiter_raw():
            data += chunk
            await asyncio.sleep(0)
    assert data == BIG


async def test_connection_close_is_honoured(server: ServerThread) -> None:
    async with client() as http:
        assert (await http.get(f"{server.url}/close")).content == b"bye"
        assert (await http.get(f"{server.url}/echo")).status_code == 200


async def test_read_timeout_before_the_head(server: ServerThread) -> None:
    async with client() as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"{server.url}/slow-head", timeout=httpx.Timeout(5.0, read=0.2))
        assert (await http.get(f"{server.url}/echo")).status_code == 200  # pool still fine


async def test_exchange_deadline_cuts_the_wait_for_the_head(server: ServerThread) -> None:
    transport = Http11Transport()
    origin = ("http", server.host, server.port)
    request = f"GET /slow-head HTTP/1.1\r\nhost: {server.host}\r\n\r\n".encode()
    timeouts: dict[str, float | None] = {"connect": 5.0, "read": 30.0, "write": 5.0, "pool": 5.0}
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(httpx.ReadTimeout):
        await transport.exchange(origin, request, timeouts, deadline=started + 0.2)
    assert 0.15 < loop.time() - started < 0.9  # the deadline, not the 30 s read timeout
    assert transport._pool._idle_count == 0  # the half-answered connection was not kept
    echo = f"GET /echo HTTP/1.1\r\nhost: {server.host}\r\n\r\n".encode()
    answer = await transport.exchange(origin, echo, timeouts, deadline=loop.time() + 5)
    assert answer.status == 200
    await answer.aclose()
    await transport.aclose()
    await asyncio.sleep(0.05)  # the loop closes the sockets on its next passes


async def test_read_timeout_between_chunks(server: ServerThread) -> None:
    async with client() as http:
        timeout = httpx.Timeout(5.0, read=0.3)
        async with http.stream("GET", f"{server.url}/stall", timeout=timeout) as response:
            with pytest.raises(httpx.ReadTimeout):
                async for _ in response.aiter_raw():
                    pass


async def test_connect_error_on_a_closed_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/")


async def test_pool_limit_and_pool_timeout(server: ServerThread) -> None:
    async with client(max_connections=1) as http:
        async with http.stream("GET", f"{server.url}/stall") as held:
            assert held.status_code == 200
            with pytest.raises(httpx.PoolTimeout):
                await http.get(f"{server.url}/echo", timeout=httpx.Timeout(5.0, pool=0.2))
        # Closed half-read: its connection is dropped and the slot is free again.
        assert (await http.get(f"{server.url}/echo")).status_code == 200


async def test_a_waiting_request_gets_the_connection_given_back(server: ServerThread) -> None:
    async with client(max_connections=1) as http:
        first = await http.get(f"{server.url}/echo")
        waiting = [http.get(f"{server.url}/echo") for _ in range(5)]
        answers = await asyncio.gather(*waiting)
    ports = {first.headers["x-client-port"], *(a.headers["x-client-port"] for a in answers)}
    assert len(ports) == 1  # one connection, reused in turn


async def test_a_response_closed_early_is_not_reused(server: ServerThread) -> None:
    release_last.clear()
    async with client() as http:
        async with http.stream("GET", f"{server.url}/stream") as response:
            async for _ in response.aiter_raw():
                break
        release_last.set()
        after = await http.get(f"{server.url}/echo")
        again = await http.get(f"{server.url}/echo")
    assert after.status_code == 200
    assert after.headers["x-client-port"] == again.headers["x-client-port"]


def _raw_server(reply: bytes, answers: int) -> tuple[int, threading.Thread]:
    """Answers ``answers`` connections with ``reply``, then closes each one."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()

    def run() -> None:
        with sock:
            for _ in range(answers):
                conn, _ = sock.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(reply)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return sock.getsockname()[1], thread


async def test_body_that_ends_with_the_connection() -> None:
    port, thread = _raw_server(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close", 1)
    async with client() as http:
        response = await http.get(f"http://127.0.0.1:{port}/")
    assert response.content == b"until close"
    thread.join(2)


async def test_a_server_that_hangs_up_mid_body_is_an_error() -> None:
    port, thread = _raw_server(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort", 1)
    async with client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(f"http://127.0.0.1:{port}/")
    thread.join(2)


async def test_idle_connection_closed_by_the_server_is_not_reused() -> None:
    reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    port, thread = _raw_server(reply, 2)  # closes after each answer, without saying so
    async with client() as http:
        assert (await http.get(f"http://127.0.0.1:{port}/")).content == b"ok"
        await asyncio.sleep(0.1)  # the close reaches the idle connection
        assert (await http.get(f"http://127.0.0.1:{port}/")).content == b"ok"
    thread.join(2)


async def test_unsupported_scheme() -> None:
    async with client() as http:
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("ftp://127.0.0.1/")


async def test_closing_the_pool_closes_connections_in_use_and_wakes_waiters(
    server: ServerThread,
) -> None:
    # A stream still being read when its client closes (a background call at shutdown) must not
    # leave its socket open, and a request waiting for a connection must not wait forever.
    transport = Http11Transport(limits=httpx.Limits(max_connections=1))
    http = httpx.AsyncClient(transport=transport, timeout=5.0)
    held = await http.send(http.build_request("GET", f"{server.url}/stall"), stream=True)
    waiting = asyncio.create_task(http.get(f"{server.url}/echo"))
    await asyncio.sleep(0.05)
    await http.aclose()
    with pytest.raises(httpx.TransportError):
        await asyncio.wait_for(waiting, 2)
    with pytest.raises(httpx.TransportError):
        await held.aread()
    await held.aclose()
