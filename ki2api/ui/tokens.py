"""Tokens: a visitor's own Kiro token (kept in their session only), the page's sign-in (API key:
the playground may use the pool; admin key: the pool actions too) and the admin's pool actions.

Every handler here takes or returns secrets and is registered with ``api_visibility="private"``.
Only masked tokens are ever returned to the page; the session values are ``gr.State`` (server
side, per tab, dropped when the tab closes). An account's proxy is set by an administrator
only (a visitor's pasted token cannot name one) and shown masked: a proxy's password is never
sent back, and its box is emptied once the proxy is taken.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import gradio as gr
import orjson
import pandas as pd

from ki2api.api.auth import check_presented_key, keys_match
from ki2api.kiro.accounts.account import AccountStatus
from ki2api.kiro.accounts.credentials import (
    AccountSpec,
    CredentialError,
    mask_secret,
    parse_pasted_token,
    proxy_of,
)
from ki2api.kiro.accounts.proxy import CONFIGURED_PROXY
from ki2api.kiro.accounts.sources import unique_label
from ki2api.model.errors import GatewayError
from ki2api.settings import Settings
from ki2api.teams.gate import Teams
from ki2api.ui.i18n import t
from ki2api.ui.status import account_proxies, countdown, proxy_text

if TYPE_CHECKING:
    from ki2api.runtime import Runtime

WRONG_KEY_DELAY = 1.0  # slows down guessing the admin key through the page


@dataclass(frozen=True, slots=True)
class PageKey:
    """A visitor's sign-in on the page (``gr.State``: their session only, never sent to the
    browser). ``admin``: the admin functions and the pool; ``api``: the pool."""

    role: Literal["api", "admin"]
    key: str = field(repr=False)


def sign_in_key(who: PageKey | None) -> str:
    """The i18n key of the line that says how this visitor is signed in."""
    if who is None:
        return "signed_out"
    return "signed_in" if who.role == "admin" else "signed_in_api"


def describe_own(spec: AccountSpec | None, lang: str) -> str:
    if spec is None:
        return t("no_own_token", lang)
    expiry = ""
    if spec.expires_at is not None:
        expiry = t("expires", lang, when=countdown(spec.expires_at, datetime.now(UTC), lang))
    masked = f"`{mask_secret(spec.access_token or spec.refresh_token)}`"
    return t("own_token_set", lang, masked=masked, method=spec.auth_method, expiry=expiry)


def using_line(
    spec: AccountSpec | None,
    lang: str,
    signed: PageKey | None = None,
    demo: bool = False,
    pool_empty: bool = False,
) -> str:
    if spec is None:
        if demo:
            return t("using_pool", lang)
        if pool_empty:  # signing in would only lead to "no account": a token of one's own helps
            return t("using_no_accounts", lang)
        return t("using_pool", lang) if signed is not None else t("using_sign_in", lang)
    return t("using_own", lang, masked=f"`{mask_secret(spec.access_token or spec.refresh_token)}`")


def admin_enabled(settings: Settings) -> bool:
    """As the admin API: off until ``ADMIN_KEY`` is set."""
    return settings.admin_key is not None


def admin_key_ok(key: str, settings: Settings) -> bool:
    """The admin API's rule: ``ADMIN_KEY`` only (the API key is not an administrator's)."""
    if not key or settings.admin_key is None:
        return False
    return keys_match(key.strip(), settings.admin_key)


def is_admin(signed: PageKey | None, settings: Settings) -> bool:
    """The session signed in with ``ADMIN_KEY`` (checked again, in constant time)."""
    return signed is not None and signed.role == "admin" and admin_key_ok(signed.key, settings)


async def page_sign_in_with_keys(key: str, settings: Settings, teams: Teams | None) -> PageKey:
    """:func:`page_sign_in`, where a client key (:mod:`ki2api.teams`) signs in as an API key
    does: the playground on the pool, within the key's own limits."""
    stripped = (key or "").strip()
    if teams is not None and stripped and not admin_key_ok(stripped, settings):
        if await teams.find(stripped) is not None:  # a revoked or expired key raises its 401
            return PageKey("api", stripped)
    return page_sign_in(key, settings)


def page_sign_in(key: str, settings: Settings) -> PageKey:
    """The admin key, else the API key (the API's own check, in constant time); raises the
    API's error for anything else."""
    key = (key or "").strip()
    if admin_key_ok(key, settings):
        return PageKey("admin", key)
    check_presented_key(key or None, settings)
    return PageKey("api", key)


class TokenHandlers:
    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        self.settings = settings
        self.runtime = runtime

    # --- the visitor's own token -------------------------------------------------------------

    def _using(self, spec: AccountSpec | None, lang: str, signed: PageKey | None) -> str:
        empty = not self.runtime.pool.has_accounts()
        return using_line(spec, lang, signed, self.settings.demo, empty)

    async def use_token(
        self, text: str, current: AccountSpec | None, signed: PageKey | None, lang: str
    ) -> tuple[AccountSpec | None, str, str, str]:
        """Returns (session spec, status line, cleared box, playground line)."""
        rt = self.runtime
        try:
            spec = parse_pasted_token(text, rt.settings, label="your-token")
            lease = await rt.pool.ephemeral_lease(spec)  # refreshes now if it must
            spec = lease.spec
        except CredentialError as exc:
            why = str(exc)
            return current, t("bad_token", lang, why=why), "", self._using(current, lang, signed)
        except GatewayError as exc:
            why = exc.message
            return current, t("bad_token", lang, why=why), "", self._using(current, lang, signed)
        return spec, describe_own(spec, lang), "", self._using(spec, lang, signed)

    def forget_token(self, signed: PageKey | None, lang: str) -> tuple[None, str, str]:
        return None, describe_own(None, lang), self._using(None, lang, signed)

    # --- administrator -----------------------------------------------------------------------

    async def sign_in(
        self, key: str, own: AccountSpec | None, lang: str
    ) -> tuple[PageKey | None, bool, str, str, Any, Any, str, Any]:
        """Returns (sign-in, admin flag, message, cleared key box, admin panel, account choices,
        playground line, the admin's accounts table)."""
        closed = gr.update(visible=False)
        try:
            signed = await page_sign_in_with_keys(key, self.settings, self.runtime.teams)
        except GatewayError as exc:
            using = self._using(own, lang, None)
            if exc.status == 401:
                await asyncio.sleep(WRONG_KEY_DELAY)
                wrong = self._with_admin_note(t("wrong_key", lang), lang)
                return None, False, wrong, "", closed, gr.update(), using, pd.DataFrame()
            why = t("failed", lang, why=exc.message)
            return None, False, why, "", closed, gr.update(), using, pd.DataFrame()
        using = self._using(own, lang, signed)
        if signed.role == "admin":
            panel = gr.update(visible=True)
            message = t(sign_in_key(signed), lang)
            return signed, True, message, "", panel, self._choices(), using, self.accounts(lang)
        message = self._with_admin_note(t(sign_in_key(signed), lang), lang)
        return signed, False, message, "", closed, gr.update(), using, pd.DataFrame()

    def _with_admin_note(self, message: str, lang: str) -> str:
        """While the server has no ADMIN_KEY, a sign-in also says administration is off and
        how to turn it on (no admin panel appears, and an admin key cannot work)."""
        if admin_enabled(self.settings):
            return message
        return f"{message}\n\n{t('admin_disabled', lang)}"

    def sign_out(
        self, own: AccountSpec | None, lang: str
    ) -> tuple[None, bool, str, Any, str, pd.DataFrame]:
        using = self._using(own, lang, None)
        return None, False, t("signed_out", lang), gr.update(visible=False), using, pd.DataFrame()

    def _choices(self, selected: str | None = None) -> Any:
        labels = [a.label for a in self.runtime.pool.snapshot()]
        value = selected if selected in labels else (labels[0] if labels else None)
        return gr.update(choices=labels, value=value)

    def accounts(self, lang: str) -> pd.DataFrame:
        """The admin section's table: each account's state and proxy (masked)."""
        return account_proxies(self.runtime, lang)

    def relabel_accounts(self, signed: PageKey | None, lang: str) -> Any:
        """The admin's accounts table in the visitor's language (a language switch); its rows
        for an administrator only."""
        label = t("accounts_proxies", lang)
        if not is_admin(signed, self.settings):
            return gr.update(label=label)
        return gr.update(value=self.accounts(lang), label=label)

    def _proxy_shown(self, status: AccountStatus, lang: str) -> str:
        return proxy_text(status.proxy, self.runtime.settings.kiro_proxy, lang)

    def add_account(
        self, admin: bool, text: str, label: str, proxy: str, lang: str
    ) -> tuple[str, str, Any, Any, Any]:
        """Returns (message, cleared token box, proxy box, account choices, accounts table).
        The proxy box is emptied once the account is added, and left as typed otherwise."""
        if not admin:
            return t("need_admin", lang), "", gr.update(), gr.update(), gr.update()
        pool = self.runtime.pool
        label = (label or "").strip() or unique_label("ui", {a.label for a in pool.snapshot()})
        try:
            own_proxy = proxy_of({"proxy": proxy or ""})  # its error never repeats a password
            spec = parse_pasted_token(text, self.runtime.settings, label=label)
            status = pool.add_account(replace(spec, proxy=own_proxy), label=label, source="ui")
        except CredentialError as exc:
            return t("failed", lang, why=str(exc)), "", gr.update(), gr.update(), gr.update()
        except GatewayError as exc:
            return t("failed", lang, why=exc.message), "", gr.update(), gr.update(), gr.update()
        if own_proxy is None:
            said = t("added", lang, label=status.label)
        else:
            said = t("added_proxy", lang, label=status.label, proxy=self._proxy_shown(status, lang))
        return said, "", "", self._choices(status.label), self.accounts(lang)

    async def refresh_account(self, admin: bool, label: str, lang: str) -> tuple[str, Any, Any]:
        if not admin:
            return t("need_admin", lang), gr.update(), gr.update()
        try:
            status = await self.runtime.pool.refresh_account(label or "")
        except GatewayError as exc:
            return t("failed", lang, why=exc.message), self._choices(label), self.accounts(lang)
        said = t("refreshed", lang, label=label, state=status.description)
        return said, self._choices(label), self.accounts(lang)

    def remove_account(self, admin: bool, label: str, lang: str) -> tuple[str, Any, Any]:
        if not admin:
            return t("need_admin", lang), gr.update(), gr.update()
        try:
            self.runtime.pool.remove_account(label or "")
        except GatewayError as exc:
            return t("failed", lang, why=exc.message), self._choices(), self.accounts(lang)
        return t("removed", lang, label=label), self._choices(), self.accounts(lang)

    async def set_proxy(
        self, admin: bool, label: str, proxy: str, lang: str
    ) -> tuple[str, Any, Any, Any]:
        """The picked account's proxy: a URL, ``direct``, or empty for ``KIRO_PROXY``.
        Returns (message, proxy box: emptied once taken, account choices, accounts table)."""
        return self._change_proxy(admin, label, (proxy or "").strip() or None, lang)

    async def configured_proxy(
        self, admin: bool, label: str, lang: str
    ) -> tuple[str, Any, Any, Any]:
        """The picked account back on the proxy its configuration names."""
        return self._change_proxy(admin, label, CONFIGURED_PROXY, lang)

    def _change_proxy(
        self, admin: bool, label: str, proxy: str | None, lang: str
    ) -> tuple[str, Any, Any, Any]:
        # Called from the async handlers: the pool changes on the event loop's thread.
        if not admin:
            return t("need_admin", lang), gr.update(), gr.update(), gr.update()
        label = label or ""
        try:
            status = self.runtime.pool.set_proxy(label, proxy)
        except GatewayError as exc:  # InvalidRequest (param "proxy") or NotFound
            why = t("failed", lang, why=exc.message)
            return why, gr.update(), self._choices(label), self.accounts(lang)
        key = "proxy_back" if proxy == CONFIGURED_PROXY else "proxy_set"
        said = t(key, lang, label=status.label, proxy=self._proxy_shown(status, lang))
        return said, "", self._choices(label), self.accounts(lang)

    def save_aliases(self, admin: bool, text: str, lang: str) -> tuple[str, str]:
        """MODEL_ALIASES, edited in memory: an empty box shows the current table."""
        if not admin:
            return t("need_admin", lang), ""
        catalog = self.runtime.catalog
        if (text or "").strip():
            try:
                catalog.set_aliases(text.strip())
            except ValueError as exc:
                return t("failed", lang, why=str(exc)), text
        current = orjson.dumps(catalog.aliases).decode()
        return t("aliases_saved", lang, count=len(catalog.aliases)), current
