"""The gateway's parts, wired once: what ``create_app`` serves and the page talks to.

:meth:`Runtime.build` makes every part without touching the network, so routes and the page get
plain objects instead of callbacks; :meth:`Runtime.run` starts what needs the event loop (the
stored state and its backup, the account pool, the model-list task, the demo simulator) for the
app's lifespan and closes it all afterwards. One Runtime serves one lifespan.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from ki2api.api.anthropic.serving import MessagesService
from ki2api.api.openai_chat.serving import ChatCompletionsService
from ki2api.api.responses.serving import ResponsesService
from ki2api.kiro.accounts.available_models import AvailableModels, fetch_model_list
from ki2api.kiro.accounts.kept import StoredAccounts
from ki2api.kiro.accounts.pool import AccountPool
from ki2api.kiro.accounts.proxy import proxy_password
from ki2api.kiro.http.client import KiroClient, UpstreamHttp
from ki2api.kiro.wire.models import ModelCatalog, parse_aliases
from ki2api.pipeline.gateway import Gateway
from ki2api.pipeline.stats import RequestStats
from ki2api.settings import Settings
from ki2api.shared import SharedState
from ki2api.store.backup import DatabaseBackup, restore, start_backup
from ki2api.teams.gate import Teams, store_for
from ki2api.teams.manage import KeyAdmin

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
    teams: Teams  # client keys, their limits and usage (ki2api.teams; stored in DATA_DIR)
    keys: KeyAdmin  # their management as plain data (the admin API)
    simulator: SimulatorServer | None = None
    backup: DatabaseBackup | None = None  # BACKUP_DATASET: the database's copies, while running
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
        teams: Teams | None = None,
    ) -> Runtime:
        """Tests may inject the upstream connections, the account pool, the model table or the
        client keys (``teams``, e.g. on an in-memory store)."""
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
        shared = SharedState.from_settings(settings)
        # Opened by run(): a damaged database stops the start. With REDIS_URL the keys, their
        # limits and usage go through the replica's link (one connection, one usage batch).
        teams = teams or Teams(settings, store_for(settings, link=shared.link, usage=shared.usage))
        gateway = Gateway(
            settings,
            KiroClient(client, settings),
            accounts,
            catalog,
            stats,
            models,
            admission=teams,  # client keys' limits, before any account is spent
        )
        if shared.enabled:
            shared.attach(accounts)
            gateway.slots.shared = shared.slots
            models.shared = shared.models
            if gateway.sticky is not None:  # conversations stick across replicas too
                gateway.sticky = shared.sticky(gateway.sticky)
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
            teams=teams,
            keys=KeyAdmin(teams),
            simulator=simulator,
            shared=shared,
            owns_upstream=upstream is None,
        )

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[Runtime]:
        if self._ran:
            raise RuntimeError("a Runtime serves one lifespan: build the app again to rerun it")
        self._ran = True
        kept: StoredAccounts | None = None
        try:
            if self.simulator is not None:
                self.simulator.start()
                log.info(
                    "demo mode: answers come from the built-in Kiro simulator at %s",
                    self.simulator.url,
                )
            database = self.teams.database
            # The last backup, when the database is missing (a Space that restarted): before
            # the store opens the file. A Hub that could not be asked: no backup in this run,
            # so that an empty database never replaces a good copy.
            restored = await restore(self.settings, database) if database is not None else False
            await self.teams.open()  # a damaged or newer database stops the start (StoreError)
            await self.shared.start()  # before the pool: its accounts take the shared tokens
            # Accounts added at run time and proxies set at run time come back from the store,
            # are kept there, and follow what the CLI changes there.
            kept = StoredAccounts(self.teams.store, self.pool)
            if not self.settings.demo:  # the demo's pool is the simulator's
                await kept.restore()
                kept.follow()
            self.pool.keeper = kept
            await self.pool.start()
            self.models.start()  # asks every account for its models, in the background
            if database is not None and restored is not None:
                self.backup = await start_backup(self.settings, database, secrets=self.secrets)
            yield self
        finally:
            if kept is not None:
                kept.stop_following()  # no catch-up on a pool being closed
            await self.models.aclose()
            await self.pool.aclose()
            if self.teams.opened:  # usage and last-use times still here go before the link
                try:
                    await self.teams.store.flush()
                except Exception:
                    log.exception("could not write the last usage to %s", self.teams.store.location)
            await self.shared.aclose()
            if self.owns_upstream:
                await self.upstream.aclose()
            if self.simulator is not None:
                self.simulator.stop()
            if kept is not None:
                await kept.aclose()  # the accounts' last writes
            await self.teams.aclose()  # writes the usage still in the batch
            if self.backup is not None:
                await self.backup.close()  # a last copy, with everything written

    def secrets(self) -> list[str | None]:
        """Every secret the gateway knows, for the backup's leak check: none may be in a copy."""
        settings = self.settings
        return [
            settings.api_key,
            settings.admin_key,
            settings.hf_token,
            proxy_password(settings.kiro_proxy),
            *self.pool.secrets(),
        ]


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
