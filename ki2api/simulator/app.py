"""``create_simulator_app(state)``: the simulator as one Starlette ASGI app.

Routes (same paths as the real hosts, so only the base URL changes):

==========================================  ==================================================
``POST /generateAssistantResponse``         chat, path style
``POST /`` + ``x-amz-target``               ``...GenerateAssistantResponse`` (chat, JSON-1.0
                                            style) or ``...ListAvailableModels``
``POST /refreshToken``                      social refresh
``POST /token``                             IdC (OIDC) refresh
``GET /getUsageLimits``                     remaining credits
``GET|POST /ListAvailableModels``           model list (path style)
``POST /mcp``                               web search (JSON-RPC ``tools/call``, see mcp.py)
``POST /v1/chat/completions``               OpenAI-compatible chat over the same scripts
``GET /v1/models``, ``GET /health``         small conveniences
==========================================  ==================================================
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ki2api.simulator.account_routes import AccountEndpoints
from ki2api.simulator.chat import ChatEndpoints
from ki2api.simulator.mcp import mcp_endpoint
from ki2api.simulator.player import LiveStreams
from ki2api.simulator.state import SimulatorState

CHAT_TARGET = "AmazonCodeWhispererStreamingService.GenerateAssistantResponse"
MODELS_TARGET = "KiroControlPlaneBearerService.ListAvailableModels"


def create_simulator_app(state: SimulatorState | None = None) -> Starlette:
    """The simulator's ASGI app. ``app.state.simulator`` is the :class:`SimulatorState`;
    ``app.state.live_streams.close_all()`` ends every answer being played."""
    state = state if state is not None else SimulatorState()
    live = LiveStreams()
    chat = ChatEndpoints(state, live)
    accounts = AccountEndpoints(state)

    async def chat_path(request: Request) -> Response:
        return await chat.kiro(request, "path")

    async def amz_json(request: Request) -> Response:
        target = request.headers.get("x-amz-target", "")
        operation = target.rpartition(".")[2]
        if operation == "GenerateAssistantResponse":
            return await chat.kiro(request, "json-1.0")
        if operation == "ListAvailableModels":
            return await accounts.list_models(request)
        return JSONResponse(
            {"__type": "UnknownOperationException", "message": f"unknown target {target!r}"},
            status_code=400,
        )

    async def openai_models(request: Request) -> Response:
        data = [
            {"id": m["modelId"], "object": "model", "created": 0, "owned_by": "ki2api-simulator"}
            for m in state.available_models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def mcp(request: Request) -> Response:
        return await mcp_endpoint(request, state.searches, state.authorize)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "simulator": True, "open_streams": state.open_streams})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = exc.detail if isinstance(exc, HTTPException) else "internal error"
        return JSONResponse({"message": message, "reason": None}, status_code=status)

    routes = [
        Route("/generateAssistantResponse", chat_path, methods=["POST"]),
        Route("/", amz_json, methods=["POST"]),
        Route("/refreshToken", accounts.refresh_social, methods=["POST"]),
        Route("/token", accounts.refresh_idc, methods=["POST"]),
        Route("/getUsageLimits", accounts.usage_limits, methods=["GET"]),
        Route("/ListAvailableModels", accounts.list_models, methods=["GET", "POST"]),
        Route("/mcp", mcp, methods=["POST"]),
        Route("/v1/chat/completions", chat.openai, methods=["POST"]),
        Route("/v1/models", openai_models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.simulator = state
    app.state.live_streams = live
    return app
