"""Per-request facts gathered along the pipeline for the access log and metrics.

The HTTP middleware opens a :class:`RequestContext`; the gateway and the error renderers fill
it in. Outside a request (the UI, tests) there is none and writes are skipped.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(slots=True)
class RequestContext:
    request_id: str
    model: str | None = None
    kiro_model: str | None = None  # the Kiro model that served it (x-ki2api-model)
    account: str | None = None
    ttft: float | None = None  # seconds from request start to the first content delta
    error: str | None = None  # the error code the client saw, if any
    streamed: bool = False


current_request: ContextVar[RequestContext | None] = ContextVar("ki2api_request", default=None)


def note_error(code: str | None) -> None:
    ctx = current_request.get()
    if ctx is not None:
        ctx.error = code or "error"
