"""The Blocks layout and its events. Handlers live in the sibling modules; this file wires them.

Session values (``gr.State``, server side, one per browser tab): the language, the visitor's own
token spec, their sign-in (API or admin key) and the admin flag. Every event is private
(``api_visibility="private"``): the page's handlers are not an API, and several take or return
secrets. Private events can still be called over raw HTTP, so each handler checks for itself
who may do what (state values come from the session, never from the caller).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from ki2api.api.auth import SPACE_SETUP_MESSAGE
from ki2api.kiro.accounts.credentials import AccountSpec
from ki2api.kiro.wire.models import ModelCatalog
from ki2api.settings import Settings
from ki2api.store.backup import storage_state
from ki2api.ui import connect, status, usage
from ki2api.ui.access import Playground
from ki2api.ui.guard import Readers
from ki2api.ui.i18n import LANGUAGES, Texts, lang_from_header, t
from ki2api.ui.keys import KeyHandlers, build_key_panel
from ki2api.ui.playground import make_chat_handler
from ki2api.ui.tokens import (
    PageKey,
    TokenHandlers,
    describe_own,
    is_admin,
    sign_in_key,
    using_line,
)

if TYPE_CHECKING:
    from ki2api.runtime import Runtime

PRIVATE: dict[str, Any] = {"api_visibility": "private"}
STATUS_EVERY = 5.0
SERIES_COLORS = {
    t(key, code): color
    for key, color in (("series_latency", "#4f46e5"), ("series_ttft", "#f59e0b"))
    for code in ("en", "zh")
}


def _setup_text(lang: str) -> str:
    if lang == "zh":
        return t("space_setup_title", lang) + "\n\n" + t("space_setup_steps", lang)
    return t("space_setup_title", lang) + "\n\n" + SPACE_SETUP_MESSAGE


def build_page(
    settings: Settings, runtime: Runtime, playground: Playground, readers: Readers
) -> gr.Blocks:
    texts = Texts()
    tokens = TokenHandlers(settings, runtime)
    key_admin = KeyHandlers(settings, runtime)
    key_usage = usage.UsageView(settings, runtime)
    default_models = [m.id for m in ModelCatalog().list()]
    storage = storage_state(settings)  # a Space's disk: it does not change while running

    with gr.Blocks(
        title="Ki2API — OpenAI & Anthropic API for Kiro", analytics_enabled=False
    ) as page:
        lang = gr.State("en")
        own = gr.State(None)  # the visitor's AccountSpec: never leaves the server
        admin = gr.State(False)
        signed = gr.State(None)  # the visitor's sign-in (a PageKey): never leaves the server

        with gr.Row(elem_id="ki-header", equal_height=True):
            gr.Markdown("# 🪁 Ki2API", elem_id="ki-brand")
            language = gr.Radio(
                list(LANGUAGES), value="English", show_label=False, container=False,
                elem_id="ki-lang",
            )  # fmt: skip
        texts.add(gr.Markdown(t("tagline"), elem_id="ki-tagline"), value="tagline")
        if settings.demo:
            texts.add(
                gr.Markdown(t("demo_banner"), elem_id="ki-demo", elem_classes=["ki-banner"]),
                value="demo_banner",
            )
        setup = gr.Markdown(
            _setup_text("en"),
            elem_id="ki-setup",
            elem_classes=["ki-banner"],
            visible=settings.on_space and settings.api_key_is_default,
        )
        no_accounts = gr.Markdown(
            "", elem_id="ki-no-accounts", elem_classes=["ki-banner"], visible=False
        )
        storage_banner = gr.Markdown(
            status.storage_notice(storage, "en"),
            elem_id="ki-storage",
            elem_classes=["ki-banner"],
            visible=storage.ephemeral,
        )

        with gr.Tabs(overflow_behavior="wrap"):  # a phone shows every tab, on two rows
            with gr.Tab("Playground · 试用", id="playground") as playground_tab:
                with gr.Row():
                    with gr.Column(scale=3):
                        chatbot = texts.add(
                            gr.Chatbot(
                                label=t("chat"),
                                placeholder=t("chat_placeholder"),
                                height=440,
                                elem_id="ki-chat",
                                buttons=["copy"],
                                feedback_options=None,
                            ),
                            label="chat",
                            placeholder="chat_placeholder",
                        )
                        with gr.Row(elem_classes=["ki-bottom"]):
                            box = texts.add(
                                gr.Textbox(
                                    show_label=False,
                                    placeholder=t("message_placeholder"),
                                    scale=6,
                                    lines=1,
                                    max_lines=8,
                                    elem_id="ki-message",
                                    autofocus=True,
                                ),
                                placeholder="message_placeholder",
                            )
                            send = texts.add(
                                gr.Button(
                                    t("send"),
                                    variant="primary",
                                    scale=0,
                                    min_width=96,
                                    elem_id="ki-send",
                                ),
                                value="send",
                            )
                            stop = texts.add(
                                gr.Button(
                                    t("stop"),
                                    variant="stop",
                                    scale=0,
                                    min_width=96,
                                    elem_id="ki-stop",
                                ),
                                value="stop",
                            )
                        metrics = gr.Markdown(t("metrics_idle"), elem_id="ki-metrics")
                    with gr.Column(scale=1, min_width=260):
                        model = texts.add(
                            gr.Dropdown(
                                default_models,
                                value=default_models[0],
                                label=t("model"),
                                elem_id="ki-model",
                            ),
                            label="model",
                        )
                        system = texts.add(
                            gr.Textbox(
                                label=t("system"),
                                placeholder=t("system_placeholder"),
                                lines=3,
                                elem_id="ki-system",
                            ),
                            label="system",
                            placeholder="system_placeholder",
                        )
                        thinking = texts.add(gr.Checkbox(label=t("thinking")), label="thinking")
                        use_tools = texts.add(gr.Checkbox(label=t("tools")), label="tools")
                        using = gr.Markdown(
                            using_line(None, "en", None, settings.demo), elem_id="ki-using"
                        )
                        clear = texts.add(gr.Button(t("clear"), size="sm"), value="clear")

            with gr.Tab("Tokens · 令牌", id="tokens") as tokens_tab, gr.Row():
                with gr.Column(scale=1, variant="panel"):
                    texts.add(gr.Markdown(t("own_token_title")), value="own_token_title")
                    texts.add(
                        gr.Markdown(t("own_token_help"), elem_classes=["ki-muted"]),
                        value="own_token_help",
                    )
                    own_box = texts.add(
                        gr.Textbox(label=t("token_box"), type="password", elem_id="ki-own-token"),
                        label="token_box",
                    )
                    with gr.Row():
                        use_btn = texts.add(
                            gr.Button(t("use_token"), variant="primary", elem_id="ki-use-token"),
                            value="use_token",
                        )
                        forget_btn = texts.add(gr.Button(t("forget_token")), value="forget_token")
                    own_status = gr.Markdown(t("no_own_token"), elem_id="ki-own-status")
                with gr.Column(scale=1, variant="panel"):
                    texts.add(gr.Markdown(t("admin_title")), value="admin_title")
                    texts.add(
                        gr.Markdown(t("admin_help"), elem_classes=["ki-muted"]), value="admin_help"
                    )
                    with gr.Row(elem_classes=["ki-bottom"]):
                        admin_box = texts.add(
                            gr.Textbox(
                                label=t("admin_key"),
                                type="password",
                                scale=4,
                                elem_id="ki-admin-key",
                            ),
                            label="admin_key",
                        )
                        sign_in = texts.add(
                            gr.Button(t("sign_in"), scale=0, min_width=100, elem_id="ki-sign-in"),
                            value="sign_in",
                        )
                        sign_out = texts.add(
                            gr.Button(t("sign_out"), scale=0, min_width=100), value="sign_out"
                        )
                    admin_status = gr.Markdown(t("signed_out"), elem_id="ki-admin-status")
                    with gr.Column(visible=False) as admin_panel:
                        new_account = texts.add(
                            gr.Textbox(
                                label=t("new_account"), type="password", elem_id="ki-new-account"
                            ),
                            label="new_account",
                        )
                        with gr.Row(elem_classes=["ki-bottom"]):
                            new_label = texts.add(
                                gr.Textbox(label=t("new_label"), scale=2, elem_id="ki-new-label"),
                                label="new_label",
                            )
                            new_proxy = texts.textbox(
                                "new_proxy",
                                "new_proxy_placeholder",
                                scale=3,
                                elem_id="ki-new-proxy",
                            )
                            add_btn = texts.add(
                                gr.Button(
                                    t("add_account"),
                                    variant="primary",
                                    scale=0,
                                    min_width=130,
                                    elem_id="ki-add",
                                ),
                                value="add_account",
                            )
                        admin_accounts = gr.Dataframe(  # relabelled with its rows
                            label=t("accounts_proxies"),
                            interactive=False,
                            wrap=True,
                            column_widths=["28%", "27%", "45%"],  # a proxy wraps in its cell
                            elem_id="ki-admin-accounts",
                        )
                        with gr.Row(elem_classes=["ki-bottom"]):
                            account = texts.add(
                                gr.Dropdown(
                                    [],
                                    label=t("account"),
                                    scale=3,
                                    elem_id="ki-account",
                                    # The handlers check the label; Gradio's own check would
                                    # print a traceback for each label a caller makes up.
                                    allow_custom_value=True,
                                ),
                                label="account",
                            )
                            refresh_btn = texts.add(
                                gr.Button(t("refresh_account"), scale=0, min_width=130),
                                value="refresh_account",
                            )
                            remove_btn = texts.add(
                                gr.Button(
                                    t("remove_account"), variant="stop", scale=0, min_width=100
                                ),
                                value="remove_account",
                            )
                        with gr.Row(elem_classes=["ki-bottom"]):
                            account_proxy = texts.textbox(
                                "account_proxy",
                                "account_proxy_placeholder",
                                scale=3,
                                elem_id="ki-account-proxy",
                            )
                            set_proxy_btn = texts.button(
                                "set_proxy", scale=0, min_width=110, elem_id="ki-set-proxy"
                            )
                            configured_btn = texts.button(
                                "proxy_configured",
                                scale=0,
                                min_width=110,
                                elem_id="ki-proxy-configured",
                            )
                        texts.add(
                            gr.Markdown(t("proxy_help"), elem_classes=["ki-muted"]),
                            value="proxy_help",
                        )
                        with gr.Row(elem_classes=["ki-bottom"]):
                            aliases_box = texts.add(
                                gr.Textbox(
                                    label=t("aliases"),
                                    placeholder='{"gpt-4o": "claude-sonnet-4-6"}',
                                    scale=3,
                                    elem_id="ki-aliases",
                                ),
                                label="aliases",
                            )
                            aliases_btn = texts.button(
                                "save_aliases", scale=0, min_width=130, elem_id="ki-save-aliases"
                            )
                        admin_msg = gr.Markdown("", elem_id="ki-admin-msg")
            with tokens_tab:  # again: client keys, under both columns, at the tab's full width
                keys = build_key_panel(texts)

            with gr.Tab("Status · 状态", id="status") as status_tab:
                texts.add(gr.Markdown(t("traffic_title")), value="traffic_title")
                summary = gr.Markdown("", elem_id="ki-summary")
                plot = texts.add(
                    gr.ScatterPlot(
                        status.latency_frame_empty(),
                        x="time",
                        y="seconds",
                        x_title=t("plot_x"),
                        y_title=t("plot_y"),
                        color="series",
                        color_title=t("plot_legend"),
                        color_map=SERIES_COLORS,
                        x_lim=status.plot_window(),
                        y_lim=[0, None],
                        x_axis_format="%H:%M",
                        label=t("plot_title"),
                        visible=False,  # until there is a request to show
                        elem_id="ki-plot",  # no fixed height: the axes and legend must fit
                    ),
                    label="plot_title",
                    x_title="plot_x",
                    y_title="plot_y",
                    color_title="plot_legend",
                )
                texts.add(gr.Markdown(t("status_title")), value="status_title")
                table = gr.Dataframe(interactive=False, elem_id="ki-accounts", wrap=True)
                texts.add(gr.Markdown(t("usage_title")), value="usage_title")
                usage_note = texts.add(  # in the visitor's language until the tab renders
                    gr.Markdown(t("usage_sign_in"), elem_id="ki-usage-note"), value="usage_sign_in"
                )
                usage_table = gr.Dataframe(
                    interactive=False, elem_id="ki-usage", wrap=True, visible=False
                )
                usage_plot = texts.add(
                    gr.LinePlot(
                        usage.usage_frame_empty(),
                        x="day",
                        y="credits",
                        x_title=t("usage_plot_x"),
                        y_title=t("usage_plot_y"),
                        color="key",
                        color_title=t("usage_plot_legend"),
                        y_lim=[0, None],
                        x_axis_format="%m-%d",
                        label=t("usage_plot_title"),
                        visible=False,  # until the session may see some usage
                        elem_id="ki-usage-plot",
                    ),
                    label="usage_plot_title",
                    x_title="usage_plot_x",
                    y_title="usage_plot_y",
                    color_title="usage_plot_legend",
                )
                timer = gr.Timer(STATUS_EVERY, active=False)

            with gr.Tab("Connect · 连接", id="connect") as connect_tab:
                connect_intro = gr.Markdown("", elem_id="ki-connect")
                codes = {
                    "curl": gr.Code(language="shell", label="curl", elem_id="ki-code-curl"),
                    "openai": gr.Code(language="python", label="openai", elem_id="ki-code-openai"),
                    "anthropic": gr.Code(language="python", label="anthropic"),
                    "claude_code": gr.Code(
                        language="shell", label="Claude Code", elem_id="ki-code-claude-code"
                    ),
                    "codex": gr.Code(language="shell", label="Codex", elem_id="ki-code-codex"),
                    "opencode": gr.Code(
                        language="json", label="opencode", elem_id="ki-code-opencode"
                    ),
                    "editor": gr.Code(language="yaml", label="editor"),
                }

        # The tabs' first labels name both languages; the visitor's language replaces them.
        for tab, key in (
            (playground_tab, "tab_playground"),
            (tokens_tab, "tab_tokens"),
            (status_tab, "tab_status"),
            (connect_tab, "tab_connect"),
        ):
            texts.add(tab, label=key)
        texts.add(gr.Markdown(t("footer"), elem_id="ki-footer"), value="footer")

        # --- rendering that depends on the language / the request ------------------------

        def render_status(lang_code: str, who: PageKey | None) -> tuple[str, Any, Any]:
            rt = runtime
            frame = status.latency_frame(rt, lang_code)
            return (
                status.traffic_summary(rt, lang_code),
                # No requests: the summary says so, rather than an empty chart.
                gr.update(value=frame, x_lim=status.plot_window(), visible=not frame.empty),
                # The accounts' proxies: an administrator's to see.
                status.accounts_table(rt, lang_code, proxies=is_admin(who, settings)),
            )

        def render_connect(lang_code: str, request: gr.Request | None) -> list[Any]:
            rt = runtime
            models = [m.id for m in rt.catalog.list()]
            headers = dict(request.headers) if request is not None else None
            base = connect.base_url(settings, headers)
            snippets = connect.snippets(base, connect.shown_key(settings), models[0], lang_code)
            labels = {k: t(f"snippet_{k}", lang_code) for k in codes}
            return [connect.intro(settings, base, models, lang_code)] + [
                gr.update(value=snippets[k], label=labels[k]) for k in codes
            ]

        def render_all(
            choice: str, spec: AccountSpec | None, who: PageKey | None, request: gr.Request
        ) -> list[Any]:
            if choice in LANGUAGES:
                lang_code = LANGUAGES[choice]
            else:  # page load: the browser's preferred language
                lang_code = lang_from_header(request.headers.get("accept-language"))
            name = next(k for k, v in LANGUAGES.items() if v == lang_code)
            models = [m.id for m in runtime.catalog.list()]
            empty = not runtime.pool.has_accounts()
            return [
                lang_code,
                name,
                _setup_text(lang_code),
                gr.update(  # rendered on each load: an account may have been added since
                    value=t("no_accounts_banner", lang_code), visible=empty
                ),
                status.storage_notice(storage, lang_code),
                t("metrics_idle", lang_code),
                using_line(spec, lang_code, who, settings.demo, empty),
                describe_own(spec, lang_code),
                t(sign_in_key(who), lang_code),
                gr.update(choices=models),
                tokens.relabel_accounts(who, lang_code),
                *render_status(lang_code, who),
                *render_connect(lang_code, request),
                *texts.updates(lang_code),
            ]

        all_outputs = [
            lang,
            language,
            setup,
            no_accounts,
            storage_banner,
            metrics,
            using,
            own_status,
            admin_status,
            model,
            admin_accounts,
            summary,
            plot,
            table,
            connect_intro,
            *codes.values(),
            *texts.components,
        ]
        page.load(render_all, [gr.State(""), own, signed], all_outputs, **PRIVATE)
        # The usage by key (Status) and the keys' table (admin) follow, without a spinner.
        usage_io = [usage_note, usage_table, usage_plot]
        quiet: dict[str, Any] = {"show_progress": "hidden", **PRIVATE}
        language.input(render_all, [language, own, signed], all_outputs, **PRIVATE).then(
            key_admin.relabel, [signed, lang], [keys.table], **quiet
        ).then(key_usage.render, [signed, lang], usage_io, **quiet)

        # --- playground ------------------------------------------------------------------

        chat = make_chat_handler(runtime, playground, readers)
        chat_io: dict[str, Any] = {
            "fn": chat,
            "inputs": [box, chatbot, model, system, thinking, use_tools, own, signed, lang],
            "outputs": [chatbot, box, metrics, own],
            "show_progress": "minimal",
            **PRIVATE,
        }
        submitted = box.submit(**chat_io)
        clicked = send.click(**chat_io)
        stop.click(None, None, None, cancels=[submitted, clicked], **PRIVATE)
        clear.click(
            lambda code: ([], t("metrics_idle", code)), [lang], [chatbot, metrics], **PRIVATE
        )

        # --- tokens ----------------------------------------------------------------------

        use_io = [own, own_status, own_box, using]
        use_in = [own_box, own, signed, lang]
        use_btn.click(tokens.use_token, use_in, use_io, **PRIVATE)
        own_box.submit(tokens.use_token, use_in, use_io, **PRIVATE)
        forget_btn.click(tokens.forget_token, [signed, lang], [own, own_status, using], **PRIVATE)

        # One sign-in for the pool (API key) and the admin functions (admin key).
        sign_in_io = [
            signed, admin, admin_status, admin_box, admin_panel, account, using, admin_accounts
        ]  # fmt: skip
        # Then the client keys: shown to an administrator, hidden and emptied for anyone else.
        keys_io = [keys.panel, *keys.results]
        for signing_in in (sign_in.click, admin_box.submit):
            signing_in(tokens.sign_in, [admin_box, own, lang], sign_in_io, **PRIVATE).then(
                key_admin.show, [signed, lang], keys_io, **PRIVATE
            )
        sign_out_io = [signed, admin, admin_status, admin_panel, using, admin_accounts]
        sign_out.click(tokens.sign_out, [own, lang], sign_out_io, **PRIVATE).then(
            key_admin.show, [signed, lang], keys_io, **PRIVATE
        )
        add_btn.click(
            tokens.add_account,
            [admin, new_account, new_label, new_proxy, lang],
            [admin_msg, new_account, new_proxy, account, admin_accounts],
            **PRIVATE,
        )
        account_io = [admin_msg, account, admin_accounts]
        refresh_btn.click(tokens.refresh_account, [admin, account, lang], account_io, **PRIVATE)
        remove_btn.click(tokens.remove_account, [admin, account, lang], account_io, **PRIVATE)
        proxy_io = [admin_msg, account_proxy, account, admin_accounts]
        set_proxy_btn.click(
            tokens.set_proxy, [admin, account, account_proxy, lang], proxy_io, **PRIVATE
        )
        account_proxy.submit(
            tokens.set_proxy, [admin, account, account_proxy, lang], proxy_io, **PRIVATE
        )
        configured_btn.click(tokens.configured_proxy, [admin, account, lang], proxy_io, **PRIVATE)
        aliases_btn.click(
            tokens.save_aliases, [admin, aliases_box, lang], [admin_msg, aliases_box], **PRIVATE
        )

        # --- client keys (admin) ---------------------------------------------------------

        keys.create.click(key_admin.create, [signed, *keys.form, lang], keys.results, **PRIVATE)
        keys.save.click(
            key_admin.save, [signed, keys.pick, *keys.form, lang], keys.results, **PRIVATE
        )
        keys.revoke.click(
            key_admin.revoke,
            [signed, keys.pick, lang, keys.revoke_armed],
            [*keys.results, keys.revoke_armed],
            **PRIVATE,
        )
        keys.refresh.click(key_admin.refresh, [signed, keys.pick, lang], keys.results, **PRIVATE)
        keys.pick.input(key_admin.pick, [signed, keys.pick], keys.form, **PRIVATE)

        # --- status: refresh while the tab is open ---------------------------------------

        status_io = [summary, plot, table]
        timer.tick(render_status, [lang, signed], status_io, show_progress="hidden", **PRIVATE)
        timer.tick(key_usage.render, [signed, lang], usage_io, **quiet)
        status_tab.select(
            lambda code, who: (*render_status(code, who), gr.Timer(active=True)),
            [lang, signed],
            [*status_io, timer],
            **quiet,  # the tab's values are replaced in place: no spinner over them
        ).then(key_usage.render, [signed, lang], usage_io, **quiet)
        for other in (playground_tab, tokens_tab, connect_tab):
            other.select(lambda: gr.Timer(active=False), None, [timer], **PRIVATE)
    return page  # type: ignore[no-any-return]
