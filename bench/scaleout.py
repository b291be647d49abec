"""The scale-out phase: what sharing state through Redis costs, and what a second replica buys.

Three gateway processes in front of the same simulator, and a ``redis-server`` and nginx
(configured as deploy/nginx.conf) started for the phase:

- ``local``: one replica, no Redis;
- ``redis``: one replica with ``REDIS_URL``;
- ``lb``: nginx in front of ``redis`` and a second replica with ``REDIS_URL``.

Every gateway runs with a per-account cap above the concurrency and a rate limit no client
reaches, so each request takes the paths shared state changes (a place in the account's cap,
a token from the key's bucket: two round trips to Redis, and a batched give-back).

Measured: added latency at concurrency 1 (rounds over the targets, interleaved), the gateways'
CPU per streamed request at concurrency N (``local`` and ``redis`` alternated twice each, the
medians kept), and the throughput of ``lb`` against ``redis`` alone at 4N (alternated twice;
at N the answers' own length bounds both, by Little's law) with the CPU each process took
meanwhile: on a machine whose cores are all busy, that says what bounds the second replica.

    python -m bench --scale-out-only --quick
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench import lb, targets
from bench.client import Target
from bench.gateway import API_KEY
from bench.load import Clients, closed_loop
from bench.phases import CpuMeter, LoadedRun, concurrent, sequential
from bench.procs import Proc, free_port, spawn, wait_http
from bench.stats import Summary

CAP = "4096"  # above any concurrency here: places are taken, nobody queues
RATE = "100000000/minute"  # counted, never reached


@dataclass
class Fleet:
    sim: Proc
    local: Proc
    redis_one: Proc
    redis_two: Proc
    redis: Proc
    nginx: Proc
    lb_url: str

    def procs(self) -> dict[str, Proc]:
        return {
            "simulator": self.sim,
            "local": self.local,
            "redis-1": self.redis_one,
            "redis-2": self.redis_two,
            "redis-server": self.redis,
            "nginx": self.nginx,
        }


def missing() -> str | None:
    """Why the phase cannot run here, or None."""
    import shutil

    if shutil.which("redis-server") is None:
        return "no redis-server (apt-get install redis-server)"
    if lb.available() is None:
        return "no nginx (apt-get install nginx-light)"
    return None


def start_redis(stack: ExitStack, log_dir: Path) -> tuple[Proc, str]:
    """A ``redis-server`` as compose runs it (append-only file, fsync every second), stopped
    with ``stack``; and its URL."""
    redis_port = free_port()
    folder = log_dir / "redis"
    folder.mkdir(exist_ok=True)
    redis = spawn(
        "redis-server",
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
        log_dir,
    )  # fmt: skip
    stack.callback(redis.stop)
    _wait_redis(redis_port)
    return redis, f"redis://127.0.0.1:{redis_port}/0"


def start(stack: ExitStack, log_dir: Path, sim: Proc) -> Fleet:
    python = sys.executable
    redis, redis_url = start_redis(stack, log_dir)

    def gateway(name: str, shared: bool) -> Proc:
        port = free_port()
        argv = [python, "-m", "bench.gateway", "--port", str(port), "--upstream", sim.url]
        argv += ["--cap", CAP, "--rate-limit", RATE]
        if shared:
            argv += ["--redis-url", redis_url]
        env = {"HOME": str(log_dir), "DATA_DIR": str(log_dir / f"data-{name}")}
        proc = spawn(name, argv, log_dir, env)
        stack.callback(proc.stop)
        proc.url = f"http://127.0.0.1:{port}"
        return proc

    local = gateway("scale-local", False)
    one, two = gateway("scale-redis-1", True), gateway("scale-redis-2", True)
    for proc in (local, one, two):
        wait_http(proc, f"{proc.url}/health", 60, {"authorization": f"Bearer {API_KEY}"})
    listen = free_port()
    ports = [int(one.url.rsplit(":", 1)[1]), int(two.url.rsplit(":", 1)[1])]
    binary = lb.available()
    assert binary is not None
    nginx = spawn("nginx", lb.argv(binary, ports, listen, log_dir / "nginx"), log_dir)
    stack.callback(nginx.stop)
    lb_url = f"http://127.0.0.1:{listen}"
    wait_http(nginx, f"{lb_url}/health", 30)
    return Fleet(sim, local, one, two, redis, nginx, lb_url)


def _wait_redis(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, check=False
        )
        if done.stdout.strip() == "PONG":
            return
        time.sleep(0.05)
    raise RuntimeError("redis-server did not answer")


@dataclass
class ScaleOut:
    concurrency: int
    sequential: dict[str, Summary] = field(default_factory=dict)
    cpu_us: dict[str, list[float]] = field(default_factory=dict)  # gateway CPU per request
    redis_us: list[float] = field(default_factory=list)  # redis-server CPU per request
    heavy: int = 0  # the concurrency of the throughput runs
    singles: list[LoadedRun] = field(default_factory=list)  # one replica with Redis
    pairs: list[LoadedRun] = field(default_factory=list)  # two behind nginx

    def added(self, name: str) -> float:
        return self.sequential[name].p50 - self.sequential["direct-kiro"].p50


def _named(target: Target, name: str) -> Target:
    return replace(target, name=name)


async def measure(clients: Clients, fleet: Fleet, count: int, concurrency: int) -> ScaleOut:
    direct = targets.direct_kiro(fleet.sim.url)
    local = _named(targets.ki2api_openai(fleet.local.url, True), "local")
    shared = _named(targets.ki2api_openai(fleet.redis_one.url, True), "redis")
    pair = _named(targets.ki2api_openai(fleet.lb_url, True), "lb")
    out = ScaleOut(concurrency)
    print(f"scale-out, concurrency 1: {count} requests per target, interleaved ...", flush=True)
    out.sequential = await sequential(clients, [direct, local, shared, pair], count)

    meter = CpuMeter(fleet.procs())
    loaded = concurrency * 4
    print(f"scale-out, concurrency {concurrency}: local and redis alternated ...", flush=True)
    for _ in range(2):
        for target, proc in ((local, "local"), (shared, "redis-1")):
            run = await concurrent(clients, target, concurrency, loaded, meter)
            n = max(1, run.summary.n)
            out.cpu_us.setdefault(target.name, []).append(run.cpu.by_process[proc] / n * 1e6)
            if target is shared:
                out.redis_us.append(run.cpu.by_process["redis-server"] / n * 1e6)
    heavy = concurrency * 4  # enough that one replica's CPU, not the answers' length, bounds it
    print(f"scale-out, concurrency {heavy}: one replica and two behind nginx ...", flush=True)
    await closed_loop(clients, pair, heavy, heavy)  # warm-up of nginx's connections
    for _ in range(2):
        out.singles.append(await concurrent(clients, shared, heavy, heavy * 4, meter))
        out.pairs.append(await concurrent(clients, pair, heavy, heavy * 4, meter))
    out.heavy = heavy
    return out


def _rate(run: LoadedRun) -> float:
    return run.summary.n / run.cpu.wall if run.cpu.wall else 0.0


def table(result: ScaleOut) -> str:
    seq = result.sequential
    lines = [
        "| target | added p50 (ms) | added p99 (ms) | gateway CPU per request at "
        f"{result.concurrency} (µs) |",
        "|---|---|---|---|",
    ]
    for name, label in (("local", "one replica, no Redis"), ("redis", "one replica, Redis"),
                        ("lb", "two replicas + nginx, Redis")):  # fmt: skip
        cpu = statistics.median(result.cpu_us[name]) if name in result.cpu_us else None
        p99 = seq[name].p99 - seq["direct-kiro"].p99
        cpu_text = f"{cpu:,.0f}" if cpu is not None else "—"
        lines.append(f"| {label} | {result.added(name):.2f} | {p99:.2f} | {cpu_text} |")
    local_cpu = statistics.median(result.cpu_us["local"])
    redis_cpu = statistics.median(result.cpu_us["redis"])
    lines += [
        "",
        f"Redis adds {result.added('redis') - result.added('local'):+.2f} ms at concurrency 1 "
        f"(target < 0.3) and {100 * (redis_cpu / local_cpu - 1):+.1f}% gateway CPU per request "
        f"at {result.concurrency} (target < 15%; runs: local "
        + ", ".join(f"{v:,.0f}" for v in result.cpu_us["local"])
        + " µs, redis "
        + ", ".join(f"{v:,.0f}" for v in result.cpu_us["redis"])
        + f" µs); redis-server itself {statistics.median(result.redis_us):,.0f} µs per request.",
    ]
    if result.singles and result.pairs:
        single = statistics.median(_rate(r) for r in result.singles)
        pair = statistics.median(_rate(r) for r in result.pairs)
        lines += [
            "",
            f"Throughput at concurrency {result.heavy}: one replica {single:,.0f} req/s "
            f"({', '.join(f'{_rate(r):,.0f}' for r in result.singles)}), two behind nginx "
            f"{pair:,.0f} req/s ({', '.join(f'{_rate(r):,.0f}' for r in result.pairs)}): "
            f"ratio {pair / max(1e-9, single):.2f}.",
            "CPU busy (cores) in the last runs: one replica: " + _busy(result.singles[-1]),
            "two behind nginx: " + _busy(result.pairs[-1]),
        ]
    return "\n".join(lines)


def _busy(run: LoadedRun) -> str:
    busy = {k: v / run.cpu.wall for k, v in run.cpu.by_process.items() if v > 0.005 * run.cpu.wall}
    parts = [f"{k} {v:.2f}" for k, v in sorted(busy.items(), key=lambda kv: -kv[1])]
    per_request = sum(run.cpu.by_process.values()) / max(1, run.summary.n) * 1e6
    return (
        ", ".join(parts)
        + f"; {sum(busy.values()):.2f} in all, {per_request:,.0f} µs of CPU per request"
    )
