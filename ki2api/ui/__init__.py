"""The web page: a Gradio Blocks app mounted at ``/`` on the gateway's FastAPI app.

``create_app`` declares the API routes first, then calls :func:`mount_ui`; the mount catches
every path the API does not, so ``/v1/...``, ``/health`` and ``/admin/...`` keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import gradio as gr
from fastapi import FastAPI

from ki2api.settings import Settings
from ki2api.ui.page import build_page
from ki2api.ui.theme import CSS, THEME

if TYPE_CHECKING:
    from ki2api.app import Runtime

CONCURRENCY = 32  # chats (and other events) that run at once, per event


def mount_ui(app: FastAPI, settings: Settings, runtime: Callable[[], Runtime]) -> FastAPI:
    page = build_page(settings, runtime)
    page.queue(default_concurrency_limit=CONCURRENCY)
    return gr.mount_gradio_app(
        app,
        page,
        path="/",
        ssr_mode=False,  # SSR needs a Node server
        theme=THEME,
        css=CSS,
        footer_links=["gradio", "settings"],  # the page's events are not an API: no "api" link
        run_history=False,  # the browser must not keep copies of pasted tokens
        show_error=False,
    )


__all__ = ["mount_ui"]
