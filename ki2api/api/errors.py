"""Render a :class:`GatewayError` in each client's format. The one place that knows the shapes."""

from __future__ import annotations

import math
from typing import Any

import orjson
from starlette.responses import Response

from ki2api.model.context import note_error
from ki2api.model.errors import GatewayError

ANTHROPIC_OVERLOADED_STATUS = 529


def openai_error_body(error: GatewayError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error.openai_type,
            "param": error.param,
            "code": error.openai_code,
        }
    }


def anthropic_error_body(error: GatewayError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error.anthropic_type, "message": error.message}}


def anthropic_status(error: GatewayError) -> int:
    if error.anthropic_type == "overloaded_error":
        return ANTHROPIC_OVERLOADED_STATUS
    return error.status


def error_headers(error: GatewayError) -> dict[str, str]:
    headers = {"x-should-retry": "true" if error.should_retry else "false"}
    if error.retry_after is not None:
        seconds = max(0.0, error.retry_after)
        headers["retry-after"] = str(math.ceil(seconds))
        headers["retry-after-ms"] = str(int(seconds * 1000))
    return headers


def openai_error_response(error: GatewayError) -> Response:
    note_error(error.openai_code)
    return Response(
        orjson.dumps(openai_error_body(error)),
        status_code=error.status,
        media_type="application/json",
        headers=error_headers(error),
    )


def anthropic_error_response(error: GatewayError) -> Response:
    note_error(error.openai_code)
    return Response(
        orjson.dumps(anthropic_error_body(error)),
        status_code=anthropic_status(error),
        media_type="application/json",
        headers=error_headers(error),
    )


def error_response_for_path(path: str, error: GatewayError) -> Response:
    """The error in the format of the front door that owns ``path``."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return anthropic_error_response(error)
    return openai_error_response(error)
