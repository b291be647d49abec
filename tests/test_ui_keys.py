"""The page's client keys: the admin section's handlers (create shows the key once, update,
revoke; only an administrator's session may) and the Status tab's usage by key (an
administrator sees every key, a client key its own, anyone else none). On a real store."""

from __future__ import annotations

import calendar
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from ki2api.model.errors import AuthenticationFailed
from ki2api.settings import Settings
from ki2api.store import OPERATOR_KEY_ID, SqliteStore, UsageCounts
from ki2api.teams.gate import Teams
from ki2api.teams.manage import KeyAdmin
from ki2api.ui.i18n import t
from ki2api.ui.keys import KeyHandlers, credits_text, key_fields
from ki2api.ui.tokens import PageKey
from ki2api.ui.usage import DAYS, UsageView

API_KEY = "page-keys-api-key-0123456789"
ADMIN_KEY = "page-keys-admin-key-0123456789"
NOW = calendar.timegm((2026, 3, 15, 12, 0, 0))  # noon UTC on the 15th
ADMIN = PageKey("admin", ADMIN_KEY)
FORM = ("", "", 0, 0, 0, 0, "", True)  # name, models, rpm, tpm, day, month, expiry, on


def form(**values: Any) -> list[Any]:
    names = ("name", "models", "rpm", "tpm", "per_day", "per_month", "expires", "enabled")
    return [values.get(n, default) for n, default in zip(names, FORM, strict=True)]


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Any]:
    settings = Settings(api_key=API_KEY, api_key_is_default=False, admin_key=ADMIN_KEY)
    teams = Teams(settings, SqliteStore(tmp_path / "keys.db"), clock=lambda: float(NOW))
    await teams.open()
    yield SimpleNamespace(settings=settings, teams=teams, keys=KeyAdmin(teams))
    await teams.aclose()


def handlers(rt: Any) -> KeyHandlers:
    return KeyHandlers(rt.settings, rt)


def text_of(outputs: Any) -> str:
    """Everything a handler sends to the page, as text (tables included)."""
    parts = []
    for value in outputs if isinstance(outputs, tuple) else (outputs,):
        if isinstance(value, dict):
            value = value.get("value", "")
        if isinstance(value, pd.DataFrame):
            value = value.to_csv()
        parts.append(str(value))
    return "\n".join(parts)


async def test_create_shows_the_key_once_and_nowhere_else(runtime: Any, tmp_path: Path) -> None:
    keys = handlers(runtime)
    message, table, pick, panel, secret = await keys.create(
        ADMIN, *form(name="alice", models="claude-sonnet-*", rpm=30, per_day=50), "en"
    )
    assert secret.startswith("ki2-") and panel["visible"] is True
    assert secret not in message and f"…{secret[-4:]}" in message and "alice" in message
    shown = table.to_csv()
    assert "alice" in shown and f"ki2-…{secret[-4:]}" in shown and secret not in shown
    assert "claude-sonnet-*" in shown and "30" in shown and "50" in shown
    made = (await runtime.keys.list_keys())[0]
    assert pick["value"] == made["id"]
    # Every later answer clears the box; none shows the key again.
    for later in (
        await keys.refresh(ADMIN, made["id"], "en"),
        await keys.show(ADMIN, "en"),
        await keys.save(ADMIN, made["id"], *form(name="alice", rpm=10), "en"),
        await keys.pick(ADMIN, made["id"]),
        await keys.relabel(ADMIN, "zh"),
        await UsageView(runtime.settings, runtime).render(ADMIN, "en"),
        (await keys.revoke(ADMIN, made["id"], "en"))[:5],
    ):
        assert secret not in text_of(later)
        if isinstance(later, tuple) and len(later) == 5:
            assert later[3] == {"__type__": "update", "visible": False} and later[4] == ""
    await runtime.teams.store.flush()
    assert secret.encode() not in (tmp_path / "keys.db").read_bytes()


async def test_only_an_administrators_session_may_manage_keys(runtime: Any) -> None:
    made = await runtime.keys.create({"name": "bob"})
    client_key = made.pop("secret")
    keys = handlers(runtime)
    strangers = [
        None,
        PageKey("api", API_KEY),
        PageKey("api", client_key),
        PageKey("admin", "not-the-admin-key-0123456789"),  # a forged session value
        PageKey("admin", API_KEY),
    ]
    for who in strangers:
        for answer in (
            await keys.create(who, *form(name="mallory"), "en"),
            await keys.save(who, made["id"], *form(name="bob", enabled=False), "en"),
            (await keys.revoke(who, made["id"], "en", (made["id"], 0.0)))[:5],
            (await keys.revoke(who, made["id"], "en"))[:5],
            await keys.refresh(who, made["id"], "en"),
        ):
            message, table, pick, panel, secret = answer
            assert message == t("need_admin", "en")
            assert table == {"__type__": "update"} and pick == {"__type__": "update"}
            assert panel["visible"] is False and secret == ""
        assert all(u == {"__type__": "update"} for u in await keys.pick(who, made["id"]))
        assert await keys.relabel(who, "en") == {"__type__": "update"}
        section, _, table, pick, _, secret = await keys.show(who, "en")
        assert section["visible"] is False and table.empty and pick["choices"] == []
    listed = await runtime.keys.list_keys()
    assert [(k["name"], k["status"]) for k in listed] == [("bob", "active")]  # unchanged


async def test_an_administrator_updates_disables_and_revokes_a_key(runtime: Any) -> None:
    keys = handlers(runtime)
    *_, secret = await keys.create(ADMIN, *form(name="carol", expires="30"), "en")
    key_id = (await runtime.keys.list_keys())[0]["id"]
    name, models, rpm, tpm, per_day, per_month, expires, enabled = await keys.pick(ADMIN, key_id)
    assert (name, models, rpm, enabled) == ("carol", "", None, True)
    assert expires == "2026-04-14T12:00:00Z"  # 30 days on
    message, table, *_ = await keys.save(
        ADMIN,
        key_id,
        *form(name="carol", models="claude-haiku-*", rpm=5, tpm=9000, per_month=200.5),
        "zh",
    )
    assert message == t("key_saved", "zh", name="carol")
    row = table.iloc[0].to_dict()
    assert row[t("key_col_rpm", "zh")] == "5" and row[t("key_col_tpm", "zh")] == "9,000"
    assert row[t("key_col_per_month", "zh")] == "200.5"
    assert row[t("key_col_expires", "zh")] == t("key_no_expiry", "zh")  # emptied: never
    assert row[t("key_col_models", "zh")] == "claude-haiku-*"
    await keys.save(ADMIN, key_id, *form(name="carol", enabled=False), "en")
    with pytest.raises(AuthenticationFailed, match="disabled"):
        await runtime.teams.find(secret)
    *_, armed = await keys.revoke(ADMIN, key_id, "en")  # the first click only asks
    message, table, pick, *_ = await keys.revoke(ADMIN, key_id, "en", armed)
    assert "Revoked key **carol**" in message
    assert table.iloc[0, 0] == t("no_keys", "en") and pick["choices"] == []
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await runtime.teams.find(secret)


async def test_revoking_asks_for_a_second_click_on_the_same_key_in_time(runtime: Any) -> None:
    now = [100.0]
    keys = KeyHandlers(runtime.settings, runtime, clock=lambda: now[0])
    alice = await runtime.keys.create({"name": "alice"})
    bob = await runtime.keys.create({"name": "bob"})
    message, *_, armed = await keys.revoke(ADMIN, alice["id"], "en")
    assert "Revoke **alice** for good?" in message and "again within 10 s" in message
    assert armed == (alice["id"], 100.0)
    await runtime.teams.find(alice["secret"])  # not revoked by the first click
    # A second click on another key only asks again, for that key.
    message, *_, armed_bob = await keys.revoke(ADMIN, bob["id"], "zh", armed)
    assert "bob" in message and "再次点击" in message and armed_bob == (bob["id"], 100.0)
    await runtime.teams.find(bob["secret"])
    # Too late: it asks again.
    now[0] += 10.5
    *_, armed = await keys.revoke(ADMIN, bob["id"], "en", armed_bob)
    await runtime.teams.find(bob["secret"])
    now[0] += 9.0
    message, *_, armed = await keys.revoke(ADMIN, bob["id"], "en", armed)
    assert "Revoked key **bob**" in message and armed is None
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await runtime.teams.find(bob["secret"])
    await runtime.teams.find(alice["secret"])


async def test_bad_input_is_said_in_the_section_not_raised(runtime: Any) -> None:
    keys = handlers(runtime)
    for fields, why in (
        (form(name=""), "name"),
        (form(name="dave", expires="next tuesday"), "expires_at"),
        (form(name="dave", models="claude sonnet"), "models"),
        (form(name="operator"), "reserved"),
    ):
        message, table, _, panel, secret = await keys.create(ADMIN, *fields, "en")
        assert message.startswith("Failed:") and why in message, message
        assert secret == "" and panel["visible"] is False
    await keys.create(ADMIN, *form(name="dave"), "en")
    message, *_ = await keys.create(ADMIN, *form(name="dave"), "en")
    assert message.startswith("Failed:") and "dave" in message  # the name is taken
    message, *_ = await keys.save(ADMIN, None, *form(name="dave"), "en")
    assert message == t("key_pick_first", "en")
    message, *_ = await keys.revoke(ADMIN, "key_nonexistent", "en")
    assert message.startswith("Failed:")
    assert len(await runtime.keys.list_keys()) == 1


def test_the_form_reads_an_expiry_as_a_date_or_a_number_of_days() -> None:
    assert key_fields("a", "", None, None, None, None, "", True)["expires_at"] is None
    empty = key_fields("a", "", 0, 0, 0.0, 0.0, "", True)  # what empty number boxes send
    assert [empty[f] for f in ("rpm", "tpm", "credits_per_day", "credits_per_month")] == [None] * 4
    assert key_fields("a", "", None, None, None, None, " 7 ", True)["expires_in_days"] == 7.0
    assert key_fields("a", "", None, None, None, None, "2026-12-31", True)["expires_at"] == (
        "2026-12-31"
    )
    assert credits_text(1.5, 0) == "1.5" and credits_text(0.42, 0.42) == "≈0.42"
    assert credits_text(1.5, 0.3) == "1.5 (≈0.3)" and credits_text(12345.6, 0) == "12,346"


def spend(rt: Any, day: str, key_id: str, credits: float, estimated: float = 0.0) -> None:
    rt.teams.store.record_usage(
        UsageCounts(
            day,
            key_id,
            "acct-1",
            requests=2,
            input_tokens=100,
            output_tokens=50,
            credits=credits,
            credits_estimated=estimated,
        )
    )


async def test_usage_by_key_is_shown_to_whoever_may_see_it(runtime: Any) -> None:
    alice = await runtime.keys.create({"name": "alice"})
    bob = await runtime.keys.create({"name": "bob"})
    spend(runtime, "2026-03-15", alice["id"], 1.25)  # today, metered
    spend(runtime, "2026-03-15", alice["id"], 0.5, 0.5)  # today, estimated
    spend(runtime, "2026-03-02", alice["id"], 3.0)  # this month
    spend(runtime, "2026-02-20", alice["id"], 7.0)  # in the plot, not this month
    spend(runtime, "2026-01-02", alice["id"], 100.0)  # neither
    spend(runtime, "2026-03-14", bob["id"], 0.2, 0.2)
    spend(runtime, "2026-03-15", OPERATOR_KEY_ID, 2.0)
    view = UsageView(runtime.settings, runtime)

    note, table, plot = await view.render(ADMIN, "en")
    rows = {r[0]: r[1:] for r in table["value"].itertuples(index=False)}
    assert set(rows) == {"alice", "bob", "operator (API_KEY)"}
    assert rows["alice"] == (4, "300", "1.75 (≈0.5)", 6, "450", "4.75 (≈0.5)")
    assert rows["bob"] == (0, "0", "0", 2, "150", "≈0.2")
    assert "≈" in note and plot["visible"] is True
    frame = plot["value"]
    assert len(frame) == 3 * DAYS  # a point per key and day, days without usage at 0
    alice_days = frame[frame["key"] == "alice"].set_index("day")["credits"]
    assert alice_days[pd.Timestamp("2026-02-20")] == 7.0
    assert alice_days[pd.Timestamp("2026-03-15")] == 1.75
    assert alice_days[pd.Timestamp("2026-03-01")] == 0.0
    assert alice_days.index.min() == pd.Timestamp("2026-02-14")  # 30 days up to today

    _, table, plot = await view.render(PageKey("api", alice["secret"]), "zh")
    assert list(table["value"].iloc[:, 0]) == ["alice"]
    assert set(plot["value"]["key"]) == {"alice"}
    _, table, _ = await view.render(PageKey("api", API_KEY), "en")
    assert list(table["value"].iloc[:, 0]) == ["operator (API_KEY)"]

    await runtime.keys.revoke(bob["id"])
    for nobody in (None, PageKey("api", bob["secret"]), PageKey("api", "wrong-key-0123456789")):
        note, table, plot = await view.render(nobody, "en")
        assert note == t("usage_sign_in", "en")
        assert table["visible"] is False and plot["visible"] is False
        assert table["value"] is None and plot["value"] is None


async def test_usage_with_no_usage_yet_says_so_instead_of_an_empty_plot(runtime: Any) -> None:
    made = await runtime.keys.create({"name": "erin"})
    note, table, plot = await UsageView(runtime.settings, runtime).render(
        PageKey("api", made["secret"]), "zh"
    )
    assert t("usage_none", "zh") in note and plot["visible"] is False
    assert table["value"].iloc[0].tolist() == ["erin", 0, "0", "0", 0, "0", "0"]
