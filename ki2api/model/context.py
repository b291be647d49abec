"""Per-request facts gathered along the pipeline for the access log and metrics.

The HTTP middleware opens a :class:`RequestContext`; the gateway and the error renderers fill
it in. Outside a request (the UI, tests) there is none and writes are skipped.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from ki2api.model.deltas import Usage


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: a key's id and name (``ki2api.teams`` adds the key's limits)."""

    key_id: str
    name: str


class Settlement(Protocol):
    """What counts a request's usage once it is over (``ki2api.teams``)."""

    def settle(self, ctx: RequestContext, status: int) -> None: ...


@dataclass(slots=True)
class RequestContext:
    request_id: str
    model: str | None = None
    kiro_model: str | None = None  # the Kiro model that served it (x-ki2api-model)
    account: str | None = None
    ttft: float | None = None  # seconds from request start to the first content delta
    error: str | None = None  # the error code the client saw, if any
    streamed: bool = False
    caller: Caller | None = None  # set once the key is checked
    settlement: Settlement | None = None  # set once the request is admitted: settle() at the end
    admitted_at: float = 0.0  # when it was (time.time()): the day its usage counts for
    usages: list[Usage] | None = None  # one per upstream answer (web search may take several)

    def add_usage(self, usage: Usage) -> None:
        if self.usages is None:
            self.usages = [usage]
        else:
            self.usages.append(usage)

    def settle(self, status: int) -> None:
        """The request is over: count it (once) where it was admitted."""
        settlement, self.settlement = self.settlement, None
        if settlement is not None:
            settlement.settle(self, status)


current_request: ContextVar[RequestContext | None] = ContextVar("ki2api_request", default=None)


def note_error(code: str | None) -> None:
    ctx = current_request.get()
    if ctx is not None:
        ctx.error = code or "error"
