"""Which models each account may use (``ListAvailableModels``), off the request path.

Each account's list is asked of the service in the background (at start-up, then when older than
``KIRO_MODELS_TTL``; a failed call is retried sooner) and cached. The catalog serves the union of
the lists; an account whose list lacks a request's model is skipped for that request (one dict
lookup, :meth:`AvailableModels.skip_for`), never marked unhealthy. An account whose list is not
known yet is assumed to have every model, and when no list is known at all the built-in table
serves. Kiro answering ``INVALID_MODEL_ID`` for an account teaches the same lesson
(:meth:`AvailableModels.note_missing`).

Replicas sharing state (``REDIS_URL``) share the lists too (``shared``, a
:class:`ModelListCache`): a list one replica asked is taken by the others while it is younger
than the TTL, so each account is asked once per TTL, not once per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import orjson

from ki2api.kiro.accounts.credentials import Credential
from ki2api.kiro.wire.errors import error_for_response
from ki2api.kiro.wire.models import ModelCatalog, ModelInfo, info_for_listed
from ki2api.model.errors import (
    GatewayError,
    UpstreamAuthFailed,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ki2api.settings import DEFAULT_KIRO_API_URL, Settings

log = logging.getLogger("ki2api.models")

MODELS_TARGET = "KiroControlPlaneBearerService.ListAvailableModels"
MANAGEMENT_URL = "https://management.{region}.kiro.dev/"
RETRY_AFTER_FAILURE = 300.0  # seconds before a failed list call is tried again
CHECK_INTERVAL = 30.0  # how often the background task looks for lists that are due
_MAX_PAGES = 10
_NONE: frozenset[str] = frozenset()


def models_url(settings: Settings, region: str) -> str:
    """``KIRO_MODELS_URL``; unset: the management host, or KIRO_API_URL's host when that was
    changed (a proxy or the simulator then answers this call too)."""
    if settings.kiro_models_url:
        return settings.url(settings.kiro_models_url, region)
    if settings.kiro_api_url != DEFAULT_KIRO_API_URL:
        parts = urlsplit(settings.url(settings.kiro_api_url, region))
        return f"{parts.scheme}://{parts.netloc}/"
    return settings.url(MANAGEMENT_URL, region)


def parse_model_list(data: Any, catalog: ModelCatalog) -> tuple[list[ModelInfo], str | None]:
    """The rows of one ``ListAvailableModels`` page and its ``nextToken``."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise UpstreamProtocolError("ListAvailableModels answered without a models list")
    rows: list[ModelInfo] = []
    for entry in data["models"]:
        model_id = entry.get("modelId") if isinstance(entry, dict) else None
        if not isinstance(model_id, str) or not model_id.strip():
            continue
        limits = entry.get("tokenLimits")
        limits = limits if isinstance(limits, dict) else {}
        max_in, max_out = limits.get("maxInputTokens"), limits.get("maxOutputTokens")
        rows.append(
            info_for_listed(
                model_id.strip(),
                known=catalog.known(model_id.strip()),
                context_window=max_in if isinstance(max_in, int) and max_in > 0 else None,
                max_output_tokens=max_out if isinstance(max_out, int) and max_out > 0 else None,
            )
        )
    token = data.get("nextToken")
    return rows, token if isinstance(token, str) and token else None


async def fetch_model_list(
    http: httpx.AsyncClient, settings: Settings, catalog: ModelCatalog, credential: Credential
) -> list[ModelInfo]:
    """Ask the service; raises the gateway's ``Upstream*`` errors (``TokenExpired`` on 401/403)."""
    headers = {
        "authorization": f"Bearer {credential.access_token}",
        "content-type": "application/x-amz-json-1.0",
        "x-amz-target": MODELS_TARGET,
        "accept": "application/json",
    }
    if credential.is_api_key:
        headers["tokentype"] = "API_KEY"
    url = models_url(settings, credential.region)
    rows: list[ModelInfo] = []
    token: str | None = None
    for _ in range(_MAX_PAGES):
        body: dict[str, Any] = {"origin": "AI_EDITOR"}
        if credential.profile_arn:
            body["profileArn"] = credential.profile_arn
        if token:
            body["nextToken"] = token
        try:
            response = await http.post(
                url, content=orjson.dumps(body), headers=headers, timeout=settings.timeouts.refresh
            )
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("ListAvailableModels timed out") from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"ListAvailableModels failed ({type(exc).__name__})") from exc
        except UnicodeEncodeError:  # a token no HTTP header can carry (pasted by hand)
            raise UpstreamAuthFailed(
                "ListAvailableModels: the account's token is not valid in an HTTP header"
            ) from None
        if response.status_code != 200:
            raise error_for_response(
                response.status_code, response.content[:4096], response.headers
            )
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError("ListAvailableModels did not answer JSON") from exc
        page, token = parse_model_list(data, catalog)
        rows += page
        if token is None:
            break
    return rows


class AccountSource(Protocol):
    """What this module needs of the account pool."""

    def labels(self) -> list[str]: ...

    def usable_labels(self) -> list[str]: ...

    async def with_credential(
        self, label: str, call: Callable[[Credential], Awaitable[list[ModelInfo]]]
    ) -> list[ModelInfo]: ...


@dataclass(frozen=True, slots=True)
class AccountModels:
    """One account's list as last asked."""

    label: str
    models: tuple[ModelInfo, ...] | None  # None: not known (never asked, or the call failed)
    fetched_at: float  # monotonic
    error: str | None = None
    missing: frozenset[str] = frozenset()  # Kiro ids the service refused for this account

    def kiro_ids(self) -> frozenset[str] | None:
        if self.models is None:
            return None
        return frozenset(m.kiro_id for m in self.models) - self.missing

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "label": self.label,
            "models": None if self.models is None else [m.id for m in self.models],
            "kiro_ids": None if (ids := self.kiro_ids()) is None else sorted(ids),
            "age_seconds": round(now - self.fetched_at, 1),
            "error": self.error,
        }


Fetch = Callable[[Credential], Awaitable[list[ModelInfo]]]


class ModelListCache(Protocol):
    """Lists shared between replicas (:mod:`ki2api.shared.models`), in the service's shape."""

    async def get(self, label: str) -> tuple[list[dict[str, Any]], float] | None:
        """The list and its age in seconds, or None."""
        ...

    async def put(self, label: str, rows: list[dict[str, Any]], ttl: float) -> None: ...


def listed_rows(models: Iterable[ModelInfo]) -> list[dict[str, Any]]:
    """Models as ``ListAvailableModels`` lists them (what :func:`parse_model_list` reads)."""
    return [
        {
            "modelId": m.kiro_id,
            "tokenLimits": {
                "maxInputTokens": m.context_window,
                "maxOutputTokens": m.max_output_tokens,
            },
        }
        for m in models
    ]


class AvailableModels:
    """The per-account model lists, the catalog they narrow, and the task that keeps them fresh."""

    def __init__(
        self,
        accounts: AccountSource,
        catalog: ModelCatalog,
        fetch: Fetch,
        *,
        ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._accounts = accounts
        self.catalog = catalog
        self._fetch = fetch
        self.ttl = max(1.0, ttl)
        self._clock = clock
        self._lists: dict[str, AccountModels] = {}
        self._lacking: dict[str, frozenset[str]] = {}
        self._task: asyncio.Task[None] | None = None
        self.shared: ModelListCache | None = None  # the replicas' lists (REDIS_URL)

    # --- the request path ----------------------------------------------------------------------

    def skip_for(self, kiro_id: str) -> frozenset[str]:
        """Labels of the accounts known not to offer ``kiro_id``."""
        return self._lacking.get(kiro_id, _NONE)

    def note_missing(self, label: str, kiro_id: str) -> None:
        """Kiro refused ``kiro_id`` for this account (``INVALID_MODEL_ID``): skip it for that model
        until its list is asked again."""
        entry = self._lists.get(label) or AccountModels(label, None, self._clock())
        self._lists[label] = AccountModels(
            label,
            entry.models if entry.models is not None else tuple(self.catalog.list()),
            entry.fetched_at,
            entry.error,
            entry.missing | {kiro_id},
        )
        log.info("account %s does not offer %s: skipped for that model", label, kiro_id)
        self._rebuild()

    # --- keeping the lists ---------------------------------------------------------------------

    def snapshot(self) -> list[AccountModels]:
        return list(self._lists.values())

    def _due(self, label: str, now: float) -> bool:
        entry = self._lists.get(label)
        if entry is None:
            return True
        wait = self.ttl if entry.models is not None else min(self.ttl, RETRY_AFTER_FAILURE)
        return now - entry.fetched_at >= wait

    async def refresh(self, labels: Iterable[str] | None = None, *, force: bool = False) -> None:
        """Ask for the lists that are due (all of ``labels`` when ``force``), concurrently."""
        current = self._accounts.usable_labels()
        wanted = current if labels is None else [lb for lb in labels if lb in current]
        now = self._clock()
        jobs = [self._refresh_one(lb) for lb in wanted if force or self._due(lb, now)]
        if jobs:
            await asyncio.gather(*jobs)
        # An account cooling down keeps its list; one removed from the pool loses it.
        members = set(self._accounts.labels())
        gone = [label for label in self._lists if label not in members]
        for label in gone:
            del self._lists[label]
        if jobs or gone:
            self._rebuild()

    async def _refresh_one(self, label: str) -> None:
        previous = self._lists.get(label)
        if self.shared is not None and await self._take_shared(label, self.shared):
            return
        try:
            rows = await self._accounts.with_credential(label, self._fetch)
        except Exception as exc:  # noqa: BLE001 - a failed list must never fail a caller
            why = exc.message if isinstance(exc, GatewayError) else type(exc).__name__
            log.info("model list of account %s not available: %s", label, why)
            keep = previous.models if previous is not None else None
            # What Kiro refused for the account stays known until a list says otherwise.
            missing = previous.missing if previous is not None else frozenset()
            self._lists[label] = AccountModels(label, keep, self._clock(), why, missing)
            if keep is not None:  # keep the old list, ask again sooner
                self._lists[label] = AccountModels(
                    label, keep, self._clock() - self.ttl + RETRY_AFTER_FAILURE, why, missing
                )
            return
        # A refusal Kiro sent while the list was on its way is newer than the list: it stays.
        before = previous.missing if previous is not None else frozenset()
        now_entry = self._lists.get(label)
        meanwhile = now_entry.missing - before if now_entry is not None else frozenset()
        self._lists[label] = AccountModels(label, tuple(rows), self._clock(), None, meanwhile)
        log.info("account %s offers %d model(s)", label, len(rows))
        if self.shared is not None:
            await self.shared.put(label, listed_rows(rows), self.ttl)

    async def _take_shared(self, label: str, shared: ModelListCache) -> bool:
        """Another replica's list of ``label``, if young enough; True if taken."""
        found = await shared.get(label)
        if found is None or found[1] >= self.ttl:
            return False
        rows, age = found
        try:
            models, _ = parse_model_list({"models": rows}, self.catalog)
        except GatewayError:
            return False
        self._lists[label] = AccountModels(label, tuple(models), self._clock() - age)
        return True

    def _rebuild(self) -> None:
        known = {lb: ids for lb, e in self._lists.items() if (ids := e.kiro_ids()) is not None}
        if not known:
            self.catalog.set_available(None)
            self._lacking = {}
            return
        union: list[ModelInfo] = []
        for entry in self._lists.values():
            ids = entry.kiro_ids() or frozenset()
            union += [m for m in entry.models or () if m.kiro_id in ids]
        # An account not asked yet may serve any of them, even one cooling down meanwhile (it
        # is back soon): else one refusal elsewhere would take a model off the gateway.
        if any(label not in known for label in self._accounts.labels()):
            union += self.catalog.built_in()
        self.catalog.set_available(union)
        lacking: dict[str, frozenset[str]] = {}
        for model in self.catalog.list():
            without = frozenset(label for label, ids in known.items() if model.kiro_id not in ids)
            if without:
                lacking[model.kiro_id] = without
        self._lacking = lacking

    # --- the background task -------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # never let the task die: the built-in table still serves
                log.exception("refreshing the model lists failed")
            await asyncio.sleep(min(CHECK_INTERVAL, self.ttl))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
