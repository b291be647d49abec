"""The benchmark's concurrency-1 rounds, its memory-touched probe and its C floor, against real
processes: a loopback HTTP server that records the order requests arrive in, a child process
that touches a known amount of memory, and the compiled forwarder in front of an echo server."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from itertools import pairwise
from pathlib import Path

import orjson
import pytest

from bench.client import Target, build_request
from bench.load import Clients, rounds
from bench.procs import StartError, can_track_references, clear_referenced, referenced_kb
from bench.servers import start_native_hop

MARKER = b'"content":"'


async def _recording_server(arrivals: list[tuple[str, float]]) -> asyncio.Server:
    """HTTP/1.1 keep-alive server: notes each request's path and arrival time, answers with
    one content marker."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                arrivals.append((head.split(b" ", 2)[1].decode(), time.perf_counter()))
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                body = b'{"choices":[{"message":{"content":"hi"}}]}'
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its keep-alive connection
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _targets(port: int, count: int) -> list[Target]:
    return [
        Target(
            f"t{i}",
            "127.0.0.1",
            port,
            build_request("127.0.0.1", port, f"/t{i}", b"{}"),
            MARKER,
            streamed=False,
        )  # fmt: skip
        for i in range(count)
    ]


def _run_rounds(
    count: int, pause: float = 0.0, seed: int = 1
) -> tuple[dict[str, int], list[tuple[str, float]]]:
    arrivals: list[tuple[str, float]] = []

    async def main() -> dict[str, int]:
        server = await _recording_server(arrivals)
        port = server.sockets[0].getsockname()[1]
        clients = Clients()
        try:
            results = await rounds(
                clients, _targets(port, 3), count, warmup=1, pause=pause, seed=seed
            )
        finally:
            clients.close()
            server.close()
            await server.wait_closed()
            await asyncio.sleep(0.05)  # the handlers see the clients' close and close too
        return {name: sum(r.ok for r in rs) for name, rs in results.items()}

    return asyncio.run(main()), arrivals


def test_rounds_shuffle_the_order_so_no_target_always_follows_the_idle_spell() -> None:
    ok, arrivals = _run_rounds(count=12)
    assert ok == {"t0": 12, "t1": 12, "t2": 12}
    order = [path for path, _ in arrivals]
    per_round = [order[i : i + 3] for i in range(0, len(order), 3)]
    assert all(sorted(r) == ["/t0", "/t1", "/t2"] for r in per_round)
    firsts = {r[0] for r in per_round}
    assert firsts == {"/t0", "/t1", "/t2"}  # each target opens some round
    assert len({tuple(r) for r in per_round}) > 2
    _, again = _run_rounds(count=12)
    assert [p for p, _ in again] == order  # the same seed gives the same orders


def test_rounds_pause_leaves_silence_before_every_request() -> None:
    ok, arrivals = _run_rounds(count=2, pause=0.05)
    assert ok == {"t0": 2, "t1": 2, "t2": 2}
    gaps = [later - earlier for (_, earlier), (_, later) in pairwise(arrivals)]
    assert len(gaps) == 8 and min(gaps) >= 0.05


TOUCHER = """
import sys
sys.stdout.write("ready\\n"); sys.stdout.flush()
block = bytearray(32 * 1024 * 1024)  # written now, so its pages exist before the probe
sys.stdout.write("allocated\\n"); sys.stdout.flush()
sys.stdin.readline()
for i in range(0, len(block), 4096):
    block[i] = 1
sys.stdout.write("touched\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


def test_referenced_memory_counts_the_pages_a_process_touched() -> None:
    argv = [sys.executable, "-c", TOUCHER]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdin is not None and child.stdout is not None
        try:
            assert child.stdout.readline() == "ready\n"
            if not can_track_references(child.pid):
                pytest.skip("this kernel does not expose per-page referenced bits")
            assert child.stdout.readline() == "allocated\n"
            clear_referenced([child.pid])
            quiet = referenced_kb([child.pid])
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline() == "touched\n"
            busy = referenced_kb([child.pid])
            assert quiet < 4 * 1024  # a process waiting on a read touches next to nothing
            assert busy - quiet >= 31 * 1024  # every page of the 32 MB block
        finally:
            child.kill()


@pytest.mark.parametrize("delay_us", [0, 2000], ids=["hop", "wire"])
def test_native_hop_forwards_both_ways_and_closes_what_it_opened(
    tmp_path: Path, delay_us: int
) -> None:
    """The C floor (bench/native_hop.c), and the same with a delay (the wire of
    bench/tricks.py): bytes go through unchanged both ways, and once both sides hang up it holds
    no sockets for the connection (a leak would skew long runs)."""
    with ExitStack() as stack:
        try:
            hop, problem = start_native_hop(stack, tmp_path, str(_echo_port(stack)), delay_us)
        except StartError as exc:
            pytest.fail(str(exc))
        if hop is None:
            pytest.skip(problem or "no native hop")
        port = int(hop.url.rsplit(":", 1)[1])
        fds_before = len(os.listdir(f"/proc/{hop.pid}/fd"))
        for size in (1, 70_000, 1_000_000):
            payload = os.urandom(size)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)
                received = b""
                while chunk := conn.recv(65536):
                    received += chunk
            assert received == payload
        deadline = time.monotonic() + 5
        while len(os.listdir(f"/proc/{hop.pid}/fd")) > fds_before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(os.listdir(f"/proc/{hop.pid}/fd")) == fds_before


def test_the_wire_delays_each_piece_by_its_own_send_time(tmp_path: Path) -> None:
    """With a delay, every piece comes back (through the wire twice, to an echo server) no
    sooner than two delays after it was sent, and pieces sent apart arrive as far apart: each
    keeps its own clock, none waits for the one before."""
    delay = 0.02
    with ExitStack() as stack:
        hop, problem = start_native_hop(stack, tmp_path, str(_echo_port(stack)), int(delay * 1e6))
        if hop is None:
            pytest.skip(problem or "no native hop")
        port = int(hop.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sent = []
            for piece in (b"a", b"b", b"c"):
                sent.append(time.monotonic())
                conn.sendall(piece)
                time.sleep(delay / 2)
            arrived: dict[bytes, float] = {}
            while len(arrived) < 3:
                for byte in conn.recv(16):
                    arrived[bytes([byte])] = time.monotonic()
        times = [arrived[p] for p in (b"a", b"b", b"c")]
        for went, came in zip(sent, times, strict=True):
            assert came - went >= 2 * delay - 0.001  # the clocks differ by µs, not ms
            assert came - went < 2 * delay + 1.0  # generous: the machine is shared
        assert times[2] - times[0] >= (sent[2] - sent[0]) - 0.005


def _echo_port(stack: ExitStack) -> int:
    """A thread serving TCP echo on loopback until the test ends."""
    server = socket.create_server(("127.0.0.1", 0))
    stack.callback(server.close)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return int(server.getsockname()[1])


def test_the_benchmark_upstream_answers_through_the_gateway(stack_factory) -> None:
    """The benchmark's simulator state keeps to the simulator's interface: a gateway in front
    of it gets the benchmark's fixed answer (a changed signature once made every bench request
    a 500 upstream, and the whole run measured 503s)."""
    import httpx

    from bench.upstream import TEXT, BenchState
    from tests.stack import API_KEY

    state = BenchState(latency=0.0, interval=0.0, chunks=5)
    stack = stack_factory(state=state)
    r = httpx.post(
        f"{stack.base_url}/chat/completions",
        json={"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == TEXT


def test_trick_verdicts_need_the_interval_and_the_a_a_noise_both_cleared() -> None:
    from bench.tricks import gain, verdict

    rng = random.Random(3)
    on = [100 + rng.gauss(0, 0.1) for _ in range(200)]
    again = [100 + rng.gauss(0, 0.1) for _ in range(200)]
    slower = [x + 0.5 for x in on]  # the trick off: 0.5 ms slower
    assert verdict(gain(slower, on, again)) == "pays"
    assert verdict(gain([x - 0.5 for x in on], on, again)) == "costs"
    assert verdict(gain(again, on, again)) == "noise"
    # A gain inside the A/A difference is noise, however tight its interval.
    assert verdict(gain(slower, on, [x + 1.0 for x in on])) == "noise"


@pytest.mark.parametrize("name", ["aiohttp", "httpx"])
async def test_the_benchmark_contenders_stream_a_chat(name: str) -> None:
    """bench/contenders.py: the chat call through httpx's API on each contender's transport
    streams Kiro's answer (the clients phase would otherwise measure errors)."""
    from bench.contenders import HttpxKiroClient, httpx_client
    from ki2api.kiro.accounts.credentials import Credential
    from ki2api.kiro.http.client import UpstreamHttp
    from ki2api.settings import Settings
    from ki2api.simulator import SimulatorServer, text_answer
    from ki2api.simulator.samples import kiro_request_body
    from tests.stack import stack_env

    async with SimulatorServer() as sim:
        settings = Settings.from_env(stack_env(sim.url))
        sim.state.enqueue(text_answer("from a contender"))
        http = httpx_client(name, settings)
        async with UpstreamHttp(settings) as upstream, http:
            kiro = HttpxKiroClient(http, upstream, settings)
            credential = Credential("bench", "bench-access-token", None, "us-east-1")
            body = orjson.dumps(kiro_request_body("hi", model_id="claude-sonnet-4.5"))
            response = await kiro.open(body, credential)
            try:
                frames = [f async for batch in response.frame_batches() if batch for f in batch]
            finally:
                await response.aclose()
    assert frames
