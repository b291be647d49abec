"""Starlette's own errors (unknown route 404, wrong method 405, ...) in the client's format.

Without this, ``GET /v1/chat/completions`` answers ``{"detail": "Method Not Allowed"}``, which
neither SDK can read; API paths get the same envelope as every other error. Paths outside the
API (the UI) keep FastAPI's default.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException
from starlette.responses import Response

from ki2api.api.errors import error_response_for_path
from ki2api.core.errors import GatewayError, InvalidRequest, NotFound

_API_PREFIXES = ("/v1/", "/admin/")


class MethodNotAllowed(GatewayError):
    status = 405
    openai_type = "invalid_request_error"
    openai_code = "method_not_allowed"
    anthropic_type = "invalid_request_error"


def _as_gateway_error(exc: HTTPException, request: Request) -> GatewayError:
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        return NotFound(f"No such route: {where}.")
    if exc.status_code == 405:
        return MethodNotAllowed(f"Method not allowed: {where}.")
    if exc.status_code < 500:
        return InvalidRequest(str(exc.detail), status=exc.status_code, code="http_error")
    return GatewayError(str(exc.detail), status=exc.status_code)


async def _render(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if not path.startswith(_API_PREFIXES):
        return await http_exception_handler(request, exc)
    error = _as_gateway_error(exc, request)
    response = error_response_for_path(path, error)
    if exc.headers:
        response.headers.update(exc.headers)  # e.g. Allow on a 405
    return response


def install_http_errors(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _render)
