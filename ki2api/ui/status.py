"""Status: accounts (masked) with state, credits and expiry countdown, recent traffic, a latency
plot, and a warning when a Space keeps its stored state on a disk that a restart wipes.

Each account's outbound proxy (masked) is shown to an administrator only: where a proxy is is
the operator's business, not a visitor's."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pandas as pd

from ki2api.kiro.accounts.account import AccountStatus, CooldownStatus
from ki2api.kiro.accounts.proxy import DIRECT, mask_proxy
from ki2api.model.logsafe import hide_paths
from ki2api.store.backup import StorageState
from ki2api.ui.i18n import STRINGS, t

if TYPE_CHECKING:
    from ki2api.runtime import Runtime

WINDOW = 900.0  # the last 15 minutes
PLOT_POINTS = 1000  # requests; a scatter plot stays readable

STATE_ICONS = {
    "healthy": "🟢",
    "cooling_down": "🟡",
    "needs_login": "🔴",
    "disabled": "⚫",
    "suspended": "⛔",
}


def state_name(state: str, lang: str) -> str:
    key = f"state_{state}"
    return t(key, lang) if key in STRINGS else state.replace("_", " ")


def countdown(when: datetime, now: datetime, lang: str) -> str:
    seconds = int((when - now).total_seconds())
    if seconds <= 0:
        return t("expired", lang)
    s, m, h, d = (t(f"unit_{u}", lang) for u in ("s", "min", "h", "d"))
    if seconds < 60:
        span = f"{seconds} {s}"
    elif seconds < 3600:
        span = f"{seconds // 60} {m}"
    elif seconds < 48 * 3600:
        span = f"{seconds // 3600} {h} {seconds % 3600 // 60} {m}"
    else:
        span = f"{seconds // 86400} {d}"
    return t("in", lang, d=span)


ACCOUNT_COLUMNS = (
    "col_label",
    "col_state",
    "col_token",
    "col_expires",
    "col_requests",
    "col_errors",
    "col_credits",
    "col_note",
    "col_cooldowns",
)


def proxy_text(proxy: str | None, default: str | None, lang: str) -> str:
    """An account's proxy as shown (``AccountStatus.proxy``, already masked): its own URL,
    direct, or the default for all (``KIRO_PROXY``, masked here, or none)."""
    if proxy == DIRECT:
        return t("proxy_direct", lang)
    if proxy is not None:
        return proxy
    if default:
        return t("proxy_default", lang, proxy=mask_proxy(default))
    return t("proxy_default_none", lang)


def shown_state_text(account: AccountStatus, lang: str) -> str:
    shown = account.shown_state
    return f"{STATE_ICONS.get(shown, '')} {state_name(shown, lang)}"


def account_proxies(rt: Runtime, lang: str) -> pd.DataFrame:
    """The admin section's table: each account's state and proxy."""
    default = rt.settings.kiro_proxy
    rows = [
        [a.label, shown_state_text(a, lang), proxy_text(a.proxy, default, lang)]
        for a in rt.pool.snapshot()
    ]
    if not rows:
        rows.append([t("no_accounts", lang), "", ""])
    return pd.DataFrame(rows, columns=[t(k, lang) for k in ("col_label", "col_state", "col_proxy")])


def accounts_table(rt: Runtime, lang: str, *, proxies: bool = False) -> pd.DataFrame:
    """Every account; with ``proxies`` (an administrator's session) its proxy too."""
    now = datetime.now(UTC)
    columns = [t(k, lang) for k in ACCOUNT_COLUMNS]
    if proxies:
        columns.append(t("col_proxy", lang))
    rows: list[list[object]] = []
    for account in rt.pool.snapshot():
        expires = countdown(account.expires_at, now, lang) if account.expires_at else "—"
        note = quoted(hide_paths(account.reason or account.last_error or ""))
        if account.state == "cooling_down" and account.until is not None:
            note = f"{countdown(account.until, now, lang)} · {note}"  # "in 5 s · why"
        if account.min_interval_ms:
            pacing = t("pacing", lang, ms=f"{account.min_interval_ms:g}", n=account.waiting)
            note = f"{pacing} · {note}" if note else pacing
        row: list[object] = [
            account.label,
            shown_state_text(account, lang),
            account.token,  # already masked by the pool
            expires,
            account.requests,
            account.errors,
            credits_text(account, now, lang),
            note[:162],
            cooldowns_text(account.cooldowns, now, lang),
        ]
        if proxies:
            row.append(proxy_text(account.proxy, rt.settings.kiro_proxy, lang))
        rows.append(row)
    if not rows:
        rows.append(
            [t("no_accounts", lang), "", "", "", 0, 0, "", "", ""] + ([""] if proxies else [])
        )
    return pd.DataFrame(rows, columns=columns)


def credits_text(account: AccountStatus, now: datetime, lang: str) -> str:
    """``37.5 of 50 left · resets in 12 d`` from the account's last getUsageLimits answer, then
    why the latest call failed, if it did."""
    usage = account.usage
    if usage is None or usage.remaining is None:
        text = "—" if account.usage_error else t("credits_unknown", lang)
    else:
        left, limit = _amount(usage.remaining), _amount(usage.limit)
        if usage.resets_at is not None:
            text = t(
                "credits_left",
                lang,
                left=left,
                limit=limit,
                when=countdown(usage.resets_at, now, lang),
            )
        else:
            text = t("credits_no_reset", lang, left=left, limit=limit)
    if account.usage_error and account.usage_error != account.reason:  # else the note says it
        text += f" · {quoted(hide_paths(account.usage_error)[:120])}"
    return text


def _amount(value: float | None) -> str:
    return "?" if value is None else f"{value:,.2f}".rstrip("0").rstrip(".")


def storage_notice(storage: StorageState, lang: str) -> str:
    """The warning for a Space whose stored state a restart wipes ("" when there is none)."""
    if not storage.ephemeral:
        return ""
    if storage.backup_dataset:
        return t(
            "storage_backed_up",
            lang,
            dataset=storage.backup_dataset,
            every=f"{storage.backup_every:g}",
        )
    return t("storage_ephemeral", lang)


def cooldowns_text(cooldowns: tuple[CooldownStatus, ...], now: datetime, lang: str) -> str:
    """Each running cooldown: the model it keeps off the account (or all of them), why, and
    for how long, with Kiro's words."""
    parts = []
    for c in cooldowns:
        scope = c.model or t("all_models", lang)
        why = t(f"cause_{c.cause}", lang)
        parts.append(
            f"{scope} · {why} · {countdown(c.until, now, lang)} · {quoted(c.reason[:120])}"
        )
    return "; ".join(parts)


def quoted(words: str) -> str:
    """Kiro's and the gateway's own words (English), quoted as they are: the columns around
    them say the same in the visitor's language."""
    return f"“{words}”" if words else ""


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def traffic_summary(rt: Runtime, lang: str) -> str:
    s = rt.stats.summary(WINDOW)
    cells = [
        (t("requests", lang), str(s.count)),
        (t("errors", lang), str(s.errors)),
        (t("latency", lang), f"{_seconds(s.p50)} / {_seconds(s.p95)}"),
        (t("ttft_p50", lang), _seconds(s.ttft_p50)),
        (t("active", lang), str(rt.stats.active_streams)),
        (t("usable", lang), f"{rt.pool.usable_count()} / {len(rt.pool)}"),
    ]
    header = "| " + " | ".join(name for name, _ in cells) + " |"
    line = "|" + "---|" * len(cells)
    values = "| " + " | ".join(f"**{v}**" for _, v in cells) + " |"
    empty = [] if s.count else ["", t("plot_empty", lang)]
    shared = shared_state_line(rt, lang)
    return "\n".join([header, line, values, *empty, *(["", shared] if shared else [])])


def shared_state_line(rt: Runtime, lang: str) -> str | None:
    """With ``REDIS_URL``: whether the replicas' shared state answers (None without it)."""
    status = rt.shared.status()
    if status.get("backend") != "redis":
        return None
    if status.get("connected"):
        return t("shared_ok", lang, replicas=status.get("replicas") or 1)
    since = status.get("down_since")
    when = datetime.fromisoformat(since).strftime("%H:%M:%SZ") if isinstance(since, str) else "?"
    return t("shared_lost", lang, since=when)


def latency_frame_empty() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "time": pd.Series([], dtype="datetime64[ms]"),
            "seconds": pd.Series([], dtype=float),
            "series": pd.Series([], dtype=str),
        }
    )


def latency_frame(rt: Runtime, lang: str) -> pd.DataFrame:
    """Long form for a scatter plot, one row per request and series (total, first token).

    x is the clock time the request ended (UTC instants; the browser draws them in its own
    time zone); points rather than lines, so one request is as visible as a thousand."""
    rows: list[tuple[float, float, str]] = []
    for record in rt.stats.recent(WINDOW)[-PLOT_POINTS:]:
        rows.append((record.finished_at, round(record.latency, 3), t("series_latency", lang)))
        if record.ttft is not None:
            rows.append((record.finished_at, round(record.ttft, 3), t("series_ttft", lang)))
    if not rows:
        return latency_frame_empty()
    frame = pd.DataFrame(rows, columns=["time", "seconds", "series"])
    frame["time"] = pd.to_datetime(frame["time"], unit="s").astype("datetime64[ms]")
    return frame


def plot_window(now: float | None = None) -> list[float | None]:
    """The plot's x range, in seconds since the epoch: always the whole window, so a single
    point sits at its time instead of in a degenerate axis."""
    end = time.time() if now is None else now
    return [end - WINDOW, end + WINDOW / 30]  # a margin: the newest point is not on the edge
