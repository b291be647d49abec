"""The measurements, one function per phase; each returns plain values for the report."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from bench.client import Result, Target
from bench.load import Clients, closed_loop, open_loop, rounds
from bench.procs import (
    Proc,
    clear_referenced,
    cpu_seconds,
    peak_rss_bytes,
    process_tree,
    referenced_kb,
    rss_bytes,
)
from bench.stats import Summary, pct, summarize


def client_cpu() -> float:
    t = os.times()
    return t.user + t.system


@dataclass(frozen=True, slots=True)
class CpuSplit:
    """CPU seconds each process used during one run, and its wall time."""

    wall: float
    by_process: dict[str, float]


class CpuMeter:
    def __init__(self, procs: dict[str, Proc]) -> None:
        self.procs = procs
        self._trees = {name: process_tree(p.pid) for name, p in procs.items()}

    def read(self) -> dict[str, float]:
        out = {name: cpu_seconds(pids) for name, pids in self._trees.items()}
        out["client"] = client_cpu()
        return out

    def since(self, before: dict[str, float], wall: float) -> CpuSplit:
        now = self.read()
        return CpuSplit(wall, {k: now[k] - before[k] for k in now})


async def check(clients: Clients, targets: Sequence[Target]) -> dict[str, str]:
    """One request per target; the problems found (a target that fails is left out)."""
    problems = {}
    for target in targets:
        result = await clients.request(target)
        if not result.ok or result.tokens == 0:
            problems[target.name] = result.error or f"HTTP {result.status}, {result.tokens} tokens"
    return problems


async def sequential(
    clients: Clients, targets: Sequence[Target], count: int, pause: float = 0.0
) -> dict[str, Summary]:
    results = await rounds(clients, targets, count, warmup=1 if pause else 3, pause=pause)
    return {name: summarize(rs) for name, rs in results.items()}


@dataclass(frozen=True, slots=True)
class Touched:
    """Memory one server process touched while answering one request (median, kB)."""

    request_kb: float  # from just before the request to just after its answer
    idle_kb: float  # the same span with no request: the event loop's own timers
    requests: int

    @property
    def added_kb(self) -> float:
        return max(0.0, self.request_kb - self.idle_kb)


async def touched(clients: Clients, target: Target, pids: Sequence[int], count: int) -> Touched:
    """How much memory a server touches per request, from the kernel's per-page "referenced"
    bits: on this VM every 4 KB page touched after an idle spell costs µs, so this count,
    unlike a timing, says how much an idle spell can cost whatever the host is doing."""
    for _ in range(3):
        await clients.request(target)
    loaded, idle = [], []
    for _ in range(count):
        await asyncio.sleep(0.2)
        clear_referenced(pids)
        t0 = time.perf_counter()
        result = await clients.request(target)
        await asyncio.sleep(0.02)  # the server's last steps after its final write
        span = time.perf_counter() - t0
        if result.ok:
            loaded.append(referenced_kb(pids))
        clear_referenced(pids)
        await asyncio.sleep(span)
        idle.append(referenced_kb(pids))
    return Touched(pct(loaded, 50), pct(idle, 50), len(loaded))


@dataclass(frozen=True, slots=True)
class LoadedRun:
    summary: Summary
    cpu: CpuSplit
    chunks: int  # content chunks delivered (warm-up excluded, as for the CPU figures)


async def concurrent(
    clients: Clients, target: Target, concurrency: int, count: int, meter: CpuMeter
) -> LoadedRun:
    await closed_loop(clients, target, concurrency, concurrency)  # warm-up: connections, caches
    before, t0 = meter.read(), time.perf_counter()
    results = await closed_loop(clients, target, concurrency, count)
    cpu = meter.since(before, time.perf_counter() - t0)
    summary = summarize(results)
    return LoadedRun(summary, cpu, summary.tokens)


MIN_SAMPLES = 400  # requests per open-loop step, so p99 is not just the slowest one or two
MAX_STEP = 16.0  # seconds: the cap on holding one rate


@dataclass(frozen=True, slots=True)
class Step:
    rate: float
    direct_p50: float
    direct_p99: float
    via_p50: float
    via_p99: float
    achieved: float
    errors: int
    lag_p99: float  # the client's own lateness at this rate (ms)

    @property
    def added_p50(self) -> float:
        return self.via_p50 - self.direct_p50

    @property
    def added_p99(self) -> float:
        return self.via_p99 - self.direct_p99


async def frontier(
    clients: Clients,
    direct: Target,
    via: Target,
    rates: Sequence[float],
    seconds: float,
    min_samples: int = MIN_SAMPLES,
    give_up_ms: float = 250.0,
) -> list[Step]:
    """Step the open-loop rate up, direct then through the gateway at each step, until the
    gateway adds more than ``give_up_ms`` at p99 (well past the 50 ms of the frontier, so the
    plot shows the knee), fails requests, or falls behind."""
    steps = []
    for rate in rates:
        hold = min(max(seconds, min_samples / rate), MAX_STEP)  # enough requests for a p99
        base = await open_loop(clients, direct, rate, hold)
        await asyncio.sleep(0.3)
        run = await open_loop(clients, via, rate, hold)
        await asyncio.sleep(0.3)
        b, v = summarize(base.results), summarize(run.results)
        step = Step(rate, b.p50, b.p99, v.p50, v.p99, run.achieved, v.errors, run.lag_p99_ms)
        steps.append(step)
        print(
            f"  {via.name:24} {rate:6.0f} req/s: added p50 {step.added_p50:7.2f} ms, "
            f"p99 {step.added_p99:7.2f} ms, errors {v.errors}, client lag p99 "
            f"{run.lag_p99_ms:.1f} ms",
            flush=True,
        )
        if step.added_p99 >= give_up_ms or v.errors > 0 or run.achieved < 0.8 * rate:
            break
    return steps


def highest_rate_under(steps: Sequence[Step], limit_ms: float) -> float | None:
    """The highest rate reached before the first step whose added p99 is over the limit."""
    best = None
    for step in steps:
        if step.added_p99 >= limit_ms or step.errors:
            break
        best = step.rate
    return best


@dataclass(frozen=True, slots=True)
class Memory:
    streams: int
    idle_mb: float
    open_mb: float  # with every stream open
    peak_mb: float  # the process's high-water mark
    after_mb: float  # once they have all closed
    opened: int  # how many were open at once at the top
    errors: int
    first_error: str | None


def _open_streams(sim: Proc) -> int:
    with urllib.request.urlopen(f"{sim.url}/health", timeout=5) as response:
        return int(orjson.loads(response.read())["open_streams"])


async def memory(
    clients: Clients, target: Target, proc: Proc, sim: Proc, streams: int, hold: float
) -> Memory:
    """Open ``streams`` slow streams at once through a gateway; its RSS idle, open, after."""
    pid = proc.pid
    idle = rss_bytes(pid)
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Result]] = []
    for i in range(streams):
        tasks.append(loop.create_task(clients.request(target)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # a ramp, not a SYN flood
    opened, open_rss = 0, 0
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline and not all(t.done() for t in tasks):
        now_open = await asyncio.to_thread(_open_streams, sim)
        if now_open >= opened:
            opened = now_open
            open_rss = max(open_rss, rss_bytes(pid))
        await asyncio.sleep(0.25)
    results = await asyncio.gather(*tasks)
    await asyncio.sleep(1.0)
    after = rss_bytes(pid)
    s = summarize(results)
    mb = 1024 * 1024
    return Memory(
        streams,
        idle / mb,
        open_rss / mb,
        peak_rss_bytes(pid) / mb,
        after / mb,
        opened,
        s.errors,
        s.first_error,
    )
