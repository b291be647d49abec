"""``python -m bench``: Ki2API's overhead side by side with LiteLLM's, in one run.

Starts the Kiro simulator (fixed latency and chunk cadence), Ki2API and LiteLLM's proxy, each
in its own process, then measures from this process (the client):

1. added latency, time to first token and inter-chunk gap at concurrency 1 and N, for OpenAI
   (streamed and not) and Anthropic requests, against the same requests sent direct; at
   concurrency 1 also with a pause before every request, and the memory each server touches
   per request (the kernel's per-page referenced bits);
2. CPU time per streamed chunk (process CPU from /proc, divided by chunks delivered);
3. the throughput frontier: open-loop request rates stepped up until the added p99 passes
   50 ms;
4. memory: RSS idle, with many slow streams open at once, and after they close;
5. the event-stream decoder against botocore (``bench/decoder.py``);
6. the upstream HTTP clients side by side, each in its own gateway (``bench/clients.py``).
7. scale-out (``bench/scaleout.py``): one replica without Redis, one with, two behind nginx
   with Redis: what shared state adds, and the two replicas' throughput ratio.

It prints tables and (in full mode, or with ``--write``) writes the "Gateway overhead"
section of docs/benchmarks.md and docs/benchmark-latency.png.

    python -m bench --quick       # about 3 minutes (after LiteLLM's one-off install)
    python -m bench               # full run, about 17 minutes; writes the doc and the plot
    python -m bench --scale-out-only --quick    # the scale-out phase alone, about 1 minute
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from bench import decoder, scaleout, targets
from bench.client import Target
from bench.document import section
from bench.load import Clients
from bench.loop import run_loop
from bench.phases import CpuMeter, check, concurrent, frontier, memory, sequential, touched
from bench.plot import plot
from bench.procs import Proc, can_track_references, process_tree, rss_bytes
from bench.report import (
    DOC,
    PAUSED,
    PLOT,
    SECTION,
    TOUCHED_ROWS,
    Report,
    RunConfig,
    touched_table,
    write_section,
)
from bench.servers import Servers, start_servers, start_simulator

QUICK = dict(sequential=30, concurrent=4, rates=(10, 100, 200, 300), step=2.0, samples=0,
             slow=0.5, iterations=100, repeats=3, paused=5, touched=4)  # fmt: skip
FULL = dict(sequential=200, concurrent=16,
            rates=(5, 10, 25, 50, 100, 200, 400, 600, 800, 1000, 1300), step=5.0,
            samples=400, slow=1.0, iterations=300, repeats=7, paused=20, touched=10)  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer requests: about 3 minutes")
    p.add_argument("--latency", type=float, default=0.020, help="upstream first byte, s")
    p.add_argument("--interval", type=float, default=0.005, help="between upstream chunks, s")
    p.add_argument("--chunks", type=int, default=20, help="text chunks per answer")
    p.add_argument("--concurrency", type=int, default=64, help="the loaded level")
    p.add_argument("--requests", type=int, help="requests per target at concurrency 1")
    p.add_argument(
        "--pause", type=float, default=0.5, help="idle seconds before each after-a-pause request"
    )
    p.add_argument("--rates", help="open-loop steps, req/s, comma-separated")
    p.add_argument("--step-seconds", type=float, help="duration of each open-loop step")
    p.add_argument("--streams", type=int, default=1000, help="slow streams in the memory test")
    p.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    p.add_argument(
        "--skip",
        default="",
        help="phases to skip: pause,touched,frontier,memory,decoder,clients,scaleout",
    )
    p.add_argument(
        "--scale-out-only",
        action="store_true",
        help="run only the scale-out phase (needs redis-server and nginx)",
    )
    write = p.add_mutually_exclusive_group()
    write.add_argument("--write", action="store_true", help="write the doc and plot")
    write.add_argument("--no-write", action="store_true", help="only print")
    p.add_argument("--log-dir", type=Path, help="where the servers' logs go (default: a temp dir)")
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> RunConfig:
    preset = QUICK if args.quick else FULL
    rates = (
        tuple(float(r) for r in args.rates.split(","))
        if args.rates
        else tuple(float(r) for r in preset["rates"])  # type: ignore[attr-defined]
    )
    return RunConfig(
        mode="quick" if args.quick else "full",
        latency=args.latency,
        interval=args.interval,
        chunks=args.chunks,
        sequential_count=args.requests or int(preset["sequential"]),  # type: ignore[call-overload]
        concurrency=args.concurrency,
        concurrent_count=args.concurrency * int(preset["concurrent"]),  # type: ignore[call-overload]
        rates=rates,
        step_seconds=args.step_seconds or float(preset["step"]),  # type: ignore[arg-type]
        min_samples=int(preset["samples"]),  # type: ignore[call-overload]
        streams=args.streams,
        slow_interval=float(preset["slow"]),  # type: ignore[arg-type]
        pause=args.pause,
        paused_count=int(preset["paused"]),  # type: ignore[call-overload]
        touched_count=int(preset["touched"]),  # type: ignore[call-overload]
    )


def _print(title: str, table: str) -> None:
    print(f"\n{title}\n{table}", flush=True)


async def measure(servers: Servers, cfg: RunConfig, report: Report, skip: set[str]) -> None:
    from bench import report as tables

    clients = Clients()
    sim, gw, lite = servers.sim, servers.ki2api, servers.litellm
    all_targets = [
        targets.direct_kiro(sim.url),
        targets.pipe_kiro(servers.pipe.url),
        targets.direct_openai(sim.url, True),
        targets.direct_openai(sim.url, False),
        targets.ki2api_openai(gw.url, True),
        targets.ki2api_openai(gw.url, False),
        targets.ki2api_anthropic(gw.url, True),
        targets.ki2api_anthropic(gw.url, False),
    ]
    if servers.native_hop is not None:
        all_targets.insert(2, targets.native_hop_kiro(servers.native_hop.url))
    if lite is not None:
        all_targets += [
            targets.litellm_openai(lite.url, True),
            targets.litellm_openai(lite.url, False),
        ]
    report.problems = await check(clients, all_targets)
    for name, problem in report.problems.items():
        print(f"!! {name} does not work and is left out: {problem}", flush=True)
    usable = [t for t in all_targets if t.name not in report.problems]
    by_name = {t.name: t for t in usable}

    print(
        f"\nconcurrency 1: {cfg.sequential_count} requests per target, interleaved ...", flush=True
    )
    report.sequential = await sequential(clients, usable, cfg.sequential_count)
    if "pause" not in skip:
        print(
            f"concurrency 1 after a pause: {cfg.paused_count} requests per target, each after "
            f"{cfg.pause:.1f} s of silence ...",
            flush=True,
        )
        report.paused = await sequential(clients, usable, cfg.paused_count, cfg.pause)
        _print("Added at concurrency 1 after a pause (ms):", tables.added_table(report, (PAUSED,)))
    if "touched" not in skip:
        await touched_phase(clients, servers, cfg, report, by_name)

    procs = {"simulator": sim, "ki2api": gw, "pipe": servers.pipe}
    if servers.native_hop is not None:
        procs["native-hop"] = servers.native_hop
    if lite is not None:
        procs["litellm"] = lite
    meter = CpuMeter(procs)
    print(
        f"concurrency {cfg.concurrency}: {cfg.concurrent_count} requests per target ...", flush=True
    )
    for target in usable:
        report.concurrent[target.name] = await concurrent(
            clients, target, cfg.concurrency, cfg.concurrent_count, meter
        )
    _print("The floor, a byte-forwarding TCP proxy (ms):", tables.floor_table(report))
    if servers.native_hop_problem:
        print(f"!! no native floor in this run: {servers.native_hop_problem}", flush=True)
    _print("Added by each gateway (ms):", tables.added_table(report))
    _print("LiteLLM's overhead / Ki2API's:", tables.ratio_table(report))
    _print(f"CPU at concurrency {cfg.concurrency}:", tables.cpu_table(report))

    if "frontier" not in skip:
        print("\nthroughput frontier (streamed OpenAI requests, open loop) ...", flush=True)
        pairs = [("Ki2API", "direct-kiro", "ki2api-openai-stream")]
        if lite is not None:
            pairs.append(("LiteLLM", "direct-openai-stream", "litellm-openai-stream"))
        for gateway, direct, via in pairs:
            if direct in by_name and via in by_name:
                report.frontier[gateway] = await frontier(
                    clients,
                    by_name[direct],
                    by_name[via],
                    cfg.rates,
                    cfg.step_seconds,
                    cfg.min_samples,
                )
        _print("Frontier:", tables.frontier_table(report))

    if "memory" not in skip:
        slow_answer = cfg.slow_interval * cfg.chunks
        print(f"\nmemory: {cfg.streams} streams of ~{slow_answer:.0f} s at once ...", flush=True)
        servers.configure_upstream(latency=0.0, interval=cfg.slow_interval, chunks=cfg.chunks)
        try:
            gateways = [("Ki2API", gw, "ki2api-openai-stream")]
            if lite is not None and cfg.mode == "full":
                gateways.append(("LiteLLM", lite, "litellm-openai-stream"))
            for gateway, proc, name in gateways:
                if name in by_name:
                    clients.close()  # fresh connections: the ramp opens its own
                    report.memory[gateway] = await memory(
                        clients, by_name[name], proc, sim, cfg.streams, slow_answer + 30
                    )
        finally:
            servers.configure_upstream(
                latency=cfg.latency, interval=cfg.interval, chunks=cfg.chunks
            )
        _print("Memory:", tables.memory_table(report))
    clients.close()


async def touched_phase(
    clients: Clients, servers: Servers, cfg: RunConfig, report: Report, by_name: dict[str, Target]
) -> None:
    procs = {"ki2api": servers.ki2api, "simulator": servers.sim}
    if servers.litellm is not None:
        procs["litellm"] = servers.litellm
    if not can_track_references(servers.ki2api.pid):
        report.touched_problem = "this kernel does not expose per-page referenced bits"
        print(f"!! memory touched per request not measured: {report.touched_problem}")
        return
    print(f"memory touched per request: {cfg.touched_count} requests per target ...", flush=True)
    for _, name, server in TOUCHED_ROWS:
        if name in by_name and server in procs:
            pids = process_tree(procs[server].pid)
            report.touched[name] = await touched(clients, by_name[name], pids, cfg.touched_count)
    _print("Memory touched per request:", touched_table(report))


def clients_phase(stack: ExitStack, log_dir: Path, upstream: str, *, quick: bool) -> None:
    from bench import clients

    print("\nupstream HTTP clients, each in its own gateway ...", flush=True)
    gateways = clients.start_contenders(stack, log_dir, upstream)
    print(clients.table(clients.run(upstream, gateways, quick=quick)), flush=True)


def run_scale_out(cfg: RunConfig, log_dir: Path) -> None:
    with ExitStack() as stack:
        sim = start_simulator(
            stack, log_dir, latency=cfg.latency, interval=cfg.interval, chunks=cfg.chunks
        )
        scale_out_phase(stack, cfg, log_dir, sim)


def scale_out_phase(stack: ExitStack, cfg: RunConfig, log_dir: Path, sim: Proc) -> None:
    """Started only now: its three gateways and Redis stay out of the other phases' figures."""
    problem = scaleout.missing()
    if problem is not None:
        print(f"!! no scale-out phase in this run: {problem}", flush=True)
        return
    fleet = scaleout.start(stack, log_dir, sim)
    result: list[scaleout.ScaleOut] = []

    async def run() -> None:
        clients = Clients()
        try:
            result.append(
                await scaleout.measure(clients, fleet, cfg.sequential_count, cfg.concurrency)
            )
        finally:
            clients.close()

    run_loop(run())
    _print("Scale-out (streamed OpenAI requests):", scaleout.table(result[0]))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = config_from(args)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    write = args.write or (cfg.mode == "full" and not args.no_write)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="ki2api-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"ki2api bench ({cfg.mode}); server logs in {log_dir}", flush=True)

    if args.scale_out_only:
        run_scale_out(cfg, log_dir)
        return
    with ExitStack() as stack:
        servers = start_servers(
            stack,
            log_dir,
            latency=cfg.latency,
            interval=cfg.interval,
            chunks=cfg.chunks,
            with_litellm=not args.no_litellm,
        )
        report = Report(
            cfg, dt.date.today().isoformat(), servers.litellm_version, servers.litellm_problem
        )
        report.native_hop_problem = servers.native_hop_problem
        if servers.litellm_problem:
            print(f"!! LiteLLM is not part of this run: {servers.litellm_problem}", flush=True)
        report.idle_at_start_mb = rss_bytes(servers.ki2api.pid) / 1024 / 1024
        run_loop(measure(servers, cfg, report, skip))
        if "clients" not in skip:
            clients_phase(stack, log_dir, servers.sim.url, quick=args.quick)
        if "scaleout" not in skip:
            scale_out_phase(stack, cfg, log_dir, servers.sim)

    if "decoder" not in skip:
        print("\ndecoder vs botocore ...", flush=True)
        iterations = int((QUICK if args.quick else FULL)["iterations"])  # type: ignore[call-overload]
        repeats = int((QUICK if args.quick else FULL)["repeats"])  # type: ignore[call-overload]
        report.decoder = decoder.measure(iterations, repeats)
        print(decoder.table(report.decoder))
        if write:
            decoder.write_section(decoder.section(report.decoder, iterations, repeats))

    if write:
        points = {
            "title": (
                "Latency added by the gateway vs offered load, streamed OpenAI requests\n"
                f"upstream: {cfg.latency * 1000:.0f} ms to first byte, {cfg.chunks} chunks "
                f"{cfg.interval * 1000:.0f} ms apart; 2-core VM; {report.date}"
            ),
            "series": {
                gateway: [[s.rate, s.added_p50, s.added_p99] for s in steps]
                for gateway, steps in report.frontier.items()
            },
        }
        points_file = log_dir / "plot-points.json"
        points_file.write_text(json.dumps(points))
        try:
            plot(points_file, PLOT)
        except Exception as exc:  # the doc is still worth writing without the picture
            report.plot_problem = f"{type(exc).__name__}: {exc}"
            print(f"!! the plot could not be drawn: {report.plot_problem}", file=sys.stderr)
        write_section(SECTION, section(report))
        print(f"\nwrote {DOC.relative_to(DOC.parents[1])} and {PLOT.relative_to(PLOT.parents[1])}")
    else:
        print(f"\n{section(report)}")
        print("(not written: full mode writes docs/benchmarks.md, or pass --write)")
