"""Soak: many concurrent streams for minutes against the simulator with random faults.

    python -m bench.soak                      # 200 streams for 300 s, 5 % faults
    python -m bench.soak --duration 60 --write

Every client loops: one streamed OpenAI chat request with a unique prompt, read to the end, next.
The simulator injects a random fault (``RANDOM_FAULTS``: throttling, 5xx, dropped connections,
cut / corrupt / garbage streams) into ``--fault-rate`` of its answers. Checked:

- every stream that finished (``[DONE]``) carries exactly the text the simulator sent for that
  prompt (``RequestRecord.sent_text`` of the answer that was used);
- every other request ended with an error: an HTTP error before the first byte, or an error
  event in the stream — never a silent stop;
- afterwards nothing is left over: no open upstream streams, no active gateway streams, no extra
  asyncio tasks in the gateway's loop, no client connections held by the server, no extra
  sockets in the process; memory back near where it started.

The simulator and the gateway run in this process, each on a real uvicorn server in its own
thread, so their state (tasks, connections) can be inspected directly.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn

from ki2api.app import create_app
from ki2api.settings import Settings
from ki2api.simulator import RANDOM_FAULTS, SimulatorServer

POOL_KEEPALIVE = 64  # the gateway's keep-alive connections (ki2api/kiro/http/client.py)
REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
SECTION = "## Soak"
API_KEY = "soak-api-key-0123456789"
_MARKER = re.compile(r"soak-(\d+)-(\d+)")


# --- the gateway on a real server in a thread, its loop reachable --------------------------------


class GatewayThread:
    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="error", lifespan="on", backlog=2048
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="soak-gateway")
        self.url = ""

    def _run(self) -> None:
        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve()

        asyncio.run(serve())

    def start(self) -> GatewayThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` in the gateway's loop and return its result."""
        assert self.loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def tasks(self) -> int:
        return int(self.call(lambda: len(asyncio.all_tasks())))

    def connections(self) -> int:
        return len(self.server.server_state.connections)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


# --- process figures ---------------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


# --- clients -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    marker: str
    kind: str  # "done", "error_event", "http_error", "silent", "transport_error"
    text: str = ""
    status: int = 0
    error_code: str | None = None
    ttfb: float | None = None
    elapsed: float = 0.0


async def one_stream(client: httpx.AsyncClient, url: str, marker: str) -> Outcome:
    body = {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": f"Please answer {marker} at length."}],
        "stream": True,
    }
    started = time.monotonic()
    out = Outcome(marker, "silent")
    pieces: list[str] = []
    try:
        async with client.stream("POST", url, json=body) as r:
            out.status = r.status_code
            if r.status_code != 200:
                await r.aread()
                out.kind = "http_error"
                out.error_code = r.json()["error"]["code"]
                return out
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if out.ttfb is None:
                    out.ttfb = time.monotonic() - started
                data = line[6:]
                if data == "[DONE]":
                    out.kind = "done"
                    break
                chunk = orjson.loads(data)
                if "error" in chunk:
                    out.kind = "error_event"
                    out.error_code = chunk["error"].get("code")
                    break
                for choice in chunk.get("choices") or []:
                    pieces.append(choice["delta"].get("content") or "")
    except httpx.HTTPError as exc:
        out.kind = "transport_error"
        out.error_code = type(exc).__name__
    finally:
        out.text = "".join(pieces)
        out.elapsed = time.monotonic() - started
    return out


async def client_loop(
    index: int, url: str, deadline: float, outcomes: list[Outcome], limits: httpx.Limits
) -> None:
    headers = {"authorization": f"Bearer {API_KEY}"}
    timeout = httpx.Timeout(60.0)
    async with httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits) as client:
        n = 0
        while time.monotonic() < deadline:
            outcomes.append(await one_stream(client, url, f"soak-{index}-{n}"))
            n += 1


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Report:
    duration: float
    streams: int
    fault_rate: float
    accounts: int
    total: int
    kinds: Counter[str]
    error_codes: Counter[str]
    mismatches: list[str]
    unmatched: int
    injected: Counter[str]
    upstream_requests: int
    before: dict[str, float]
    after: dict[str, float]
    peak_rss: float
    ttfb: list[float] = field(default_factory=list)

    @property
    def leaks(self) -> dict[str, tuple[float, float]]:
        """What did not come back to where it started. Sockets are counted without the
        gateway's pooled keep-alive connections to the simulator (two ends each, both in this
        process), which are reused, not leaked, and bounded by the pool size."""
        out: dict[str, tuple[float, float]] = {}
        keys = ("gateway_tasks", "server_connections", "other_sockets", "upstream_open", "active")
        for key in keys:
            if self.after[key] > self.before[key]:
                out[key] = (self.before[key], self.after[key])
        if self.after["pooled_upstream"] > POOL_KEEPALIVE:
            out["pooled_upstream"] = (self.before["pooled_upstream"], self.after["pooled_upstream"])
        return out

    @property
    def memory_ok(self) -> bool:
        """Live Python objects back within 2 % of the start once the benchmark's own logs are
        dropped and the bounded recent-requests buffer is discounted (RSS is only reported:
        CPython keeps freed memory for reuse rather than giving it back)."""
        before = self.before["gc_objects"] - self.before["stats_records"]
        after = self.after["gc_objects"] - self.after["stats_records"]
        return after <= 1.02 * before

    @property
    def ok(self) -> bool:
        bad = self.kinds["silent"] + self.kinds["transport_error"]
        return not self.mismatches and not bad and not self.leaks and self.memory_ok

    def summary(self) -> str:
        kinds, total = self.kinds, self.total
        lines = [
            f"requests: {total} in {self.duration:.0f} s ({total / self.duration:.1f}/s), "
            f"{self.streams} concurrent streams, fault rate {self.fault_rate:.0%}",
            f"outcomes: {dict(kinds)}",
            f"errors by code: {dict(self.error_codes)}",
            f"faults injected by the simulator: {dict(self.injected)}",
            f"text mismatches: {len(self.mismatches)}; unmatched: {self.unmatched}",
            f"leaks: {self.leaks or 'none'}; memory ok: {self.memory_ok}",
            f"before: {self.before}",
            f"after:  {self.after}",
            f"peak RSS: {self.peak_rss:.0f} MB",
            "RESULT: " + ("PASS" if self.ok else "FAIL"),
        ]
        lines += [f"  mismatch: {m}" for m in self.mismatches[:5]]
        return "\n".join(lines)


def snapshot(gateway: GatewayThread, sim: SimulatorServer, app: Any) -> dict[str, float]:
    gc.collect()
    pooled = len(sim._server.server_state.connections) if sim._server else 0
    return {
        "gateway_tasks": gateway.tasks(),
        "server_connections": gateway.connections(),
        "pooled_upstream": pooled,
        "other_sockets": open_sockets() - 2 * pooled,
        "upstream_open": sim.state.open_streams,
        "active": app.runtime.stats.active_streams,
        "gc_objects": len(gc.get_objects()),
        # The UI's recent-requests buffer (bounded, 5,000 records) fills up during a run.
        "stats_records": len(app.runtime.stats._records),
        "rss_mb": round(rss_mb(), 1),
    }


def settle(gateway: GatewayThread, sim: SimulatorServer, app: Any, timeout: float = 10) -> None:
    """Wait for in-flight work to wind down (closing connections takes a moment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (
            sim.state.open_streams == 0
            and app.runtime.stats.active_streams == 0
            and gateway.connections() == 0
        ):
            break
        time.sleep(0.1)
    time.sleep(0.5)


def check(outcomes: list[Outcome], sim: SimulatorServer) -> tuple[list[str], int]:
    """Compare each finished stream's text with what the simulator sent for its prompt."""
    by_marker: dict[str, list[Any]] = {}
    for record in sim.state.requests:
        found = _MARKER.search(orjson.dumps(record.body).decode()) if record.body else None
        if found:
            by_marker.setdefault(found.group(0), []).append(record)
    mismatches: list[str] = []
    unmatched = 0
    for o in outcomes:
        records = by_marker.get(o.marker, [])
        if o.kind != "done":
            continue
        served = [r for r in records if r.status == 200]
        if not served:
            unmatched += 1
            continue
        sent = served[-1].sent_text
        if o.text != sent:
            mismatches.append(
                f"{o.marker}: got {len(o.text)} chars, the simulator sent {len(sent)}"
            )
    return mismatches, unmatched


def run(
    duration: float, streams: int, fault_rate: float, chunk_interval: float, accounts: int
) -> Report:
    with SimulatorServer() as sim:
        # Keep every request in the simulator's log (its default keeps the newest 10,000): the
        # check at the end needs them all. Dropped before the "after" figures.
        sim.state.reset(
            fault_rate=fault_rate, fault_seed=1, chunk_interval=chunk_interval, log_limit=None
        )
        home = Path(os.environ.get("TMPDIR", "/tmp")) / "ki2api-soak-home"
        settings = Settings.from_env(
            {
                "API_KEY": API_KEY,
                "KIRO_API_URL": f"{sim.url}/generateAssistantResponse",
                "KIRO_REFRESH_URL": f"{sim.url}/refreshToken",
                "KIRO_ACCOUNTS": orjson.dumps(
                    [
                        {"label": f"soak-{i}", "accessToken": f"soak-access-{i:04d}"}
                        for i in range(accounts)
                    ]
                ).decode(),
                "KIRO_TOKEN_FILE": str(home / "none.json"),
                "KIRO_FIRST_BYTE_TIMEOUT": "10",
                "KIRO_IDLE_TIMEOUT": "10",
                "MAX_CONCURRENT_PER_ACCOUNT": str(streams + 16),
            }
        )
        app = create_app(settings, with_ui=False)
        gateway = GatewayThread(app).start()
        try:
            url = f"{gateway.url}/v1/chat/completions"
            # Warm up at full concurrency (imports, connection pools, caches), then take the
            # "before" figures.
            asyncio.run(_clients(url, streams, 3.0, []))
            settle(gateway, sim, app)
            sim.state.reset_logs()
            before = snapshot(gateway, sim, app)
            outcomes: list[Outcome] = []
            peak = [before["rss_mb"]]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(1.0):
                    peak[0] = max(peak[0], rss_mb())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.monotonic()
            asyncio.run(_clients(url, streams, duration, outcomes))
            elapsed = time.monotonic() - started
            stop.set()
            settle(gateway, sim, app)
            mismatches, unmatched = check(outcomes, sim)
            injected = Counter(r.fault for r in sim.state.requests if r.fault)
            upstream_requests = len(sim.state.requests)
            kinds = Counter(o.kind for o in outcomes)
            codes = Counter(f"{o.kind}:{o.error_code}" for o in outcomes if o.kind != "done")
            ttfb = sorted(o.ttfb for o in outcomes if o.ttfb is not None)
            total = len(outcomes)
            # Drop the benchmark's own records: what is left is the gateway's (and simulator's).
            sim.state.reset_logs()
            outcomes.clear()
            after = snapshot(gateway, sim, app)
            return Report(
                duration=elapsed,
                streams=streams,
                fault_rate=fault_rate,
                accounts=accounts,
                total=total,
                kinds=kinds,
                error_codes=codes,
                mismatches=mismatches,
                unmatched=unmatched,
                injected=injected,
                upstream_requests=upstream_requests,
                before=before,
                after=after,
                peak_rss=peak[0],
                ttfb=ttfb,
            )
        finally:
            gateway.stop()


async def _clients(url: str, streams: int, duration: float, outcomes: list[Outcome]) -> None:
    deadline = time.monotonic() + duration
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    await asyncio.gather(*(client_loop(i, url, deadline, outcomes, limits) for i in range(streams)))


# --- docs/benchmarks.md --------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def section(report: Report) -> str:
    kinds, total = report.kinds, report.total
    ttfb = report.ttfb
    injected = ", ".join(f"{k} {v}" for k, v in sorted(report.injected.items()))
    rows = [
        ("streams finished with `[DONE]`", f"{kinds['done']:,}"),
        (
            "… whose text equals what the simulator sent",
            f"{kinds['done'] - len(report.mismatches) - report.unmatched:,}",
        ),
        ("failed with an error event mid-stream", f"{kinds['error_event']:,}"),
        ("failed with an HTTP error before the first byte", f"{kinds['http_error']:,}"),
        ("stopped silently / transport errors", f"{kinds['silent']} / {kinds['transport_error']}"),
        ("upstream requests (retries included)", f"{report.upstream_requests:,}"),
        (
            "time to first byte p50 / p99",
            f"{_pct(ttfb, 0.5) * 1000:.0f} ms / {_pct(ttfb, 0.99) * 1000:.0f} ms",
        ),
    ]
    leftovers = [
        ("gateway asyncio tasks", "gateway_tasks"),
        ("client connections held by the server", "server_connections"),
        ("pooled keep-alive connections to the simulator", "pooled_upstream"),
        ("other sockets open in the process", "other_sockets"),
        ("upstream streams open (simulator)", "upstream_open"),
        ("active gateway streams", "active"),
        ("live Python objects", "gc_objects"),
        ("… of which recent-request records (bounded at 5,000)", "stats_records"),
        ("resident memory (MB)", "rss_mb"),
    ]
    lines = [
        SECTION,
        "",
        f"`bench/soak.py`: {report.streams} concurrent streamed OpenAI chat requests, each client "
        f"starting its next request as soon as one ends, for {report.duration:.0f} s, against the "
        f"simulator injecting a random fault into {report.fault_rate:.0%} of its answers "
        f"({', '.join(RANDOM_FAULTS)}). Simulator and gateway run in the benchmark's process on "
        "real uvicorn servers, so their tasks and connections can be counted. The pool has "
        f"{report.accounts} Kiro accounts: a throttled (429) answer moves its request to another "
        "account; an account cools down only when Kiro throttles it again and again (or says how "
        "long to wait), and while all are cooling down new requests get 429 with Retry-After "
        "before the first byte.",
        "",
        f"Result: **{'PASS' if report.ok else 'FAIL'}** — {total:,} requests "
        f"({total / report.duration:.0f}/s); faults injected: {injected or 'none'}.",
        "",
        "| outcome | count |",
        "| --- | ---: |",
        *(f"| {a} | {b} |" for a, b in rows),
        "",
        "| left over | before | after |",
        "| --- | ---: | ---: |",
        *(f"| {a} | {report.before[k]:g} | {report.after[k]:g} |" for a, k in leftovers),
        f"| peak resident memory (MB) | | {report.peak_rss:.0f} |",
        "",
        "Resident memory includes the benchmark's own logs (the simulator keeps every request "
        "of the run for the final check; dropped before the *after* figures) and does not "
        "shrink back, because CPython keeps freed memory for reuse; live objects are the leak "
        "check: without the bounded recent-requests buffer they must end within 2 % of the "
        "start.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; measured {date.today().isoformat()}.",
        f"Reproduce: `python -m bench.soak --duration {round(report.duration, -1):.0f} "
        f"--streams {report.streams} --accounts {report.accounts} --write`.",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str, path: Path = DOC) -> None:
    """Replace the Soak section (or append it), leaving every other section as it is."""
    doc = path.read_text()
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text.rstrip() + "\n\n", doc, count=1).rstrip() + "\n"
    else:
        doc = doc.rstrip() + "\n\n" + text
    path.write_text(doc)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument("--streams", type=int, default=200, help="concurrent streams")
    parser.add_argument("--fault-rate", type=float, default=0.05, help="share of faulty answers")
    parser.add_argument(
        "--chunk-interval", type=float, default=0.02, help="seconds between upstream frames"
    )
    parser.add_argument("--accounts", type=int, default=4, help="Kiro accounts in the pool")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    report = run(args.duration, args.streams, args.fault_rate, args.chunk_interval, args.accounts)
    print(report.summary())
    if args.write:
        write_section(section(report))
        print(f"wrote the Soak section of {DOC}")
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
