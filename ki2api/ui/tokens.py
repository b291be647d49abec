"""Tokens: a visitor's own Kiro token (kept in their session only) and the admin's pool actions.

Every handler here takes or returns secrets and is registered with ``api_visibility="private"``.
Only masked tokens are ever returned to the page; the session values are ``gr.State`` (server
side, per tab, dropped when the tab closes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import gradio as gr
import orjson

from ki2api.api.auth import keys_match
from ki2api.core.errors import GatewayError
from ki2api.kiro.credentials import AccountSpec, CredentialError, mask_secret, parse_pasted_token
from ki2api.kiro.sources import unique_label
from ki2api.settings import Settings
from ki2api.ui.i18n import t
from ki2api.ui.status import countdown

if TYPE_CHECKING:
    from ki2api.app import Runtime

WRONG_KEY_DELAY = 1.0  # slows down guessing the admin key through the page


def describe_own(spec: AccountSpec | None, lang: str) -> str:
    if spec is None:
        return t("no_own_token", lang)
    expiry = ""
    if spec.expires_at is not None:
        expiry = t("expires", lang, when=countdown(spec.expires_at, datetime.now(UTC), lang))
    masked = f"`{mask_secret(spec.access_token or spec.refresh_token)}`"
    return t("own_token_set", lang, masked=masked, method=spec.auth_method, expiry=expiry)


def using_line(spec: AccountSpec | None, lang: str) -> str:
    if spec is None:
        return t("using_pool", lang)
    return t("using_own", lang, masked=f"`{mask_secret(spec.access_token or spec.refresh_token)}`")


def admin_enabled(settings: Settings) -> bool:
    """As the admin API: off until ``ADMIN_KEY`` is set."""
    return settings.admin_key is not None


def admin_key_ok(key: str, settings: Settings) -> bool:
    """The admin API's rule: ``ADMIN_KEY`` only (the API key is not an administrator's)."""
    if not key or settings.admin_key is None:
        return False
    return keys_match(key.strip(), settings.admin_key)


class TokenHandlers:
    def __init__(self, settings: Settings, runtime: Callable[[], Runtime]) -> None:
        self.settings = settings
        self.runtime = runtime

    # --- the visitor's own token -------------------------------------------------------------

    async def use_token(
        self, text: str, current: AccountSpec | None, lang: str
    ) -> tuple[AccountSpec | None, str, str, str]:
        """Returns (session spec, status line, cleared box, playground line)."""
        rt = self.runtime()
        try:
            spec = parse_pasted_token(text, rt.settings, label="your-token")
            lease = await rt.pool.ephemeral_lease(spec)  # refreshes now if it must
            spec = lease.spec
        except CredentialError as exc:
            return current, t("bad_token", lang, why=str(exc)), "", using_line(current, lang)
        except GatewayError as exc:
            return current, t("bad_token", lang, why=exc.message), "", using_line(current, lang)
        return spec, describe_own(spec, lang), "", using_line(spec, lang)

    def forget_token(self, lang: str) -> tuple[None, str, str]:
        return None, describe_own(None, lang), using_line(None, lang)

    # --- administrator -----------------------------------------------------------------------

    async def sign_in(self, key: str, lang: str) -> tuple[bool, str, str, Any, Any]:
        """Returns (signed-in flag, message, cleared key box, admin panel, account choices)."""
        if not admin_enabled(self.settings):
            return False, t("admin_disabled", lang), "", gr.update(visible=False), gr.update()
        if not admin_key_ok(key, self.settings):
            await asyncio.sleep(WRONG_KEY_DELAY)
            return False, t("wrong_key", lang), "", gr.update(visible=False), gr.update()
        return True, t("signed_in", lang), "", gr.update(visible=True), self._choices()

    def sign_out(self, lang: str) -> tuple[bool, str, Any]:
        return False, t("signed_out", lang), gr.update(visible=False)

    def _choices(self, selected: str | None = None) -> Any:
        labels = [a.label for a in self.runtime().pool.snapshot()]
        value = selected if selected in labels else (labels[0] if labels else None)
        return gr.update(choices=labels, value=value)

    def add_account(self, admin: bool, text: str, label: str, lang: str) -> tuple[str, str, Any]:
        """Returns (message, cleared token box, account choices)."""
        if not admin:
            return t("need_admin", lang), "", gr.update()
        pool = self.runtime().pool
        label = (label or "").strip() or unique_label("ui", {a.label for a in pool.snapshot()})
        try:
            spec = parse_pasted_token(text, self.runtime().settings, label=label)
            status = pool.add_account(spec, label=label, source="ui")
        except CredentialError as exc:
            return t("failed", lang, why=str(exc)), "", gr.update()
        except GatewayError as exc:
            return t("failed", lang, why=exc.message), "", gr.update()
        return t("added", lang, label=status.label), "", self._choices(status.label)

    async def refresh_account(self, admin: bool, label: str, lang: str) -> tuple[str, Any]:
        if not admin:
            return t("need_admin", lang), gr.update()
        try:
            status = await self.runtime().pool.refresh_account(label or "")
        except GatewayError as exc:
            return t("failed", lang, why=exc.message), self._choices(label)
        return t("refreshed", lang, label=label, state=status.description), self._choices(label)

    def remove_account(self, admin: bool, label: str, lang: str) -> tuple[str, Any]:
        if not admin:
            return t("need_admin", lang), gr.update()
        try:
            self.runtime().pool.remove_account(label or "")
        except GatewayError as exc:
            return t("failed", lang, why=exc.message), self._choices()
        return t("removed", lang, label=label), self._choices()

    def save_aliases(self, admin: bool, text: str, lang: str) -> tuple[str, str]:
        """MODEL_ALIASES, edited in memory: an empty box shows the current table."""
        if not admin:
            return t("need_admin", lang), ""
        catalog = self.runtime().catalog
        if (text or "").strip():
            try:
                catalog.set_aliases(text.strip())
            except ValueError as exc:
                return t("failed", lang, why=str(exc)), text
        current = orjson.dumps(catalog.aliases).decode()
        return t("aliases_saved", lang, count=len(catalog.aliases)), current
