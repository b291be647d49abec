"""Client-side output limits the service does not enforce: ``max_tokens`` and stop sequences.

Sans I/O, fed deltas in order. Stop sequences may be split across deltas, so the tail of the
text that could begin one is held back until the next delta decides.
"""

from __future__ import annotations

from ki2api.model.deltas import (
    Delta,
    ReasoningDelta,
    Stop,
    StopReason,
    TextDelta,
    ToolCallArgs,
)
from ki2api.model.tokens import estimate_tokens


class OutputLimiter:
    __slots__ = ("_held", "_hold", "_max_tokens", "_stops", "_used", "stop")

    def __init__(self, max_tokens: int | None, stop_sequences: list[str]) -> None:
        self._max_tokens = max_tokens
        self._stops = [s for s in stop_sequences if s]
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._held = ""
        self._used = 0
        self.stop: Stop | None = None  # set when the limiter ended the answer

    def feed(self, delta: Delta) -> list[Delta]:
        if self.stop is not None:
            return []
        if isinstance(delta, TextDelta):
            return self._text(delta.text)
        if isinstance(delta, Stop):
            return [*self.flush(), delta]
        if isinstance(delta, ReasoningDelta | ToolCallArgs):
            text = delta.text if isinstance(delta, ReasoningDelta) else delta.fragment
            if self._spend(text) is not None:
                return [delta]
            self.stop = Stop(StopReason.MAX_TOKENS)
            return []
        return [delta]

    def flush(self) -> list[Delta]:
        held, self._held = self._held, ""
        return [TextDelta(held)] if held else []

    def _spend(self, text: str) -> str | None:
        """Count ``text`` against max_tokens; the part that fits, or None when nothing does."""
        if self._max_tokens is None:
            return text
        cost = estimate_tokens(text)
        if self._used + cost <= self._max_tokens:
            self._used += cost
            return text
        room = self._max_tokens - self._used
        self._used = self._max_tokens
        if room <= 0:
            return None
        return text[: max(1, len(text) * room // cost)]

    def _text(self, text: str) -> list[Delta]:
        if not self._stops:
            fitting = self._spend(text)
            if fitting is None:
                self.stop = Stop(StopReason.MAX_TOKENS)
                return []
            if fitting is not text:
                self.stop = Stop(StopReason.MAX_TOKENS)
            return [TextDelta(fitting)] if fitting else []
        buffer = self._held + text
        first = min(
            ((i, s) for s in self._stops if (i := buffer.find(s)) >= 0),
            default=None,
        )
        if first is not None:
            index, sequence = first
            ready, self._held = buffer[:index], ""
            out = self._emit(ready)
            if self.stop is None:
                self.stop = Stop(StopReason.STOP_SEQUENCE, sequence)
            return out
        cut = len(buffer) - self._hold if self._hold else len(buffer)
        ready, self._held = buffer[: max(cut, 0)], buffer[max(cut, 0) :]
        return self._emit(ready)

    def _emit(self, text: str) -> list[Delta]:
        if not text:
            return []
        fitting = self._spend(text)
        if fitting is None or fitting is not text:
            self.stop = Stop(StopReason.MAX_TOKENS)
            self._held = ""
        return [TextDelta(fitting)] if fitting else []
