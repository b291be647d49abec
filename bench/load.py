"""Load shapes: interleaved one-at-a-time rounds, closed loops, open-loop request rates."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.client import Pool, Result, Target
from bench.stats import pct


class Clients:
    """One keep-alive pool per server."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, int], Pool] = {}

    def pool(self, target: Target) -> Pool:
        key = (target.host, target.port)
        if key not in self._pools:
            self._pools[key] = Pool(target.host, target.port)
        return self._pools[key]

    async def request(self, target: Target) -> Result:
        return await self.pool(target).request(target)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()


async def rounds(
    clients: Clients,
    targets: Sequence[Target],
    count: int,
    warmup: int = 3,
    pause: float = 0.0,
    seed: int = 1,
) -> dict[str, list[Result]]:
    """Concurrency 1: one request to each target in turn, ``count`` times, so slow drift of
    this shared machine hits every target alike. The order is shuffled every round (same seed,
    same orders): in a fixed order the gateway's first target would always come after the
    longest spell in which the gateway served nothing, and on this VM memory left untouched
    for a while is slow to touch again. ``pause``: seconds of silence before every request, for
    the figures after an idle spell."""
    rng = random.Random(seed)
    out: dict[str, list[Result]] = {t.name: [] for t in targets}
    order = list(targets)
    for i in range(warmup + count):
        rng.shuffle(order)
        for target in order:
            if pause:
                await asyncio.sleep(pause)
            result = await clients.request(target)
            if i >= warmup:
                out[target.name].append(result)
    return out


async def closed_loop(
    clients: Clients, target: Target, concurrency: int, count: int, warmup: int = 0
) -> list[Result]:
    """``concurrency`` workers, each sending its next request when the last one is done."""
    results: list[Result] = []
    remaining = warmup + count
    started = 0

    async def worker() -> None:
        nonlocal remaining, started
        while remaining > 0:
            remaining -= 1
            started += 1
            keep = started > warmup
            result = await clients.request(target)
            if keep:
                results.append(result)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


@dataclass(frozen=True, slots=True)
class OpenLoopRun:
    offered: float  # requests per second asked for
    achieved: float  # requests per second completed
    lag_p99_ms: float  # how late the client sent, p99 (a busy client sends late)
    results: list[Result]


async def open_loop(
    clients: Clients, target: Target, rate: float, duration: float, seed: int = 1
) -> OpenLoopRun:
    """Poisson arrivals at ``rate`` per second for ``duration`` seconds (same seed, same
    arrival times for every target); each request runs on its own, whatever the others do."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Result]] = []
    lags: list[float] = []
    start = time.perf_counter()
    due = 0.0
    while True:
        due += rng.expovariate(rate)
        if due >= duration:
            break
        delay = start + due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(max(0.0, time.perf_counter() - (start + due)) * 1000)
        tasks.append(loop.create_task(clients.request(target)))
    results = list(await asyncio.gather(*tasks))
    elapsed = time.perf_counter() - start
    ok = sum(r.ok for r in results)
    return OpenLoopRun(rate, ok / elapsed, pct(lags, 99), results)
