"""Request plumbing shared by the front doors: bounded JSON bodies, wire-model validation."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from ki2api.model.errors import InvalidRequest, RequestTooLarge

T = TypeVar("T")
WireT = TypeVar("WireT", bound=BaseModel)

CLIENT_CLOSED = 499  # nginx's code for "the client went away"; nobody receives it


# Deepest JSON nesting accepted in a request body (and in tool-call arguments sent as a JSON
# string). Real tool schemas stay far below; the Kiro body wraps a schema in about ten more
# levels, and orjson refuses to write past 255, which would otherwise surface as a 500.
MAX_JSON_DEPTH = 100


def check_json_depth(value: Any, param: str | None = None) -> None:
    """400 when ``value`` nests objects and arrays deeper than :data:`MAX_JSON_DEPTH`; for a
    whole body (no ``param``) the message names the top-level field."""
    if param is None and isinstance(value, dict):
        for key, field in value.items():
            _check_depth(field, 2, str(key))
    else:
        _check_depth(value, 1, param)


def _check_depth(value: Any, depth: int, param: str | None) -> None:
    # Iterative, so a deep value cannot exhaust Python's stack either.
    stack: list[tuple[Any, int]] = [(value, depth)]
    while stack:
        item, level = stack.pop()
        if not isinstance(item, dict | list):
            continue
        if level > MAX_JSON_DEPTH:
            raise InvalidRequest(
                f"{param or 'The request body'} nests JSON objects and arrays deeper than "
                f"{MAX_JSON_DEPTH} levels, the limit here.",
                param=param,
            )
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, level + 1) for child in children)


def parse_wire_model(body: Any, model: type[WireT]) -> WireT:
    """Validate a decoded JSON body against a front door's wire model; 400 names the field."""
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    check_json_depth(body)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        raise InvalidRequest(f"Invalid request: {param}: {first.get('msg')}", param=param) from None


async def read_json_body(request: Request, limit: int) -> Any:
    """The request body as JSON; 413 past ``limit`` bytes, 400 when it is not JSON."""
    return await read_json(request.receive, request.headers.get("content-length"), limit)


async def read_json(receive: Receive, declared: str | None, limit: int) -> Any:
    """:func:`read_json_body` on bare ASGI: straight from ``receive``; ``declared`` is the
    Content-Length header."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"Request body is larger than the limit of {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"Request body is larger than the limit of {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if not body:
        raise InvalidRequest("Request body is empty: send a JSON object.")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
