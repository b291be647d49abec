"""with_heartbeat (ki2api/kiro/http/heartbeat.py): ticks never break the source, reads happen
only when asked, and closing the stream closes a pending read before returning."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ki2api.kiro.http.heartbeat import with_heartbeat


class Source:
    """An async generator with a log of what happened to it."""

    def __init__(self, items: list[str], delay: float = 0.0, fail: Exception | None = None):
        self.items, self.delay, self.fail = items, delay, fail
        self.reads = 0
        self.closed = False
        self.cancelled = False

    async def run(self) -> AsyncIterator[str]:
        try:
            for item in self.items:
                self.reads += 1
                await asyncio.sleep(self.delay)
                yield item
            if self.fail is not None:
                raise self.fail
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.closed = True


async def test_items_in_order_with_ticks_while_the_source_is_slow() -> None:
    source = Source(["a", "b"], delay=0.25)
    seen = [item async for item in with_heartbeat(source.run(), 0.1)]
    assert [x for x in seen if x is not None] == ["a", "b"]
    assert seen.count(None) >= 2  # ticks between the items, and the reads survived them
    assert source.closed and not source.cancelled


async def test_fast_source_gives_no_ticks() -> None:
    source = Source([str(i) for i in range(500)])
    seen = [item async for item in with_heartbeat(source.run(), 5.0)]
    assert seen == [str(i) for i in range(500)]


async def test_nothing_is_read_while_the_consumer_holds_an_item() -> None:
    source = Source(["a", "b", "c"])
    stream = with_heartbeat(source.run(), 5.0)
    assert await anext(stream) == "a"
    await asyncio.sleep(0.05)
    assert source.reads == 1  # no read ahead: the source is idle while we hold "a"
    await stream.aclose()


async def test_closing_cancels_a_pending_read_before_returning() -> None:
    source = Source(["a", "b"], delay=10.0)
    stream = with_heartbeat(source.run(), 0.05)
    assert await anext(stream) is None  # a tick: the read of "a" is pending
    await stream.aclose()
    assert source.cancelled and source.closed


async def test_cancelling_the_consumer_closes_the_source() -> None:
    source = Source(["a"], delay=10.0)

    async def consume() -> None:
        async for _ in with_heartbeat(source.run(), 5.0):
            pass

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.cancelled and source.closed


async def test_source_errors_reach_the_consumer() -> None:
    source = Source(["a"], fail=ValueError("broken"))
    stream = with_heartbeat(source.run(), 5.0)
    assert await anext(stream) == "a"
    with pytest.raises(ValueError, match="broken"):
        await anext(stream)
