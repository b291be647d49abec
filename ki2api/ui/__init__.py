"""The web page: a Gradio Blocks app mounted at ``/`` on the gateway's FastAPI app.

``create_app`` declares the API routes first, then calls :func:`mount_ui`; the mount catches
every path the API does not, so ``/v1/...``, ``/health`` and ``/admin/...`` keep working.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import gradio as gr
from fastapi import FastAPI

from ki2api.settings import Settings
from ki2api.ui.access import ApiChecks, Playground
from ki2api.ui.guard import PageGuard, Readers, path_patterns
from ki2api.ui.page import build_page
from ki2api.ui.theme import CSS, THEME

if TYPE_CHECKING:
    from ki2api.runtime import Runtime

T = TypeVar("T")

CONCURRENCY = 32  # chats (and other events) that run at once, per event
QUEUE_SIZE = 256  # events waiting in Gradio's queue, all sessions together; more get a 503


def mount_ui(app: FastAPI, settings: Settings, runtime: Runtime, checks: ApiChecks) -> FastAPI:
    """``checks``: the API's machinery (rate limiter, metrics) the playground's chats go
    through as well."""
    return _in_a_running_loop(lambda: _mount(app, settings, runtime, checks))


def _in_a_running_loop(build: Callable[[], T]) -> T:
    """Run ``build`` where an event loop is running.

    Gradio creates its locks with a helper that, outside a running loop, makes a new event loop
    each time and leaves the old one unclosed (a ResourceWarning per loop). A short-lived loop
    of our own, closed afterwards, avoids that; asyncio locks bind to a loop only when used.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return build()

    async def run() -> T:
        return build()

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


def _mount(app: FastAPI, settings: Settings, runtime: Runtime, checks: ApiChecks) -> FastAPI:
    readers = Readers()
    app_paths = path_patterns(app.routes)  # the app's own routes: everything but the page
    page = build_page(settings, runtime, Playground(checks, runtime), readers)
    page.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    inputs = {fn_index: len(fn.inputs) for fn_index, fn in page.fns.items()}  # fixed once built
    app.add_middleware(
        PageGuard,
        app_paths=app_paths,
        readers=readers,
        events=lambda: inputs,
        # A session's answers exist once it joined the queue (Gradio keeps the last 2,000).
        known_session=lambda session: session in page._queue.pending_messages_per_session,
    )
    mounted: FastAPI = gr.mount_gradio_app(
        app,
        page,
        path="/",
        ssr_mode=False,  # SSR needs a Node server
        theme=THEME,
        css=CSS,
        footer_links=[],  # the page has its own footer, in the visitor's language
        run_history=False,  # the browser must not keep copies of pasted tokens
        show_error=False,
        max_file_size=0,  # the page takes no uploads (and its guard closes the route anyway)
    )
    return mounted


__all__ = ["mount_ui"]
