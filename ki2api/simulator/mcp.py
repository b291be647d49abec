"""Kiro's web search (``POST /mcp``, JSON-RPC 2.0 ``tools/call`` of ``web_search``), simulated.

The body is checked strictly (what the protocol doc says the real endpoint takes); each call is
logged in :attr:`SearchBook.calls`. Answers come from a queue a test fills
(:meth:`SearchBook.enqueue`: results, or a fault) or, when it is empty, from a deterministic
fake search: three results made from the query, the same for the same query.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ki2api.simulator.scripts import HttpError


@dataclass(frozen=True, slots=True)
class SearchResult:
    title: str
    url: str
    snippet: str
    published_ms: int | None = 1_767_225_600_000  # 2026-01-01

    def wire(self, index: int) -> dict[str, Any]:
        domain = self.url.split("/")[2] if self.url.count("/") >= 2 else ""
        return {
            "title": self.title,
            "url": self.url,
            "snippet": self.snippet,
            "publishedDate": self.published_ms,
            "id": f"sim-{index}",
            "domain": domain,
        }


@dataclass(frozen=True, slots=True)
class SearchFault:
    """``http``: answer this HTTP error; ``rpc_error``: a JSON-RPC ``error`` object;
    ``tool_error``: ``isError: true`` with this text."""

    http: HttpError | None = None
    rpc_error: str | None = None
    tool_error: str | None = None


SearchAnswer = list[SearchResult] | SearchFault


@dataclass(slots=True)
class SearchCall:
    query: str | None
    headers: dict[str, str]  # lower-case names (the authorization header holds a token)
    body: Any
    refusal: str | None = None

    def __repr__(self) -> str:
        return f"SearchCall(query={self.query!r}, refusal={self.refusal!r})"


def fake_results(query: str) -> list[SearchResult]:
    slug = hashlib.sha256(query.encode()).hexdigest()[:8]
    words = "-".join(query.lower().split())[:40] or "empty"
    return [
        SearchResult(
            f"{query} — result {n} (simulated)",
            f"https://example.com/{words}/{slug}/{n}",
            f"Simulated search result {n} for “{query}”. Not from the web.",
        )
        for n in (1, 2, 3)
    ]


@dataclass
class SearchBook:
    calls: list[SearchCall] = field(default_factory=list)
    _queue: deque[SearchAnswer] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def enqueue(self, *answers: SearchAnswer) -> None:
        with self._lock:
            self._queue.extend(answers)

    def next_answer(self, query: str) -> SearchAnswer:
        with self._lock:
            return self._queue.popleft() if self._queue else fake_results(query)

    def log(self, call: SearchCall) -> None:
        with self._lock:
            self.calls.append(call)

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()
            self._queue.clear()


def check_call(body: Any) -> tuple[str | None, str | None]:
    """(query, refusal): the body must be a JSON-RPC 2.0 ``tools/call`` of ``web_search``."""
    if not isinstance(body, dict):
        return None, "body is not a JSON object"
    if body.get("jsonrpc") != "2.0":
        return None, "jsonrpc must be '2.0'"
    if not isinstance(body.get("id"), str | int) or body.get("id") == "":
        return None, "id must be a non-empty string or a number"
    if body.get("method") != "tools/call":
        return None, f"unknown method {body.get('method')!r}"
    params = body.get("params")
    if not isinstance(params, dict) or params.get("name") != "web_search":
        return None, "params.name must be 'web_search'"
    arguments = params.get("arguments")
    query = arguments.get("query") if isinstance(arguments, dict) else None
    if not isinstance(query, str) or not query.strip():
        return None, "params.arguments.query must be a non-empty string"
    return query, None


def _rpc(request_id: Any, result: dict[str, Any] | None, error: dict[str, Any] | None) -> Response:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
    if error is not None:
        body["error"] = error
    else:
        body["result"] = result
    return JSONResponse(body)


async def mcp_endpoint(request: Request, book: SearchBook, authorize: Any) -> Response:
    raw = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    query, refusal = check_call(body)
    call = SearchCall(query, headers, body, refusal)
    book.log(call)
    auth = authorize(headers)
    if auth.error is not None:
        call.refusal = "not authorized"
        error: HttpError = auth.error
        return Response(orjson.dumps(error.body), status_code=error.status)
    if refusal is not None or query is None:
        message = {"code": -32602, "message": f"Invalid params: {refusal}"}
        request_id = body.get("id") if isinstance(body, dict) else None
        return _rpc(request_id, None, message)
    answer = book.next_answer(query)
    if isinstance(answer, SearchFault):
        if answer.http is not None:
            return Response(orjson.dumps(answer.http.body), status_code=answer.http.status)
        if answer.rpc_error is not None:
            return _rpc(body["id"], None, {"code": -32603, "message": answer.rpc_error})
        text = answer.tool_error or "search failed"
        return _rpc(
            body["id"], {"content": [{"type": "text", "text": text}], "isError": True}, None
        )
    inner = {
        "results": [r.wire(i) for i, r in enumerate(answer)],
        "totalResults": len(answer),
        "query": query,
        "error": None,
    }
    content = [{"type": "text", "text": orjson.dumps(inner).decode()}]
    return _rpc(body["id"], {"content": content, "isError": False}, None)
