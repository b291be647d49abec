"""Web search run by the gateway: the server-side tool loop. Only requests whose client offered
a web-search tool (``ChatRequest.web_search``) come here; every other request goes straight to
``Gateway.open``.

Two ways in:

- **direct** (``WebSearch.direct_query``): Claude Code's WebSearch request. Its only tool is the
  server tool and its message asks for one search, so the gateway searches at once and answers
  with the results, without a model call.
- **loop**: the model is offered a ``web_search`` function. When it calls it (and nothing
  else), the gateway runs the searches on Kiro's MCP endpoint, appends the call and its
  results to the conversation and asks the model again, streaming throughout; a client tool call
  or a plain end stops the loop. Searches are bounded by the client's ``max_uses`` and
  ``WEB_SEARCH_MAX_ROUNDS``; past the bound, or when a search fails, the model gets a tool error
  it can read and answer from (the request does not fail).

The renderers see :class:`ServerToolUse` / :class:`ServerToolResult` deltas between the usual
ones; tool call indices of the client's own calls keep counting from 0 across rounds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import orjson

from ki2api.kiro.http.mcp import SearchFailed
from ki2api.model.deltas import (
    Delta,
    SearchHit,
    ServerToolResult,
    ServerToolUse,
    Stop,
    StopReason,
    StreamError,
    TextDelta,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from ki2api.model.errors import GatewayError, QuotaExceeded, UpstreamThrottled
from ki2api.model.ids import hex_id
from ki2api.model.request import (
    ChatRequest,
    Message,
    TextPart,
    ToolCall,
    ToolResult,
    ToolSpec,
    WebSearch,
)
from ki2api.model.tokens import estimate_tokens
from ki2api.pipeline.gateway import DeltaStream

if TYPE_CHECKING:
    from ki2api.kiro.accounts.pool import Lease
    from ki2api.pipeline.gateway import Gateway

log = logging.getLogger("ki2api.websearch")

SEARCH_NAME = "web_search"
SEARCH_TOOL = ToolSpec(
    SEARCH_NAME,
    "Search the web. Use it when the answer needs current information or facts you are not "
    "sure of. Returns titles, URLs and snippets of the top results; cite the URLs you use.",
    {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "The search query."}},
        "required": ["query"],
    },
)
DIRECT_PREFIX = "Perform a web search for the query: "
LIMIT_TEXT = (
    "Error: no more web searches are allowed in this answer (max_uses reached). Answer with the "
    "results you already have."
)


def direct_query(request: ChatRequest) -> str | None:
    """Claude Code's WebSearch request: the search tool is the only tool and the first user
    message asks for one search."""
    if request.tools or not request.messages:
        return None
    first = request.messages[0]
    text = first.text.strip() if first.role == "user" else ""
    if not text.startswith(DIRECT_PREFIX):
        return None
    query = text[len(DIRECT_PREFIX) :].strip()
    return query or None


def _domain(url: str) -> str:
    host = url.split("//", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower()
    return host.removeprefix("www.")


def _matches(host: str, domains: tuple[str, ...]) -> bool:
    return any(host == d or host.endswith("." + d) for d in domains)


def filter_hits(hits: list[SearchHit], spec: WebSearch) -> tuple[SearchHit, ...]:
    allowed = tuple(_domain(d) for d in spec.allowed_domains)
    blocked = tuple(_domain(d) for d in spec.blocked_domains)
    kept = [
        h
        for h in hits
        if (not allowed or _matches(_domain(h.url), allowed))
        and not _matches(_domain(h.url), blocked)
    ]
    return tuple(kept)


def hits_text(query: str, hits: tuple[SearchHit, ...]) -> str:
    """The results as the model reads them in the tool result."""
    if not hits:
        return f"No web results for “{query}”."
    lines = [f"Web search results for “{query}”:"]
    for n, hit in enumerate(hits, 1):
        lines.append(f"{n}. {hit.title}\n   URL: {hit.url}\n   {hit.snippet}".rstrip())
    return "\n".join(lines)


def citations(text: str, hits: list[SearchHit]) -> list[tuple[int, int, SearchHit]]:
    """Where the answer names a result's URL: ``(start, end, hit)`` spans for OpenAI's
    ``url_citation`` annotations (each URL once, at its first mention)."""
    found: list[tuple[int, int, SearchHit]] = []
    seen: set[str] = set()
    for hit in hits:
        if hit.url in seen:
            continue
        seen.add(hit.url)
        start = text.find(hit.url)
        if start >= 0:
            found.append((start, start + len(hit.url), hit))
    return sorted(found, key=lambda f: f[0])


def _query_of(arguments: str) -> str:
    try:
        value = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        return arguments.strip()
    query = value.get("query") if isinstance(value, dict) else None
    return query.strip() if isinstance(query, str) else ""


class SearchingStream(DeltaStream):
    """A :class:`DeltaStream` whose answer may span several upstream calls with searches in
    between. Built by :func:`open_search`."""

    def __init__(
        self,
        gateway: Gateway,
        request: ChatRequest,
        spec: WebSearch,
        first: DeltaStream | None,
        conversation_header: str | None,
        lease: Lease | None = None,
    ) -> None:
        # Not DeltaStream.__init__: this stream owns no upstream answer of its own.
        self._gateway = gateway
        self._request = request
        self._spec = spec
        self._inner = first
        self._header = conversation_header
        self._search_lease = lease  # the first search's (a direct search takes it up front)
        self.model = first.model if first is not None else None  # type: ignore[assignment]
        self.requested_model = request.model
        self.account = first.account if first is not None else ""
        self.started = time.perf_counter()
        self.first_delta_at = None
        limit = gateway.settings.web_search_max_rounds
        self._limit = min(spec.max_uses, limit) if spec.max_uses is not None else limit
        self._batches = self._run()
        self._flat: AsyncGenerator[Delta, None] | None = None

    def batches(self) -> AsyncIterator[list[Delta]]:
        return self._batches

    async def aclose(self) -> None:
        if self._flat is not None:
            await self._flat.aclose()
        await self._batches.aclose()
        if self._inner is not None:
            await self._inner.aclose()

    async def _search(self, query: str) -> tuple[SearchHit, ...]:
        gateway = self._gateway
        lease, self._search_lease = self._search_lease, None
        if lease is None:
            try:
                lease = await gateway.pool.acquire()
            except GatewayError as exc:  # every account cooling down, out of quota, ...
                throttled = isinstance(exc, UpstreamThrottled | QuotaExceeded)
                raise SearchFailed(
                    f"no Kiro account is available ({exc.message})",
                    "too_many_requests" if throttled else "unavailable",
                ) from None
        # The lease is left unsettled: Kiro's search endpoint, failing or not, says nothing about
        # the account's chat health (a success would end a row of chat throttles).
        hits = await gateway.web_search.search(query, lease.credential)
        return filter_hits(hits, self._spec)

    async def _one(self, call_id: str, query: str, allowed: bool) -> tuple[ServerToolResult, str]:
        """Run one search: the delta for the client and the text for the model."""
        if not allowed:
            return ServerToolResult(call_id, error="max_uses_exceeded"), LIMIT_TEXT
        try:
            hits = await self._search(query)
        except SearchFailed as exc:
            log.warning("web search failed: %s", exc.message)
            failed = f"Error: the web search failed: {exc.message}"
            return ServerToolResult(call_id, error=exc.code), failed
        return ServerToolResult(call_id, hits=hits), hits_text(query, hits)

    async def _run(self) -> AsyncGenerator[list[Delta], None]:
        if self._spec.direct_query is not None:
            async for batch in self._direct(self._spec.direct_query):
                yield batch
            return
        async for batch in self._loop():
            yield batch

    async def _direct(self, query: str) -> AsyncGenerator[list[Delta], None]:
        use = ServerToolUse(f"srvtoolu_{hex_id(24)}", query)
        yield [use]
        result, text = await self._one(use.id, query, True)
        answer = hits_text(query, result.hits) if result.error is None else text
        yield [
            result,
            TextDelta(answer),
            Usage(estimate_tokens(query) + 8, estimate_tokens(answer)),
            Stop(StopReason.END_TURN),
        ]

    async def _loop(self) -> AsyncGenerator[list[Delta], None]:
        request, stream = self._request, self._inner
        assert stream is not None
        searches = 0
        input_tokens = output_tokens = cache_read = 0
        next_index = 0  # the client's tool call indices, across rounds
        for round_no in range(self._limit + 2):
            outer: dict[int, int] = {}  # this round's index -> the client's index
            searching: dict[int, tuple[str, list[str]]] = {}  # index -> (Kiro id, fragments)
            ended: list[int] = []
            text: list[str] = []
            stop: Stop | None = None
            async for batch in stream.batches():
                out: list[Delta] = []
                for delta in batch:
                    kind = type(delta)
                    if kind is ToolCallStart:
                        assert isinstance(delta, ToolCallStart)
                        if delta.name == SEARCH_NAME:
                            searching[delta.index] = (delta.id, [])
                            continue
                        outer[delta.index] = next_index
                        next_index += 1
                        out.append(replace(delta, index=outer[delta.index]))
                    elif kind is ToolCallArgs:
                        assert isinstance(delta, ToolCallArgs)
                        if delta.index in searching:
                            searching[delta.index][1].append(delta.fragment)
                        elif delta.index in outer:
                            out.append(replace(delta, index=outer[delta.index]))
                    elif kind is ToolCallEnd:
                        assert isinstance(delta, ToolCallEnd)
                        if delta.index in searching:
                            ended.append(delta.index)
                        elif delta.index in outer:
                            out.append(replace(delta, index=outer[delta.index]))
                    elif kind is Usage:
                        assert isinstance(delta, Usage)
                        input_tokens += delta.input_tokens
                        output_tokens += delta.output_tokens
                        cache_read += delta.cache_read_tokens
                    elif kind is Stop:
                        assert isinstance(delta, Stop)
                        stop = delta
                    else:
                        if kind is TextDelta:
                            assert isinstance(delta, TextDelta)
                            text.append(delta.text)
                        out.append(delta)
                        if kind is StreamError:
                            yield out
                            return
                if out:
                    yield out
            await stream.aclose()
            usage = Usage(input_tokens, output_tokens, cache_read, source="upstream")
            wanted = [i for i in ended if i in searching]
            last_round = round_no == self._limit + 1
            if stop is None or not wanted or outer or last_round:
                # A plain end, the client's own tool calls (any search asked for beside them
                # is dropped: the client could not replay it), or the loop's bound.
                if stop is None or (wanted and not outer):
                    stop = Stop(StopReason.END_TURN)
                yield [usage, stop]
                return
            calls: list[ToolCall] = []
            results: list[ToolResult] = []
            for index in wanted:
                kiro_id, fragments = searching[index]
                query = _query_of("".join(fragments))
                use = ServerToolUse(f"srvtoolu_{hex_id(24)}", query)
                yield [use]
                allowed = searches < self._limit
                searches += allowed
                result, for_model = await self._one(use.id, query, allowed)
                yield [result]
                calls.append(ToolCall(kiro_id, SEARCH_NAME, {"query": query}))
                results.append(ToolResult(kiro_id, for_model, is_error=result.error is not None))
            said = "".join(text)
            request = replace(
                request,
                messages=[
                    *request.messages,
                    Message("assistant", [TextPart(said)] if said else [], tool_calls=calls),
                    Message("user", tool_results=results),
                ],
            )
            try:
                stream = await self._gateway.open(request, conversation_header=self._header)
            except GatewayError as exc:
                yield [StreamError(exc)]
                return
            self._inner = stream


async def open_answer(
    gateway: Gateway,
    request: ChatRequest,
    *,
    conversation_header: str | None = None,
    while_waiting: Callable[[], object] | None = None,
) -> DeltaStream:
    """What every front door calls: the gateway's answer, or, when the request offered a
    web-search tool, the answer with the gateway's searches in it."""
    if request.web_search is None:
        return await gateway.open(
            request, conversation_header=conversation_header, while_waiting=while_waiting
        )
    return await open_search(
        gateway, request, conversation_header=conversation_header, while_waiting=while_waiting
    )


async def open_search(
    gateway: Gateway,
    request: ChatRequest,
    *,
    conversation_header: str | None = None,
    while_waiting: Callable[[], object] | None = None,
) -> DeltaStream:
    """Open an answer for a request that offered a web-search tool (see the module doc)."""
    spec = request.web_search
    assert spec is not None
    if spec.direct_query is not None:
        model = gateway.catalog.resolve(request.model)  # an unknown model is still a 404
        await gateway.admit(request, model)  # the caller's limits, as for a model call
        # The whole answer is one search: no account free is the answer's status (a 429 with
        # Retry-After while the accounts cool down), not an error inside a started answer.
        lease = await gateway.pool.acquire()
        if while_waiting is not None:
            while_waiting()
        return SearchingStream(gateway, request, spec, None, conversation_header, lease)
    offered = replace(request, tools=[*request.tools, SEARCH_TOOL])
    first = await gateway.open(
        offered, conversation_header=conversation_header, while_waiting=while_waiting
    )
    return SearchingStream(gateway, offered, spec, first, conversation_header)
