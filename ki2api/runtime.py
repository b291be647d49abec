"""The gateway's parts, wired once: what ``create_app`` serves and the page talks to.

:meth:`Runtime.build` makes every part without touching the network, so routes and the page get
plain objects instead of callbacks; :meth:`Runtime.run` starts what needs the event loop (the
account pool, the model-list task, the demo simulator) for the app's lifespan and closes it all
afterwards. One Runtime serves one lifespan.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx

from ki2api.api.anthropic.serving import MessagesService
from ki2api.api.openai_chat.serving import ChatCompletionsService
from ki2api.api.responses.serving import ResponsesService
from ki2api.kiro.accounts.available_models import AvailableModels, fetch_model_list
from ki2api.kiro.accounts.pool import AccountPool
from ki2api.kiro.http.client import KiroClient, UpstreamHttp
from ki2api.kiro.wire.models import ModelCatalog, parse_aliases
from ki2api.pipeline.gateway import Gateway
from ki2api.pipeline.stats import RequestRecord, RequestStats
from ki2api.settings import Settings
from ki2api.shared import SharedState
from ki2api.shared.usage import UsageRow, UsageSink

if TYPE_CHECKING:
    from ki2api.simulator import SimulatorServer

log = logging.getLogger("ki2api")

DEMO_ACCESS_TOKEN = "demo-access-token"


@dataclass
class Runtime:
    settings: Settings  # effective settings (demo mode points the URLs at the simulator)
    upstream: UpstreamHttp  # the connections to Kiro, one set per outbound proxy
    http: httpx.AsyncClient  # KIRO_PROXY's client: calls on no account's behalf (images)
    pool: AccountPool
    gateway: Gateway
    catalog: ModelCatalog
    chat: ChatCompletionsService
    messages: MessagesService
    responses: ResponsesService
    stats: RequestStats
    models: AvailableModels
    simulator: SimulatorServer | None = None
    shared: SharedState = field(default_factory=SharedState)  # REDIS_URL: the replicas' state
    owns_upstream: bool = True
    _ran: bool = False

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        upstream: UpstreamHttp | None = None,
        pool: AccountPool | None = None,
        catalog: ModelCatalog | None = None,
    ) -> Runtime:
        """Tests may inject the upstream connections, the account pool or the model table."""
        simulator = None
        if settings.demo:
            from ki2api.simulator import SimulatorServer

            # Bound now, served in run(): the URLs below must name its port.
            simulator = SimulatorServer().bind()
            settings = demo_settings(settings, simulator.url)
        catalog = catalog or catalog_from_settings(settings)
        client = upstream or UpstreamHttp(settings)
        accounts = pool or AccountPool.from_settings(settings, client)
        stats = RequestStats()
        models = AvailableModels(
            accounts,
            catalog,
            lambda credential: fetch_model_list(
                client.for_proxy(credential.proxy), settings, catalog, credential
            ),
            ttl=settings.kiro_models_ttl,
        )
        gateway = Gateway(settings, KiroClient(client, settings), accounts, catalog, stats, models)
        shared = SharedState.from_settings(settings)
        if shared.enabled:
            shared.attach(accounts)
            gateway.slots.shared = shared.slots
            models.shared = shared.models
            if gateway.sticky is not None:  # conversations stick across replicas too
                gateway.sticky = shared.sticky(gateway.sticky)
            if shared.usage is not None:
                stats.listeners.append(count_usage(shared.usage))
        return cls(
            settings=settings,
            upstream=client,
            http=client.default,
            pool=accounts,
            gateway=gateway,
            catalog=catalog,
            chat=ChatCompletionsService(gateway),
            messages=MessagesService(gateway),
            responses=ResponsesService(gateway),
            stats=stats,
            models=models,
            simulator=simulator,
            shared=shared,
            owns_upstream=upstream is None,
        )

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[Runtime]:
        if self._ran:
            raise RuntimeError("a Runtime serves one lifespan: build the app again to rerun it")
        self._ran = True
        try:
            if self.simulator is not None:
                self.simulator.start()
                log.info(
                    "demo mode: answers come from the built-in Kiro simulator at %s",
                    self.simulator.url,
                )
            await self.shared.start()  # before the pool: its accounts take the shared tokens
            await self.pool.start()
            self.models.start()  # asks every account for its models, in the background
            yield self
        finally:
            await self.models.aclose()
            await self.pool.aclose()
            await self.shared.aclose()
            if self.owns_upstream:
                await self.upstream.aclose()
            if self.simulator is not None:
                self.simulator.stop()


def count_usage(sink: UsageSink) -> Callable[[RequestRecord], None]:
    """What each finished request spent, counted by day, client key and account."""

    def listener(record: RequestRecord) -> None:
        sink.add(
            UsageRow(
                day=datetime.fromtimestamp(record.finished_at, UTC).strftime("%Y-%m-%d"),
                key="",  # one key today (API_KEY); the client keys will name theirs
                account=record.account,
                requests=1,
                errors=1 if record.error else 0,
                input_tokens=record.input_tokens,
                output_tokens=record.output_tokens,
            )
        )

    return listener


def demo_settings(settings: Settings, simulator_url: str) -> Settings:
    return settings.replace(
        kiro_api_url=f"{simulator_url}/generateAssistantResponse",
        kiro_refresh_url=f"{simulator_url}/refreshToken",
        kiro_oidc_url=f"{simulator_url}/token",
        kiro_mcp_url=f"{simulator_url}/mcp",
        kiro_access_token=DEMO_ACCESS_TOKEN,
        kiro_refresh_token=None,
        kiro_accounts=None,
        kiro_token_file_explicit=False,
        kiro_token_file=settings.kiro_token_file.with_name("ki2api-demo-no-such-file.json"),
    )


def catalog_from_settings(settings: Settings) -> ModelCatalog:
    """The built-in table with the operator's MODEL_ALIASES and MODEL_FALLBACK (checked when the
    settings were read)."""
    return ModelCatalog(
        aliases=parse_aliases(settings.model_aliases), fallback=settings.model_fallback
    )
