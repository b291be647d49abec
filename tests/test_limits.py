"""max_tokens and stop sequences, enforced on the stream (the service does neither)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ki2api.model.deltas import Stop, StopReason, TextDelta
from ki2api.pipeline.output_limits import OutputLimiter


def run(limiter: OutputLimiter, pieces: list[str]) -> tuple[str, Stop | None]:
    out = []
    for piece in pieces:
        out += limiter.feed(TextDelta(piece))
        if limiter.stop is not None:
            break
    else:
        out += limiter.feed(Stop(StopReason.END_TURN))
    text = "".join(d.text for d in out if isinstance(d, TextDelta))
    stops = [d for d in out if isinstance(d, Stop)]
    return text, limiter.stop or (stops[0] if stops else None)


def test_stop_sequence_split_across_chunks() -> None:
    text, stop = run(OutputLimiter(None, ["END"]), ["abc E", "N", "D more"])
    assert text == "abc "
    assert stop == Stop(StopReason.STOP_SEQUENCE, "END")


def test_no_stop_sequence_passes_everything() -> None:
    text, stop = run(OutputLimiter(None, ["zzz"]), ["hello ", "zz", " world"])
    assert text == "hello zz world"
    assert stop == Stop(StopReason.END_TURN)


def test_max_tokens_cuts_with_length() -> None:
    text, stop = run(OutputLimiter(5, []), ["abcd" * 3, "abcd" * 10])
    assert stop == Stop(StopReason.MAX_TOKENS)
    assert 1 <= len(text) <= 20


@given(st.text(alphabet="abcX", max_size=50), st.lists(st.integers(1, 7), max_size=12))
def test_stop_sequence_any_split(text: str, cuts: list[int]) -> None:
    pieces, pos = [], 0
    for size in cuts + [len(text)]:
        if text[pos : pos + size]:
            pieces.append(text[pos : pos + size])
        pos += size
    got, stop = run(OutputLimiter(None, ["aXb", "cc"]), pieces)
    hits = [i for i in (text.find("aXb"), text.find("cc")) if i >= 0]
    if hits:
        assert got == text[: min(hits)]
        assert stop is not None and stop.reason == StopReason.STOP_SEQUENCE
    else:
        assert got == text
