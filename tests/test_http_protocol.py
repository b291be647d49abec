"""The server side of the hot path: one write per response head and body, the CPU handed to the
client after a write, and the upstream answer closed only after the client has its answer."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import sys
import threading
import time
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ki2api.api.endpoint import cpu_hand_over
from ki2api.server.protocol import HeadHoldingTransport
from ki2api.settings import Settings
from tests.servers import ServerThread
from tests.stack import Stack

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"


class RecordingTransport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, pieces: Any) -> None:
        self.calls.append(("writelines", b"".join(pieces)))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def test_head_goes_out_with_the_body_in_one_call() -> None:
    real = RecordingTransport()
    wrapped = HeadHoldingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    wrapped.write(HEAD)
    assert real.calls == []  # held
    wrapped.write(b"hello")
    assert real.calls == [("writelines", HEAD + b"hello")]
    await asyncio.sleep(0)  # the end-of-pass flush finds nothing left
    assert real.calls == [("writelines", HEAD + b"hello")]


async def test_a_head_alone_goes_out_at_the_end_of_the_loop_pass() -> None:
    real = RecordingTransport()
    wrapped = HeadHoldingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    wrapped.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    await asyncio.sleep(0)
    assert real.calls == [("write", b"HTTP/1.1 100 Continue\r\n\r\n")]


async def test_body_pieces_pass_straight_through_and_close_flushes_first() -> None:
    real = RecordingTransport()
    wrapped = HeadHoldingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    wrapped.write(b"5\r\nhello\r\n")
    assert real.calls == [("write", b"5\r\nhello\r\n")]
    wrapped.write(HEAD)
    wrapped.close()
    assert real.calls[1:] == [("write", HEAD), ("close", b"")]
    assert wrapped.get_extra_info("peername") == "info:peername"  # the rest is the transport's


async def _plain_json(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = await Request(scope, receive).body()
    await Response(b'{"echo":' + json.dumps(body.decode()).encode() + b"}")(scope, receive, send)


def _connect(server: ServerThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(5)
    return sock


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(v for k, v in _headers(head) if k == b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return data


def _headers(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:]
    return [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(b":") for line in lines)]


def _data_segments_received(sock: socket.socket) -> int:
    # struct tcp_info (linux/tcp.h): tcpi_data_segs_in, a u32 at byte 152 (Linux 4.6+)
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("I", info, 152)[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO layout is Linux's")
def test_a_response_arrives_in_one_tcp_segment() -> None:
    # uvicorn's own protocol sends 2 here (head, then body); measured, not assumed.
    with ServerThread(_plain_json) as server, _connect(server) as sock:
        for _ in range(5):
            before = _data_segments_received(sock)
            sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
            assert _read_response(sock).endswith(b'{"echo":"hi"}')
            time.sleep(0.02)  # nothing more is coming
            assert _data_segments_received(sock) - before == 1


def test_expect_100_continue_still_gets_its_interim_answer() -> None:
    with (
        ServerThread(_plain_json) as server,
        socket.create_connection(("127.0.0.1", server.port)) as sock,
    ):
        sock.settimeout(5)
        sock.sendall(
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n"
        )
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"abc")
        assert _read_response(sock).endswith(b'{"echo":"abc"}')


def test_hand_over_is_sched_yield_unless_switched_off() -> None:
    on = cpu_hand_over(Settings.from_env({}))
    off = cpu_hand_over(Settings.from_env({"YIELD_AFTER_WRITE": "0"}))
    assert on is getattr(os, "sched_yield", on)
    assert off is not on
    off()  # a no-op


def _hold_close_until(rt: Any, released: threading.Event) -> None:
    """Make every answer's close wait until ``released``: had the gateway closed the upstream
    answer before finishing the client's, the client would wait in vain and time out."""
    gateway_open = type(rt.gateway).open

    async def open_and_hold(self: Any, *args: Any, **kwargs: Any) -> Any:
        stream = await gateway_open(self, *args, **kwargs)
        close = stream.aclose

        async def aclose() -> None:
            while not released.is_set():
                await asyncio.sleep(0.005)
            await close()

        stream.aclose = aclose
        return stream

    rt.gateway.open = open_and_hold.__get__(rt.gateway)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "claude-sonnet-4.5", "stream": True}),
        ("/v1/messages", {"model": "claude-sonnet-4.5", "stream": True, "max_tokens": 100}),
    ],
)
def test_streamed_answer_ends_before_the_upstream_answer_is_closed(
    stack: Stack, path: str, body: dict[str, Any]
) -> None:
    rt = stack.runtime
    answered = threading.Event()
    _hold_close_until(rt, answered)
    body = {**body, "messages": [{"role": "user", "content": "hi"}]}
    before = len(rt.stats.recent())
    with httpx.Client(base_url=stack.url, headers=stack.headers(), timeout=5) as client:
        answer = client.post(path, json=body)  # returns once the body has ended
        answered.set()
    assert answer.status_code == 200
    assert answer.text.rstrip().endswith(("data: [DONE]", 'data: {"type":"message_stop"}'))
    deadline = time.monotonic() + 5
    while len(rt.stats.recent()) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(rt.stats.recent()) == before + 1  # the close still did its bookkeeping


@pytest.mark.parametrize("yield_after_write", ["1", "0"])
def test_whole_answer_is_sent_before_the_upstream_answer_is_closed(
    stack_factory: Any, yield_after_write: str
) -> None:
    stack: Stack = stack_factory({"YIELD_AFTER_WRITE": yield_after_write})
    rt = stack.runtime
    answered = threading.Event()
    _hold_close_until(rt, answered)
    body = {"model": "claude-sonnet-4.5", "messages": [{"role": "user", "content": "hi"}]}
    before = len(rt.stats.recent())
    with httpx.Client(base_url=stack.url, headers=stack.headers(), timeout=5) as client:
        answer = client.post("/v1/chat/completions", json=body)
        answered.set()
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"]
        deadline = time.monotonic() + 5
        while len(rt.stats.recent()) == before and time.monotonic() < deadline:
            time.sleep(0.01)
    # The close, after the answer, still did its bookkeeping.
    assert len(rt.stats.recent()) == before + 1
    assert rt.stats.recent()[-1].error is None
    account = rt.pool.snapshot()[0]
    assert account.errors == 0 and account.requests >= 1


# --- a deadline for request heads ---------------------------------------------------------------

HEADER_TIMEOUT = 1.0
CLOSE_BOUND = HEADER_TIMEOUT + 4.0  # generous: the machine is shared


async def slow_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body (however slowly it comes), waits if asked, answers its size."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["path"] == "/slow":
        await asyncio.sleep(HEADER_TIMEOUT * 2)
    body = str(size).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _protocols() -> list[Any]:
    from ki2api.server.protocol import H11HeadDeadlineProtocol, with_header_timeout
    from ki2api.server.run import http_protocol

    return [
        pytest.param(http_protocol(HEADER_TIMEOUT), id="httptools"),
        pytest.param(with_header_timeout(H11HeadDeadlineProtocol, HEADER_TIMEOUT), id="h11"),
    ]


@pytest.fixture(params=_protocols())
def deadline_server(request: pytest.FixtureRequest) -> Any:
    with ServerThread(slow_echo, http=request.param) as server:
        yield server


def _closed_within(sock: socket.socket, bound: float) -> float:
    """Seconds until the server closed ``sock`` (reads until EOF); fails past ``bound``."""
    started = time.monotonic()
    sock.settimeout(bound)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        pytest.fail(f"the server still held the connection after {bound} s")
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_a_half_sent_request_head_is_closed_within_the_timeout(deadline_server: Any) -> None:
    socks = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", deadline_server.port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
        socks.append(s)
    silent = socket.create_connection(("127.0.0.1", deadline_server.port))  # sends nothing
    try:
        for s in [*socks, silent]:
            _closed_within(s, CLOSE_BOUND)
    finally:
        for s in [*socks, silent]:
            s.close()


def test_a_trickled_head_does_not_reset_the_deadline(deadline_server: Any) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", deadline_server.port)) as s:
        s.settimeout(0.2)
        head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"x-pad: y\r\n" * 100
        for i in range(len(head)):
            try:
                s.sendall(head[i : i + 1])
            except OSError:
                break  # closed by the server
            try:
                if s.recv(4096) == b"":
                    break
            except TimeoutError:
                pass
            if time.monotonic() - started > CLOSE_BOUND:
                pytest.fail("a trickled head was held past the deadline")
    assert time.monotonic() - started < CLOSE_BOUND


def test_kept_alive_connections_slow_bodies_and_slow_answers_still_work(
    deadline_server: Any,
) -> None:
    with socket.create_connection(("127.0.0.1", deadline_server.port)) as s:
        s.settimeout(HEADER_TIMEOUT * 6)
        reader = s.makefile("rb")

        def answer() -> bytes:
            status = reader.readline()
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert status.startswith(b"HTTP/1.1 200"), status
            return reader.read(length)

        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer() == b"0"
        time.sleep(HEADER_TIMEOUT / 2)  # idle between requests (uvicorn's keep-alive is 5 s)
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer() == b"0"  # answered after 2x the head deadline: not cut
        # A body trickled over 2x the head deadline: the head was complete, so it may.
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        for piece in (b"a", b"b", b"c", b"d"):
            time.sleep(HEADER_TIMEOUT / 2)
            s.sendall(piece)
        assert answer() == b"4"
        # The deadline starts again for the next request's head.
        s.sendall(b"GET / HTTP/1.1\r\nHo")
        assert _closed_within(s, CLOSE_BOUND) >= HEADER_TIMEOUT * 0.5


def test_serve_passes_the_header_timeout_setting() -> None:
    from ki2api.server.run import http_protocol

    assert Settings().header_timeout == 10.0
    assert Settings.from_env({"HEADER_TIMEOUT": "3.5"}).header_timeout == 3.5
    assert http_protocol(3.5).header_timeout == 3.5
    assert http_protocol().header_timeout == 10.0
