"""The page's pure parts: how deltas become chat messages, history, snippets, countdowns, keys."""

from __future__ import annotations

import asyncio
import json
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from ki2api.api.observability import Metrics
from ki2api.kiro.accounts.pool import AccountPool
from ki2api.model.deltas import (
    ReasoningDelta,
    Stop,
    StopReason,
    StreamError,
    TextDelta,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from ki2api.model.errors import AuthenticationFailed, NotConfigured, UpstreamError
from ki2api.settings import Settings
from ki2api.ui.access import ApiChecks, NotSignedIn, Playground, PlaygroundBusy
from ki2api.ui.answer import AnswerView, history_to_messages
from ki2api.ui.connect import base_url, intro, shown_key, snippets
from ki2api.ui.i18n import STRINGS, lang_from_header, t
from ki2api.ui.playground import _Chat, build_request
from ki2api.ui.status import accounts_table, countdown, hide_paths
from ki2api.ui.tokens import (
    PageKey,
    TokenHandlers,
    admin_enabled,
    admin_key_ok,
    describe_own,
    page_sign_in,
)


def test_answer_view_separates_thinking_text_and_tool_calls() -> None:
    view = AnswerView()
    for delta in (
        ReasoningDelta("Let me think."),
        TextDelta("Hello"),
        TextDelta(", world"),
        ToolCallStart(0, "call_1", "get_weather"),
        ToolCallArgs(0, '{"city": '),
        ToolCallArgs(0, '"Paris"}'),
        ToolCallEnd(0),
        Usage(10, 42),
        Stop(StopReason.TOOL_USE),
    ):
        view.feed(delta)
    thinking, text, tool = view.messages()
    assert thinking["content"] == "Let me think."
    assert thinking["metadata"]["status"] == "done"
    assert text == {"role": "assistant", "content": "Hello, world"}
    assert tool["metadata"]["title"].endswith("get_weather")
    assert '{"city": "Paris"}' in tool["content"]
    assert view.tokens == 42
    assert view.ttft is not None and "42 output tokens" in view.metrics("m")


def test_every_update_holds_the_whole_answer_so_far() -> None:
    view = AnswerView()
    view.feed(TextDelta("Hel"))
    assert view.messages()[-1]["content"] == "Hel"
    view.feed(TextDelta("lo"))
    assert view.messages()[-1]["content"] == "Hello"


def test_a_stream_error_is_shown_after_the_partial_answer() -> None:
    view = AnswerView(lang="zh")
    view.feed(TextDelta("partial"))
    view.feed(StreamError(UpstreamError("Kiro went away")))
    messages = view.messages()
    assert messages[0]["content"] == "partial"
    assert messages[-1]["content"] == "Kiro went away"
    assert "网关" in messages[-1]["metadata"]["title"]
    assert str(messages).count("Kiro went away") == 1  # said once, not in the title as well


def test_history_keeps_the_conversation_and_drops_page_notes() -> None:
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": "thinking…", "metadata": {"title": "Thinking"}},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
        {"role": "assistant", "content": "more", "metadata": None},
        {"role": "user", "content": "  "},
    ]
    messages = history_to_messages(history)
    assert [(m.role, m.text) for m in messages] == [("user", "Hi"), ("assistant", "Hello!\n\nmore")]


def test_base_url_prefers_the_space_host_then_the_request() -> None:
    space = Settings(on_space=True, space_host="me-ki2api.hf.space")
    assert base_url(space, {"host": "10.0.0.1:7860"}) == "https://me-ki2api.hf.space"
    local = Settings()
    assert base_url(local, {"host": "example.org:8989"}) == "http://example.org:8989"
    proxied = {"host": "inner:80", "x-forwarded-host": "gw.example", "x-forwarded-proto": "https"}
    assert base_url(local, proxied) == "https://gw.example"
    assert base_url(local, {"host": "h", "x-forwarded-proto": "javascript"}) == "http://h"
    assert base_url(Settings(host="0.0.0.0", port=7000), None) == "http://127.0.0.1:7000"


def test_snippets_show_only_the_public_default_key() -> None:
    assert shown_key(Settings()) == "ki2api-key-2024"
    assert shown_key(Settings(api_key="real-secret", api_key_is_default=False)) == ""
    assert shown_key(Settings(on_space=True)) == ""
    code = snippets("https://gw.example", "", "claude-sonnet-4-6")
    assert 'base_url="https://gw.example/v1"' in code["openai"]
    assert 'base_url="https://gw.example"' in code["anthropic"]
    assert "$KI2API_KEY" in code["curl"] and "apiBase: https://gw.example/v1" in code["editor"]
    assert "export ANTHROPIC_BASE_URL=https://gw.example\n" in code["claude_code"]
    assert "export ANTHROPIC_API_KEY=$KI2API_KEY" in code["claude_code"]
    local = intro(Settings(), "http://127.0.0.1:8989", ["auto"], "en")
    assert "`ki2api-key-2024`" in local and "`http://127.0.0.1:8989/v1`" in local
    remote = intro(Settings(api_key="s3cret-key-value", api_key_is_default=False), "x", [], "zh")
    assert "s3cret" not in remote and "$KI2API_KEY" in remote


def test_snippets_for_codex_and_opencode_are_their_whole_config() -> None:
    """The Connect tab shows each agent the exact settings the README gives (and that the agent
    tests drive): a Codex provider on the Responses API, an opencode OpenAI-compatible provider,
    with this server's URL and the key read from KI2API_KEY (never written into the file)."""
    code = snippets("https://gw.example", "", "claude-sonnet-4-6")
    codex = tomllib.loads(code["codex"].split("\n# then:")[0])
    assert codex["model"] == "claude-sonnet-4-6" and codex["model_provider"] == "ki2api"
    provider = codex["model_providers"]["ki2api"]
    assert provider["base_url"] == "https://gw.example/v1"
    assert provider["wire_api"] == "responses" and provider["env_key"] == "KI2API_KEY"
    assert "export KI2API_KEY=$KI2API_KEY" in code["codex"]
    opencode = json.loads(code["opencode"].split("\n// then:")[0])
    options = opencode["provider"]["ki2api"]["options"]
    assert options == {"baseURL": "https://gw.example/v1", "apiKey": "{env:KI2API_KEY}"}
    assert opencode["provider"]["ki2api"]["npm"] == "@ai-sdk/openai-compatible"
    assert opencode["model"] == "ki2api/claude-sonnet-4-6"
    assert "claude-sonnet-4-6" in opencode["provider"]["ki2api"]["models"]
    # The public default key may be shown; then it is filled in.
    assert (
        "export KI2API_KEY=ki2api-key-2024" in snippets("http://h", "ki2api-key-2024", "m")["codex"]
    )
    for lang in ("en", "zh"):
        assert t("snippet_codex", lang) and t("snippet_opencode", lang)


def test_admin_key_follows_the_admin_api_rule() -> None:
    both = Settings(api_key="api-key-1234567", api_key_is_default=False, admin_key="adm-1234567")
    assert admin_key_ok("adm-1234567", both)
    assert admin_key_ok(" adm-1234567 ", both)
    assert not admin_key_ok("api-key-1234567", both)
    only_api = Settings(api_key="api-key-1234567", api_key_is_default=False)
    # Without ADMIN_KEY administration is off: the API key does not make an administrator.
    assert not admin_key_ok("api-key-1234567", only_api)
    assert not admin_enabled(only_api)
    assert not admin_key_ok("", only_api)
    assert not admin_key_ok("ki2api-key-2024", Settings(on_space=True))  # public default key
    assert "ADMIN_KEY" in t("admin_disabled", "en") and "ADMIN_KEY" in t("admin_disabled", "zh")


def test_status_notes_never_show_file_paths() -> None:
    notes = {
        "no Kiro login file at /home/owner/.aws/sso/cache/kiro-auth-token.json": (
            "no Kiro login file at …/kiro-auth-token.json"
        ),
        "cannot read /srv/secret/dir/login.json: Permission denied": (
            "cannot read …/login.json: Permission denied"
        ),
        r"C:\Users\owner\.aws\sso\cache\kiro-auth-token.json is not valid JSON (x)": (
            "…/kiro-auth-token.json is not valid JSON (x)"
        ),
        "~/.aws/sso/cache/k.json must hold a JSON object.": "…/k.json must hold a JSON object.",
        "refresh failed (400): see https://kiro.dev/a/b and/or retry": (
            "refresh failed (400): see https://kiro.dev/a/b and/or retry"
        ),
    }
    for note, shown in notes.items():
        assert hide_paths(note) == shown


def test_countdown_and_masked_own_token() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert countdown(now + timedelta(minutes=42, seconds=5), now, "en") == "in 42 min"
    assert countdown(now + timedelta(hours=3, minutes=2), now, "zh") == "3 小时 2 分钟 后"
    assert countdown(now - timedelta(seconds=1), now, "en") == "expired"
    from ki2api.kiro.accounts.credentials import parse_pasted_token

    spec = parse_pasted_token("visitor-token-abcdefgh-9876", Settings())
    shown = describe_own(spec, "en")
    assert "…9876" in shown and "abcdefgh" not in shown


def test_every_string_has_both_languages() -> None:
    for key, (en, zh) in STRINGS.items():
        assert en.strip() and zh.strip(), key
    assert t("send", "zh") == "发送" and t("send") == "Send"
    assert lang_from_header("zh-CN,zh;q=0.9,en;q=0.8") == "zh"
    assert lang_from_header("en-US,zh;q=0.5") == "en"
    assert lang_from_header(None) == "en"


async def test_status_table_shows_no_login_file_path(tmp_path) -> None:
    from types import SimpleNamespace

    import httpx

    from ki2api.kiro.accounts.pool import AccountPool

    folder = tmp_path / "private-folder-name"
    settings = Settings(
        kiro_token_file=folder / "kiro-auth-token.json", kiro_token_file_explicit=True
    )
    async with httpx.AsyncClient() as http:
        pool = AccountPool.from_settings(settings, http)
        table = accounts_table(SimpleNamespace(pool=pool), "en")  # type: ignore[arg-type]
    shown = table.to_csv()
    assert "kiro-auth-token.json" in shown  # the note says which file is missing ...
    assert "private-folder-name" not in shown and str(tmp_path) not in shown  # ... not where


def test_page_sign_in_takes_the_api_key_or_the_admin_key_and_never_shows_them() -> None:
    settings = Settings(api_key="api-key-1234567", api_key_is_default=False, admin_key="adm-98765")
    assert page_sign_in(" adm-98765 ", settings) == PageKey("admin", "adm-98765")
    api = page_sign_in("api-key-1234567", settings)
    assert api.role == "api" and "api-key" not in repr(api) and "adm" not in repr(api)
    for wrong in ("", "nope", "api-key-123456"):
        with pytest.raises(AuthenticationFailed):
            page_sign_in(wrong, settings)
    with pytest.raises(NotConfigured):  # a Space still on the public default key: no sign-in
        page_sign_in("ki2api-key-2024", Settings(on_space=True))


@pytest.mark.parametrize("lang", ["en", "zh"])
async def test_signing_in_on_a_server_without_admin_key_says_how_to_turn_administration_on(
    lang: str,
) -> None:
    """The page says administration is off, and how to turn it on, to whoever signs in while
    the server has no ADMIN_KEY: with the API key (no admin panel appears) or with a key the
    visitor took for an admin key (refused as wrong)."""
    with_accounts = SimpleNamespace(pool=SimpleNamespace(has_accounts=lambda: True), teams=None)
    off = TokenHandlers(
        Settings(api_key="api-key-1234567", api_key_is_default=False),
        with_accounts,  # type: ignore[arg-type]
    )
    signed, admin, message, *_ = await off.sign_in("api-key-1234567", None, lang)
    assert signed == PageKey("api", "api-key-1234567") and admin is False
    assert t("signed_in_api", lang) in message and t("admin_disabled", lang) in message
    signed, admin, message, *_ = await off.sign_in("adm-98765", None, lang)
    assert signed is None and admin is False
    assert t("wrong_key", lang) in message and t("admin_disabled", lang) in message

    on = Settings(api_key="api-key-1234567", api_key_is_default=False, admin_key="adm-98765")
    handlers = TokenHandlers(on, with_accounts)  # type: ignore[arg-type]
    _, _, message, *_ = await handlers.sign_in("api-key-1234567", None, lang)
    assert message == t("signed_in_api", lang)


def test_without_any_account_a_visitor_is_told_that_before_being_asked_to_sign_in(
    tmp_path: Path,
) -> None:
    """No account at all (the page's banner says so to everyone): the playground says how to
    get one, not to sign in for a pool that is empty. With accounts, a sign-in is needed."""

    def playground(**accounts: Any) -> Playground:
        settings = Settings(
            api_key="api-key-1234567",
            api_key_is_default=False,
            kiro_token_file=tmp_path / "private-folder" / "kiro-auth-token.json",
            **accounts,
        )
        runtime = SimpleNamespace(pool=AccountPool.from_settings(settings, httpx.AsyncClient()))
        return Playground(ApiChecks(settings, Metrics()), runtime)  # type: ignore[arg-type]

    with pytest.raises(NotConfigured) as info:
        playground().check_key(None)
    assert "No Kiro account is configured" in info.value.message and "Tokens" in info.value.message
    assert "private-folder" not in info.value.message  # the file's name, not where it is
    with pytest.raises(NotSignedIn):
        playground(kiro_access_token="aoaAAAAAGaaa-access").check_key(None)


def test_the_playground_cap_is_a_share_of_the_pools_slots() -> None:
    class Pool:
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

    def cap(accounts: int, **settings: Any) -> int:
        runtime = SimpleNamespace(pool=Pool(accounts))
        checks = ApiChecks(Settings(**settings), Metrics())
        return Playground(checks, runtime).cap()  # type: ignore[arg-type]

    assert cap(1) == 4  # a quarter of 16
    assert cap(3, max_concurrent_per_account=4, playground_max_share=0.5) == 6
    assert cap(1, max_concurrent_per_account=1) == 1  # never below one while the share is > 0
    assert cap(0) == 4  # no account yet: the gateway's own error, not "busy"
    assert cap(2, playground_max_share=0) == 0  # the page stays off the pool
    checks = ApiChecks(Settings(max_concurrent_per_account=1, playground_max_share=1), Metrics())
    playground = Playground(checks, SimpleNamespace(pool=Pool(1)))  # type: ignore[arg-type]
    release = playground.take_slot()
    with pytest.raises(PlaygroundBusy):
        playground.take_slot()
    release()
    release()  # twice: still one place given back
    assert playground.in_flight == 0


async def test_a_chat_stopped_before_its_pump_ran_still_gives_its_slot_back() -> None:
    # A reader can leave between the start of a chat and its pump's first step: the slot, the
    # count and the handler's wake-up must not depend on the pump having run.
    checks = ApiChecks(Settings(), Metrics())
    playground = Playground(checks, SimpleNamespace(pool=[1]))  # type: ignore[arg-type]
    release = playground.take_slot()
    request = build_request("hi", [], "claude-sonnet-4-5", "", False, False)
    chat = _Chat(SimpleNamespace(), playground, request)  # type: ignore[arg-type]
    stop = chat.start(None, release)
    stop()
    stop()  # once is enough; twice changes nothing
    assert await asyncio.wait_for(chat.deltas.get(), 2) is None
    assert playground.in_flight == 0 and chat.recorded and chat.status == 499
