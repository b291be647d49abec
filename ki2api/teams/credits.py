"""Kiro credits of an answer: Kiro's own ``meteringEvent`` when it sent one, else an estimate.

The estimate is tokens × a rate per Kiro model: the rate this gateway saw Kiro meter for that
model lately (a moving average over metered answers), else :data:`DEFAULT_RATE`. Output counts
:data:`OUTPUT_WEIGHT` times an input token, as model prices do. Estimates are kept apart in the
usage (``credits_estimated``) so nobody takes them for Kiro's figures.
"""

from __future__ import annotations

from ki2api.model.deltas import Usage

DEFAULT_RATE = 1.0 / 100_000  # credits per weighted token, before any answer was metered
OUTPUT_WEIGHT = 5
_SMOOTHING = 0.1  # weight of the newest metered answer in the moving average


def weighted_tokens(usage: Usage) -> int:
    return usage.input_tokens + OUTPUT_WEIGHT * usage.output_tokens


class CreditRates:
    def __init__(self) -> None:
        self._rates: dict[str, float] = {}

    def learn(self, model: str | None, usage: Usage) -> None:
        tokens = weighted_tokens(usage)
        if model is None or not usage.credits or tokens <= 0:
            return
        rate = usage.credits / tokens
        old = self._rates.get(model)
        self._rates[model] = rate if old is None else old + _SMOOTHING * (rate - old)

    def estimate(self, model: str | None, usage: Usage) -> float:
        rate = self._rates.get(model, DEFAULT_RATE) if model is not None else DEFAULT_RATE
        return weighted_tokens(usage) * rate
