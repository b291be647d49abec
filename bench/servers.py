"""Start and stop the benchmark's servers: simulator, Ki2API and (if it can) LiteLLM."""

from __future__ import annotations

import shutil
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench import litellm
from bench.gateway import API_KEY
from bench.procs import Proc, free_port, post_json, spawn, wait_http, wait_ready_line

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Servers:
    sim: Proc
    ki2api: Proc
    pipe: Proc  # the floor: a byte-forwarding TCP proxy in front of the simulator
    native_hop: Proc | None  # the same floor in C, when a compiler is at hand
    native_hop_problem: str | None
    litellm: Proc | None
    litellm_version: str | None
    litellm_problem: str | None  # why LiteLLM is not in this run

    def configure_upstream(self, *, latency: float, interval: float, chunks: int) -> None:
        body = orjson.dumps({"latency": latency, "interval": interval, "chunks": chunks})
        post_json(f"{self.sim.url}/_bench/config", body)


def start_servers(
    stack: ExitStack,
    log_dir: Path,
    *,
    latency: float,
    interval: float,
    chunks: int,
    with_litellm: bool,
) -> Servers:
    python = sys.executable
    sim = start_simulator(stack, log_dir, latency=latency, interval=interval, chunks=chunks)
    sim_port = sim.url.rsplit(":", 1)[1]
    pipe = spawn("pipe", [python, "-m", "bench.pipe", "--upstream-port", sim_port], log_dir)
    stack.callback(pipe.stop)
    pipe.url = wait_ready_line(pipe, 30)

    native_hop, native_problem = start_native_hop(stack, log_dir, sim_port)

    version: str | None = None
    problem: str | None = None
    if with_litellm:
        try:
            version = litellm.ensure_installed(log_dir)
        except litellm.Unavailable as exc:
            problem = str(exc)
    else:
        problem = "skipped (--no-litellm)"

    port = free_port()
    gateway_argv = [python, "-m", "bench.gateway", "--port", str(port), "--upstream", sim.url]
    # HOME: no Kiro login file of the person running the benchmark is picked up.
    ki2api = spawn("ki2api", gateway_argv, log_dir, {"HOME": str(log_dir)})
    stack.callback(ki2api.stop)
    ki2api.url = f"http://127.0.0.1:{port}"

    lite: Proc | None = None
    if version is not None:
        try:
            lite = litellm.start(log_dir, sim.url)  # slow: start it while Ki2API starts too
            stack.callback(lite.stop)
        except litellm.Unavailable as exc:
            problem = str(exc)
    wait_http(ki2api, f"{ki2api.url}/health", 60, {"authorization": f"Bearer {API_KEY}"})
    return Servers(
        sim, ki2api, pipe, native_hop, native_problem, lite, version if lite else None, problem
    )


def start_simulator(
    stack: ExitStack, log_dir: Path, *, latency: float, interval: float, chunks: int
) -> Proc:
    argv = [sys.executable, "-m", "bench.upstream", "--latency", str(latency)]
    argv += ["--interval", str(interval), "--chunks", str(chunks)]
    sim = spawn("simulator", argv, log_dir)
    stack.callback(sim.stop)
    sim.url = wait_ready_line(sim, 30)
    return sim


def start_native_hop(
    stack: ExitStack, log_dir: Path, upstream_port: str, delay_us: int = 0
) -> tuple[Proc | None, str | None]:
    """Compile (once per ``log_dir``) and start ``bench/native_hop.c``; (None, why) without a C
    compiler. ``delay_us``: a wire with that delay each way instead of a plain hop."""
    binary = log_dir / "native_hop"
    if not binary.exists():
        compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if compiler is None:
            return None, "no C compiler (cc, gcc or clang) on this machine"
        source = REPO / "bench" / "native_hop.c"
        built = subprocess.run(
            [compiler, "-O2", "-pthread", "-o", str(binary), str(source)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if built.returncode != 0:
            return None, f"{compiler} could not build it: {built.stderr.strip()[:300]}"
    argv = [str(binary), str(free_port()), upstream_port]
    name = "native-hop"
    if delay_us:
        argv.append(str(delay_us))
        name = f"wire-{upstream_port}"
    hop = spawn(name, argv, log_dir)
    stack.callback(hop.stop)
    hop.url = wait_ready_line(hop, 30)
    return hop, None
