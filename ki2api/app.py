"""``create_app(settings)``: the one ASGI app — API routes first, then the UI mounted at ``/``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from types import MappingProxyType

import orjson
from fastapi import FastAPI, Request
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ki2api import __version__
from ki2api.api.admin import create_admin_router
from ki2api.api.admin_keys import create_admin_keys_router
from ki2api.api.admin_models import create_admin_models_router
from ki2api.api.anthropic.router import (
    MESSAGES_PATH,
    AnthropicMessagesDoor,
    create_anthropic_router,
)
from ki2api.api.auth import check_metrics_access
from ki2api.api.body_limit import BodyLimitMiddleware
from ki2api.api.endpoint import ChatEndpoint
from ki2api.api.errors import error_response_for_path, openai_error_response
from ki2api.api.http_errors import install_api_fallback, install_http_errors
from ki2api.api.images import ImageLoaderFactory
from ki2api.api.limits import limits_middleware, rate_limiter
from ki2api.api.model_list import create_models_router
from ki2api.api.observability import (
    CallbackCollector,
    KeyUsageCollector,
    Metrics,
    ObservabilityMiddleware,
)
from ki2api.api.openai_chat.router import CHAT_PATH, OpenAIChatDoor, create_openai_router
from ki2api.api.responses.router import RESPONSES_PATH, ResponsesDoor, create_responses_router
from ki2api.kiro.accounts.pool import AccountPool
from ki2api.kiro.http.client import UpstreamHttp
from ki2api.kiro.wire.models import ModelCatalog
from ki2api.model.errors import GatewayError
from ki2api.model.logsafe import printable
from ki2api.runtime import Runtime
from ki2api.settings import Settings
from ki2api.teams.gate import Teams

log = logging.getLogger("ki2api")


class Ki2API(FastAPI):
    """FastAPI, with a lane for the chat routes: ``POST`` to one of them goes through the API
    middleware (request ids, access log, CORS, rate limit) to its endpoint, past Starlette's
    error and exception layers, FastAPI's routing and its per-request dependency machinery,
    which cost more than the rest of the way to the upstream. The routes are registered with
    FastAPI as well (the OpenAPI schema, 405s for other methods)."""

    lane: Mapping[str, ASGIApp] = MappingProxyType({})  # set by create_app
    runtime: Runtime  # set by create_app; the parts every route and the page use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self.lane.get(scope["path"])
            if route is not None:
                await route(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    upstream: UpstreamHttp | None = None,
    pool: AccountPool | None = None,
    catalog: ModelCatalog | None = None,
    with_ui: bool = True,
    teams: Teams | None = None,
) -> Ki2API:
    """Build the app. Tests may inject the upstream connections, the account pool, the model
    table or the client keys (``teams``, e.g. on an in-memory store)."""
    rt = Runtime.build(settings, upstream=upstream, pool=pool, catalog=catalog, teams=teams)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with rt.run():
            yield

    app = Ki2API(
        title="Ki2API",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.runtime = rt

    images = ImageLoaderFactory(settings, rt.http)
    teams = rt.teams  # client keys: checked at every door, their limits in Gateway.open
    chat = ChatEndpoint(OpenAIChatDoor(rt.chat, images), settings, teams)
    messages = ChatEndpoint(AnthropicMessagesDoor(settings, rt.messages, images), settings, teams)
    responses = ChatEndpoint(ResponsesDoor(rt.responses, images), settings, teams)

    metrics = Metrics()
    metrics.add_collector(
        CallbackCollector(
            "ki2api_active_streams",
            "Answers in flight",
            "kind",
            lambda: {"all": float(rt.stats.active_streams)},
        )
    )
    metrics.add_collector(
        CallbackCollector("ki2api_accounts", "Accounts by state", "state", rt.pool.state_counts)
    )
    metrics.add_collector(KeyUsageCollector(lambda: teams.totals))
    # One per app: the page's chats share its buckets (and replicas theirs, with REDIS_URL).
    limiter = rate_limiter(settings, rt.shared.counters)
    # Outermost first. Observability wraps the limits, so 429s get a request id too.
    api_middleware = [
        Middleware(
            ObservabilityMiddleware,
            metrics=metrics,
            lane=frozenset((CHAT_PATH, MESSAGES_PATH, RESPONSES_PATH)),
        ),
        *limits_middleware(settings, limiter),
    ]
    app.lane = {
        path: _wrapped(endpoint, api_middleware)
        for path, endpoint in (
            (CHAT_PATH, chat),
            (MESSAGES_PATH, messages),
            (RESPONSES_PATH, responses),
        )
    }

    install_http_errors(app)  # 404 / 405 on API paths in the client's format

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # Last line of defence: a bug must still answer in the client's format, without a trace.
        log.exception(
            "unexpected error on %s %s", printable(request.method), printable(request.url.path)
        )
        error = GatewayError("Internal error in the gateway.")
        return error_response_for_path(request.url.path, error)

    @app.get("/health")
    async def health() -> Response:
        body = {
            "status": "ok" if rt.pool.has_accounts() else "no_accounts",  # 200 either way
            "version": __version__,
            "demo": settings.demo,
            "accounts_usable": rt.pool.usable_count(),
            "accounts": rt.pool.counts(),  # by state; suspended apart (no labels, no reasons)
            "active_streams": rt.stats.active_streams,
            "shared_state": rt.shared.status(),  # REDIS_URL: whether Redis answers
        }
        return Response(orjson.dumps(body), media_type="application/json")

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        try:
            check_metrics_access(request, settings)
        except GatewayError as exc:
            return openai_error_response(exc)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    app.include_router(create_openai_router(settings, chat, rt.catalog))
    app.include_router(create_models_router(settings, rt.catalog, teams))
    app.include_router(create_anthropic_router(settings, messages, rt.messages, images, teams))
    app.include_router(create_responses_router(responses))
    app.include_router(create_admin_router(rt.pool, settings))
    app.include_router(create_admin_models_router(settings, rt.catalog, rt.models))
    app.include_router(create_admin_keys_router(rt.keys, settings))

    if with_ui:
        from ki2api.ui import mount_ui  # imported here: Gradio takes seconds to import
        from ki2api.ui.access import ApiChecks

        install_api_fallback(app)  # last API route: /v1/* never reaches the page
        # the page's chats pass the API's checks (and client keys' limits)
        checks = ApiChecks(settings, metrics, limiter, teams)
        mount_ui(app, settings, rt, checks)  # mounts on this app (and returns it)
    # Added innermost first: the page's guard (by mount_ui), then the body limit around it
    # (every route but the chat lane, which counts its own bytes: the API's limit under /v1
    # and /admin, the page's elsewhere), then the API middleware around everything.
    app.add_middleware(BodyLimitMiddleware, limit_for=_body_limits(settings))
    for cls, args, kwargs in reversed(api_middleware):
        app.add_middleware(cls, *args, **kwargs)
    return app


def _body_limits(settings: Settings) -> Callable[[str], int]:
    api, page = settings.max_body_bytes, settings.page_max_body_bytes

    def limit_for(path: str) -> int:
        return api if path.startswith(("/v1/", "/admin/")) else page

    return limit_for


def _wrapped(endpoint: ASGIApp, middleware: list[Middleware]) -> ASGIApp:
    for cls, args, kwargs in reversed(middleware):
        endpoint = cls(endpoint, *args, **kwargs)
    return endpoint
