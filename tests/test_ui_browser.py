"""The web page in headless Chromium, served by a real uvicorn, answering from the simulator.

Chats stream in, Stop closes the upstream request, a pasted token stays in its own tab, the
admin adds an account, the language switch works. Screenshots go to test-artifacts/ (not
tracked); ``UPDATE_SCREENSHOTS=1`` writes the README's, in docs/screenshots/, instead.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ki2api.app import create_app
from ki2api.runtime import DEMO_ACCESS_TOKEN
from ki2api.settings import Settings
from ki2api.simulator import Delay, Script, http_error, text_answer
from ki2api.simulator.scripts import text_events
from tests.servers import ServerThread
from tests.stack import Stack, make_stack_factory

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"
ARTIFACTS = ROOT / "test-artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
API_KEY = "ui-test-api-key-0123456789"
ADMIN_KEY = "ui-test-admin-key-0123456789"
VISITOR_TOKEN = "visitor-own-token-abcdefghij-9876"
POOL_TOKEN = "added-pool-token-klmnopqrst-4321"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium"),
    # Gradio's queue statistics use a pandas option that pandas 3 deprecates (not our code).
    pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning"),
]
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Any]]:
    home = tmp_path_factory.mktemp("ui-home")
    settings = Settings(
        demo=True,
        api_key=API_KEY,
        api_key_is_default=False,
        admin_key=ADMIN_KEY,
        kiro_token_file=home / "kiro-auth-token.json",
        data_dir=home / "data",  # its own: keys and accounts made here stay here
    )
    app = create_app(settings)
    with ServerThread(app) as srv:
        yield srv, app.runtime


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


def screenshot_path(name: str) -> Path:
    """Where a screenshot goes: the tracked docs folder only when asked for."""
    asked = os.environ.get("UPDATE_SCREENSHOTS", "").strip() not in ("", "0")
    folder = DOCS_SCREENSHOTS if asked else ARTIFACTS
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def test_screenshots_go_to_the_docs_only_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UPDATE_SCREENSHOTS", raising=False)
    assert screenshot_path("status.png") == ARTIFACTS / "status.png"
    monkeypatch.setenv("UPDATE_SCREENSHOTS", "0")
    assert screenshot_path("status.png").parent == ARTIFACTS
    monkeypatch.setenv("UPDATE_SCREENSHOTS", "1")
    assert screenshot_path("status.png") == DOCS_SCREENSHOTS / "status.png"


def open_page(browser: Any, url: str, locale: str = "en-US") -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 860}, locale=locale)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(url + "/")
    expect(page.locator("#ki-message textarea")).to_be_visible()
    return page


def send(page: Any, text: str) -> None:
    page.locator("#ki-message textarea").fill(text)
    page.locator("#ki-send").click()


def bearer_of_last_request(sim: Any) -> str:
    return str(sim.requests[-1].headers.get("authorization"))


def test_playground_streams_answers_with_thinking_and_tools(server, browser) -> None:
    srv, rt = server
    sim = rt.simulator.state
    sim.chunk_interval = 0.03  # visible streaming, and a measurable speed
    page = open_page(browser, srv.url)
    expect(page.locator("#ki-demo")).to_contain_text("simulator")

    send(page, "Hello! What does this gateway do?")
    chat = page.locator("#ki-chat")
    expect(chat).to_contain_text("This is a simulated answer", timeout=15_000)
    expect(chat).to_contain_text("What does this gateway do?")
    expect(page.locator("#ki-metrics")).to_contain_text("first token")
    expect(page.locator("#ki-metrics")).to_contain_text("tokens/s")
    assert bearer_of_last_request(sim) == f"Bearer {DEMO_ACCESS_TOKEN}"
    expect(page.locator("#ki-message textarea")).to_have_value("")

    page.get_by_label("Show thinking (reasoning)").check()
    page.get_by_label("Offer example tools (get_weather, get_time)").check()
    send(page, "Use get_weather for Shanghai, please.")
    expect(chat).to_contain_text("Thinking")
    expect(chat).to_contain_text("Tool call: get_weather")
    body = sim.requests[-1].body
    tools = body["conversationState"]["currentMessage"]["userInputMessage"][
        "userInputMessageContext"
    ]["tools"]
    assert {t["toolSpecification"]["name"] for t in tools} == {"get_weather", "get_time"}
    assert sim.wait_idle(timeout=5)
    expect(page.locator("#ki-chat")).to_contain_text('"city"')  # the call's arguments
    chat.get_by_text("Thinking").click()  # finished thinking is folded away; unfold it
    expect(chat).to_contain_text("Simulated reasoning about")
    page.wait_for_timeout(600)  # let the last update and the end of the event render
    page.screenshot(path=str(screenshot_path("playground.png")))
    page.context.close()


def test_stop_closes_the_upstream_request(server, browser) -> None:
    srv, rt = server
    sim = rt.simulator.state
    sim.chunk_interval = 0.0
    steps = text_events("The first words arrive, ", 1) + [Delay(30.0)]
    sim.enqueue(Script(tuple(steps) + tuple(text_answer("never sent").steps), "slow"))
    page = open_page(browser, srv.url)
    send(page, "Tell me a very long story.")
    expect(page.locator("#ki-chat")).to_contain_text("The first words arrive")
    page.locator("#ki-stop").click()
    assert sim.wait_for(lambda s: s.requests[-1].closed_by_client, timeout=5)
    assert sim.wait_idle(timeout=5)
    expect(page.locator("#ki-chat")).not_to_contain_text("never sent")
    page.context.close()


def test_pasted_token_stays_in_its_own_tab(server, browser) -> None:
    srv, rt = server
    sim = rt.simulator.state
    mine = open_page(browser, srv.url)
    mine.get_by_role("tab", name=re.compile("Tokens")).click()
    mine.locator("#ki-own-token input").fill(VISITOR_TOKEN)
    mine.locator("#ki-use-token").click()
    expect(mine.locator("#ki-own-status")).to_contain_text("…9876")
    expect(mine.locator("#ki-own-token input")).to_have_value("")
    assert VISITOR_TOKEN not in mine.content()

    mine.get_by_role("tab", name=re.compile("Playground")).click()
    expect(mine.locator("#ki-using")).to_contain_text("…9876")
    send(mine, "Who pays for this answer?")
    expect(mine.locator("#ki-chat")).to_contain_text("Who pays for this answer?", timeout=10_000)
    expect(mine.locator("#ki-chat")).to_contain_text("simulated answer")
    assert bearer_of_last_request(sim) == f"Bearer {VISITOR_TOKEN}"

    other = open_page(browser, srv.url)
    expect(other.locator("#ki-using")).not_to_contain_text("9876")
    send(other, "And this one?")
    expect(other.locator("#ki-chat")).to_contain_text("simulated answer")
    assert bearer_of_last_request(sim) == f"Bearer {DEMO_ACCESS_TOKEN}"
    other.get_by_role("tab", name=re.compile("Tokens")).click()
    expect(other.locator("#ki-own-status")).to_contain_text("No token of your own")
    assert VISITOR_TOKEN not in other.content()
    other.context.close()

    # The first tab still uses its own token.
    send(mine, "Still mine?")
    expect(mine.locator("#ki-chat")).to_contain_text("Still mine?")
    expect(mine.locator("#ki-chat")).to_contain_text("“Still mine?”")
    assert bearer_of_last_request(sim) == f"Bearer {VISITOR_TOKEN}"
    mine.context.close()


def test_admin_adds_an_account_and_status_shows_it_masked(server, browser) -> None:
    srv, rt = server
    page = open_page(browser, srv.url)
    page.get_by_role("tab", name=re.compile("Tokens")).click()
    expect(page.locator("#ki-new-account")).to_be_hidden()
    page.locator("#ki-admin-key input").fill("not-the-key-0123456789")
    page.locator("#ki-sign-in").click()
    expect(page.locator("#ki-admin-status")).to_contain_text("Wrong key")
    page.locator("#ki-admin-key input").fill(API_KEY)  # ADMIN_KEY is set: the API key is not
    page.locator("#ki-sign-in").click()  # ... an admin's, but it opens the pool to the chat
    expect(page.locator("#ki-admin-status")).to_contain_text("Signed in with the API key")
    expect(page.locator("#ki-new-account")).to_be_hidden()
    page.locator("#ki-admin-key input").fill(ADMIN_KEY)
    page.locator("#ki-sign-in").click()
    expect(page.locator("#ki-admin-status")).to_contain_text("Signed in")
    page.locator("#ki-new-account input").fill(POOL_TOKEN)
    page.locator("#ki-new-label textarea").fill("team-2")
    page.locator("#ki-add").click()
    expect(page.locator("#ki-admin-msg")).to_contain_text("Added account team-2")
    assert "team-2" in {a.label for a in rt.pool.snapshot()}
    assert POOL_TOKEN not in page.content()
    page.locator("#ki-aliases textarea").fill('{"gpt-4o": "claude-haiku-4-5"}')
    page.get_by_role("button", name="Save aliases").click()
    expect(page.locator("#ki-admin-msg")).to_contain_text("1 alias(es) in use")
    assert rt.catalog.resolve("gpt-4o").id == "claude-haiku-4-5"

    page.get_by_role("tab", name=re.compile("Status")).click()
    table = page.locator("#ki-accounts")
    expect(table).to_contain_text("team-2")
    expect(table).to_contain_text("…4321")
    expect(page.locator("#ki-summary")).to_contain_text("requests")
    assert POOL_TOKEN not in page.content()
    page.wait_for_timeout(500)  # the plot draws after the data arrives
    page.screenshot(path=str(screenshot_path("status.png")), full_page=True)

    page.get_by_role("tab", name=re.compile("Connect")).click()
    expect(page.locator("#ki-connect")).to_contain_text(f"{srv.url}/v1")
    expect(page.locator("#ki-code-openai")).to_contain_text(f'base_url="{srv.url}/v1"')
    claude_code = page.locator("#ki-code-claude-code")
    expect(claude_code).to_contain_text(f"ANTHROPIC_BASE_URL={srv.url}")
    expect(page.locator("#ki-code-codex")).to_contain_text(f'base_url = "{srv.url}/v1"')
    expect(page.locator("#ki-code-opencode")).to_contain_text(f'"baseURL": "{srv.url}/v1"')
    assert API_KEY not in page.content() and ADMIN_KEY not in page.content()
    page.screenshot(path=str(screenshot_path("connect.png")), full_page=True)
    page.context.close()


def test_admin_makes_a_client_key_sees_it_once_and_then_only_masked(server, browser) -> None:
    srv, rt = server
    page = open_page(browser, srv.url)
    page.get_by_role("tab", name=re.compile("Tokens")).click()
    expect(page.locator("#ki-keys-panel")).to_be_hidden()  # not signed in: no key section
    page.locator("#ki-admin-key input").fill(ADMIN_KEY)
    page.locator("#ki-sign-in").click()
    expect(page.locator("#ki-keys-panel")).to_be_visible()
    expect(page.locator("#ki-keys")).to_contain_text("no client keys yet")

    page.locator("#ki-key-name textarea").fill("browser-alice")
    page.locator("#ki-key-models textarea").fill("claude-sonnet-*")
    page.locator("#ki-key-rpm input").fill("20")
    page.locator("#ki-key-per-day input").fill("12.5")
    page.locator("#ki-key-create").click()
    new_key = page.locator("#ki-key-new")
    expect(new_key).to_be_visible()
    expect(new_key).to_contain_text("shown this once")
    box = page.locator("#ki-key-secret textarea")
    expect(box).to_have_value(re.compile(r"^ki2-[\w-]{43}$"))
    secret = box.input_value()
    expect(page.locator("#ki-key-secret button").first).to_be_visible()  # copy
    expect(page.locator("#ki-keys-msg")).to_contain_text(f"ki2-…{secret[-4:]}")
    table = page.locator("#ki-keys")
    expect(table).to_contain_text("browser-alice")
    expect(table).to_contain_text(f"ki2-…{secret[-4:]}")
    expect(table).to_contain_text("claude-sonnet-*")
    assert (
        secret not in table.inner_text() and secret not in page.locator("#ki-keys-msg").inner_text()
    )
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert digest not in page.content() and digest[:16] not in page.inner_text("body")
    page.screenshot(path=str(screenshot_path("keys.png")), full_page=True)
    models = httpx.get(
        f"{srv.url}/v1/models", headers={"authorization": f"Bearer {secret}"}, timeout=10
    )
    assert models.status_code == 200  # the key works

    page.locator("#ki-key-refresh").click()  # any later action: the key is gone for good
    expect(new_key).to_be_hidden()
    expect(table).to_contain_text("browser-alice")
    assert secret not in page.content() and secret not in page.inner_text("body")

    # Its holder signs in with it and sees its usage only; the admin sees every key's.
    visitor = open_page(browser, srv.url)
    visitor.get_by_role("tab", name=re.compile("Tokens")).click()
    visitor.locator("#ki-admin-key input").fill(secret)
    visitor.locator("#ki-sign-in").click()
    expect(visitor.locator("#ki-admin-status")).to_contain_text("Signed in with the API key")
    expect(visitor.locator("#ki-keys-panel")).to_be_hidden()
    visitor.get_by_role("tab", name=re.compile("Playground")).click()
    send(visitor, "Counted for browser-alice?")  # claude-sonnet-4-6: the key may use it
    expect(visitor.locator("#ki-chat")).to_contain_text("simulated answer")
    visitor.get_by_role("tab", name=re.compile("Status")).click()
    usage = visitor.locator("#ki-usage")
    expect(usage).to_contain_text("browser-alice")
    assert visitor.locator("#ki-usage tbody tr").count() == 1
    expect(usage.locator("tbody tr td").nth(1)).to_have_text("1")  # one request today
    expect(visitor.locator("#ki-usage-plot")).to_be_visible()
    expect(usage).not_to_contain_text("operator")
    visitor.context.close()
    page.get_by_role("tab", name=re.compile("Status")).click()
    expect(page.locator("#ki-usage")).to_contain_text("browser-alice")
    expect(page.locator("#ki-usage")).to_contain_text("operator (API_KEY)")
    page.context.close()


PROXY_PASSWORD = "pr0xy-passw0rd-4242"


def test_admin_gives_an_account_a_proxy_changes_it_and_sets_it_back(server, browser) -> None:
    """A proxy given with a new account, shown masked in the section's table and the Status
    tab (an administrator's), changed to direct, then back to the configured one; the
    password never reaches the page after it was typed."""
    srv, rt = server
    page = open_page(browser, srv.url)
    page.get_by_role("tab", name=re.compile("Tokens")).click()
    expect(page.locator("#ki-new-proxy")).to_be_hidden()  # not signed in: no proxy field
    key_box = page.locator("#ki-admin-key input")
    key_box.fill(ADMIN_KEY)
    key_box.press("Tab")
    page.locator("#ki-sign-in").click()
    expect(page.locator("#ki-admin-status")).to_contain_text("Signed in as administrator")
    table = page.locator("#ki-admin-accounts")
    expect(table).to_contain_text("default (KIRO_PROXY unset): no proxy")

    url = f"socks5://alice:{PROXY_PASSWORD}@proxy.example:1080"
    page.locator("#ki-new-account input").fill("added-proxy-token-uvwxyz-8765")
    page.locator("#ki-new-label textarea").fill("via-socks")
    page.locator("#ki-new-proxy textarea").fill(url)
    page.locator("#ki-add").click()
    message = page.locator("#ki-admin-msg")
    expect(message).to_contain_text("Added account via-socks; proxy: socks5://***@proxy.example")
    expect(page.locator("#ki-new-proxy textarea")).to_have_value("")
    expect(table).to_contain_text("socks5://***@proxy.example:1080")
    assert rt.pool.account("via-socks").spec.proxy == url
    assert PROXY_PASSWORD not in page.content() and PROXY_PASSWORD not in page.inner_text("body")

    bad = f"ftp://alice:{PROXY_PASSWORD}@proxy.example:21"
    box = page.locator("#ki-account-proxy textarea")
    box.fill(bad)
    page.locator("#ki-set-proxy").click()
    expect(message).to_contain_text("Failed: proxy: unsupported proxy scheme 'ftp'")
    assert PROXY_PASSWORD not in message.inner_text()
    assert rt.pool.account("via-socks").spec.proxy == url

    box.fill("direct")
    page.locator("#ki-set-proxy").click()
    expect(message).to_contain_text("Proxy of via-socks: direct (no proxy).")
    expect(box).to_have_value("")
    expect(table).to_contain_text("direct (no proxy)")
    page.get_by_role("tab", name=re.compile("Status")).click()
    status = page.locator("#ki-accounts")
    expect(status).to_contain_text("via-socks")
    expect(status).to_contain_text("direct (no proxy)")  # the admin's own view

    page.get_by_role("tab", name=re.compile("Tokens")).click()
    page.locator("#ki-proxy-configured").click()
    expect(message).to_contain_text(
        "via-socks is back on its configured proxy: socks5://***@proxy.example:1080."
    )
    expect(table).to_contain_text("socks5://***@proxy.example:1080")
    assert rt.pool.account("via-socks").spec.proxy == url
    assert PROXY_PASSWORD not in page.content() and PROXY_PASSWORD not in page.inner_text("body")
    page.screenshot(path=str(ARTIFACTS / "account-proxy.png"), full_page=True)

    # A visitor who did not sign in sees the account, not where its calls go.
    visitor = open_page(browser, srv.url)
    visitor.get_by_role("tab", name=re.compile("Status")).click()
    expect(visitor.locator("#ki-accounts")).to_contain_text("via-socks")
    assert "proxy.example" not in visitor.content()
    visitor.context.close()
    rt.pool.remove_account("via-socks")  # the other tests' pool as it was
    page.context.close()


def test_language_follows_the_browser_and_the_switch(server, browser) -> None:
    srv, _ = server
    page = open_page(browser, srv.url, locale="zh-CN")
    expect(page.locator("#ki-send")).to_have_text("发送")
    expect(page.locator("#ki-demo")).to_contain_text("模拟器")
    page.locator("#ki-lang").get_by_text("English").click()
    expect(page.locator("#ki-send")).to_have_text("Send")
    expect(page.locator("#ki-demo")).to_contain_text("simulator")
    page.context.close()


def test_status_shows_which_cooldown_applies_to_which_model(server, browser) -> None:
    srv, rt = server
    capacity = http_error(
        429,
        "I am experiencing high traffic, please try again shortly.",
        "INSUFFICIENT_MODEL_CAPACITY",
        {"retry-after": "600"},
    )
    accounts = len(rt.pool)  # the demo account, and the one another test may have added
    assert accounts <= rt.settings.upstream_attempts
    rt.simulator.state.fail_next(accounts, capacity)
    # A model no other test here uses: it stays off the pool's accounts for 10 minutes.
    r = httpx.post(
        f"{srv.url}/v1/chat/completions",
        json={"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "Hi"}]},
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert r.status_code == 429 and r.headers["retry-after"] == "600"
    page = open_page(browser, srv.url)
    page.get_by_role("tab", name=re.compile("Status")).click()
    table = page.locator("#ki-accounts")
    expect(table).to_contain_text("cooldowns")
    expect(table).to_contain_text("claude-haiku-4.5 · model capacity · in 9 min")
    expect(table).to_contain_text("INSUFFICIENT_MODEL_CAPACITY")
    page.context.close()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Not demo mode: the pool stands for the owner's Kiro accounts (the simulator behind)."""
    factories = make_stack_factory()
    make = next(factories)
    no_login = tmp_path_factory.mktemp("ui-keyed-home") / "kiro-auth-token.json"
    yield make({"ADMIN_KEY": ADMIN_KEY}, with_ui=True, kiro_token_file=no_login)
    next(factories, None)


def test_the_playground_needs_a_sign_in_and_a_closed_tab_frees_the_account(
    keyed: Stack, browser: Any
) -> None:
    sim = keyed.state
    page = open_page(browser, keyed.url)
    expect(page.locator("#ki-using")).to_contain_text("sign in with the API key")
    send(page, "May I use the server's accounts?")
    expect(page.locator("#ki-chat")).to_contain_text("Sign in with the API key")
    assert sim.requests == []

    page.get_by_role("tab", name=re.compile("Tokens")).click()
    key_box = page.locator("#ki-admin-key input")
    key_box.fill(keyed.api_key)
    expect(key_box).to_have_value(keyed.api_key)
    key_box.press("Tab")  # Gradio takes the value on its change event, before the click
    page.locator("#ki-sign-in").click()
    expect(page.locator("#ki-admin-status")).to_contain_text("Signed in with the API key")
    assert keyed.api_key not in page.content()
    page.get_by_role("tab", name=re.compile("Playground")).click()
    expect(page.locator("#ki-using")).to_contain_text("server's Kiro accounts")
    steps = text_events("The first words arrive, ", 1) + [Delay(30.0)]
    sim.enqueue(Script(tuple(steps) + tuple(text_answer("never sent").steps), "slow"))
    send(page, "Tell me a very long story.")
    expect(page.locator("#ki-chat")).to_contain_text("The first words arrive")
    assert len(sim.requests) == 1
    label = keyed.runtime.pool.snapshot()[0].label
    assert keyed.runtime.gateway.slots.in_use(label) == 1
    page.context.close()  # the visitor closes the tab mid-answer
    assert sim.wait_for(lambda s: s.requests[-1].closed_by_client, timeout=5)
    assert sim.wait_idle(timeout=5)
    deadline = time.monotonic() + 5
    while keyed.runtime.gateway.slots.in_use(label) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keyed.runtime.gateway.slots.in_use(label) == 0
