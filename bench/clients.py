"""The ``clients`` phase: the upstream HTTP clients of bench/contenders.py side by side, in one
run, each in its own gateway process in front of the same benchmark upstream.

- added latency at concurrency 1: streamed OpenAI requests to every gateway and direct to the
  upstream, one at a time in shuffled rounds (so the machine's drift hits all alike);
- CPU per streamed request at concurrency N: closed loops, one gateway after the other in a
  rotating order, repeated; each gateway's process CPU from /proc over its own loop. The spread
  of the repeats is the noise.

    python -m bench.clients             # about 2 minutes
    python -m bench.clients --quick     # about 1 minute

``python -m bench`` runs it too (``--skip clients`` leaves it out).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench import targets
from bench.client import Target
from bench.contenders import CONTENDERS
from bench.gateway import API_KEY
from bench.load import Clients, closed_loop, rounds
from bench.procs import (
    Proc,
    cpu_seconds,
    free_port,
    process_tree,
    spawn,
    wait_http,
    wait_ready_line,
)
from bench.stats import Summary, pct, summarize

DIRECT = "direct-kiro"


@dataclass
class ClientsReport:
    concurrency: int
    sequential: dict[str, Summary] = field(default_factory=dict)
    cpu_us: dict[str, list[float]] = field(default_factory=dict)  # per request, each repeat
    loaded: dict[str, list[Summary]] = field(default_factory=dict)


def start_contenders(
    stack: ExitStack, log_dir: Path, upstream: str, names: Sequence[str] = CONTENDERS
) -> dict[str, Proc]:
    gateways: dict[str, Proc] = {}
    for name in names:
        port = free_port()
        argv = [sys.executable, "-m", "bench.gateway", "--port", str(port)]
        argv += ["--upstream", upstream, "--client", name]
        proc = spawn(f"ki2api-{name}", argv, log_dir, {"HOME": str(log_dir)})
        stack.callback(proc.stop)
        proc.url = f"http://127.0.0.1:{port}"
        gateways[name] = proc
    for proc in gateways.values():
        wait_http(proc, f"{proc.url}/health", 60, {"authorization": f"Bearer {API_KEY}"})
    return gateways


def _target(name: str, proc: Proc) -> Target:
    return replace(targets.ki2api_openai(proc.url, True), name=name)


async def compare(
    clients: Clients,
    upstream: str,
    gateways: dict[str, Proc],
    *,
    sequential: int,
    concurrency: int,
    loaded: int,
    repeats: int,
) -> ClientsReport:
    report = ClientsReport(concurrency)
    via = {name: _target(name, proc) for name, proc in gateways.items()}
    print(f"upstream clients, concurrency 1: {sequential} requests each, interleaved ...")
    results = await rounds(
        clients, [targets.direct_kiro(upstream, DIRECT), *via.values()], sequential
    )
    report.sequential = {name: summarize(rs) for name, rs in results.items()}
    print(f"upstream clients, concurrency {concurrency}: {repeats} x {loaded} requests each ...")
    order = list(gateways)
    for repeat in range(repeats):
        for name in order[repeat % len(order) :] + order[: repeat % len(order)]:
            target, pids = via[name], process_tree(gateways[name].pid)
            await closed_loop(clients, target, concurrency, concurrency)  # warm-up
            before = cpu_seconds(pids)
            run = await closed_loop(clients, target, concurrency, loaded)
            used = cpu_seconds(pids) - before
            summary = summarize(run)
            report.loaded.setdefault(name, []).append(summary)
            report.cpu_us.setdefault(name, []).append(used / max(1, summary.n) * 1e6)
    return report


def table(report: ClientsReport, reference: str = CONTENDERS[0]) -> str:
    direct = report.sequential.get(DIRECT)
    ref = report.cpu_us.get(reference)
    ref_cpu = pct(ref, 50) if ref else float("nan")
    c = report.concurrency
    lines = [
        f"| upstream client | added p50 at 1 (ms) | added p99 at 1 (ms) | CPU per request at "
        f"{c} (µs, median) | spread of the repeats | CPU / {reference}'s | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, cpus in report.cpu_us.items():
        seq = report.sequential.get(name)
        p50 = p99 = "—"
        if seq is not None and direct is not None and seq.n:
            p50, p99 = f"{seq.p50 - direct.p50:+.2f}", f"{seq.p99 - direct.p99:+.2f}"
        median = pct(cpus, 50)
        spread = f"{min(cpus):.0f}–{max(cpus):.0f}"
        errors = sum(s.errors for s in report.loaded.get(name, [])) + (seq.errors if seq else 0)
        lines.append(
            f"| {name} | {p50} | {p99} | {median:.0f} | {spread} | {median / ref_cpu:.2f}x "
            f"| {errors} |"
        )
    return "\n".join(lines)


def run(upstream: str, gateways: dict[str, Proc], *, quick: bool) -> ClientsReport:
    from bench.loop import run_loop

    clients = Clients()
    done: list[ClientsReport] = []

    async def go() -> None:
        try:
            done.append(
                await compare(
                    clients,
                    upstream,
                    gateways,
                    sequential=60 if quick else 200,
                    concurrency=64,
                    loaded=64 * (4 if quick else 8),
                    repeats=3 if quick else 5,
                )
            )
        finally:
            clients.close()

    run_loop(go())
    return done[0]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer requests")
    p.add_argument("--log-dir", type=Path)
    args = p.parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="ki2api-bench-clients-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"server logs in {log_dir}", flush=True)
    with ExitStack() as stack:
        sim = spawn("simulator", [sys.executable, "-m", "bench.upstream"], log_dir)
        stack.callback(sim.stop)
        sim.url = wait_ready_line(sim, 30)
        report = run(sim.url, start_contenders(stack, log_dir, sim.url), quick=args.quick)
    print("\n" + table(report))


if __name__ == "__main__":
    main()
