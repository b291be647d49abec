"""Percentiles over request results, and "added" figures (through a gateway minus direct)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bench.client import Result


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the two nearest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Summary:
    """Milliseconds, over the successful requests of one run."""

    n: int
    errors: int
    tokens: int
    p50: float
    p99: float
    ttft_p50: float
    ttft_p99: float
    gap_p50: float
    gap_p99: float
    first_error: str | None = None


def summarize(results: Sequence[Result]) -> Summary:
    ok = [r for r in results if r.ok]
    bad = [r for r in results if not r.ok]
    latencies = [r.latency * 1000 for r in ok]
    ttfts = [t * 1000 for r in ok if (t := r.ttft) is not None]
    gaps = [
        (later - earlier) * 1000
        for r in ok
        for earlier, later in zip(r.token_times, r.token_times[1:], strict=False)
    ]
    first_error = None
    if bad:
        r = bad[0]
        first_error = r.error or f"HTTP {r.status}"
    return Summary(
        n=len(ok),
        errors=len(bad),
        tokens=sum(r.tokens for r in ok),
        p50=pct(latencies, 50),
        p99=pct(latencies, 99),
        ttft_p50=pct(ttfts, 50),
        ttft_p99=pct(ttfts, 99),
        gap_p50=pct(gaps, 50),
        gap_p99=pct(gaps, 99),
        first_error=first_error,
    )


@dataclass(frozen=True, slots=True)
class Added:
    """What a gateway adds on top of its direct baseline (ms; negative = noise)."""

    p50: float
    p99: float
    ttft_p50: float
    ttft_p99: float
    gap_p50: float
    gap_p99: float


def added(via: Summary, direct: Summary) -> Added:
    return Added(
        p50=via.p50 - direct.p50,
        p99=via.p99 - direct.p99,
        ttft_p50=via.ttft_p50 - direct.ttft_p50,
        ttft_p99=via.ttft_p99 - direct.ttft_p99,
        gap_p50=via.gap_p50 - direct.gap_p50,
        gap_p99=via.gap_p99 - direct.gap_p99,
    )
