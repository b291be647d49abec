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
from starlette.routing import Match, Mount

from ki2api.api.errors import error_response_for_path
from ki2api.model.errors import GatewayError, InvalidRequest, NotFound

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


_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def install_api_fallback(app: FastAPI) -> None:
    """Call after the API's last route, before mounting the page at ``/``.

    Starlette gives a path that no route takes fully (an unknown path, or a known one with the
    wrong method) to the mount at ``/``, whose answer is Gradio's ``{"detail": "Not Found"}``.
    A last route under each API prefix answers the 404 / 405 the API gives without the page."""

    async def fallback(request: Request) -> Response:
        routes = [
            route
            for route in app.router.routes
            if not isinstance(route, Mount) and getattr(route, "endpoint", None) is not fallback
        ]
        # The methods some API route takes on this path (a router nests routes: ask it).
        allowed = {
            method
            for method in _ALL_METHODS
            if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
        }
        if allowed:
            raise HTTPException(405, headers={"Allow": ", ".join(sorted(allowed))})
        raise HTTPException(404)

    for prefix in _API_PREFIXES:
        app.add_api_route(
            prefix + "{rest:path}", fallback, methods=_ALL_METHODS, include_in_schema=False
        )
