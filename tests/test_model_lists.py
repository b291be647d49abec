"""Per-account model lists (ListAvailableModels) end to end: the gateway in front of the
simulator, accounts that offer different models, /v1/models in both formats, the
x-ki2api-model header and access log, and the background refresh kept off the request path."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import anthropic
import httpx
import orjson
import pytest

from ki2api.kiro.accounts.available_models import AvailableModels, fetch_model_list, models_url
from ki2api.kiro.accounts.credentials import Credential
from ki2api.kiro.accounts.pool import AccountPool
from ki2api.kiro.http.client import KiroClient, UpstreamHttp
from ki2api.kiro.wire.models import ModelCatalog, ModelInfo
from ki2api.model.errors import UpstreamAuthFailed, UpstreamUnavailable
from ki2api.model.request import ChatRequest, Message, TextPart
from ki2api.pipeline.gateway import Gateway, collect
from ki2api.settings import Settings
from ki2api.simulator import SimulatorServer, SimulatorState
from tests.stack import Stack, StackFactory

ACCOUNTS = orjson.dumps(
    [{"label": "a", "accessToken": "tok-aaaa-0001"}, {"label": "b", "accessToken": "tok-bbbb-0002"}]
).decode()


ADMIN_KEY = "model-lists-admin-key"  # the admin API is off without one


_clients: list[anthropic.Anthropic] = []  # closed after each test (their sockets)


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def sdk(url: str, api_key: str) -> anthropic.Anthropic:
    made = anthropic.Anthropic(base_url=url, api_key=api_key, max_retries=0)
    _clients.append(made)
    return made


def two_account_stack(stack_factory: StackFactory, **env: str) -> Stack:
    """Account a offers only Haiku 4.5; account b offers Sonnet 4.5 and Haiku 4.5."""
    state = SimulatorState(require_known_tokens=True)
    state.add_account(access_token="tok-aaaa-0001", label="a").models = ["claude-haiku-4.5"]
    state.add_account(access_token="tok-bbbb-0002", label="b").models = [
        "claude-sonnet-4.5",
        "claude-haiku-4.5",
    ]
    env = {"KIRO_ACCESS_TOKEN": "", "KIRO_ACCOUNTS": ACCOUNTS, "ADMIN_KEY": ADMIN_KEY, **env}
    return stack_factory(env, state=state)


def wait_for_lists(stack: Stack) -> None:
    """Until the background task (started with the app) has both accounts' lists."""
    assert stack.state.wait_for(lambda s: len(s.models_calls) >= 2, timeout=10)
    deadline = time.monotonic() + 10
    while len(stack.runtime.models.snapshot()) < 2:
        assert time.monotonic() < deadline, "model lists not taken in"
        time.sleep(0.02)


def test_pool_serves_what_its_accounts_offer(stack_factory: StackFactory, caplog) -> None:
    stack = two_account_stack(stack_factory)
    wait_for_lists(stack)
    headers = stack.headers()
    listed = httpx.get(f"{stack.url}/v1/models", headers=headers).json()
    assert {m["id"] for m in listed["data"]} == {"claude-sonnet-4-5", "claude-haiku-4-5", "auto"}
    assert listed["object"] == "list"
    as_anthropic = httpx.get(
        f"{stack.url}/v1/models", headers={**headers, "anthropic-version": "2023-06-01"}
    ).json()
    assert {m["id"] for m in as_anthropic["data"]} == {m["id"] for m in listed["data"]}
    assert as_anthropic["data"][0]["type"] == "model" and as_anthropic["has_more"] is False
    one = httpx.get(f"{stack.url}/v1/models/claude-sonnet-4-6", headers=headers).json()
    assert one["id"] == "claude-sonnet-4-6"  # a name a request may use
    missing = httpx.get(
        f"{stack.url}/v1/models/gpt-4o", headers={**headers, "anthropic-version": "2023-06-01"}
    )
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"

    calls_before = len(stack.state.models_calls)
    client = sdk(stack.url, stack.api_key)
    caplog.set_level(logging.INFO, logger="ki2api.access")
    for name in ("claude-sonnet-4-6", "claude-sonnet-4-5-20250929", "claude-opus-5-5"):
        if name == "claude-opus-5-5":  # no account offers an opus: a 404 naming what is served
            with pytest.raises(anthropic.NotFoundError, match="claude-sonnet-4-5"):
                client.messages.create(
                    model=name, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
                )
            continue
        raw = client.messages.with_raw_response.create(
            model=name, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["x-ki2api-model"] == "claude-sonnet-4.5"
        assert raw.parse().model == name  # the name the client asked for
    served = [r.account for r in stack.state.requests]
    assert served == ["b", "b"]  # a lacks Sonnet: skipped, not tried
    assert any("kiro_model=claude-sonnet-4.5" in r.getMessage() for r in caplog.records)
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    accounts = httpx.get(f"{stack.url}/admin/accounts", headers=admin).json()["data"]
    assert {row["label"]: row["state"] for row in accounts} == {"a": "healthy", "b": "healthy"}
    # A Haiku request may go to either account (new conversations: a conversation sticks to
    # its account); the lists were not asked again meanwhile.
    for n in range(4):
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=50,
            messages=[{"role": "user", "content": f"hi {n}"}],
        )
    assert {r.account for r in stack.state.requests[2:]} == {"a", "b"}
    assert len(stack.state.models_calls) == calls_before


def test_models_url_follows_the_settings() -> None:
    assert models_url(Settings(), "eu-central-1") == "https://management.eu-central-1.kiro.dev/"
    proxied = Settings(kiro_api_url="http://127.0.0.1:9/generateAssistantResponse")
    assert models_url(proxied, "us-east-1") == "http://127.0.0.1:9/"
    explicit = Settings(kiro_models_url="https://models.example/{region}/")
    assert models_url(explicit, "us-east-1") == "https://models.example/us-east-1/"


# --- in process: INVALID_MODEL_ID from Kiro, and the refresh schedule ---------------------------


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        server.state.require_known_tokens = True
        yield server


@pytest.fixture
async def http() -> AsyncIterator[UpstreamHttp]:
    async with UpstreamHttp(Settings()) as upstream:
        yield upstream


async def test_kiro_refusing_the_model_skips_that_account_without_harm(
    sim: SimulatorServer, http: UpstreamHttp, tmp_path: Path
) -> None:
    sim.state.add_account(access_token="tok-aaaa-0001", label="a").models = ["claude-haiku-4.5"]
    sim.state.add_account(access_token="tok-bbbb-0002", label="b")
    settings = Settings(
        kiro_api_url=sim.url + "/generateAssistantResponse",
        kiro_token_file=tmp_path / "none.json",
        kiro_accounts=ACCOUNTS,
    )
    pool = AccountPool.from_settings(settings, http, strategy="first")  # always a first
    catalog = ModelCatalog()

    async def never(credential: Credential) -> list[ModelInfo]:
        raise UpstreamUnavailable("not asked in this test")

    models = AvailableModels(pool, catalog, never)  # lists unknown: every account may try
    gateway = Gateway(settings, KiroClient(http, settings), pool, catalog, models=models)
    request = ChatRequest("claude-sonnet-4-5", [Message("user", [TextPart("hello")])])
    for _ in range(3):
        assert (await collect(await gateway.open(request))).text
    refused = [r for r in sim.state.requests if r.status == 400]
    assert [r.account for r in refused] == ["a"]  # once; then a is skipped for Sonnet
    assert [r.account for r in sim.state.requests if r.status == 200] == ["b", "b", "b"]
    assert models.skip_for("claude-sonnet-4.5") == {"a"}
    assert all(s.state == "healthy" for s in pool.snapshot())
    haiku = ChatRequest("claude-haiku-4-5", [Message("user", [TextPart("hello")])])
    await collect(await gateway.open(haiku))
    assert sim.state.requests[-1].account == "a"  # still used for what it offers


async def test_fetch_parses_the_service_list(
    sim: SimulatorServer, http: UpstreamHttp, tmp_path: Path
) -> None:
    sim.state.add_account(access_token="tok-aaaa-0001", label="a")
    sim.state.available_models = [
        {"modelId": "claude-sonnet-4.5", "tokenLimits": {"maxInputTokens": 1_000_000}},
        {"modelId": "claude-opus-4.7", "tokenLimits": {"maxOutputTokens": 128_000}},
        {"modelId": "qwen3-coder-480b"},
        {"nothing": "useful"},
    ]
    settings = Settings(kiro_api_url=sim.url + "/generateAssistantResponse")
    credential = Credential("a", "tok-aaaa-0001", "arn:x", "us-east-1", False)
    rows = await fetch_model_list(http.default, settings, ModelCatalog(), credential)
    by_id = {m.id: m for m in rows}
    assert list(by_id) == ["claude-sonnet-4-5", "claude-opus-4-7", "qwen3-coder-480b"]
    assert by_id["claude-sonnet-4-5"].context_window == 1_000_000
    assert "claude-sonnet-4-5-20250929" in by_id["claude-sonnet-4-5"].aliases  # built-in row
    assert by_id["claude-opus-4-7"].max_output_tokens == 128_000
    assert by_id["claude-opus-4-7"].adaptive_thinking
    assert by_id["qwen3-coder-480b"].owned_by == "kiro"
    assert sim.state.models_calls == ["a"]


class FakeAccounts:
    def __init__(self, labels: list[str], usable: list[str] | None = None) -> None:
        self.all = labels
        self.usable = labels if usable is None else usable

    def labels(self) -> list[str]:
        return list(self.all)

    def usable_labels(self) -> list[str]:
        return list(self.usable)

    async def with_credential(
        self, label: str, call: Callable[[Credential], Awaitable[list[ModelInfo]]]
    ) -> list[ModelInfo]:
        return await call(Credential(label, f"tok-{label}", None, "us-east-1", False))


async def test_lists_are_cached_for_the_ttl_and_a_failure_keeps_the_last_one() -> None:
    now = [1000.0]
    asked: list[str] = []
    fail = {"on": False}
    sonnet = ModelInfo("claude-sonnet-4-5", "claude-sonnet-4.5")

    async def fetch(credential: Credential) -> list[ModelInfo]:
        asked.append(credential.label)
        if fail["on"]:
            raise UpstreamUnavailable("down")
        return [sonnet]

    catalog = ModelCatalog()
    models = AvailableModels(FakeAccounts(["x"]), catalog, fetch, ttl=600, clock=lambda: now[0])
    await models.refresh()
    assert asked == ["x"] and [m.id for m in catalog.list()] == ["claude-sonnet-4-5", "auto"]
    now[0] += 599
    await models.refresh()
    assert asked == ["x"]  # still fresh
    now[0] += 2
    fail["on"] = True
    await models.refresh()
    assert asked == ["x", "x"]
    assert [m.id for m in catalog.list()] == ["claude-sonnet-4-5", "auto"]  # the old list serves
    now[0] += 299
    await models.refresh()
    assert len(asked) == 2  # a failed call is retried after 300 s, not on every tick
    now[0] += 2
    fail["on"] = False
    await models.refresh()
    assert len(asked) == 3


async def test_a_refusal_noted_while_the_list_is_on_its_way_outlives_that_list() -> None:
    """The list asked at start-up may come back after a chat taught that the account lacks a
    model (INVALID_MODEL_ID): the refusal is the newer news and stays until the next list."""
    sonnet = ModelInfo("claude-sonnet-4-5", "claude-sonnet-4.5")
    haiku = ModelInfo("claude-haiku-4-5", "claude-haiku-4.5")
    answered = asyncio.Event()
    calls = 0

    async def fetch(credential: Credential) -> list[ModelInfo]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await answered.wait()
        return [sonnet, haiku]

    models = AvailableModels(FakeAccounts(["x", "y"]), ModelCatalog(), fetch, ttl=600)
    on_its_way = asyncio.create_task(models.refresh(["x"]))
    while calls == 0:  # the list has been asked for
        await asyncio.sleep(0)
    models.note_missing("x", "claude-sonnet-4.5")
    answered.set()
    await on_its_way
    assert models.skip_for("claude-sonnet-4.5") == {"x"}
    await models.refresh(["x"], force=True)  # the next list is asked after the refusal
    assert models.skip_for("claude-sonnet-4.5") == frozenset()


async def test_no_list_known_means_the_built_in_table() -> None:
    async def fetch(credential: Credential) -> list[ModelInfo]:
        raise UpstreamUnavailable("down")

    catalog = ModelCatalog()
    models = AvailableModels(FakeAccounts(["x", "y"]), catalog, fetch)
    await models.refresh()
    assert [m.id for m in catalog.list()] == [m.id for m in ModelCatalog().list()]
    assert models.skip_for("claude-opus-4.6") == frozenset()
    models.start()
    await asyncio.sleep(0)
    await models.aclose()


def test_an_account_cooling_down_with_no_list_yet_still_counts_for_every_model() -> None:
    """y refused Sonnet (INVALID_MODEL_ID) while x, whose list is not known yet, cools down:
    Sonnet stays on offer (x is back soon and may serve it) and only y is skipped for it."""
    accounts = FakeAccounts(["x", "y"], usable=["y"])
    catalog = ModelCatalog()
    models = AvailableModels(accounts, catalog, never_asked)
    models.note_missing("y", "claude-sonnet-4.5")
    assert models.skip_for("claude-sonnet-4.5") == {"y"}
    assert catalog.resolve("claude-sonnet-4-5").kiro_id == "claude-sonnet-4.5"
    assert {m.id for m in catalog.list()} == {m.id for m in ModelCatalog().list()}


async def test_a_failed_list_call_keeps_what_kiro_refused() -> None:
    """x refused Sonnet (INVALID_MODEL_ID); its list call then fails: x stays skipped for
    Sonnet (else the next Sonnet request would be sent to x and refused again)."""

    async def down(credential: Credential) -> list[ModelInfo]:
        raise UpstreamUnavailable("down")

    models = AvailableModels(FakeAccounts(["x", "y"]), ModelCatalog(), down)
    models.note_missing("x", "claude-sonnet-4.5")
    await models.refresh(force=True)
    assert models.skip_for("claude-sonnet-4.5") == {"x"}


async def never_asked(credential: Credential) -> list[ModelInfo]:
    raise AssertionError("the list is not asked in this test")


def test_admin_edits_the_alias_table(stack_factory: StackFactory) -> None:
    stack = stack_factory(
        {"MODEL_ALIASES": '{"gpt-4o": "claude-sonnet-4-6"}', "ADMIN_KEY": "admin-key-0123456789"}
    )
    admin = {"authorization": "Bearer admin-key-0123456789"}
    client = sdk(stack.url, stack.api_key)

    def served(name: str) -> str:
        raw = client.messages.with_raw_response.create(
            model=name, max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.parse().model == name
        return raw.headers["x-ki2api-model"]

    assert served("gpt-4o") == "claude-sonnet-4.6"
    listed = httpx.get(f"{stack.url}/v1/models", headers=stack.headers()).json()["data"]
    assert {"id": "gpt-4o", "owned_by": "ki2api-alias"}.items() <= next(
        m for m in listed if m["id"] == "gpt-4o"
    ).items()
    assert httpx.get(f"{stack.url}/admin/model-aliases", headers=stack.headers()).status_code == 403
    put = httpx.put(
        f"{stack.url}/admin/model-aliases", headers=admin, json={"gpt-4o": "claude-haiku-4-5"}
    )
    assert put.json() == {"aliases": {"gpt-4o": "claude-haiku-4-5"}}
    assert served("gpt-4o") == "claude-haiku-4.5"
    bad = httpx.put(f"{stack.url}/admin/model-aliases", headers=admin, json=["gpt-4o"])
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    overview = httpx.post(f"{stack.url}/admin/models/refresh", headers=admin).json()
    assert overview["aliases"] == {"gpt-4o": "claude-haiku-4-5"}
    assert [row["label"] for row in overview["accounts"]] == ["env"]
    assert "claude-opus-4.6" in overview["accounts"][0]["kiro_ids"]


def test_unknown_names_can_go_to_auto(stack_factory: StackFactory) -> None:
    strict = stack_factory()
    client = sdk(strict.url, strict.api_key)
    with pytest.raises(anthropic.NotFoundError, match="The closest: claude-sonnet-4-5"):
        client.messages.create(
            model="claude-sonet-4-5", max_tokens=20, messages=[{"role": "user", "content": "x"}]
        )
    lenient = stack_factory({"MODEL_FALLBACK": "auto"})
    client = sdk(lenient.url, lenient.api_key)
    raw = client.messages.with_raw_response.create(
        model="gpt-4o", max_tokens=20, messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-ki2api-model"] == "auto" and raw.parse().model == "gpt-4o"


async def test_a_token_no_header_can_carry_is_a_failed_list_not_a_crash(
    sim: SimulatorServer, http: UpstreamHttp
) -> None:
    settings = Settings(kiro_api_url=sim.url + "/generateAssistantResponse")
    credential = Credential("a", "tok-\u20ac-not-ascii", None, "us-east-1", False)
    with pytest.raises(UpstreamAuthFailed):
        await fetch_model_list(http.default, settings, ModelCatalog(), credential)


async def test_any_failure_of_the_list_call_is_recorded_not_raised() -> None:
    async def fetch(credential: Credential) -> list[ModelInfo]:
        raise RuntimeError("a bug or a bad KIRO_MODELS_URL")

    models = AvailableModels(FakeAccounts(["x"]), ModelCatalog(), fetch)
    await models.refresh(force=True)
    assert [(e.label, e.models, e.error) for e in models.snapshot()] == [
        ("x", None, "RuntimeError")
    ]


async def test_a_resting_account_keeps_its_list_and_a_removed_one_loses_it() -> None:
    async def fetch(credential: Credential) -> list[ModelInfo]:
        return [ModelInfo("claude-haiku-4-5", "claude-haiku-4.5")]

    accounts = FakeAccounts(["x", "y"])
    models = AvailableModels(accounts, ModelCatalog(), fetch)
    await models.refresh()
    accounts.usable = ["y"]  # x cools down: not asked, but its list still counts
    await models.refresh(force=True)
    assert {e.label for e in models.snapshot()} == {"x", "y"}
    assert models.skip_for("claude-haiku-4.5") == frozenset()
    accounts.all = accounts.usable = ["y"]  # x removed from the pool
    await models.refresh(force=True)
    assert {e.label for e in models.snapshot()} == {"y"}
