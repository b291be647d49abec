"""A short soak (bench/soak.py): 50 concurrent streams for 8 s with 5 % injected faults."""

from __future__ import annotations

import pytest

from bench.soak import run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def test_short_soak_loses_nothing_and_leaks_nothing() -> None:
    report = run(duration=8, streams=50, fault_rate=0.05, chunk_interval=0.02, accounts=4)
    print(report.summary())
    assert report.total > 200
    assert report.kinds["done"] > 0.8 * report.total
    assert sum(report.injected.values()) > 0
    assert not report.mismatches and report.unmatched == 0
    assert report.kinds["silent"] == 0 and report.kinds["transport_error"] == 0
    assert not report.leaks, report.leaks
    assert report.memory_ok, (report.before, report.after)
