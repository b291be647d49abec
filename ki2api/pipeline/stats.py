"""Recent request outcomes, in memory, for the status page and health checks.

A bounded ring: the gateway appends one record per finished request; readers take snapshots.
``listeners`` hear of each record as it is added (usage counting, :mod:`ki2api.shared.usage`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestRecord:
    finished_at: float  # time.time()
    model: str
    account: str
    latency: float  # seconds, request start to last byte
    ttft: float | None  # seconds to the first content delta
    output_tokens: int
    error: str | None  # error code, or None for success
    streamed: bool
    input_tokens: int = 0
    key: str = ""  # the client key's name (ki2api.teams); "" for API_KEY or no key


@dataclass(slots=True)
class Percentiles:
    count: int
    errors: int
    p50: float | None
    p95: float | None
    ttft_p50: float | None


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class RequestStats:
    def __init__(self, capacity: int = 5000) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=capacity)
        self.active_streams = 0
        self.total = 0
        self.total_errors = 0
        self.listeners: list[Callable[[RequestRecord], None]] = []

    def add(self, record: RequestRecord) -> None:
        self._records.append(record)
        self.total += 1
        if record.error:
            self.total_errors += 1
        for listener in self.listeners:
            listener(record)

    def recent(self, seconds: float = 900.0) -> list[RequestRecord]:
        since = time.time() - seconds
        return [r for r in self._records if r.finished_at >= since]

    def summary(self, seconds: float = 900.0) -> Percentiles:
        records = self.recent(seconds)
        latencies = [r.latency for r in records if not r.error]
        ttfts = [r.ttft for r in records if r.ttft is not None]
        return Percentiles(
            count=len(records),
            errors=sum(1 for r in records if r.error),
            p50=_pct(latencies, 0.5),
            p95=_pct(latencies, 0.95),
            ttft_p50=_pct(ttfts, 0.5),
        )
