"""Tables for the terminal and the "Gateway overhead" section of docs/benchmarks.md."""

from __future__ import annotations

import math
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench.decoder import Row as DecoderRow
from bench.decoder import cpu_model
from bench.phases import LoadedRun, Memory, Step, Touched, highest_rate_under
from bench.stats import Summary, added

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
PLOT = REPO / "docs" / "benchmark-latency.png"
SECTION = "## Gateway overhead: Ki2API vs LiteLLM"
PAUSED = "1, after a pause"  # the level of the after-a-pause phase in the tables
RATIO_FLOOR_MS = 0.1  # an added figure below this is noise; ratios use this floor instead

# (label, Ki2API target, its direct baseline, LiteLLM target, its direct baseline)
COMPARISONS: tuple[tuple[str, str, str, str | None, str | None], ...] = (
    ("OpenAI, streamed", "ki2api-openai-stream", "direct-kiro", "litellm-openai-stream",
     "direct-openai-stream"),
    ("OpenAI, not streamed", "ki2api-openai-whole", "direct-kiro", "litellm-openai-whole",
     "direct-openai-whole"),
    ("Anthropic, streamed", "ki2api-anthropic-stream", "direct-kiro", None, None),
    ("Anthropic, not streamed", "ki2api-anthropic-whole", "direct-kiro", None, None),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RunConfig:
    mode: str
    latency: float
    interval: float
    chunks: int
    sequential_count: int
    concurrency: int
    concurrent_count: int
    rates: tuple[float, ...]
    step_seconds: float
    min_samples: int
    streams: int
    slow_interval: float
    pause: float  # seconds of silence before each request of the after-a-pause phase
    paused_count: int
    touched_count: int


@dataclass
class Report:
    config: RunConfig
    date: str
    litellm_version: str | None
    litellm_problem: str | None
    problems: dict[str, str] = field(default_factory=dict)
    sequential: dict[str, Summary] = field(default_factory=dict)
    paused: dict[str, Summary] = field(default_factory=dict)  # concurrency 1 after a pause
    touched: dict[str, Touched] = field(default_factory=dict)
    touched_problem: str | None = None
    concurrent: dict[str, LoadedRun] = field(default_factory=dict)
    frontier: dict[str, list[Step]] = field(default_factory=dict)
    memory: dict[str, Memory] = field(default_factory=dict)
    decoder: list[DecoderRow] = field(default_factory=list)
    plot_problem: str | None = None
    native_hop_problem: str | None = None  # why the C floor is missing from this run
    idle_at_start_mb: float = math.nan


def _v(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def machine() -> str:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, {mem_kb / 1024 / 1024:.0f} GiB RAM; "
        f"{platform.system()} {platform.release()} ({platform.platform(terse=True)}); "
        f"Python {platform.python_version()}; uvicorn {_v('uvicorn')}, uvloop {_v('uvloop')}, "
        f"httptools {_v('httptools')}, httpx {_v('httpx')}, orjson {_v('orjson')}"
    )


def ms(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def ratio(theirs: float, ours: float) -> str:
    if math.isnan(theirs) or math.isnan(ours):
        return "—"
    if ours < RATIO_FLOOR_MS:  # Ki2API's figure is noise: a ratio would mean nothing
        return "Ki2API ≈ 0" if theirs > RATIO_FLOOR_MS else "—"
    return f"{theirs / ours:.1f}x"


def _summary(report: Report, level: str, name: str | None) -> Summary | None:
    if name is None:
        return None
    if level == "1":
        return report.sequential.get(name)
    if level == PAUSED:
        return report.paused.get(name)
    run = report.concurrent.get(name)
    return run.summary if run else None


def added_table(report: Report, levels: Sequence[str] | None = None) -> str:
    c = report.config
    lines = [
        "| request | concurrency | gateway | added p50 | added p99 | added TTFT p50 "
        "| added TTFT p99 | added gap p50 | added gap p99 |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in levels or ("1", str(c.concurrency)):
        for label, ours, ours_base, theirs, theirs_base in COMPARISONS:
            pairs = [("Ki2API", ours, ours_base), ("LiteLLM", theirs, theirs_base)]
            for gateway, via_name, base_name in pairs:
                via, base = _summary(report, level, via_name), _summary(report, level, base_name)
                if via_name is None:
                    continue
                if via is None or base is None or via.n == 0:
                    why = report.problems.get(via_name or "", "") or "not measured"
                    if gateway == "LiteLLM" and report.litellm_problem:
                        why = "LiteLLM unavailable (see below)"
                    lines.append(f"| {label} | {level} | {gateway} | {why} | | | | | |")
                    continue
                a = added(via, base)
                streamed = "not streamed" not in label
                ttft = (ms(a.ttft_p50, True), ms(a.ttft_p99, True)) if streamed else ("—", "—")
                gap = (ms(a.gap_p50, True), ms(a.gap_p99, True)) if streamed else ("—", "—")
                lines.append(
                    f"| {label} | {level} | {gateway} | **{ms(a.p50, True)}** | {ms(a.p99, True)} "
                    f"| {ttft[0]} | {ttft[1]} | {gap[0]} | {gap[1]} |"
                )
    return "\n".join(lines)


# (label, target, process): one more process hop that only copies bytes
FLOORS = (
    ("Python (uvloop)", "pipe-kiro", "pipe"),
    ("C (two threads per connection)", "native-hop-kiro", "native-hop"),
)


def floor_table(report: Report) -> str:
    lines = [
        "| floor | concurrency | added p50 | added p99 | added TTFT p50 | added TTFT p99 "
        "| CPU per request |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in ("1", PAUSED, str(report.config.concurrency)):
        for label, name, process in FLOORS:
            via, base = _summary(report, level, name), _summary(report, level, "direct-kiro")
            if via is None or base is None or not via.n:
                continue
            a = added(via, base)
            run = report.concurrent.get(name)
            cpu = "—"
            if level == str(report.config.concurrency) and run is not None and run.summary.n:
                per_request = run.cpu.by_process.get(process, math.nan) / run.summary.n
                cpu = f"{per_request * 1e6:.0f} µs"
            lines.append(
                f"| {label} | {level} | {ms(a.p50, True)} | {ms(a.p99, True)} "
                f"| {ms(a.ttft_p50, True)} | {ms(a.ttft_p99, True)} | {cpu} |"
            )
    return "\n".join(lines)


def ratio_table(report: Report, levels: Sequence[str] | None = None) -> str:
    c = report.config
    lines = [
        "| request | concurrency | p50: LiteLLM / Ki2API | p99 | TTFT p50 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for level in levels or ("1", str(c.concurrency)):
        for label, ours, ours_base, theirs, theirs_base in COMPARISONS:
            if theirs is None:
                continue
            o, ob = _summary(report, level, ours), _summary(report, level, ours_base)
            t, tb = _summary(report, level, theirs), _summary(report, level, theirs_base)
            if not (o and ob and t and tb and o.n and t.n):
                lines.append(f"| {label} | {level} | — | — | — |")
                continue
            a, b = added(o, ob), added(t, tb)
            streamed = "not streamed" not in label
            lines.append(
                f"| {label} | {level} | **{ratio(b.p50, a.p50)}** | {ratio(b.p99, a.p99)} "
                f"| {ratio(b.ttft_p50, a.ttft_p50) if streamed else '—'} |"
            )
    return "\n".join(lines)


def raw_table(report: Report) -> str:
    c = report.config
    lines = [
        "| target | concurrency | ok | errors | p50 | p99 | TTFT p50 | TTFT p99 "
        "| gap p50 | gap p99 | chunks/answer |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    runs = [("1", name, s) for name, s in report.sequential.items()]
    runs += [(PAUSED, name, s) for name, s in report.paused.items()]
    runs += [(str(c.concurrency), name, run.summary) for name, run in report.concurrent.items()]
    for level, name, s in runs:
        per = f"{s.tokens / s.n:.0f}" if s.n else "—"
        lines.append(
            f"| {name} | {level} | {s.n} | {s.errors} | {ms(s.p50)} | {ms(s.p99)} "
            f"| {ms(s.ttft_p50)} | {ms(s.ttft_p99)} | {ms(s.gap_p50)} | {ms(s.gap_p99)} | {per} |"
        )
    return "\n".join(lines)


def cpu_table(report: Report) -> str:
    lines = [
        "| run | gateway CPU per chunk | gateway CPU per request | gateway CPU | simulator CPU "
        "| client CPU | wall | chunks |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, run in report.concurrent.items():
        if name.startswith(("direct", "pipe", "native")):
            gateway_cpu = math.nan
        else:
            gateway_cpu = run.cpu.by_process.get(
                "litellm" if name.startswith("litellm") else "ki2api", math.nan
            )
        per_chunk = gateway_cpu / run.chunks * 1e6 if run.chunks else math.nan
        per_request = gateway_cpu / run.summary.n * 1e6 if run.summary.n else math.nan
        streamed = name.endswith("stream") or name == "direct-kiro"
        chunk = f"{per_chunk:.0f} µs" if streamed and not math.isnan(per_chunk) else "—"
        lines.append(
            f"| {name} | {chunk} "
            f"| {'—' if math.isnan(per_request) else f'{per_request:.0f} µs'} "
            f"| {'—' if math.isnan(gateway_cpu) else f'{gateway_cpu:.2f} s'} "
            f"| {run.cpu.by_process.get('simulator', math.nan):.2f} s "
            f"| {run.cpu.by_process.get('client', math.nan):.2f} s | {run.cpu.wall:.2f} s "
            f"| {run.chunks:,} |"
        )
    return "\n".join(lines)


def frontier_table(report: Report) -> str:
    lines = [
        "| gateway | offered req/s | added p50 | added p99 | direct p99 | errors "
        "| client lag p99 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for gateway, steps in report.frontier.items():
        for s in steps:
            lines.append(
                f"| {gateway} | {s.rate:.0f} | {ms(s.added_p50, True)} | {ms(s.added_p99, True)} "
                f"| {ms(s.direct_p99)} | {s.errors} | {s.lag_p99:.1f} |"
            )
    return "\n".join(lines)


def frontier_summary(report: Report) -> str:
    out = []
    for gateway, steps in report.frontier.items():
        parts = []
        for limit in (5.0, 50.0):
            best = highest_rate_under(steps, limit)
            top = steps[-1].rate if steps else 0
            reached = (
                f" (the highest rate tried, {top:.0f} req/s, was still under)"
                if best == top and steps
                else ""
            )
            shown = "none of the rates tried" if best is None else f"**{best:.0f} req/s**"
            parts.append(f"added p99 < {limit:.0f} ms up to {shown}{reached}")
        out.append(f"- {gateway}: " + "; ".join(parts) + ".")
    return "\n".join(out)


# (row label, target, which server process answered it)
TOUCHED_ROWS = (
    ("Ki2API, OpenAI streamed", "ki2api-openai-stream", "ki2api"),
    ("Ki2API, OpenAI not streamed", "ki2api-openai-whole", "ki2api"),
    ("Ki2API, Anthropic streamed", "ki2api-anthropic-stream", "ki2api"),
    ("Ki2API, Anthropic not streamed", "ki2api-anthropic-whole", "ki2api"),
    ("LiteLLM, OpenAI streamed", "litellm-openai-stream", "litellm"),
    ("LiteLLM, OpenAI not streamed", "litellm-openai-whole", "litellm"),
    ("the simulator, Kiro direct", "direct-kiro", "simulator"),
    ("the simulator, OpenAI streamed direct", "direct-openai-stream", "simulator"),
)


def touched_table(report: Report) -> str:
    lines = [
        "| server, request | touched per request | same span idle | the request's own "
        "| 4 KB pages |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, name, _ in TOUCHED_ROWS:
        tm = report.touched.get(name)
        if tm is None or not tm.requests:
            continue
        lines.append(
            f"| {label} | {tm.request_kb:,.0f} kB | {tm.idle_kb:,.0f} kB "
            f"| **{tm.added_kb:,.0f} kB** | {tm.added_kb / 4:,.0f} |"
        )
    return "\n".join(lines)


def memory_table(report: Report) -> str:
    lines = [
        "| gateway | streams | open at once | RSS idle | RSS with the streams open | peak RSS "
        "| RSS after they closed | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for gateway, m in report.memory.items():
        err = f"{m.errors} ({m.first_error})" if m.errors else "0"
        lines.append(
            f"| {gateway} | {m.streams:,} | {m.opened:,} | {m.idle_mb:.0f} MB | "
            f"**{m.open_mb:.0f} MB** | {m.peak_mb:.0f} MB | {m.after_mb:.0f} MB | {err} |"
        )
    return "\n".join(lines)


def decoder_table(rows: Sequence[DecoderRow]) -> str:
    lines = [
        "| chunking | Ki2API frames/s | botocore frames/s | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.mode} | {row.ours:,.0f} | {row.botocore:,.0f} | **{row.ratio:.1f}x** |"
        )
    return "\n".join(lines)


def write_section(title: str, text: str, path: Path = DOC) -> None:
    """Replace one section of the doc (or append it), leaving the others alone."""
    doc = path.read_text()
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text.rstrip() + "\n\n", doc, count=1).rstrip() + "\n"
    else:
        doc = doc.rstrip() + "\n\n" + text.rstrip() + "\n"
    path.write_text(doc)
