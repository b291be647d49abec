"""Each account's outbound proxy in the page's admin section: given when an account is added,
changed later (a URL, direct, the default KIRO_PROXY, back to the configured one), shown masked
in the section's table and, to an administrator, on the Status tab. Only an administrator's
session may; a proxy's password is never sent back to the page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pandas as pd
import pytest

from ki2api.kiro.accounts.pool import AccountPool
from ki2api.settings import Settings
from ki2api.ui.i18n import t
from ki2api.ui.status import accounts_table
from ki2api.ui.tokens import PageKey, TokenHandlers
from tests.test_ui_keys import text_of

ADMIN_KEY = "page-proxy-admin-key-0123456789"
SECRET = "pr0xy-passw0rd"
CONFIGURED = f"socks5h://carol:{SECRET}@10.0.0.7:1080"  # KIRO_ACCOUNTS names it
TOKEN = "aoaAAAAAGpage-proxy-token-7777"
NO_CHANGE = {"__type__": "update"}


@pytest.fixture
async def runtime() -> AsyncIterator[Any]:
    entries = [
        {"label": "configured", "accessToken": "aoaAAAAAGconfigured-1111", "proxy": CONFIGURED}
    ]
    settings = Settings(
        admin_key=ADMIN_KEY,
        kiro_accounts=orjson.dumps(entries).decode(),
        kiro_proxy=f"http://corp:{SECRET}@proxy.corp:3128",
    )
    async with httpx.AsyncClient() as http:
        pool = AccountPool.from_settings(settings, http)
        yield SimpleNamespace(settings=settings, pool=pool, teams=None)
        await pool.aclose()


def handlers(rt: Any) -> TokenHandlers:
    return TokenHandlers(rt.settings, rt)


def proxies(rt: Any) -> dict[str, str | None]:
    """The proxy each account goes through now (in full: the pool's own view)."""
    return {a.label: a.spec.proxy for a in rt.pool.accounts()}


def shown_proxy(table: pd.DataFrame, label: str, lang: str = "en") -> str:
    rows = table.set_index(t("col_label", lang))
    return str(rows.loc[label, t("col_proxy", lang)])


async def test_an_account_added_with_a_proxy_is_listed_masked(runtime: Any) -> None:
    page = handlers(runtime)
    url = f"socks5://alice:{SECRET}@proxy.example:1080"
    answer = page.add_account(True, TOKEN, "team-2", f"  {url} ", "en")
    message, token_box, proxy_box, choices, table = answer
    assert message == "Added account team-2; proxy: socks5://***@proxy.example:1080."
    assert token_box == "" and proxy_box == ""  # both boxes emptied: the password is gone
    assert choices["value"] == "team-2"
    assert shown_proxy(table, "team-2") == "socks5://***@proxy.example:1080"
    assert shown_proxy(table, "configured") == "socks5h://***@10.0.0.7:1080"
    assert SECRET not in text_of(answer) and "alice" not in text_of(answer)
    assert proxies(runtime)["team-2"] == url
    # What it was added with is its configured proxy: "back to configured" returns to it.
    page_added = runtime.pool.account("team-2")
    assert page_added.configured_proxy == url and page_added.spec.source == "ui"


async def test_an_account_added_without_a_proxy_uses_the_default(runtime: Any) -> None:
    page = handlers(runtime)
    message, _, proxy_box, _, table = page.add_account(True, TOKEN, "", "", "zh")
    label = runtime.pool.labels()[-1]
    assert message == t("added", "zh", label=label) and proxy_box == ""
    assert proxies(runtime)[label] is None
    assert shown_proxy(table, label, "zh") == "默认（KIRO_PROXY）：http://***@proxy.corp:3128"
    assert SECRET not in table.to_csv()


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (f"ftp://u:{SECRET}@p:21", "unsupported proxy scheme"),
        (f"http://u:{SECRET}@p:3128/path", "without a path"),
        (f"socks5://u:{SECRET}@p:port", "not a valid URL"),
        ("socks5://:1080", "no host"),
        ("nowhere", "unsupported proxy scheme"),
    ],
)
async def test_a_bad_proxy_is_one_sentence_that_never_repeats_the_password(
    runtime: Any, bad: str, why: str
) -> None:
    page = handlers(runtime)
    before = proxies(runtime)
    added = page.add_account(True, TOKEN, "team-3", bad, "en")
    message, token_box, proxy_box, choices, table = added
    assert message.startswith("Failed: proxy: ") and why in message, message
    assert message.count(".") <= 2 and "\n" not in message  # one sentence
    assert token_box == "" and proxy_box == NO_CHANGE  # the box keeps what was typed
    assert choices == NO_CHANGE and table == NO_CHANGE
    changed = await page.set_proxy(True, "configured", bad, "en")
    message, proxy_box, _, table = changed
    assert message.startswith("Failed: proxy: ") and why in message, message
    assert proxy_box == NO_CHANGE
    assert SECRET not in text_of(added) + text_of(changed)
    assert proxies(runtime) == before  # nothing added, nothing changed


async def test_a_proxy_set_direct_default_then_back_to_configured(runtime: Any) -> None:
    page = handlers(runtime)
    url = f"http://dave:{SECRET}@10.9.8.7:8080"
    answer = await page.set_proxy(True, "configured", url, "en")
    message, proxy_box, choices, table = answer
    assert message == "Proxy of configured: http://***@10.9.8.7:8080."
    assert proxy_box == "" and choices["value"] == "configured"
    assert shown_proxy(table, "configured") == "http://***@10.9.8.7:8080"
    assert SECRET not in text_of(answer) and proxies(runtime)["configured"] == url

    message, _, _, table = await page.set_proxy(True, "configured", " Direct ", "zh")
    assert message == "configured 的代理：直连（不使用代理）。"
    assert shown_proxy(table, "configured", "zh") == "直连（不使用代理）"
    assert proxies(runtime)["configured"] == "direct"

    message, _, _, table = await page.set_proxy(True, "configured", "  ", "en")
    assert message == "Proxy of configured: default (KIRO_PROXY): http://***@proxy.corp:3128."
    assert proxies(runtime)["configured"] is None

    answer = await page.configured_proxy(True, "configured", "en")
    message, proxy_box, _, table = answer
    assert message == "configured is back on its configured proxy: socks5h://***@10.0.0.7:1080."
    assert proxy_box == ""
    assert shown_proxy(table, "configured") == "socks5h://***@10.0.0.7:1080"
    assert proxies(runtime)["configured"] == CONFIGURED and SECRET not in text_of(answer)

    message, *_ = await page.set_proxy(True, "nobody", "direct", "en")
    assert message == "Failed: no account labelled 'nobody'"
    message, *_ = await page.configured_proxy(True, None, "en")  # type: ignore[arg-type]
    assert message.startswith("Failed: no account labelled")


async def test_without_kiro_proxy_the_default_is_no_proxy(runtime: Any) -> None:
    runtime.settings = Settings(admin_key=ADMIN_KEY)
    page = handlers(runtime)
    message, *_ = await page.set_proxy(True, "configured", "", "en")
    assert message == "Proxy of configured: default (KIRO_PROXY unset): no proxy."
    table = accounts_table(runtime, "zh", proxies=True)
    assert shown_proxy(table, "configured", "zh") == "默认（未设置 KIRO_PROXY）：不使用代理"


async def test_only_an_administrators_session_may_add_or_change_a_proxy(runtime: Any) -> None:
    page = handlers(runtime)
    before = proxies(runtime)
    refused = [
        page.add_account(False, TOKEN, "mallory", f"socks5://m:{SECRET}@evil:1080", "en"),
        await page.set_proxy(False, "configured", "socks5://evil:1080", "en"),
        await page.set_proxy(False, "configured", "direct", "en"),
        await page.configured_proxy(False, "configured", "en"),
    ]
    for answer in refused:
        assert answer[0] == t("need_admin", "en")
        assert all(value in (NO_CHANGE, "") for value in answer[1:]), answer
    assert proxies(runtime) == before
    # A session that is not an administrator's: the section's table has no rows for it.
    assert page.relabel_accounts(None, "zh") == {"__type__": "update", "label": "账号及其代理"}
    assert page.relabel_accounts(PageKey("api", ADMIN_KEY[::-1]), "en").get("value") is None
    forged = PageKey("admin", "not-the-admin-key-0123456789")
    assert page.relabel_accounts(forged, "en").get("value") is None
    shown = page.relabel_accounts(PageKey("admin", ADMIN_KEY), "en")["value"]
    assert shown_proxy(shown, "configured") == "socks5h://***@10.0.0.7:1080"


async def test_signing_in_fills_the_accounts_table_and_signing_out_empties_it(
    runtime: Any,
) -> None:
    page = handlers(runtime)
    signed, admin, *_, table = await page.sign_in(ADMIN_KEY, None, "en")
    assert admin is True and signed == PageKey("admin", ADMIN_KEY)
    assert shown_proxy(table, "configured") == "socks5h://***@10.0.0.7:1080"
    *_, table = page.sign_out(None, "en")
    assert isinstance(table, pd.DataFrame) and table.empty


async def test_the_status_table_shows_proxies_only_when_asked(runtime: Any) -> None:
    public = accounts_table(runtime, "en")
    assert t("col_proxy", "en") not in public.columns and "10.0.0.7" not in public.to_csv()
    admin = accounts_table(runtime, "zh", proxies=True)
    assert list(admin.columns)[-1] == "代理"
    assert shown_proxy(admin, "configured", "zh") == "socks5h://***@10.0.0.7:1080"
    assert SECRET not in admin.to_csv()
    runtime.pool.remove_account("configured")
    empty = accounts_table(runtime, "en", proxies=True)
    assert empty.shape == (1, len(public.columns) + 1)
