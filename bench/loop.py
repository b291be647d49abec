"""The event loop the benchmark's own clients run on: uvloop when installed, as the gateway's."""

from __future__ import annotations

import asyncio


def run_loop(coro: object) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]
