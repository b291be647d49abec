"""What every front door's renderer promises the streaming loop (ki2api/api/renderer.py), checked
for all three on deltas alone: no stream, no server."""

from __future__ import annotations

from collections.abc import Callable
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ki2api.api.anthropic.render import MessageRenderer
from ki2api.api.openai_chat.render import ChatRenderer
from ki2api.api.renderer import CUT_SHORT, Renderer
from ki2api.api.responses.protocol import parse_wire
from ki2api.api.responses.render import ResponseRenderer
from ki2api.model.deltas import KEEP_ALIVE, Stop, StopReason, StreamError, TextDelta
from ki2api.model.errors import UpstreamTimeout
from tests.render_help import SCRIPTS, chat_request, events, rebatched, render, seeded


def openai() -> Renderer:
    return ChatRenderer(chat_request(), include_usage=True)


def anthropic() -> Renderer:
    return MessageRenderer(chat_request(), context_window=200_000)


def responses() -> Renderer:
    wire = parse_wire({"model": "claude-sonnet-4.5", "input": "hi", "stream": True})
    return ResponseRenderer(chat_request(), wire)


FORMATS: dict[str, Callable[[], Renderer]] = {
    "openai": openai,
    "anthropic": anthropic,
    "responses": responses,
}
# How each format says "failed" in the stream, and keeps the connection alive.
ERROR_MARK = {
    "openai": b'{"error":',
    "anthropic": b"event: error\n",
    "responses": b"event: error\n",
}
KEEP_ALIVE_BYTES = {
    "openai": b": keep-alive\n\n",
    "anthropic": b'event: ping\ndata: {"type":"ping"}\n\n',
    "responses": b": keep-alive\n\n",
}


def fresh(make: Callable[[], Renderer]) -> Renderer:
    seeded()
    renderer = make()
    renderer.prepare()
    return renderer


@settings(max_examples=60, deadline=None)
@given(
    fmt=st.sampled_from(sorted(FORMATS)),
    script=st.sampled_from(sorted(SCRIPTS)),
    data=st.data(),
)
def test_how_the_deltas_are_batched_does_not_change_the_bytes(
    fmt: str, script: str, data: st.DataObject
) -> None:
    batches = SCRIPTS[script]
    cut = data.draw(rebatched(batches))
    with mock.patch("time.time", return_value=1_700_000_000.0):
        one = render(fresh(FORMATS[fmt]), batches)
        other = render(fresh(FORMATS[fmt]), cut)
    assert one == other


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_the_answer_ends_at_its_stop_and_nothing_renders_after_it(fmt: str) -> None:
    renderer = started(fmt)
    last = renderer.feed([Stop(StopReason.END_TURN), TextDelta("after the end")])
    assert renderer.done and b"after the end" not in last
    assert renderer.feed([TextDelta("later")]) == b""
    assert renderer.end() == b""


def started(fmt: str) -> Renderer:
    """A renderer whose answer has begun: its preamble and some text went out."""
    renderer = FORMATS[fmt]()
    renderer.start()
    renderer.feed([TextDelta("part")])
    assert not renderer.done
    return renderer


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_an_error_in_the_stream_ends_the_answer_in_the_clients_format(fmt: str) -> None:
    renderer = started(fmt)
    failed = renderer.feed([StreamError(UpstreamTimeout("The upstream stopped answering."))])
    assert renderer.done and renderer.end() == b""
    assert ERROR_MARK[fmt] in failed and b"The upstream stopped answering." in failed


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_deltas_that_run_out_without_a_stop_end_with_an_error(fmt: str) -> None:
    renderer = started(fmt)
    cut = renderer.end()
    assert renderer.done and renderer.feed([TextDelta("later")]) == b""
    assert ERROR_MARK[fmt] in cut and CUT_SHORT.encode() in cut


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_quiet_upstream_renders_the_formats_keep_alive(fmt: str) -> None:
    renderer = FORMATS[fmt]()
    renderer.start()
    assert renderer.feed([KEEP_ALIVE]) == KEEP_ALIVE_BYTES[fmt]
    assert renderer.feed([KEEP_ALIVE, KEEP_ALIVE]) == KEEP_ALIVE_BYTES[fmt] * 2


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_prepare_renders_the_preamble_once(fmt: str) -> None:
    renderer = FORMATS[fmt]()
    renderer.prepare()
    preamble = renderer.start()
    renderer.prepare()  # the gateway may call it, then the service again
    assert renderer.start() == preamble
    assert len(events(preamble)) == (2 if fmt == "responses" else 1)
