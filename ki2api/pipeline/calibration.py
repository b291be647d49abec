"""Input-token estimates calibrated per model against what the service reports.

Kiro counts the prompt only at the end of an answer (its context-usage percentage, or token
usage when it sends one), while clients such as Claude Code read ``input_tokens`` from the very
first event to decide when to compact. So the local estimate is scaled by a per-model ratio,
learned from every answer that brought a real count: ``estimate(model, raw)`` before the answer,
``observe(model, raw, counted)`` after it. Plain dict work, no I/O.
"""

from __future__ import annotations

WEIGHT = 0.3  # how much one answer moves the ratio (an exponential moving average)
LOW, HIGH = 0.5, 3.0  # a ratio outside this says the count was about something else


class TokenCalibration:
    def __init__(self) -> None:
        self._ratio: dict[str, float] = {}

    def ratio(self, model: str) -> float:
        return self._ratio.get(model, 1.0)

    def estimate(self, model: str, raw: int) -> int:
        return max(1, round(raw * self._ratio.get(model, 1.0)))

    def observe(self, model: str, raw: int, counted: int) -> None:
        if raw < 50 or counted <= 0:  # too small to say anything about the ratio
            return
        ratio = counted / raw
        if not LOW <= ratio <= HIGH:
            return
        old = self._ratio.get(model)
        self._ratio[model] = ratio if old is None else old + WEIGHT * (ratio - old)
