"""The benchmark's upstream: the Kiro simulator in its own process, answering every request
with the same fixed script at a fixed latency and chunk cadence.

    python -m bench.upstream --port 0 --latency 0.02 --interval 0.005 --chunks 20

It prints ``READY <url>`` once it listens. ``POST /_bench/config`` with a JSON object
(``latency``, ``interval``, ``chunks``) changes the timing for later requests, so one process
serves every phase (the memory phase slows the chunks down). Requests are not logged (the
simulator's log would grow through a long run), only counted: ``GET /_bench/count`` answers
``{"requests": n}``, the chat requests answered so far (``bench/teams.py`` checks the
gateway's usage accounting against it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import orjson
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from ki2api.simulator.accounts import Account
from ki2api.simulator.app import create_simulator_app
from ki2api.simulator.scripts import Script, text_answer
from ki2api.simulator.server import bind_socket, make_config, url_for
from ki2api.simulator.state import RequestRecord, SimulatorState

# ~4.5 characters per chunk at 20 chunks: the size of a model's token or two.
TEXT = "The quick brown fox jumps over the lazy dog, then naps in the warm afternoon sun. "


def answer(chunks: int) -> Script:
    return text_answer(TEXT, chunks=chunks, context_usage=None, name="bench")


class BenchState(SimulatorState):
    """Always the same answer; no request log."""

    def __init__(self, *, latency: float, interval: float, chunks: int) -> None:
        super().__init__(latency=latency, chunk_interval=interval)
        self.script = answer(chunks)
        self.count = 0  # chat requests seen

    def next_answer(
        self, default: Callable[[], Script], account: Account | None = None, body: Any = None
    ) -> tuple[Script, str | None]:
        return self.script, None

    def new_record(
        self, path: str, style: str, headers: dict[str, str], body_size: int
    ) -> RequestRecord:
        self.count += 1
        return RequestRecord(0, path, style, {}, None, body_size, 0.0)

    def finish_record(self, record: RequestRecord, status: int | None = None) -> None:
        pass


def with_control(app: ASGIApp, state: BenchState) -> ASGIApp:
    async def control(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/_bench/count":
            body = orjson.dumps({"requests": state.count})
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] != "http" or scope["path"] != "/_bench/config":
            await app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        config: dict[str, Any] = orjson.loads(body or b"{}")
        if "latency" in config:
            state.latency = float(config["latency"])
        if "interval" in config:
            state.chunk_interval = float(config["interval"])
        if "chunks" in config:
            state.script = answer(int(config["chunks"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return control


def main() -> None:
    parser = argparse.ArgumentParser(description="Kiro simulator for the benchmark")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--chunks", type=int, default=20)
    args = parser.parse_args()
    state = BenchState(latency=args.latency, interval=args.interval, chunks=args.chunks)
    app = with_control(create_simulator_app(state), state)
    sock = bind_socket("127.0.0.1", args.port)
    config = make_config(app)
    config.timeout_keep_alive = 30
    server = uvicorn.Server(config)
    print(f"READY {url_for(sock)}", flush=True)
    server.run(sockets=[sock])
    sys.exit(0)


if __name__ == "__main__":
    main()
