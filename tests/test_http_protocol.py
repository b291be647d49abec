"""The server side of the hot path: the upstream answer closed only after the client has its
answer, a deadline for request heads (with uvicorn's httptools and h11 protocols), and the shape
of uvicorn's protocols that the deadline relies on."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from ki2api.settings import Settings
from tests.servers import ServerThread
from tests.stack import Stack


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


def test_whole_answer_is_sent_before_the_upstream_answer_is_closed(stack: Stack) -> None:
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


# --- what HeadDeadline relies on in uvicorn's protocols (not a documented API) ----------------


def _recording(protocol: type[Any], seen: list[tuple[str, Any]]) -> type[Any]:
    """``protocol`` noting what HeadDeadline reads: the transport it was given, and after each
    read the request cycle and whether its response is complete."""

    class Recording(protocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            seen.append(("transport", self.transport is transport))

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            cycle = self.cycle
            seen.append(("cycle", (cycle, None if cycle is None else cycle.response_complete)))

    return Recording


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_uvicorn_protocols_have_the_shape_the_head_deadline_relies_on(parser: str) -> None:
    from ki2api.server.protocol import H11HeadDeadlineProtocol, HttpToolsHeadDeadlineProtocol

    base = HttpToolsHeadDeadlineProtocol if parser == "httptools" else H11HeadDeadlineProtocol
    seen: list[tuple[str, Any]] = []
    with (
        ServerThread(slow_echo, http=_recording(base, seen)) as server,
        socket.create_connection(("127.0.0.1", server.port)) as s,
    ):
        s.settimeout(5)
        reader = s.makefile("rb")

        def exchange(*pieces: bytes) -> list[Any]:
            start = len([kind for kind, _ in seen if kind == "cycle"])
            for piece in pieces:
                s.sendall(piece)
                time.sleep(0.1)  # each piece its own read
            while reader.readline() not in (b"\r\n", b""):
                pass
            assert reader.read(1) == b"0"
            return [value for kind, value in seen if kind == "cycle"][start:]

        first = exchange(b"GET / HTTP/1.1\r\nHost: x\r\n", b"\r\n")
        assert first[0] == (None, None)  # no cycle before the first head is complete
        cycle, complete = first[1]
        assert cycle is not None and complete is False  # made with the head, answer pending
        assert cycle.response_complete  # and marked once the answer went out
        ((second, _),) = exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert second is not None and second is not cycle  # a new cycle per request
    assert [value for kind, value in seen if kind == "transport"] == [True]
