"""What every front door's renderer is: the delta stream → one client format, with no I/O.

A renderer is a state machine, as h11's connection is: the flow
(:class:`ki2api.api.endpoint.ChatEndpoint`) drives it and does all the writing::

    start()        the preamble (OpenAI's role chunk, ``message_start``, ``response.created``)
    feed(batch)*   the events of one batch of deltas (one upstream read); the batch that holds
                   the answer's ``Stop`` or ``StreamError`` also renders its end, and ``done``
                   turns true (deltas after it are ignored)
    end()          the deltas ran out: nothing if ``done``, else an in-stream error (the
                   delta contract promises a ``Stop`` or ``StreamError`` last)
    error(exc)     a failure after the first byte, in the format's in-stream error events

and ``whole(completion)`` renders the same answer not streamed, as a JSON-ready body. A
subclass renders each kind of delta in an ``on_*`` hook that appends to ``out``; :meth:`feed`
calls them by the delta's type (one dict lookup, no ``isinstance`` chain). ``prepare()`` renders
what does not depend on the answer (ids, the preamble, chunk templates); the gateway calls it
while the upstream thinks (``Gateway.open``'s ``while_waiting``), off the way to the first token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from ki2api.model import deltas
from ki2api.model.errors import GatewayError, UpstreamProtocolError
from ki2api.pipeline.gateway import Completion

KEEPALIVE = b": keep-alive\n\n"  # an SSE comment: every client skips it
CUT_SHORT = "The upstream answer ended before it was complete."

_Hook = Callable[[Any, Any], None]

# The hook each kind of delta goes to (by exact type: deltas are final dataclasses).
_HOOKS: Mapping[type, str] = {
    deltas.TextDelta: "on_text",
    deltas.ReasoningDelta: "on_reasoning",
    deltas.ToolCallStart: "on_tool_start",
    deltas.ToolCallArgs: "on_tool_args",
    deltas.ToolCallEnd: "on_tool_end",
    deltas.Usage: "on_usage",
    deltas.Stop: "_stopped",
    deltas.StreamError: "_failed",
    deltas.KeepAlive: "on_keep_alive",
    deltas.ServerToolUse: "on_search",
    deltas.ServerToolResult: "on_search_result",
}


def _ignore(renderer: Any, delta: Any) -> None:
    pass


class Renderer:
    """The base of the three front doors' renderers (see the module doc).

    A subclass renders ``start``, ``render_error`` and ``whole``, and the deltas in hooks that
    append to ``out``: ``on_text``, ``on_reasoning``, ``on_tool_start``, ``on_tool_args``,
    ``on_stop`` (the answer's end) and, where the format shows them, ``on_tool_end``,
    ``on_search`` and ``on_search_result`` (ignored here). ``Usage`` is kept in ``usage`` for
    ``on_stop``; a keep-alive renders ``keep_alive``.
    """

    keep_alive: ClassVar[bytes] = KEEPALIVE
    _dispatch: ClassVar[dict[type, _Hook]]

    def __init__(self) -> None:
        self.done = False
        self.fresh = True  # no batch fed yet: nothing has gone to the client
        self.usage: deltas.Usage | None = None
        self.out: list[bytes] = []  # what the batch being fed renders

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._dispatch = {kind: getattr(cls, hook) for kind, hook in _HOOKS.items()}

    # --- the flow's side -----------------------------------------------------------------

    def prepare(self) -> None:
        """Render what the answer's deltas do not decide; idempotent."""

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Extra response headers for a streamed answer (sent with the head)."""
        return []

    def start(self) -> bytes:
        raise NotImplementedError

    def feed(self, batch: Iterable[deltas.Delta]) -> bytes:
        if self.done:
            return b""
        out = self.out = []
        dispatch = self._dispatch
        for delta in batch:
            dispatch[type(delta)](self, delta)
            if self.done:
                break
        self.fresh = False
        return b"".join(out)

    def end(self) -> bytes:
        return b"" if self.done else self.error(UpstreamProtocolError(CUT_SHORT))

    def error(self, error: GatewayError) -> bytes:
        self.done = True
        return self.render_error(error)

    def status_error(self, error: GatewayError) -> GatewayError:
        """A failure before the first byte, as the HTTP error this format answers with."""
        return error

    def whole(self, done: Completion) -> tuple[dict[str, Any], dict[str, str] | None]:
        """The answer not streamed: its JSON body and extra response headers."""
        raise NotImplementedError

    # --- the format's side ---------------------------------------------------------------

    def render_error(self, error: GatewayError) -> bytes:
        raise NotImplementedError

    on_text = on_reasoning = on_tool_start = on_tool_args = on_stop = _ignore
    on_tool_end = on_search = on_search_result = _ignore

    def on_usage(self, delta: deltas.Usage) -> None:
        self.usage = delta

    def on_keep_alive(self, delta: deltas.KeepAlive) -> None:
        self.out.append(self.keep_alive)

    def on_stream_error(self, error: GatewayError) -> None:
        self.out.append(self.error(error))

    def _stopped(self, stop: deltas.Stop) -> None:
        self.done = True
        self.on_stop(stop)

    def _failed(self, delta: deltas.StreamError) -> None:
        self.on_stream_error(delta.error)
