"""Client keys in the page's admin section: the table, create (the key shown once), update
(limits, models, expiry, enabled) and revoke, through :class:`ki2api.teams.manage.KeyAdmin`.

Every handler checks the caller's own session for the admin sign-in (:func:`is_admin`): these
events can be called over raw HTTP by anyone who loads the page. A new key's secret is the
create event's output and nothing else's: never in a table, a message, a ``gr.State`` or a
log. Gradio keeps the last value of each output in its copy of the session's page, so the next
action on keys, or signing out, writes an empty box over it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from ki2api.model.errors import GatewayError
from ki2api.settings import Settings
from ki2api.ui.i18n import Texts, t
from ki2api.ui.tokens import PageKey, is_admin

if TYPE_CHECKING:
    from ki2api.runtime import Runtime

REVOKE_CONFIRM_SECONDS = 10.0  # a second click on Revoke within this, on the same key, revokes
STATUS_ICONS = {"active": "🟢", "disabled": "⏸", "expired": "⌛", "revoked": "⛔"}
TABLE_COLUMNS = (  # usage first: what an administrator looks for, before the table scrolls
    "key_col_name",
    "key_col_key",
    "key_col_status",
    "key_col_today",
    "key_col_month",
    "key_col_per_day",
    "key_col_per_month",
    "key_col_rpm",
    "key_col_tpm",
    "key_col_models",
    "key_col_expires",
    "key_col_last_used",
    "key_col_created",
)


def amount(value: float) -> str:
    """A count of credits or tokens, short: ``1,234``, ``12.35``, ``0.00312``."""
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def credits_text(credits: float, estimated: float) -> str:
    """Credits with the estimated ones marked: ``1.5``, ``≈0.42`` (all estimated), ``1.5 (≈0.3)``
    (partly: the estimated part in brackets)."""
    if estimated <= 0:
        return amount(credits)
    if estimated >= credits * 0.9999:
        return f"≈{amount(credits)}"
    return f"{amount(credits)} (≈{amount(estimated)})"


def usage_cell(usage: dict[str, Any], lang: str) -> str:
    tokens = usage["input_tokens"] + usage["output_tokens"]
    return t(
        "usage_cell",
        lang,
        requests=usage["requests"],
        tokens=amount(tokens),
        credits=credits_text(usage["credits"], usage["credits_estimated"]),
    )


def shown_time(iso: str | None, none: str = "—") -> str:
    """``2026-12-31 18:00`` (UTC: the column says so) from the admin data's ISO time."""
    return none if iso is None else iso.replace("T", " ")[:16]


def _limit(value: float | None) -> str:
    return "—" if value is None else amount(value)


def keys_table(keys: list[dict[str, Any]], lang: str) -> pd.DataFrame:
    """The admin's table of keys (``KeyAdmin.list_keys``): masked keys, limits, usage."""
    rows = [
        [
            key["name"],
            key["key"],  # masked: ki2-…abcd
            f"{STATUS_ICONS.get(key['status'], '')} {t('key_status_' + key['status'], lang)}",
            usage_cell(key["usage"]["today"], lang),
            usage_cell(key["usage"]["month"], lang),
            _limit(key["credits_per_day"]),
            _limit(key["credits_per_month"]),
            _limit(key["rpm"]),
            _limit(key["tpm"]),
            ", ".join(key["models"]) or t("key_all_models", lang),
            shown_time(key["expires_at"], t("key_no_expiry", lang)),
            shown_time(key["last_used_at"], t("key_never", lang)),
            shown_time(key["created_at"]),
        ]
        for key in keys
    ]
    if not rows:
        rows.append([t("no_keys", lang)] + [""] * (len(TABLE_COLUMNS) - 1))
    return pd.DataFrame(rows, columns=[t(c, lang) for c in TABLE_COLUMNS])


def key_choices(keys: list[dict[str, Any]], selected: str | None = None) -> Any:
    """The picker's choices: ``alice · ki2-…abcd`` for each live key, its id as the value."""
    choices = [(f"{k['name']} · {k['key']}", k["id"]) for k in keys]
    value = selected if selected in {k["id"] for k in keys} else None
    return gr.update(choices=choices, value=value)


def key_fields(
    name: str,
    models: str,
    rpm: float | None,
    tpm: float | None,
    per_day: float | None,
    per_month: float | None,
    expires: str,
    enabled: bool,
) -> dict[str, Any]:
    """The form's values as ``KeyAdmin``'s fields (it checks them). A limit of 0 (what an
    empty number box sends) is no limit; the expiry is a date or time (ISO 8601), or a number
    of days from now."""
    fields: dict[str, Any] = {
        "name": (name or "").strip(),
        "models": models or "",
        "rpm": rpm or None,
        "tpm": tpm or None,
        "credits_per_day": per_day or None,
        "credits_per_month": per_month or None,
        "enabled": bool(enabled),
    }
    text = (expires or "").strip()
    try:
        fields["expires_in_days"] = float(text)
    except ValueError:
        fields["expires_at"] = text or None
    return fields


@dataclass
class KeyPanel:
    """The key management's components (built inside the Tokens tab)."""

    panel: gr.Column  # shown to administrators only
    table: gr.Dataframe
    pick: gr.Dropdown
    name: gr.Textbox
    models: gr.Textbox
    rpm: gr.Number
    tpm: gr.Number
    per_day: gr.Number
    per_month: gr.Number
    expires: gr.Textbox
    enabled: gr.Checkbox
    create: gr.Button
    save: gr.Button
    revoke: gr.Button
    revoke_armed: gr.State  # (key, when) of a first click on Revoke, awaiting the second
    refresh: gr.Button
    message: gr.Markdown
    secret_panel: gr.Column
    secret: gr.Textbox

    @property
    def form(self) -> list[Any]:
        return [
            self.name,
            self.models,
            self.rpm,
            self.tpm,
            self.per_day,
            self.per_month,
            self.expires,
            self.enabled,
        ]

    @property
    def results(self) -> list[Any]:
        """What each action on keys updates: message, table, picker, the new key's box."""
        return [self.message, self.table, self.pick, self.secret_panel, self.secret]


def build_key_panel(texts: Texts) -> KeyPanel:
    def number(label: str, elem_id: str, precision: int | None) -> gr.Number:
        box = gr.Number(
            None, label=t(label), precision=precision, minimum=0, min_width=120, elem_id=elem_id
        )
        return texts.add(box, label=label)  # type: ignore[no-any-return]

    with gr.Column(visible=False, variant="panel", elem_id="ki-keys-panel") as panel:
        texts.add(gr.Markdown(t("keys_title")), value="keys_title")
        texts.add(gr.Markdown(t("keys_help"), elem_classes=["ki-muted"]), value="keys_help")
        table = gr.Dataframe(interactive=False, elem_id="ki-keys", wrap=True)
        texts.add(
            gr.Markdown(t("credits_legend"), elem_classes=["ki-muted"]), value="credits_legend"
        )
        with gr.Row(elem_classes=["ki-bottom"]):
            pick = texts.add(
                gr.Dropdown(
                    [],
                    value=None,
                    label=t("key_pick"),
                    scale=3,
                    elem_id="ki-key-pick",
                    # The handlers check the key (an id, or a name typed in); Gradio's own check
                    # would print a traceback for each value a caller makes up.
                    allow_custom_value=True,
                ),
                label="key_pick",
            )
            refresh = texts.add(
                gr.Button(t("key_refresh"), scale=0, min_width=100, elem_id="ki-key-refresh"),
                value="key_refresh",
            )
        with gr.Row():
            name = texts.add(
                gr.Textbox(label=t("key_name"), max_length=64, elem_id="ki-key-name"),
                label="key_name",
            )
            models = texts.add(
                gr.Textbox(
                    label=t("key_models"),
                    placeholder="claude-sonnet-*, claude-haiku-*",
                    elem_id="ki-key-models",
                ),
                label="key_models",
            )
            expires = texts.add(
                gr.Textbox(
                    label=t("key_expires"),
                    placeholder=t("key_expires_placeholder"),
                    elem_id="ki-key-expires",
                ),
                label="key_expires",
                placeholder="key_expires_placeholder",
            )
        with gr.Row(elem_classes=["ki-bottom"]):
            rpm = number("key_rpm", "ki-key-rpm", 0)
            tpm = number("key_tpm", "ki-key-tpm", 0)
            per_day = number("key_per_day", "ki-key-per-day", None)
            per_month = number("key_per_month", "ki-key-per-month", None)
            enabled = texts.add(
                gr.Checkbox(True, label=t("key_enabled"), elem_id="ki-key-enabled"),
                label="key_enabled",
            )
        with gr.Row():
            create = texts.add(
                gr.Button(t("key_create"), variant="primary", elem_id="ki-key-create"),
                value="key_create",
            )
            save = texts.add(gr.Button(t("key_save"), elem_id="ki-key-save"), value="key_save")
            revoke = texts.add(
                gr.Button(t("key_revoke"), variant="stop", elem_id="ki-key-revoke"),
                value="key_revoke",
            )
        revoke_armed = gr.State(None)
        message = gr.Markdown("", elem_id="ki-keys-msg")
        with gr.Column(visible=False, elem_id="ki-key-new") as secret_panel:
            texts.add(gr.Markdown(t("key_shown_once")), value="key_shown_once")
            secret = texts.add(
                gr.Textbox(
                    label=t("new_key_secret"),
                    interactive=False,
                    buttons=["copy"],
                    elem_id="ki-key-secret",
                ),
                label="new_key_secret",
            )
    return KeyPanel(
        panel=panel,
        table=table,
        pick=pick,
        name=name,
        models=models,
        rpm=rpm,
        tpm=tpm,
        per_day=per_day,
        per_month=per_month,
        expires=expires,
        enabled=enabled,
        create=create,
        save=save,
        revoke=revoke,
        revoke_armed=revoke_armed,
        refresh=refresh,
        message=message,
        secret_panel=secret_panel,
        secret=secret,
    )


HIDDEN = gr.update(visible=False)


class KeyHandlers:
    """The admin section's actions on client keys; each answers (message, table, picker, the
    new key's panel, the new key) unless it says otherwise."""

    def __init__(
        self, settings: Settings, runtime: Runtime, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self._clock = clock

    def _refused(self, lang: str) -> tuple[Any, ...]:
        return t("need_admin", lang), gr.update(), gr.update(), HIDDEN, ""

    async def _listing(
        self, message: str, lang: str, selected: str | None = None, secret: str = ""
    ) -> tuple[Any, ...]:
        keys = await self.runtime.keys.list_keys()
        panel = gr.update(visible=bool(secret))
        return message, keys_table(keys, lang), key_choices(keys, selected), panel, secret

    async def show(self, signed: PageKey | None, lang: str) -> tuple[Any, ...]:
        """After a sign-in or sign-out: the section, filled for an administrator, else hidden
        and emptied. Returns (section, *results)."""
        if not is_admin(signed, self.settings):
            empty = pd.DataFrame()
            return HIDDEN, "", empty, gr.update(choices=[], value=None), HIDDEN, ""
        return gr.update(visible=True), *await self._listing("", lang)

    async def relabel(self, signed: PageKey | None, lang: str) -> Any:
        """The table in the visitor's language (a language switch: the new key's box stays as
        it is)."""
        if not is_admin(signed, self.settings):
            return gr.update()
        return keys_table(await self.runtime.keys.list_keys(), lang)

    async def refresh(self, signed: PageKey | None, ref: str | None, lang: str) -> tuple[Any, ...]:
        if not is_admin(signed, self.settings):
            return self._refused(lang)
        return await self._listing("", lang, ref)

    async def pick(self, signed: PageKey | None, ref: str | None) -> tuple[Any, ...]:
        """The picked key's settings, into the form (for Save)."""
        if not is_admin(signed, self.settings) or not ref:
            return tuple(gr.update() for _ in range(8))
        try:
            key = await self.runtime.keys.get(ref)
        except GatewayError:
            return tuple(gr.update() for _ in range(8))
        return (
            key["name"],
            ", ".join(key["models"]),
            key["rpm"],
            key["tpm"],
            key["credits_per_day"],
            key["credits_per_month"],
            key["expires_at"] or "",
            key["enabled"],
        )

    async def create(
        self,
        signed: PageKey | None,
        name: str,
        models: str,
        rpm: float | None,
        tpm: float | None,
        per_day: float | None,
        per_month: float | None,
        expires: str,
        enabled: bool,
        lang: str,
    ) -> tuple[Any, ...]:
        if not is_admin(signed, self.settings):
            return self._refused(lang)
        fields = key_fields(name, models, rpm, tpm, per_day, per_month, expires, enabled)
        try:
            made = await self.runtime.keys.create(fields)
        except GatewayError as exc:
            return await self._listing(t("failed", lang, why=exc.message), lang)
        secret = made.pop("secret")
        said = t("key_created", lang, name=made["name"], masked=made["key"])
        return await self._listing(said, lang, made["id"], secret)

    async def save(
        self,
        signed: PageKey | None,
        ref: str | None,
        name: str,
        models: str,
        rpm: float | None,
        tpm: float | None,
        per_day: float | None,
        per_month: float | None,
        expires: str,
        enabled: bool,
        lang: str,
    ) -> tuple[Any, ...]:
        if not is_admin(signed, self.settings):
            return self._refused(lang)
        if not ref:
            return await self._listing(t("key_pick_first", lang), lang)
        fields = key_fields(name, models, rpm, tpm, per_day, per_month, expires, enabled)
        try:
            saved = await self.runtime.keys.update(ref, fields)
        except GatewayError as exc:
            return await self._listing(t("failed", lang, why=exc.message), lang, ref)
        return await self._listing(t("key_saved", lang, name=saved["name"]), lang, ref)

    async def revoke(
        self,
        signed: PageKey | None,
        ref: str | None,
        lang: str,
        armed: tuple[str, float] | None = None,
    ) -> tuple[Any, ...]:
        """Revoking cannot be undone: the first click only asks for a second one on the same
        key within :data:`REVOKE_CONFIRM_SECONDS`. Answers the results, then the armed state."""
        if not is_admin(signed, self.settings):
            return *self._refused(lang), None
        if not ref:
            return *await self._listing(t("key_pick_first", lang), lang), None
        now = self._clock()
        try:
            if armed is None or armed[0] != ref or now - armed[1] > REVOKE_CONFIRM_SECONDS:
                key = await self.runtime.keys.find(ref)
                seconds = int(REVOKE_CONFIRM_SECONDS)
                ask = t("key_revoke_confirm", lang, name=key.name, seconds=seconds)
                return *await self._listing(ask, lang, ref), (ref, now)
            revoked = await self.runtime.keys.revoke(ref)
        except GatewayError as exc:
            return *await self._listing(t("failed", lang, why=exc.message), lang, ref), None
        return *await self._listing(t("key_revoked", lang, name=revoked["name"]), lang), None
