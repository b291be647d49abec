"""``Gateway.open(while_waiting=...)``: a front door's preparation runs once, after the request
has gone upstream and before the answer starts, whatever the retries."""

from __future__ import annotations

import time

from ki2api.kiro.accounts.pool import AccountPool
from ki2api.kiro.http.client import KiroClient, UpstreamHttp
from ki2api.kiro.wire.models import ModelCatalog
from ki2api.model.request import ChatRequest, Message, TextPart
from ki2api.pipeline.gateway import Gateway, collect
from ki2api.settings import Settings
from ki2api.simulator import SimulatorServer, text_answer
from ki2api.simulator.faults import get_fault, slow_first_byte
from tests.stack import stack_env


def hello() -> ChatRequest:
    return ChatRequest(model="claude-sonnet-4-5", messages=[Message("user", [TextPart("Hi")])])


async def test_while_waiting_runs_once_between_the_request_and_the_answer() -> None:
    with SimulatorServer() as sim:
        settings = Settings.from_env(stack_env(sim.url), upstream_attempts=3)
        http = UpstreamHttp(settings)
        pool = AccountPool.from_settings(settings, http)
        await pool.start()
        gateway = Gateway(settings, KiroClient(http, settings), pool, ModelCatalog())
        try:
            # One answer held back half a second: the hook runs before it starts.
            sim.state.enqueue(slow_first_byte(0.5))
            calls: list[float] = []
            stream = await gateway.open(hello(), while_waiting=lambda: calls.append(time.time()))
            opened_at = time.time()
            assert len(calls) == 1 and opened_at - calls[0] > 0.3
            assert sim.state.requests, "the request had gone out"
            assert (await collect(stream)).text

            # A failed attempt, then a good one: still once.
            sim.state.enqueue(get_fault("server_error"), text_answer("second time"))
            calls.clear()
            stream = await gateway.open(hello(), while_waiting=lambda: calls.append(time.time()))
            assert (await collect(stream)).text == "second time"
            assert len(calls) == 1
        finally:
            await pool.aclose()
            await http.aclose()
