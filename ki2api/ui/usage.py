"""The Status tab's usage by key: today, this month and the last 30 days (UTC days), from the
stored usage (:class:`ki2api.teams.manage.KeyAdmin`).

Who sees what is decided from the caller's own session, every time: an administrator sees
every key (and the operator's ``API_KEY``); a visitor signed in with a client key sees that
key only, with ``API_KEY`` the operator's row only; anyone else sees none. A key revoked,
expired or disabled since the sign-in shows nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from ki2api.api.auth import check_presented_key
from ki2api.model.errors import GatewayError
from ki2api.settings import Settings
from ki2api.store import OPERATOR_KEY_ID
from ki2api.ui.i18n import t
from ki2api.ui.keys import amount, credits_text
from ki2api.ui.tokens import PageKey, is_admin

if TYPE_CHECKING:
    from ki2api.runtime import Runtime

DAYS = 30
TABLE_COLUMNS = (
    "usage_col_key",
    "usage_col_requests_today",
    "usage_col_tokens_today",
    "usage_col_credits_today",
    "usage_col_requests_month",
    "usage_col_tokens_month",
    "usage_col_credits_month",
)


@dataclass(frozen=True, slots=True)
class Viewer:
    """Whose usage a session may see: every key's, or one key's (by id)."""

    everyone: bool
    key_id: str = ""
    name: str = ""


async def viewer_of(signed: PageKey | None, settings: Settings, rt: Runtime) -> Viewer | None:
    if signed is None:
        return None
    if is_admin(signed, settings):
        return Viewer(everyone=True)
    if signed.role != "api":
        return None
    try:
        found = await rt.teams.find(signed.key)
        if found is not None:
            return Viewer(everyone=False, key_id=found.key_id, name=found.name)
        check_presented_key(signed.key, settings)  # API_KEY: the operator's own rows
    except GatewayError:
        return None
    return Viewer(everyone=False, key_id=OPERATOR_KEY_ID, name="operator")


@dataclass
class Tally:
    requests: int = 0
    tokens: int = 0
    credits: float = 0.0
    estimated: float = 0.0

    def add(self, row: dict[str, Any]) -> None:
        self.requests += row["requests"]
        self.tokens += row["input_tokens"] + row["output_tokens"]
        self.credits += row["credits"]
        self.estimated += row["credits_estimated"]


@dataclass
class KeyUsage:
    name: str
    today: Tally = field(default_factory=Tally)
    month: Tally = field(default_factory=Tally)
    days: dict[str, Tally] = field(default_factory=dict)


def first_day(today: date) -> date:
    """The earliest day the tab needs: the month's first, or the plot's, whichever is first."""
    return min(today.replace(day=1), today - timedelta(days=DAYS - 1))


def tally(rows: list[dict[str, Any]], names: dict[str, str], today: date) -> dict[str, KeyUsage]:
    """Usage rows (``KeyAdmin.usage``, by day, key and account) summed per key: today, this
    month, and each of the last :data:`DAYS` days. ``names``: the keys shown even without
    usage (id → name); a key with usage but not in ``names`` keeps its rows' name."""
    month, plot_from = today.replace(day=1).isoformat(), (today - timedelta(DAYS - 1)).isoformat()
    day = today.isoformat()
    out = {key_id: KeyUsage(name) for key_id, name in names.items()}
    for row in rows:
        usage = out.setdefault(row["key_id"], KeyUsage(row["key"]))
        if row["day"] >= month:
            usage.month.add(row)
        if row["day"] == day:
            usage.today.add(row)
        if row["day"] >= plot_from:
            usage.days.setdefault(row["day"], Tally()).add(row)
    return out


def shown_name(key_id: str, name: str, lang: str) -> str:
    return t("usage_operator", lang) if key_id == OPERATOR_KEY_ID else name


def usage_table(usage: dict[str, KeyUsage], lang: str) -> pd.DataFrame:
    rows = [
        [
            shown_name(key_id, u.name, lang),
            u.today.requests,
            amount(u.today.tokens),
            credits_text(u.today.credits, u.today.estimated),
            u.month.requests,
            amount(u.month.tokens),
            credits_text(u.month.credits, u.month.estimated),
        ]
        for key_id, u in usage.items()
    ]
    return pd.DataFrame(rows, columns=[t(c, lang) for c in TABLE_COLUMNS])


def usage_frame_empty() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "day": pd.Series([], dtype="datetime64[ms]"),
            "credits": pd.Series([], dtype=float),
            "key": pd.Series([], dtype=str),
        }
    )


def usage_frame(usage: dict[str, KeyUsage], today: date, lang: str) -> pd.DataFrame:
    """Long form for a line plot: one row per key and day of the last :data:`DAYS`, days
    without usage as 0 (a line drops to the axis instead of skipping the day)."""
    days = [(today - timedelta(days=DAYS - 1 - i)).isoformat() for i in range(DAYS)]
    rows: list[tuple[str, float, str]] = []
    for key_id, u in usage.items():
        if u.days:  # keys without usage in the 30 days: no flat line at 0
            name = shown_name(key_id, u.name, lang)
            rows.extend(
                (day, round(u.days[day].credits if day in u.days else 0.0, 4), name) for day in days
            )
    if not rows:
        return usage_frame_empty()
    frame = pd.DataFrame(rows, columns=["day", "credits", "key"])
    frame["day"] = pd.to_datetime(frame["day"]).astype("datetime64[ms]")
    return frame


def plot_days(today: date) -> list[float | None]:
    """The plot's x range (seconds since the epoch): the whole 30 days, half a day either side."""
    start = datetime(today.year, today.month, today.day, tzinfo=UTC) - timedelta(days=DAYS - 1)
    return [start.timestamp() - 43200, start.timestamp() + (DAYS - 0.5) * 86400]


class UsageView:
    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        self.settings = settings
        self.runtime = runtime

    async def render(self, signed: PageKey | None, lang: str) -> tuple[Any, Any, Any]:
        """(note, table, plot) for this session: nothing but a hint for a visitor who may see
        no usage."""
        rt = self.runtime
        viewer = await viewer_of(signed, self.settings, rt)
        if viewer is None:
            hidden = gr.update(visible=False, value=None)
            return t("usage_sign_in", lang), hidden, hidden
        today = datetime.fromtimestamp(rt.teams.clock(), UTC).date()
        since = first_day(today).isoformat()
        if viewer.everyone:
            live = await rt.teams.store.list_keys()
            names = {k.id: k.name for k in live if k.revoked_at is None}
            names[OPERATOR_KEY_ID] = "operator"
            rows = await rt.keys.usage(since=since)
        else:
            names = {viewer.key_id: viewer.name}
            rows = await rt.keys.usage(key=viewer.key_id, since=since)
        usage = tally(rows, names, today)
        frame = usage_frame(usage, today, lang)
        note = t("usage_note" if viewer.everyone else "usage_note_own", lang)
        if frame.empty:
            note += "\n\n" + t("usage_none", lang)
        plot = gr.update(value=frame, x_lim=plot_days(today), visible=not frame.empty)
        return note, gr.update(value=usage_table(usage, lang), visible=True), plot
