"""The page's layout and words in headless Chromium, as a newcomer meets it on a laptop and a phone.

Every tab, in both languages, at 390x844 (a phone) and 1280x900: nothing wider than the screen
(tables and code scroll inside their own box), the tab bar wraps, Send stays on screen, the
plot's axis title is inside the plot, the line numbers of the Connect snippets sit on their
lines; in Chinese, no English word outside a list of names. Screenshots of every tab go to
``test-artifacts/`` (not tracked). Without a Kiro account the page says so, and a failed chat
shows its error once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ki2api.app import create_app
from ki2api.pipeline.stats import RequestRecord
from ki2api.settings import Settings
from ki2api.simulator import http_error
from tests.servers import ServerThread
from tests.test_ui_browser import ARGS, CHROMIUM

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SIZES = {"phone": (390, 844), "laptop": (1280, 900)}
LANGUAGES = {"en": "English", "zh": "简体中文"}
TABS = ("playground", "tokens", "status", "connect")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium"),
    pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning"),
]
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

# Elements wider than the screen that no scrolling box of their own holds.
UNBOXED_OVERFLOW = """() => {
  const width = innerWidth, found = [];
  for (const el of document.querySelectorAll('gradio-app *')) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.height === 0 || box.right <= width + 1) continue;
    let up = el.parentElement, boxed = false;
    while (up && up.tagName !== 'GRADIO-APP') {
      const overflow = getComputedStyle(up).overflowX;
      if ((overflow === 'auto' || overflow === 'scroll')
          && up.getBoundingClientRect().right <= width + 1) { boxed = true; break; }
      up = up.parentElement;
    }
    if (!boxed) found.push(`${el.tagName}#${el.id}.${el.className} right=${Math.round(box.right)}`);
  }
  return found.slice(0, 10);
}"""

# Block labels whose words run under their block's buttons (copy, download, full screen).
LABELS_UNDER_BUTTONS = """() => {
  const found = [];
  for (const buttons of document.querySelectorAll('gradio-app .icon-button-wrapper')) {
    const b = buttons.getBoundingClientRect();
    const label = buttons.parentElement && buttons.parentElement.querySelector(':scope > label');
    if (!label || b.width === 0) continue;
    const range = document.createRange();
    range.selectNodeContents(label);
    for (const r of range.getClientRects()) {
      if (r.width > 0 && r.left < b.right && r.right > b.left && r.top < b.bottom
          && r.bottom > b.top) { found.push(label.textContent.trim()); break; }
    }
  }
  return found;
}"""

# Line numbers against the lines they number, in every code editor on the page.
GUTTER_OFFSETS = """() => [...document.querySelectorAll('.cm-editor')].map(editor => {
  const numbers = [...editor.querySelectorAll('.cm-lineNumbers .cm-gutterElement')]
    .filter(e => e.textContent.trim() !== '' && getComputedStyle(e).visibility !== 'hidden');
  const lines = [...editor.querySelectorAll('.cm-content .cm-line')];
  return numbers.map((n, i) => lines[i] ?
    Math.abs(n.getBoundingClientRect().top - lines[i].getBoundingClientRect().top) : 0);
})"""

# The comments of the Connect snippets: prose, in the visitor's language.
SNIPPET_COMMENTS = """() => [...document.querySelectorAll('.cm-editor .cm-line')]
  .map(line => line.textContent.trim()).filter(text => text.startsWith('#'))"""

# Text a visitor can read: visible text nodes outside code, inputs and screen-reader labels.
VISIBLE_TEXT = """() => {
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!node.textContent.trim() || !el) continue;
    if (el.closest('code, pre, .cm-editor, textarea, input, script, style, svg')) continue;
    const box = el.getBoundingClientRect(), style = getComputedStyle(el);
    if (box.width <= 1 || box.height <= 1 || style.visibility === 'hidden') continue;
    if (el.closest('.sr-only, .visually-hidden, [aria-hidden="true"]')) continue;
    out.push(node.textContent.trim());
  }
  return out;
}"""

# Names that stay in English in the Chinese page: products (a Hugging Face Space, Claude
# Code), SDKs and editors, the example tools, percentiles, the name of the other language, the
# demo account's label. Code spans, file names, VARIABLE_NAMES, masked tokens ("…oken") and
# model ids are skipped as well.
ALLOWED_ENGLISH = {
    "Ki2API", "Kiro", "Claude", "OpenAI", "Anthropic", "SDK", "API", "Gradio", "Python",
    "curl", "openai", "anthropic", "Continue", "Cline", "Cursor", "English", "get_weather",
    "get_time", "p50", "p95", "env", "Space", "JSON", "opus", "sonnet", "haiku",
    "Code", "Codex", "CLI", "opencode", "Responses",  # agents, and the API Codex speaks
    "export", "codex",  # the shell line that starts Codex
    "tokens", "UTC",  # as Chinese AI tools write them (token counts; the keys' times)
}  # fmt: skip
# Kiro's and the gateway's own messages in the Status table are quoted verbatim (“…”) next to
# their translated cause.
NOT_WORDS = re.compile(
    r"[~$][\w/.{}-]+|[\w./-]+\.(?:json|yaml|toml|md)|\bx-[\w-]+|\b[a-z]+_[a-z_]+\b"  # paths, ids
    r"|\bki2api-key-\d+\b|\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b|\bClaude Code\b|“[^”]*”?"
    r"|(?:\bki2-)?…[\w-]+"  # masked tokens and keys
)
MODEL_ID = re.compile(r"^(claude|auto)\b")


def _alone(tmp_path_factory: pytest.TempPathFactory, **values: Any) -> Settings:
    """Settings for a server of its own: no login file, and a data folder no other module's
    server shares (keys and accounts added there are kept)."""
    folder = tmp_path_factory.mktemp("layout-home")
    return Settings(
        kiro_token_file=folder / "kiro-auth-token.json", data_dir=folder / "data", **values
    )


ADMIN_KEY = "layout-admin-key-0123456789"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A demo with an ADMIN_KEY (the alias editor can be shown), one answered request and one
    model cooling down (the Status tab's cooldown column has something to say)."""
    settings = _alone(tmp_path_factory, demo=True, admin_key=ADMIN_KEY)
    app = create_app(settings)
    with ServerThread(app) as server:
        headers = {"authorization": f"Bearer {settings.api_key}"}
        chat = httpx.post(  # something for the Status tab to show
            f"{server.url}/v1/chat/completions",
            headers=headers,
            json={"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "Hi"}]},
            timeout=30,
        )
        assert chat.status_code == 200
        busy = http_error(
            429,
            "I am experiencing high traffic, please try again shortly.",
            "INSUFFICIENT_MODEL_CAPACITY",
            {"retry-after": "600"},
        )
        app.runtime.simulator.state.fail_next(1, busy)
        cooled = httpx.post(
            f"{server.url}/v1/chat/completions",
            headers=headers,
            json={"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "Hi"}]},
            timeout=30,
        )
        assert cooled.status_code == 429
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


def open_page(browser: Any, url: str, size: str, lang: str = "en", locale: str = "en-US") -> Any:
    """The page at a size; ``lang`` other than the browser's is picked with the switch."""
    width, height = SIZES[size]
    context = browser.new_context(viewport={"width": width, "height": height}, locale=locale)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(url + "/")
    expect(page.locator("#ki-message textarea")).to_be_visible()
    if lang == "zh":
        if not locale.startswith("zh"):
            page.locator("#ki-lang").get_by_text(LANGUAGES[lang]).click()
        expect(page.locator("#ki-send")).to_have_text("发送")
    return page


def sign_in_as_admin(page: Any, lang: str) -> None:
    """The sign-in box, then the admin panel with the alias editor and its message."""
    show_tab(page, "tokens")
    key_box = page.locator("#ki-admin-key input")
    key_box.fill(ADMIN_KEY)
    expect(key_box).to_have_value(ADMIN_KEY)
    key_box.press("Tab")  # Gradio takes the value on its change event, before the click
    page.locator("#ki-sign-in").click()
    expect(page.locator("#ki-aliases")).to_be_visible()
    page.locator("#ki-aliases textarea, #ki-aliases input").first.fill(
        '{"gpt-4o": "claude-sonnet-4-6", "a-very-long-alias-name-for-a-phone-screen": "auto"}'
    )
    page.locator("#ki-save-aliases").click()
    expect(page.locator("#ki-admin-msg")).to_contain_text("2")


def make_key(page: Any, name: str) -> None:
    """A client key made in the admin section: its box, shown once, is open afterwards."""
    page.locator("#ki-key-name textarea").fill(name)
    page.locator("#ki-key-rpm input").fill("60")
    page.locator("#ki-key-create").click()
    expect(page.locator("#ki-key-secret textarea")).to_have_value(re.compile("^ki2-"))


def show_tab(page: Any, tab: str) -> None:
    page.locator(f"button[role=tab][data-tab-id={tab}]").click()
    page.wait_for_timeout(700)  # let the tab's components draw (the plot, the editors)


def shoot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("size", SIZES)
def test_every_tab_fits_the_screen(demo: ServerThread, browser: Any, size: str, lang: str) -> None:
    page = open_page(browser, demo.url, size, lang)
    width = SIZES[size][0]
    sign_in_as_admin(page, lang)
    make_key(page, f"key_{size}_{lang}")  # the key section with a new key's box open
    for tab in TABS:
        show_tab(page, tab)
        shoot(page, f"{size}-{lang}-{tab}")
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= page.evaluate("innerWidth"), (tab, scroll_width)
        assert page.evaluate(UNBOXED_OVERFLOW) == [], tab
        assert page.evaluate(LABELS_UNDER_BUTTONS) == [], tab
        for button in page.locator("button[role=tab]").all():  # the tab bar wraps
            box = button.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, tab
        inside = {
            "playground": ("#ki-send",),
            "tokens": (
                "#ki-sign-in",
                "#ki-new-proxy",
                "#ki-admin-accounts",
                "#ki-account-proxy",
                "#ki-set-proxy",
                "#ki-proxy-configured",
                "#ki-aliases",
                "#ki-save-aliases",
                "#ki-admin-msg",
                "#ki-keys",
                "#ki-key-create",
                "#ki-key-secret",
            ),
            "status": ("#ki-accounts", "#ki-usage", "#ki-usage-plot"),
            "connect": ("#ki-code-claude-code",),
        }
        for part in inside[tab]:
            box = page.locator(part).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, part
        if tab == "status":
            expect(page.locator("#ki-accounts")).to_contain_text("claude-haiku-4.5")
        if tab == "status":  # the axis titles and the legend are inside the plot's box
            plot = page.locator("#ki-plot").bounding_box()
            assert plot is not None
            titles = page.locator("#ki-plot svg g.role-axis-title text, #ki-plot g.role-legend")
            assert titles.count() >= 2
            for title in titles.all():
                label = title.bounding_box()
                assert label is not None and label["x"] >= plot["x"] - 1
                assert label["y"] + label["height"] <= plot["y"] + plot["height"] + 1, "clipped"
    page.context.close()


@pytest.mark.parametrize("size", SIZES)
def test_connect_line_numbers_sit_on_their_lines(
    demo: ServerThread, browser: Any, size: str
) -> None:
    """Every snippet, also those below the fold that the browser has not scrolled to."""
    page = open_page(browser, demo.url, size)
    show_tab(page, "connect")
    offsets = page.evaluate(GUTTER_OFFSETS)
    assert len(offsets) >= 4 and all(offsets), offsets
    assert max(max(o) for o in offsets) <= 1.5, offsets
    page.context.close()


@pytest.mark.parametrize(("size", "locale"), [("phone", "zh-CN"), ("laptop", "en-US")])
def test_chinese_page_has_no_stray_english(
    demo: ServerThread, browser: Any, size: str, locale: str
) -> None:
    """Chinese from the browser's language (phone) and from the switch (laptop)."""
    page = open_page(browser, demo.url, size, "zh", locale)
    sign_in_as_admin(page, "zh")  # the admin panel's words and the alias message too
    make_key(page, f"key_zh_{size}")  # the key section and its new key (a name like an id)
    stray: dict[str, set[str]] = {}
    for tab in TABS:
        show_tab(page, tab)
        shown = page.evaluate(VISIBLE_TEXT)
        if tab == "connect":
            comments = page.evaluate(SNIPPET_COMMENTS)
            assert len(comments) >= 5, comments
            shown += comments
        for text in shown:
            if MODEL_ID.match(text):
                continue
            for word in re.findall(r"[A-Za-z][A-Za-z0-9_]+", NOT_WORDS.sub(" ", text)):
                if word not in ALLOWED_ENGLISH:
                    stray.setdefault(tab, set()).add(word)
    assert stray == {}, sorted((k, sorted(v)) for k, v in stray.items())
    page.context.close()


def test_status_plot_is_readable_from_one_point_to_a_thousand(
    browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = _alone(tmp_path_factory, demo=True)
    app = create_app(settings)
    with ServerThread(app) as server:
        page = open_page(browser, server.url, "phone")
        show_tab(page, "status")  # no request yet: a sentence, not an empty chart
        expect(page.locator("#ki-summary")).to_contain_text("No requests yet")
        expect(page.locator("#ki-plot")).to_be_hidden()
        page.context.close()
        stats = app.runtime.stats
        now = time.time()
        stats.add(RequestRecord(now - 30, "claude-sonnet-4-6", "env", 0.8, 0.2, 40, None, True))
        for size in SIZES:
            page = open_page(browser, server.url, size)
            show_tab(page, "status")
            check_plot(page, points=2)  # one request: its total and its first token
            shoot(page, f"{size}-en-status-1-request")
            page.context.close()
        for i in range(999):
            latency = 0.5 + (i % 37) / 10
            stats.add(
                RequestRecord(now - 800 + i * 0.75, "m", "env", latency, latency / 3, 9, None, True)
            )
        page = open_page(browser, server.url, "laptop")
        show_tab(page, "status")
        check_plot(page, points=2000)
        shoot(page, "laptop-en-status-1000-requests")
        page.context.close()


def check_plot(page: Any, points: int) -> None:
    plot = page.locator("#ki-plot")
    expect(plot.locator("svg.marks")).to_be_visible()
    symbols = plot.locator("svg.marks g.mark-symbol.role-mark path")
    expect(symbols).to_have_count(points, timeout=15_000)
    box = symbols.first.bounding_box()
    assert box is not None and box["width"] > 2  # a visible mark, not a zero-length line
    texts = [t.strip() for t in plot.locator("svg.marks text").all_text_contents()]
    ticks = [t for t in texts if re.fullmatch(r"\d\d:\d\d", t)]
    assert len(ticks) >= 2, texts  # clock times on the x axis
    assert not any(re.fullmatch(r"-?0\.0\d{4,}", t) for t in texts), texts
    assert "series" not in texts and "latency" in texts, texts  # the legend's title
    outer = plot.bounding_box()
    assert outer is not None
    for label in plot.locator("svg.marks g.role-axis-label text").all():
        box = label.bounding_box()
        if box is not None and label.evaluate("e => getComputedStyle(e).opacity") != "0":
            assert outer["x"] <= box["x"] and box["x"] + box["width"] <= outer["x"] + outer["width"]


@pytest.fixture(scope="module")
def no_login(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = _alone(tmp_path_factory)
    with ServerThread(create_app(settings)) as server:
        yield server


@pytest.mark.parametrize("lang", LANGUAGES)
def test_without_an_account_the_page_says_so(
    no_login: ServerThread, browser: Any, lang: str
) -> None:
    page = open_page(browser, no_login.url, "phone", lang)
    banner = page.locator("#ki-no-accounts")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("--demo")
    expect(banner).to_contain_text("Tokens" if lang == "en" else "令牌")
    # Not signed in either: the chat says what helps here (a token of one's own, or --demo;
    # signing in would not), once, in the visitor's language.
    page.locator("#ki-message textarea").fill("Hello?")
    page.locator("#ki-send").click()
    chat = page.locator("#ki-chat")
    said = "No Kiro account is configured" if lang == "en" else "尚未配置 Kiro 账号"
    expect(chat).to_contain_text(said)
    page.wait_for_timeout(500)  # the last update
    text = chat.inner_text()
    assert text.count(said) == 1, text
    assert "--demo" in text and ("Tokens tab" if lang == "en" else "令牌") in text, text
    assert "Sign in" not in text, text
    using = page.locator("#ki-using")  # the line under the settings agrees with the chat
    expect(using).to_contain_text("Tokens" if lang == "en" else "令牌")
    assert "sign in" not in using.inner_text().lower() and "登录" not in using.inner_text()
    shoot(page, f"phone-{lang}-no-account")
    page.context.close()
