"""The page's side doors, tried over raw HTTP as a stranger would (issue: "close the side doors").

A real gateway with the page mounted runs on uvicorn on loopback, in front of the simulator
(not demo mode: the pool stands for the owner's Kiro accounts). Every event of the page is
called by its ``fn_index`` through Gradio's queue — the hidden ones too — and nothing may reach
the simulator, change the pool or read a large body without the keys. A visitor who signs in
with the API key chats through the API's checks (key, rate-limit buckets, metrics, access log),
within the playground's share of the pool, and frees the account's slot when they stop reading.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ki2api.app import create_app
from ki2api.settings import Settings
from ki2api.simulator import Delay, Script, text_answer
from ki2api.simulator.scripts import text_events
from ki2api.ui.guard import page_route_allowed, walk_routes
from tests import gradio_raw
from tests.gradio_raw import Session
from tests.stack import Stack, StackFactory, make_stack_factory

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning"),
]

ADMIN_KEY = "page-sec-admin-key-0123456789"
STRANGER_TEXT = "stranger-wants-the-pool-0123"
MODEL = "claude-sonnet-4-5"


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackFactory]:
    factories = make_stack_factory()
    yield next(factories)
    next(factories, None)


@pytest.fixture(scope="module")
def stack(stacks: StackFactory, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    no_login = tmp_path_factory.mktemp("home") / "kiro-auth-token.json"
    env = {
        "ADMIN_KEY": ADMIN_KEY,
        # One account, 4 slots; the page may hold a quarter of them: one chat at a time.
        "MAX_CONCURRENT_PER_ACCOUNT": "4",
        "PLAYGROUND_MAX_SHARE": "0.25",
    }
    return stacks(env, with_ui=True, kiro_token_file=no_login)


@pytest.fixture(autouse=True)
def quick_reader_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    # A chat waits this long for its visitor's answer stream (5 s in service).
    monkeypatch.setattr("ki2api.ui.playground.READER_GRACE", 1.5, raising=False)


def pool_state(stack: Stack) -> list[tuple[str, str, int, str | None]]:
    return [(a.label, a.state, a.requests, a.proxy) for a in stack.runtime.pool.snapshot()]


def chat_data(message: str) -> list[Any]:
    # box, chatbot, model, system, thinking, tools, own, signed, lang
    return [message, [], MODEL, "", False, False, None, None, None]


def sign_in(stack: Stack, session: Session, key: str) -> str:
    config = gradio_raw.page_config(stack.url)
    fn = gradio_raw.event_for(config, "ki-sign-in", "click")
    return gradio_raw.all_text(session.call(fn, [key, None, None]))


def chat_fn(stack: Stack) -> int:
    return gradio_raw.event_for(gradio_raw.page_config(stack.url), "ki-send", "click")


def live_keys(stack: Stack) -> list[dict[str, Any]]:
    """Every live client key, as the admin API lists it (with its limits and status)."""
    listed = httpx.get(
        f"{stack.url}/admin/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    )
    assert listed.status_code == 200, listed.text
    keys: list[dict[str, Any]] = listed.json()["data"]
    for key in keys:
        key.pop("usage")  # counts that other tests' chats change
        key.pop("last_used_at")
    return keys


def test_no_page_event_reaches_the_pool_or_the_admin_functions_without_a_key(stack: Stack) -> None:
    sim = stack.state
    config = gradio_raw.page_config(stack.url)
    events = gradio_raw.events(config)
    assert len(events) >= 15  # load, language, chat x2, stop, clear, tokens x3, sign in x3, ...
    before = pool_state(stack)
    keys_before = live_keys(stack)
    seen_refusal = False
    for event in events:
        for values in (
            [gradio_raw.default_value(c) for c in event.inputs],
            [gradio_raw.hostile_value(c, STRANGER_TEXT) for c in event.inputs],
        ):
            # Joined and never read (the slot-holding attack) ...
            Session(stack.url).join(event.fn_index, values)
            # ... and joined and read to the end.
            session = Session(stack.url)
            joined = session.join(event.fn_index, values)
            assert joined.status_code < 500, (event.fn_index, joined.text[:300])
            if joined.status_code != 200:
                continue
            text = gradio_raw.all_text(session.messages(timeout=60))
            assert ADMIN_KEY not in text and stack.api_key not in text
            seen_refusal = seen_refusal or "Sign in with the API key" in text
    time.sleep(2.0)  # past the chats' wait for a reader: nothing may start late
    assert sim.requests == [], sim.requests  # nothing reached the upstream
    assert sim.refresh_calls == []
    assert pool_state(stack) == before  # no account added, removed, refreshed or used
    assert live_keys(stack) == keys_before  # no client key made, changed or revoked
    assert stack.runtime.gateway.slots.in_use(before[0][0]) == 0
    assert seen_refusal  # the chat events ran, and said why they would not


def test_a_session_that_signs_in_chats_on_the_pool_and_another_does_not(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    sim = stack.state
    seen = len(sim.requests)
    mine, stranger = Session(stack.url), Session(stack.url)
    assert "Wrong key" in sign_in(stack, stranger, "not-the-key-0123456789")
    assert "Signed in with the API key" in sign_in(stack, mine, stack.api_key)
    with caplog.at_level(logging.INFO, logger="ki2api.access"):
        answer = gradio_raw.all_text(mine.call(chat_fn(stack), chat_data("Hello from the page")))
    assert "simulated" in answer
    assert len(sim.requests) == seen + 1  # the signed-in session reached the pool
    refused = gradio_raw.all_text(stranger.call(chat_fn(stack), chat_data("And me?")))
    assert "Sign in with the API key" in refused
    assert len(sim.requests) == seen + 1  # the sign-in stayed in its own session
    # The API's accounting: the access log and the metrics count the page's chats.
    lines = [r.getMessage() for r in caplog.records if r.name == "ki2api.access"]
    assert any("path=/playground/chat status=200" in line for line in lines), lines
    metrics = httpx.get(
        f"{stack.url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    ).text
    assert 'path="/playground/chat",status="200"' in metrics
    assert 'path="/playground/chat",status="401"' in metrics  # the stranger's refusal


def test_the_admin_key_signs_in_as_administrator(stack: Stack) -> None:
    session = Session(stack.url)
    assert "Signed in as administrator" in sign_in(stack, session, ADMIN_KEY)


def test_a_visitor_who_never_reads_never_reaches_upstream(stack: Stack) -> None:
    sim = stack.state
    session = Session(stack.url)
    sign_in(stack, session, stack.api_key)
    seen = len(sim.requests)
    assert session.join(chat_fn(stack), chat_data("Nobody reads this")).status_code == 200
    time.sleep(3.0)  # the chat's wait for a reader (1.5 s here) is over
    assert len(sim.requests) == seen


def _read_until(session: Session, fn: int, data: list[Any], marker: str) -> threading.Event:
    """Join and read the answer in a thread until ``marker`` shows, then drop the connection.
    Returns an event set once the connection is closed."""
    closed = threading.Event()
    assert session.join(fn, data).status_code == 200

    def read() -> None:
        params = {"session_hash": session.hash}
        try:
            with httpx.stream(
                "GET", f"{session.url}/gradio_api/queue/data", params=params, timeout=30
            ) as stream:
                for line in stream.iter_lines():
                    if marker in line:
                        break
        finally:
            closed.set()

    threading.Thread(target=read, daemon=True).start()
    return closed


def test_a_visitor_who_stops_reading_frees_the_slot_at_once(stack: Stack) -> None:
    sim = stack.state
    label = pool_state(stack)[0][0]
    slots = stack.runtime.gateway.slots
    session = Session(stack.url)
    sign_in(stack, session, stack.api_key)
    seen = len(sim.requests)
    steps = text_events("The first words arrive, ", 1) + [Delay(30.0)]
    sim.enqueue(Script(tuple(steps) + tuple(text_answer("never sent").steps), "slow"))
    closed = _read_until(session, chat_fn(stack), chat_data("A long story"), "first words")
    assert closed.wait(20)
    gone_at = time.monotonic()
    assert sim.wait_for(lambda s: len(s.requests) > seen and s.requests[-1].closed_by_client, 5)
    assert time.monotonic() - gone_at < 3.0
    deadline = time.monotonic() + 3
    while slots.in_use(label) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slots.in_use(label) == 0


def test_the_playground_holds_at_most_its_share_of_the_pool(stack: Stack) -> None:
    sim = stack.state
    fn = chat_fn(stack)
    first, second = Session(stack.url), Session(stack.url)
    sign_in(stack, first, stack.api_key)
    sign_in(stack, second, stack.api_key)
    seen = len(sim.requests)
    steps = text_events("Holding a slot, ", 1) + [Delay(4.0)]
    sim.enqueue(Script(tuple(steps) + tuple(text_answer("done").steps), "slow"))
    holder: list[str] = []
    reader = threading.Thread(
        target=lambda: holder.append(
            gradio_raw.all_text(first.call(fn, chat_data("Take the page's only slot")))
        ),
        daemon=True,
    )
    reader.start()
    assert sim.wait_for(lambda s: len(s.requests) > seen, 10)
    busy = gradio_raw.all_text(second.call(fn, chat_data("One more?")))
    assert "PLAYGROUND_MAX_SHARE" in busy
    assert len(sim.requests) == seen + 1  # the second chat never went upstream
    # The API still has the account's other slots.
    api = httpx.post(
        f"{stack.url}/v1/chat/completions",
        headers=stack.headers(),
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        timeout=20,
    )
    assert api.status_code == 200
    reader.join(20)
    assert holder and "done" in holder[0]


def test_page_chats_share_the_api_keys_rate_limit(
    stacks: StackFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    no_login = tmp_path_factory.mktemp("home") / "kiro-auth-token.json"
    stack = stacks({"RATE_LIMIT": "2/minute"}, with_ui=True, kiro_token_file=no_login)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    url = f"{stack.url}/v1/chat/completions"
    assert httpx.post(url, headers=stack.headers(), json=body, timeout=20).status_code == 200
    session = Session(stack.url)
    sign_in(stack, session, stack.api_key)
    fn = chat_fn(stack)
    assert "simulated" in gradio_raw.all_text(session.call(fn, chat_data("one")))
    assert httpx.post(url, headers=stack.headers(), json=body, timeout=20).status_code == 429
    seen = len(stack.state.requests)
    limited = gradio_raw.all_text(session.call(fn, chat_data("two")))
    assert "Rate limit of 2/minute" in limited
    assert len(stack.state.requests) == seen


def test_a_client_key_signs_in_and_its_page_chats_keep_its_limits_and_usage(
    stack: Stack,
) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    made = httpx.post(
        f"{stack.url}/admin/keys", headers=admin, json={"name": "page-user", "rpm": 1}, timeout=10
    )
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    session = Session(stack.url)
    assert "Signed in with the API key" in sign_in(stack, session, secret)
    seen = len(stack.state.requests)
    fn = chat_fn(stack)
    assert "simulated" in gradio_raw.all_text(session.call(fn, chat_data("from the page")))
    limited = gradio_raw.all_text(session.call(fn, chat_data("once more")))
    assert "1 requests per minute for key 'page-user'" in limited
    assert len(stack.state.requests) == seen + 1
    usage = httpx.get(
        f"{stack.url}/admin/usage", headers=admin, params={"key": "page-user"}, timeout=10
    ).json()["data"]
    assert sum(r["requests"] for r in usage) == 1 and sum(r["refused"] for r in usage) == 1
    assert secret not in httpx.get(f"{stack.url}/config", timeout=10).text
    httpx.delete(f"{stack.url}/admin/keys/page-user", headers=admin, timeout=10)
    assert "Wrong key" in sign_in(stack, Session(stack.url), secret)


KEY_EVENTS = {  # the admin section's key actions: (trigger element, trigger)
    "create": ("ki-key-create", "click"),
    "save": ("ki-key-save", "click"),
    "revoke": ("ki-key-revoke", "click"),
    "refresh": ("ki-key-refresh", "click"),
    "pick": ("ki-key-pick", "input"),
}


def named_events(stack: Stack, triggers: dict[str, tuple[str, str]]) -> dict[str, gradio_raw.Event]:
    """The page's events by name, from their (trigger element, trigger)."""
    config = gradio_raw.page_config(stack.url)
    by_index = {e.fn_index: e for e in gradio_raw.events(config)}
    return {
        name: by_index[gradio_raw.event_for(config, elem_id, trigger)]
        for name, (elem_id, trigger) in triggers.items()
    }


def events_writing(stack: Stack, elem_id: str) -> list[gradio_raw.Event]:
    """The page's events that write into the component ``elem_id``."""
    config = gradio_raw.page_config(stack.url)
    target = gradio_raw.component_id(config, elem_id)
    return [e for e in gradio_raw.events(config) if target in e.outputs]


def key_events(stack: Stack) -> dict[str, gradio_raw.Event]:
    return named_events(stack, KEY_EVENTS)


def test_the_key_events_refuse_strangers_api_key_and_client_key_sessions(stack: Stack) -> None:
    """Create, save, revoke, refresh and pick, called by fn_index with a key's id and a new
    name (valid ones: only the gate stands between them and the store), from a session that
    never signed in, one signed in with the API key and one with a client key."""
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    made = httpx.post(
        f"{stack.url}/admin/keys", headers=admin, json={"name": "kept-key", "rpm": 7}, timeout=10
    )
    assert made.status_code == 201, made.text
    kept, secret = made.json()["id"], made.json()["secret"]
    try:
        before = live_keys(stack)
        stranger, api_session, client_session = (Session(stack.url) for _ in range(3))
        assert "Signed in with the API key" in sign_in(stack, api_session, stack.api_key)
        assert "Signed in with the API key" in sign_in(stack, client_session, secret)
        for session in (stranger, api_session, client_session):
            for name, event in key_events(stack).items():
                values: list[Any] = []
                for component in event.inputs:
                    kind = component.get("type")
                    if kind == "dropdown":
                        values.append(kept)  # the key to change, revoke or read
                    elif kind == "textbox":
                        values.append("stranger-made-key")  # a valid name, and an expiry
                    elif kind == "number":
                        values.append(1)
                    else:
                        values.append(gradio_raw.hostile_value(component, STRANGER_TEXT))
                joined = session.join(event.fn_index, values)
                assert joined.status_code < 500, (name, joined.text[:300])
                if joined.status_code != 200:
                    continue
                text = gradio_raw.all_text(session.messages(timeout=30))
                assert "kept-key" not in text and "stranger-made-key" not in text, (name, text)
                assert secret not in text and f"…{secret[-4:]}" not in text, name
                if name != "pick":
                    assert "Sign in as administrator first" in text, (name, text)
        assert live_keys(stack) == before  # nothing made, changed or revoked
        # The Status tab's usage by key (its timer, the tab's select, the language switch):
        # a stranger sees none, the API key the operator's, a client key its own only.
        usage_events = events_writing(stack, "ki-usage")
        assert len(usage_events) == 3
        for event in usage_events:
            values = [gradio_raw.hostile_value(c, STRANGER_TEXT) for c in event.inputs]
            seen = [
                gradio_raw.all_text(session.call(event.fn_index, values))
                for session in (stranger, api_session, client_session)
            ]
            assert "kept-key" not in seen[0] and "operator (API_KEY)" not in seen[0]
            assert "kept-key" not in seen[1] and "operator (API_KEY)" in seen[1]
            assert "kept-key" in seen[2] and "operator (API_KEY)" not in seen[2]
    finally:
        httpx.delete(f"{stack.url}/admin/keys/{kept}", headers=admin, timeout=10)


def test_an_admin_session_makes_a_key_shown_once_then_listed_masked(stack: Stack) -> None:
    session = Session(stack.url)
    assert "Signed in as administrator" in sign_in(stack, session, ADMIN_KEY)
    events = key_events(stack)
    create = events["create"]
    # signed, name, models, rpm, tpm, credits/day, credits/month, expires, enabled, lang
    values = [None, "raw-admin-key", "claude-haiku-*", 12, None, 5.5, None, "", True, None]
    assert len(create.inputs) == len(values)
    output = gradio_raw.final_output(session.call(create.fn_index, values))
    assert output is not None
    message, table, pick, panel, secret = output
    assert isinstance(secret, str) and secret.startswith("ki2-")
    assert panel["visible"] is True and secret not in message and secret not in str(table)
    assert f"ki2-…{secret[-4:]}" in str(table) and "raw-admin-key" in str(table)
    made = next(k for k in live_keys(stack) if k["name"] == "raw-admin-key")
    assert (made["rpm"], made["credits_per_day"], made["models"]) == (12, 5.5, ["claude-haiku-*"])
    # The key works, and the section never shows it again.
    models = httpx.get(
        f"{stack.url}/v1/models", headers={"authorization": f"Bearer {secret}"}, timeout=10
    )
    assert models.status_code == 200
    refresh = events["refresh"]
    again = gradio_raw.all_text(session.call(refresh.fn_index, [None, made["id"], None]))
    assert "raw-admin-key" in again and secret not in again
    revoke = events["revoke"]
    asked = gradio_raw.all_text(session.call(revoke.fn_index, [None, made["id"], None, None]))
    assert "Click **Revoke** again" in asked and any(
        k["name"] == "raw-admin-key" for k in live_keys(stack)
    )
    gone = gradio_raw.all_text(session.call(revoke.fn_index, [None, made["id"], None, None]))
    assert "Revoked key **raw-admin-key**" in gone and secret not in gone
    assert all(k["name"] != "raw-admin-key" for k in live_keys(stack))


PROXY_EVENTS = {  # the admin section's account proxy actions: (trigger element, trigger)
    "add": ("ki-add", "click"),
    "set": ("ki-set-proxy", "click"),
    "set_by_enter": ("ki-account-proxy", "submit"),
    "configured": ("ki-proxy-configured", "click"),
}
PROXY_SECRET = "pr0xy-passw0rd-0123"
KEPT_PROXY = f"socks5://keeper:{PROXY_SECRET}@10.1.2.3:1080"  # masked: socks5://***@10.1.2.3:1080


def proxy_events(stack: Stack) -> dict[str, gradio_raw.Event]:
    return named_events(stack, PROXY_EVENTS)


def proxy_event_values(event: gradio_raw.Event, label: str) -> list[Any]:
    """Valid values (only the gate stands between them and the pool): the account to change,
    a new account's token and label, a proxy of the caller's."""
    values: list[Any] = []
    for component in event.inputs:
        elem_id = component.get("props", {}).get("elem_id")
        if component.get("type") == "dropdown":
            values.append(label)
        elif elem_id == "ki-new-account":
            values.append("aoaAAAAAGstranger-made-account-5555")
        elif elem_id == "ki-new-label":
            values.append("stranger-account")
        elif component.get("type") == "textbox":
            values.append(f"socks5://mallory:{PROXY_SECRET}@evil.example:1080")
        else:
            values.append(gradio_raw.hostile_value(component, STRANGER_TEXT))
    return values


def full_proxies(stack: Stack) -> dict[str, str | None]:
    return {a.label: a.spec.proxy for a in stack.runtime.pool.accounts()}


def test_the_proxy_events_refuse_strangers_and_api_key_sessions(stack: Stack) -> None:
    """Add (with a proxy), Set proxy (click and Enter) and Back to configured, called by
    fn_index with valid values from a session that never signed in and one signed in with the
    API key: refused, the pool unchanged, and the account's proxy never shown to them (nor on
    the Status tab, whose proxy column is an administrator's)."""
    pool = stack.runtime.pool
    label = pool_state(stack)[0][0]
    pool.set_proxy(label, KEPT_PROXY)  # a change "Back to configured" would undo
    try:
        before, proxies_before = pool_state(stack), full_proxies(stack)
        stranger, api_session = Session(stack.url), Session(stack.url)
        assert "Signed in with the API key" in sign_in(stack, api_session, stack.api_key)
        for session in (stranger, api_session):
            for name, event in proxy_events(stack).items():
                values = proxy_event_values(event, label)
                text = gradio_raw.all_text(session.call(event.fn_index, values))
                assert "Sign in as administrator first" in text, (name, text)
                assert "10.1.2.3" not in text and "evil.example" not in text, (name, text)
                assert PROXY_SECRET not in text, name
        assert pool_state(stack) == before and full_proxies(stack) == proxies_before
        # The Status tab's accounts table (page load, language switch, its timer, the tab's
        # select): the proxy column for an administrator only, masked.
        admin_session = Session(stack.url)
        assert "Signed in as administrator" in sign_in(stack, admin_session, ADMIN_KEY)
        status_events = events_writing(stack, "ki-accounts")
        assert len(status_events) == 4
        for event in status_events:
            values = [gradio_raw.hostile_value(c, STRANGER_TEXT) for c in event.inputs]
            for session in (stranger, api_session):
                text = gradio_raw.all_text(session.call(event.fn_index, values))
                assert "10.1.2.3" not in text and PROXY_SECRET not in text, event.fn_index
            text = gradio_raw.all_text(admin_session.call(event.fn_index, values))
            assert "socks5://***@10.1.2.3:1080" in text and PROXY_SECRET not in text
    finally:
        pool.set_proxy(label, "configured")


def test_an_admin_session_sets_a_proxy_and_gets_it_back_masked_only(stack: Stack) -> None:
    pool = stack.runtime.pool
    label = pool_state(stack)[0][0]
    session = Session(stack.url)
    assert "Signed in as administrator" in sign_in(stack, session, ADMIN_KEY)
    events = proxy_events(stack)
    try:
        # admin flag, account, proxy box, lang (the session's own values stand for the states)
        values = [None, label, KEPT_PROXY, None]
        assert len(events["set"].inputs) == len(values)
        messages = session.call(events["set"].fn_index, values)
        output = gradio_raw.final_output(messages)
        assert output is not None
        message, box, _, table = output
        assert message == f"Proxy of {label}: socks5://***@10.1.2.3:1080."
        assert box == "" and "socks5://***@10.1.2.3:1080" in str(table)
        assert PROXY_SECRET not in gradio_raw.all_text(messages)
        assert full_proxies(stack)[label] == KEPT_PROXY
        back = session.call(events["configured"].fn_index, [None, label, None])
        assert f"{label} is back on its configured proxy" in gradio_raw.all_text(back)
        assert full_proxies(stack)[label] is None  # the stack's account names none
    finally:
        pool.set_proxy(label, "configured")


# --- bodies, uploads, files ---------------------------------------------------------------


def test_page_routes_refuse_large_bodies_declared_or_streamed(stack: Stack) -> None:
    url = f"{stack.url}/gradio_api/queue/join"
    limit = 1024 * 1024  # PAGE_MAX_BODY_BYTES
    declared = httpx.post(url, content=b"x" * (limit + 1), timeout=30)
    assert declared.status_code == 413
    assert declared.json()["error"]["type"] == "invalid_request_error"

    def chunks() -> Iterator[bytes]:  # no content-length: counted as it arrives
        for _ in range(8):
            yield b"{" * (limit // 4)

    try:
        streamed = httpx.post(url, content=chunks(), timeout=30)
    except httpx.TransportError:
        pass  # the server may close before the client has sent everything
    else:
        assert streamed.status_code == 413
    # The API keeps its own limit (20 MB): two page limits' worth is not too large there.
    api = httpx.post(
        f"{stack.url}/v1/chat/completions",
        headers=stack.headers(),
        content=b"[" * (2 * limit),
        timeout=30,
    )
    assert api.status_code == 400


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/gradio_api/upload"),
        ("GET", "/gradio_api/upload_progress"),
        ("GET", "/gradio_api/file=/etc/passwd"),
        ("GET", "/gradio_api/file/etc/hostname"),
        ("GET", "/gradio_api/proxy=http://127.0.0.1/"),
        ("GET", "/gradio_api/info"),
        ("POST", "/gradio_api/api/predict"),
        ("POST", "/gradio_api/run/predict"),
        ("POST", "/gradio_api/call/predict"),
        ("GET", "/gradio_api/runs"),
        ("GET", "/monitoring"),
        ("POST", "/gradio_api/vibe-edit"),
        ("POST", "/gradio_api/component_server"),
        ("GET", "/gradio_api/queue/status"),
        ("POST", "/gradio_api/process_recording"),
        ("POST", "/login"),
    ],
)
def test_gradio_routes_the_page_does_not_use_are_closed(
    stack: Stack, method: str, path: str
) -> None:
    files = {"files": ("a.txt", b"secret upload", "text/plain")} if "upload" in path else None
    response = httpx.request(method, f"{stack.url}{path}", files=files, timeout=10)
    assert response.status_code == 404, (path, response.status_code, response.text[:200])


def test_reading_a_session_that_never_joined_is_a_404_without_a_traceback(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """Gradio raises its "session not found" inside an answer stream it has already started:
    a 200, then three tracebacks in the log for each such GET (anyone's: a log flood). The
    guard answers 404 first; a session that joined still reads its answers."""
    with caplog.at_level(logging.DEBUG):
        for session in ("never-joined-0123", "x", "a" * 2000):
            response = httpx.get(
                f"{stack.url}/gradio_api/queue/data",
                params={"session_hash": session},
                timeout=15,
            )
            assert response.status_code == 404, (response.status_code, response.text[:200])
        time.sleep(0.5)  # the server's thread logs after the answer
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]
    config = gradio_raw.page_config(stack.url)
    render = next(e for e in gradio_raw.events(config) if e.targets and e.targets[0][1] == "load")
    joined = Session(stack.url)
    values = [gradio_raw.default_value(c) for c in render.inputs]
    assert gradio_raw.final_output(joined.call(render.fn_index, values)) is not None


def test_a_join_with_fewer_values_than_its_event_takes_is_a_400(stack: Stack) -> None:
    """Gradio runs such an event anyway and fails in it, printing a traceback for each join
    (anyone's); the guard refuses it first. Extra values are Gradio's to ignore."""
    config = gradio_raw.page_config(stack.url)
    events = [e for e in gradio_raw.events(config) if e.backend and e.inputs]
    assert events
    for event in events:
        values = [gradio_raw.default_value(c) for c in event.inputs]
        for short in ([], values[:-1]):
            refused = Session(stack.url).join(event.fn_index, short)
            assert refused.status_code == 400, (event.fn_index, short, refused.text[:200])
    event = events[0]
    values = [gradio_raw.default_value(c) for c in event.inputs]
    assert Session(stack.url).join(event.fn_index, [*values, "extra"]).status_code == 200


def test_the_page_still_loads(stack: Stack) -> None:
    page = httpx.get(f"{stack.url}/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert httpx.get(f"{stack.url}/theme.css", timeout=10).status_code == 200
    assert httpx.get(f"{stack.url}/health", timeout=10).status_code == 200


# --- the route list in docs/security.md -------------------------------------------------

SECURITY_DOC = Path(__file__).resolve().parents[1] / "docs" / "security.md"
_ROW = re.compile(r"^\| `([A-Z]+)` \| `([^`]+)` \| ([^|]+) \|$")


def documented_routes() -> dict[tuple[str, str], str]:
    rows: dict[tuple[str, str], str] = {}
    for line in SECURITY_DOC.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line.strip())
        if match:
            method, path, who = match.groups()
            assert (method, path) not in rows, f"listed twice: {method} {path}"
            rows[method, path] = who.strip()
    return rows


def test_security_doc_lists_every_route() -> None:
    app = create_app(Settings(), with_ui=True)  # the mounted page's routes too
    actual = set(walk_routes(app.routes))
    documented = documented_routes()
    assert len(actual) > 60  # the walk reached into the mount and the included routers
    missing = sorted(actual - set(documented))
    stale = sorted(set(documented) - actual)
    assert not missing, f"routes missing from docs/security.md: {missing}"
    assert not stale, f"docs/security.md lists routes the app does not have: {stale}"
    # What the table says about the page's routes is what the guard does.
    for (method, path), who in documented.items():
        if path.startswith(("/v1/", "/admin/")) or path in ("/health", "/metrics"):
            continue
        concrete = re.sub(r"\{[^}]*\}", "x", path)
        served = page_route_allowed(method, concrete) or path.startswith(("/docs", "/openapi"))
        assert served == (who != "nobody (404)"), (method, path, who)


def test_twenty_joins_that_never_read_leave_the_api_its_slots(stack: Stack) -> None:
    # The report: twenty queue joins that never read their answers held every account slot,
    # and a keyed API client then got 503 account_busy.
    sim = stack.state
    seen = len(sim.requests)
    slow = text_events("Holding, ", 1) + [Delay(8.0)]
    for _ in range(20):
        sim.enqueue(Script(tuple(slow) + tuple(text_answer("late").steps), "slow"))
    fn = chat_fn(stack)
    signed = Session(stack.url)
    sign_in(stack, signed, stack.api_key)
    for i in range(20):  # strangers, and a signed-in session that never reads either
        session = signed if i % 2 else Session(stack.url)
        assert session.join(fn, chat_data(f"hold a slot {i}")).status_code == 200
    time.sleep(2.5)  # past the wait for a reader
    try:
        assert len(sim.requests) == seen
        with httpx.stream(
            "POST",
            f"{stack.url}/v1/chat/completions",
            headers=stack.headers(),
            json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            timeout=5,
        ) as api:
            assert api.status_code == 200
    finally:
        sim.clear_queue()
