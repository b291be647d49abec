"""Anthropic Messages: open the answer for its renderer (:mod:`.render`), count tokens.
No FastAPI here."""

from __future__ import annotations

from functools import partial

from ki2api.api.anthropic.counting import estimate_request_tokens
from ki2api.api.anthropic.render import MessageRenderer
from ki2api.api.endpoint import Opened, open_rendered
from ki2api.model.errors import ContextLengthExceeded
from ki2api.model.request import ChatRequest
from ki2api.pipeline.gateway import Gateway


class MessagesService:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def open(
        self, request: ChatRequest, *, conversation_header: str | None
    ) -> Opened[MessageRenderer]:
        gateway = self.gateway
        model = gateway.catalog.resolve(request.model)  # memoised: a dict lookup
        renderer = MessageRenderer(
            request,
            ratio=gateway.calibration.ratio(model.kiro_id),
            context_window=model.context_window,
            learn=partial(gateway.calibration.observe, model.kiro_id),
        )
        try:
            return await open_rendered(gateway, request, renderer, conversation_header)
        except ContextLengthExceeded as exc:
            raise renderer.status_error(exc) from None

    def count_tokens(self, request: ChatRequest) -> int:
        """The estimate of :mod:`ki2api.api.anthropic.counting`; unknown models are a 404."""
        self.gateway.catalog.resolve(request.model)
        return estimate_request_tokens(request)
