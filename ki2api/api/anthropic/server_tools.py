"""Anthropic's web-search server tool (``web_search_20250305`` and newer dated types): the
request side (the tool, and its blocks when a client sends an earlier answer back) and the
answer's blocks (``server_tool_use`` + ``web_search_tool_result``). The searches themselves run
in :mod:`ki2api.pipeline.websearch`."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson

from ki2api.model.deltas import ServerToolResult, ServerToolUse
from ki2api.model.errors import InvalidRequest
from ki2api.model.request import WebSearch

WEB_SEARCH_PREFIX = "web_search_"


def is_web_search(tool_type: str | None) -> bool:
    return bool(tool_type) and str(tool_type).startswith(WEB_SEARCH_PREFIX)


def _domains(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
        raise InvalidRequest(f"{where} must be a list of domain names.", param=where)
    return tuple(value)


def web_search_spec(extra: dict[str, Any], where: str) -> WebSearch:
    max_uses = extra.get("max_uses")
    if max_uses is not None and (not isinstance(max_uses, int) or max_uses < 1):
        raise InvalidRequest(f"{where}.max_uses must be a positive integer.", param=where)
    return WebSearch(
        max_uses=max_uses,
        allowed_domains=_domains(extra.get("allowed_domains"), f"{where}.allowed_domains"),
        blocked_domains=_domains(extra.get("blocked_domains"), f"{where}.blocked_domains"),
    )


def history_text(block: dict[str, Any]) -> str | None:
    """A ``server_tool_use`` / ``web_search_tool_result`` block of an earlier answer, as the
    text the model reads in history (Kiro has no such blocks); None for other blocks."""
    kind = block.get("type")
    if kind == "server_tool_use":
        query = block.get("input", {}).get("query") if isinstance(block.get("input"), dict) else ""
        return f"[searched the web for: {query}]"
    if kind == "web_search_tool_result":
        content = block.get("content")
        if not isinstance(content, list):
            return "[the web search failed]"
        lines = ["[web search results]"]
        for hit in content:
            if isinstance(hit, dict) and hit.get("type") == "web_search_result":
                lines.append(f"- {hit.get('title', '')} ({hit.get('url', '')})")
        return "\n".join(lines)
    return None


def _page_age(published_ms: int | None) -> str | None:
    if published_ms is None:
        return None
    try:
        return datetime.fromtimestamp(published_ms / 1000, UTC).strftime("%B %-d, %Y")
    except (OverflowError, OSError, ValueError):  # upstream's date, out of a datetime's range
        return None


def use_block(delta: ServerToolUse) -> dict[str, Any]:
    return {
        "type": "server_tool_use",
        "id": delta.id,
        "name": delta.name,
        "input": {"query": delta.query},
    }


def result_block(delta: ServerToolResult) -> dict[str, Any]:
    content: Any
    if delta.error is not None:
        content = {"type": "web_search_tool_result_error", "error_code": delta.error}
    else:
        content = [
            {
                "type": "web_search_result",
                "title": hit.title,
                "url": hit.url,
                # Opaque to clients, as Anthropic's is; here it holds the snippet.
                "encrypted_content": base64.b64encode(
                    orjson.dumps({"snippet": hit.snippet})
                ).decode(),
                "page_age": _page_age(hit.published_ms),
            }
            for hit in delta.hits
        ]
    return {"type": "web_search_tool_result", "tool_use_id": delta.id, "content": content}


def server_tool_usage(searches: int) -> dict[str, Any]:
    return {"server_tool_use": {"web_search_requests": searches}} if searches else {}
