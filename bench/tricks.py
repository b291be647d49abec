"""``python -m bench.tricks``: does each speed trick of the serving path pay, with the client and
the upstream on other machines?

The tricks were measured with the client, the gateway and the upstream on one machine, where a
write wakes a process that may then run on the writer's CPU. A client or an upstream elsewhere
does not compete for our CPU. This probe serves the same requests through gateway builds that
differ by one trick each, in two set-ups, interleaved request by request in one run:

- ``loopback``: client, gateway and simulator talk over loopback directly, as ``python -m
  bench`` does;
- ``wire``: the same, but the client reaches the gateway, and the gateway the simulator, through
  a wire with a fixed delay each way (``bench/native_hop.c`` with a delay: each piece is sent on
  at the time the kernel received it plus the delay, so a relay scheduled late does not move it;
  tc/netem is not available on this VM).

Builds (one process each; the tricks are switched off inside the process, in this module, so
that the shipped code needs no switch for them):

- ``on``: as shipped; ``on-again``: the same build in a second process, whose difference from
  ``on`` is the run's noise (A/A);
- one build per trick with that trick off (``TRICKS``).

Reported per trick and set-up: the gain (the trick-off build's median minus ``on``'s; positive:
the trick saves that much) with a 95 % bootstrap interval, next to the A/A difference; and the
gateway's CPU per request at concurrency 64, in alternating blocks. With no trick to switch
(``TRICKS`` empty) it measures the A/A noise alone.

``--against DIR`` adds a build served from another checkout (its own ``bench.gateway``, its
own code): ``before``, the same A/B as a trick's, so a whole change is measured against the
commit it started from in one run (the "gain" is then what the change saves; negative: what it
costs). ``--against DIR:off=NAME,NAME`` serves that checkout through its own ``bench.tricks
gateway`` with those of its tricks off (a checkout from before a trick was removed).

``python -m bench.tricks micro`` times the removed code-level tricks against what replaced them,
in this process: warm (a loop) and cold (one call after a sleep, as at concurrency 1).

    python -m bench.tricks --quick                # about 4 minutes
    python -m bench.tricks --rounds 100 --wire-ms 1 --only NAME,NAME
    python -m bench.tricks --against /path/to/a/checkout/of/the/old/commit
    python -m bench.tricks --against OLD --against WITH_TRICKS --against WITH_TRICKS:off=yield,head
    python -m bench.tricks micro
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import random
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from bench import targets
from bench.client import Result, Target
from bench.gateway import API_KEY, settings_for
from bench.load import Clients, closed_loop, rounds
from bench.phases import CpuMeter
from bench.procs import Proc, free_port, spawn, wait_http, wait_ready_line
from bench.servers import start_native_hop
from bench.stats import pct

# --- switching a trick off inside a gateway process ---------------------------------------------

# name -> a function that switches the trick off in this process, called before the gateway
# starts. Empty since the runs of 2026-12-07 (on commit f7c39ef, which has the switches): of
# the five tricks measured then (sched_yield after writes, a response head held for its body,
# CPython's _sha1, hand-set UUID bits, tuple.__new__ for frames) none paid beyond the noise,
# over loopback or over the wire, and all five were removed. Add a trick here to measure it.
TRICKS: dict[str, Callable[[], None]] = {}


def serve_gateway(port: int, upstream: str, off: Sequence[str]) -> None:
    from ki2api.server.run import serve

    for name in off:
        TRICKS[name]()
    serve(settings_for(upstream, port, "warning"), with_ui=False)


# --- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Build:
    name: str
    off: tuple[str, ...]
    tree: Path | None = None  # another checkout, served by its own bench.gateway


KINDS = ("stream", "whole")  # OpenAI streamed, OpenAI not streamed


def other_checkout(text: str) -> tuple[Path, tuple[str, ...]]:
    """``DIR`` or ``DIR:off=NAME,NAME``: a checkout and the tricks to switch off in it."""
    folder, _, off = text.partition(":off=")
    return Path(folder), tuple(t for t in off.split(",") if t)


def builds(tricks: Sequence[str], against: Sequence[str] = ()) -> list[Build]:
    """``on``, ``on-again``, one build per other checkout (``before``, or ``before-<folder>``
    when there are several, ``-off-<tricks>`` added when some are off) and one build per trick
    off."""
    named = len(against) > 1
    before = []
    for text in against:
        tree, off = other_checkout(text)
        name = f"before-{tree.name}" if named else "before"
        before.append(Build(name + (f"-off-{'+'.join(off)}" if off else ""), off, tree))
    return [
        Build("on", ()),
        Build("on-again", ()),
        *before,
        *(Build(f"no-{t}", (t,)) for t in tricks),
    ]


@dataclass
class Lab:
    builds: list[Build]
    setups: tuple[str, ...]
    gateways: dict[tuple[str, str], Proc]  # (build, setup) -> its gateway
    entries: dict[tuple[str, str], str]  # (build, setup) -> the URL the client uses


def _wire(stack: ExitStack, log_dir: Path, to: str, delay_us: int) -> str:
    hop, problem = start_native_hop(stack, log_dir, to.rsplit(":", 1)[1], delay_us)
    if hop is None:
        raise SystemExit(f"the wire needs bench/native_hop.c compiled: {problem}")
    return hop.url


def start_lab(stack: ExitStack, log_dir: Path, cfg: argparse.Namespace) -> Lab:
    python = sys.executable
    sim_argv = [python, "-m", "bench.upstream", "--latency", str(cfg.latency)]
    sim_argv += ["--interval", str(cfg.interval), "--chunks", str(cfg.chunks)]
    sim = spawn("simulator", sim_argv, log_dir)
    stack.callback(sim.stop)
    sim.url = wait_ready_line(sim, 30)
    delay_us = round(cfg.wire_ms * 1000)
    setups: tuple[str, ...] = tuple(cfg.setups.split(","))
    upstream_by_setup = {"loopback": sim.url}
    if "wire" in setups:
        upstream_by_setup["wire"] = _wire(stack, log_dir, sim.url, delay_us)
    wanted = [t for t in cfg.only.split(",") if t] if cfg.only else list(TRICKS)
    if unknown := set(wanted) - set(TRICKS):
        raise SystemExit(f"no such trick: {', '.join(sorted(unknown))} (known: {list(TRICKS)})")
    chosen = builds(wanted, cfg.against or ())
    gateways: dict[tuple[str, str], Proc] = {}
    for setup in setups:
        for build in chosen:
            port = free_port()
            env = {"HOME": str(log_dir)}
            if build.tree is None:
                argv = [python, "-m", "bench.tricks", "gateway", "--port", str(port)]
                argv += ["--upstream", upstream_by_setup[setup], "--off", ",".join(build.off)]
            elif build.off:  # the other checkout's own tricks switched off by its own code
                argv = [python, "-m", "bench.tricks", "gateway", "--port", str(port)]
                argv += ["--upstream", upstream_by_setup[setup], "--off", ",".join(build.off)]
                env["PYTHONPATH"] = str(build.tree)
            else:  # the other checkout's own code and its own way to serve it
                argv = [python, "-m", "bench.gateway", "--port", str(port)]
                argv += ["--upstream", upstream_by_setup[setup], "--log-level", "warning"]
                env["PYTHONPATH"] = str(build.tree)
            proc = spawn(f"gw-{build.name}-{setup}", argv, log_dir, env, cwd=build.tree)
            stack.callback(proc.stop)
            proc.url = f"http://127.0.0.1:{port}"
            gateways[build.name, setup] = proc
    entries: dict[tuple[str, str], str] = {}
    for (build_name, setup), proc in gateways.items():
        wait_http(proc, f"{proc.url}/health", 60, {"authorization": f"Bearer {API_KEY}"})
        entries[build_name, setup] = (
            proc.url if setup == "loopback" else _wire(stack, log_dir, proc.url, delay_us)
        )
    return Lab(chosen, setups, gateways, entries)


def _target(lab: Lab, build: str, setup: str, kind: str) -> Target:
    target = targets.ki2api_openai(lab.entries[build, setup], kind == "stream")
    return replace(target, name=f"{build}/{setup}/{kind}")


# --- statistics ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gain:
    """Trick-off median minus trick-on median (ms; positive: the trick saves time)."""

    value: float
    low: float  # 95 % bootstrap interval
    high: float
    aa: float  # the same difference between the two identical builds


def _median_diff(a: Sequence[float], b: Sequence[float]) -> float:
    return pct(a, 50) - pct(b, 50)


def gain(off: Sequence[float], on: Sequence[float], again: Sequence[float], seed: int = 7) -> Gain:
    rng = random.Random(seed)
    diffs = sorted(
        _median_diff(rng.choices(off, k=len(off)), rng.choices(on, k=len(on))) for _ in range(2000)
    )
    return Gain(_median_diff(off, on), pct(diffs, 2.5), pct(diffs, 97.5), _median_diff(again, on))


def _metric(results: Sequence[Result], metric: str) -> list[float]:
    ok = [r for r in results if r.ok]
    if metric == "ttft":
        return [t * 1000 for r in ok if (t := r.ttft) is not None]
    return [r.latency * 1000 for r in ok]


def verdict(g: Gain) -> str:
    """Pays: the interval is above zero and the gain above the A/A difference."""
    if math.isnan(g.value):
        return "—"
    if g.low > 0 and g.value > abs(g.aa):
        return "pays"
    if g.high < 0 and -g.value > abs(g.aa):
        return "costs"
    return "noise"


# --- phases --------------------------------------------------------------------------------------


async def concurrency_one(clients: Clients, lab: Lab, count: int) -> dict[str, list[Result]]:
    everything = [
        _target(lab, b.name, setup, kind)
        for b in lab.builds
        for setup in lab.setups
        for kind in KINDS
    ]
    return await rounds(clients, everything, count, warmup=3)


async def cpu_blocks(
    clients: Clients, lab: Lab, concurrency: int, count: int, blocks: int
) -> dict[tuple[str, str], list[float]]:
    """Gateway CPU per request (µs) at ``concurrency``, streamed: one block per build in turn,
    the order reversed every pass (ABC CBA ...), so drift hits every build alike."""
    meter = CpuMeter({f"{b}/{s}": p for (b, s), p in lab.gateways.items()})
    out: dict[tuple[str, str], list[float]] = {key: [] for key in lab.gateways}
    order = list(lab.gateways)
    for i in range(blocks):
        for build, setup in order if i % 2 == 0 else order[::-1]:
            target = _target(lab, build, setup, "stream")
            await closed_loop(clients, target, concurrency, concurrency)  # warm-up
            before, t0 = meter.read(), asyncio.get_running_loop().time()
            results = await closed_loop(clients, target, concurrency, count)
            split = meter.since(before, asyncio.get_running_loop().time() - t0)
            ok = sum(r.ok for r in results)
            out[build, setup].append(split.by_process[f"{build}/{setup}"] / max(ok, 1) * 1e6)
    return out


# --- tables --------------------------------------------------------------------------------------


def _fmt(g: Gain) -> str:
    return f"{g.value:+.3f} [{g.low:+.3f}, {g.high:+.3f}] (A/A {g.aa:+.3f})"


def latency_table(lab: Lab, results: dict[str, list[Result]]) -> str:
    rows = [
        "| build | set-up | request | metric | gain ms [95 % interval] (A/A) | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for build in lab.builds[1:]:  # on-again first: the noise itself, with its interval
        for setup in lab.setups:
            for kind in KINDS:
                for metric in ("ttft", "total") if kind == "stream" else ("total",):
                    off, on, again = (
                        _metric(results[f"{b}/{setup}/{kind}"], metric)
                        for b in (build.name, "on", "on-again")
                    )
                    g = gain(off, on, again)
                    shown = "A/A" if build.name == "on-again" else verdict(g)
                    rows.append(
                        f"| {build.name} | {setup} | {kind} | {metric} | {_fmt(g)} | {shown} |"
                    )
    return "\n".join(rows)


def medians_table(results: dict[str, list[Result]]) -> str:
    rows = ["| target | ok | p50 ms | TTFT p50 ms |", "| --- | ---: | ---: | ---: |"]
    for name, rs in results.items():
        total, ttft = _metric(rs, "total"), _metric(rs, "ttft")
        rows.append(f"| {name} | {len(total)} | {pct(total, 50):.2f} | {pct(ttft, 50):.2f} |")
    return "\n".join(rows)


def cpu_table(cpu: dict[tuple[str, str], list[float]]) -> str:
    rows = [
        "| build | set-up | CPU µs per streamed request, per block | median | vs on |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for (build, setup), values in cpu.items():
        base = pct(cpu["on", setup], 50)
        median = pct(values, 50)
        shown = ", ".join(f"{v:.0f}" for v in values)
        rows.append(f"| {build} | {setup} | {shown} | {median:.0f} | {median / base - 1:+.1%} |")
    return "\n".join(rows)


# --- the removed code-level tricks on their own -------------------------------------------------

_NAME = "system prompt\x00the first user message, as a conversation id is derived from it"


def _hand_uuid4(rng: random.Random) -> str:
    """The removed ``ki2api.model.ids.uuid_text``: version and variant bits set by hand."""
    n = rng.getrandbits(128)
    n = (n & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC << 60) | (0x8 << 60)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _hand_uuid5(sha1: Callable[[bytes], Any], name: str) -> str:
    """The removed ``ki2api.pipeline.conversation._uuid5_text``."""
    digest = bytearray(sha1(_NAMESPACE.bytes + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_NAMESPACE = uuid.UUID("5b0f6b5e-8f4e-4d7a-9c61-2f1e4b7a9d30")


def micro_cases() -> dict[str, dict[str, Callable[[], object]]]:
    """Per removed trick: the trick (first, as it was) and what the code does instead, as calls
    without arguments: the price paid for the removal, warm and cold."""
    from ki2api.kiro.wire.eventstream import Frame

    try:
        from _sha1 import sha1 as builtin_sha1  # CPython's own, private
    except ImportError:  # pragma: no cover - builds without it
        builtin_sha1 = hashlib.sha1
    rng = random.Random(1)
    data = _NAMESPACE.bytes + _NAME.encode()
    headers: dict[str, object] = {":event-type": "assistantResponseEvent"}
    payload = b'{"content":"Hello"}'
    return {
        "sha1": {
            "_sha1.sha1": lambda: builtin_sha1(data).digest(),
            "hashlib.sha1": lambda: hashlib.sha1(data).digest(),
        },
        "uuid4 text": {
            "hand-set bits": lambda: _hand_uuid4(rng),
            "uuid.UUID(int=, version=4)": lambda: str(
                uuid.UUID(int=rng.getrandbits(128), version=4)
            ),
            "uuid.uuid4()": lambda: str(uuid.uuid4()),
        },
        "uuid5 text": {
            "hand-set bits, _sha1": lambda: _hand_uuid5(builtin_sha1, _NAME),
            "uuid.uuid5": lambda: str(uuid.uuid5(_NAMESPACE, _NAME)),
        },
        "frame": {
            "tuple.__new__(Frame, ...)": lambda: tuple.__new__(Frame, (headers, payload)),
            "Frame(...)": lambda: Frame(headers, payload),
        },
    }


def _warm_ns(call: Callable[[], object], number: int = 20_000) -> float:
    return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e9


def _cold_us(calls: dict[str, Callable[[], object]], idle: float, count: int) -> dict[str, float]:
    """One call each after ``idle`` seconds of sleep (caches cold, as at concurrency 1 after a
    pause); the median of ``count``, the alternatives interleaved."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(count):
        for name, call in calls.items():
            time.sleep(idle)
            t0 = time.perf_counter_ns()
            call()
            times[name].append((time.perf_counter_ns() - t0) / 1000)
    return {name: pct(values, 50) for name, values in times.items()}


def micro(idle: float, count: int) -> str:
    rows = ["| trick | way | warm ns | cold µs (after sleep) |", "| --- | --- | ---: | ---: |"]
    for trick, calls in micro_cases().items():
        for call in calls.values():
            call()
        cold = _cold_us(calls, idle, count)
        for name, call in calls.items():
            rows.append(f"| {trick} | {name} | {_warm_ns(call):.0f} | {cold[name]:.1f} |")
    return "\n".join(rows)


# --- entry points --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.tricks", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command")
    gw = sub.add_parser("gateway", help="(internal) one gateway build")
    gw.add_argument("--port", type=int, required=True)
    gw.add_argument("--upstream", required=True)
    gw.add_argument("--off", default="", help="tricks to switch off: " + ",".join(TRICKS))
    mi = sub.add_parser("micro", help="the code-level tricks alone, warm and after a sleep")
    mi.add_argument("--idle", type=float, default=0.2, help="seconds of sleep before a cold call")
    mi.add_argument("--count", type=int, default=30, help="cold calls per way")
    p.add_argument("--quick", action="store_true", help="fewer rounds and blocks")
    p.add_argument("--rounds", type=int, help="concurrency-1 rounds (every target once each)")
    p.add_argument("--wire-ms", type=float, default=1.0, help="one-way delay of the wire, ms")
    p.add_argument("--latency", type=float, default=0.020, help="upstream first byte, s")
    p.add_argument("--interval", type=float, default=0.005, help="between upstream chunks, s")
    p.add_argument("--chunks", type=int, default=20, help="text chunks per answer")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--blocks", type=int, help="CPU blocks per build and set-up (0: none)")
    p.add_argument("--only", help="the tricks to measure, comma-separated (default: all)")
    p.add_argument("--setups", default="loopback,wire", help="loopback, wire or both")
    p.add_argument("--log-dir", type=Path)
    p.add_argument(
        "--against",
        action="append",
        metavar="DIR[:off=NAME,...]",
        help="another checkout to measure as the build 'before' (repeat for several); "
        ":off= switches those of its own tricks off",
    )
    return p.parse_args(argv)


async def measure(lab: Lab, args: argparse.Namespace) -> None:
    clients = Clients()
    try:
        count = args.rounds or (30 if args.quick else 80)
        per_round = len(lab.builds) * len(lab.setups) * len(KINDS)
        print(f"concurrency 1: {count} rounds of {per_round} targets ...", flush=True)
        results = await concurrency_one(clients, lab, count)
        print(f"\nmedians\n{medians_table(results)}", flush=True)
        print(f"\ngains at concurrency 1\n{latency_table(lab, results)}", flush=True)
        blocks = (2 if args.quick else 4) if args.blocks is None else args.blocks
        cpu: dict[tuple[str, str], list[float]] = {}
        if blocks:
            print(f"\nconcurrency {args.concurrency}: {blocks} blocks per build ...", flush=True)
            cpu = await cpu_blocks(clients, lab, args.concurrency, args.concurrency * 16, blocks)
            print(f"\n{cpu_table(cpu)}", flush=True)
        raw = {
            "latency_ms": {n: _metric(rs, "total") for n, rs in results.items()},
            "ttft_ms": {n: _metric(rs, "ttft") for n, rs in results.items()},
            "cpu_us": {f"{b}/{s}": v for (b, s), v in cpu.items()},
        }
        (args.log_dir / "tricks.json").write_bytes(orjson.dumps(raw))
        print(f"\nraw figures in {args.log_dir / 'tricks.json'}", flush=True)
    finally:
        clients.close()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "gateway":
        serve_gateway(args.port, args.upstream, [t for t in args.off.split(",") if t])
        return
    if args.command == "micro":
        print(micro(args.idle, args.count))
        return
    log_dir = args.log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="ki2api-tricks-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"speed tricks, loopback vs a {args.wire_ms:g} ms wire each way; logs in {log_dir}")
    with ExitStack() as stack:
        lab = start_lab(stack, log_dir, args)
        from bench.loop import run_loop

        run_loop(measure(lab, args))


if __name__ == "__main__":
    main()
