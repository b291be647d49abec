"""Kiro's web search: one JSON-RPC ``tools/call`` of ``web_search`` on the MCP endpoint
(``KIRO_MCP_URL``, see docs/kiro-protocol.md "Web search"). Off the chat path: only requests
that offer a web-search tool get here (:mod:`ki2api.pipeline.websearch`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from ki2api.kiro.accounts.credentials import Credential
from ki2api.model.deltas import SearchHit
from ki2api.model.ids import hex_id
from ki2api.settings import Settings

log = logging.getLogger("ki2api.websearch")
MAX_QUERY_CHARS = 1_000


class SearchFailed(Exception):
    """The search could not be done; ``code`` is Anthropic's error code for it."""

    def __init__(self, message: str, code: str = "unavailable") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_hits(answer: Any) -> list[SearchHit]:
    """The results of an MCP answer; :class:`SearchFailed` for an error answer."""
    if not isinstance(answer, dict):
        raise SearchFailed("the search service answered something that is not JSON-RPC")
    error = answer.get("error")
    if error is not None:
        message = error.get("message") if isinstance(error, dict) else error
        raise SearchFailed(f"the search service failed: {message}")
    result = answer.get("result")
    if not isinstance(result, dict):
        raise SearchFailed("the search service sent no result")
    texts: list[str] = [
        str(part["text"])
        for part in result.get("content") or []
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    ]
    if result.get("isError"):
        raise SearchFailed(f"the search failed: {' '.join(t for t in texts if t)[:300]}")
    hits: list[SearchHit] = []
    for text in texts:
        try:
            inner = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        rows = inner.get("results") if isinstance(inner, dict) else None
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict) or not _text(row.get("url")):
                continue
            published = row.get("publishedDate")
            hits.append(
                SearchHit(
                    title=_text(row.get("title")) or _text(row.get("url")),
                    url=_text(row.get("url")),
                    snippet=_text(row.get("snippet")),
                    published_ms=published if isinstance(published, int) else None,
                )
            )
    return hits


class KiroWebSearch:
    def __init__(
        self,
        http: httpx.AsyncClient | Callable[[str | None], httpx.AsyncClient],
        settings: Settings,
    ) -> None:
        """``http``: one client, or the client for an account's proxy (``for_proxy``)."""
        self._http_for = http if callable(http) else lambda proxy: http
        self.settings = settings

    def url(self, credential: Credential) -> str:
        return self.settings.url(self.settings.kiro_mcp_url, credential.region)

    async def search(self, query: str, credential: Credential) -> list[SearchHit]:
        if not query.strip():
            raise SearchFailed("the search query is empty", "invalid_input")
        if len(query) > MAX_QUERY_CHARS:
            raise SearchFailed("the search query is too long", "query_too_long")
        headers = {
            "authorization": f"Bearer {credential.access_token}",
            "content-type": "application/json",
            "accept": "application/json",
        }
        if credential.is_api_key:
            headers["tokentype"] = "API_KEY"
        if credential.profile_arn:
            headers["x-amzn-kiro-profile-arn"] = credential.profile_arn
        body = {
            "jsonrpc": "2.0",
            "id": f"ws_{hex_id()}",
            "method": "tools/call",
            "params": {"name": "web_search", "arguments": {"query": query}},
        }
        timeouts = self.settings.timeouts
        try:
            response = await self._http_for(credential.proxy).post(
                self.url(credential),
                content=orjson.dumps(body),
                headers=headers,
                timeout=httpx.Timeout(timeouts.first_byte, connect=timeouts.connect),
            )
        except httpx.HTTPError as exc:
            log.warning("web search on %s failed: %s", credential.label, type(exc).__name__)
            raise SearchFailed("the search service could not be reached") from None
        if response.status_code == 429:
            raise SearchFailed("the search service is throttling", "too_many_requests")
        if response.status_code != 200:
            log.warning("web search on %s: HTTP %d", credential.label, response.status_code)
            raise SearchFailed(f"the search service answered HTTP {response.status_code}")
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise SearchFailed("the search service answered something that is not JSON") from None
        return parse_hits(answer)
