"""Keys and usage for people: create, list, update, revoke, and usage reports, as plain data
(dicts and lists ready for JSON), for the admin API, the CLI and the page alike.

Input comes as a mapping of the fields a key has (the admin API's JSON, the CLI's options):

    name               1-64 letters, digits and . _ @ + -
    models             glob patterns, a list or a comma-separated string ('claude-sonnet-*')
    rpm, tpm           requests / tokens per minute (whole numbers above 0)
    credits_per_day, credits_per_month   Kiro credits (numbers above 0)
    expires_at         ISO 8601 time or date (UTC unless it says), or Unix seconds
    expires_in_days    instead of expires_at
    enabled            true / false

``None`` for a limit or ``expires_at`` means none. Unknown fields and wrong types are refused
with a 400 naming the field; the secret of a new key is in the answer once, never again.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ki2api.model.errors import GatewayError, InvalidRequest, NotFound
from ki2api.store import (
    OPERATOR_KEY_ID,
    USAGE_COLUMNS,
    KeyNameTaken,
    KeyRecord,
    StoreError,
    UsageCounts,
    UsageQuery,
    day_of,
)
from ki2api.teams.gate import Teams
from ki2api.teams.keys import (
    check_name,
    check_patterns,
    key_digest,
    key_hint,
    masked,
    new_key_id,
    new_secret,
)

FIELDS = frozenset(
    {
        "name",
        "models",
        "rpm",
        "tpm",
        "credits_per_day",
        "credits_per_month",
        "expires_at",
        "expires_in_days",
        "enabled",
    }
)
LATEST = 253402300799.0  # 9999-12-31T23:59:59Z: the last time a datetime can show
USAGE_FIELDS = ("day", "key", "key_id", "account", *USAGE_COLUMNS)  # a usage row, as shown


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_of(key: KeyRecord, now: float) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active" if key.enabled else "disabled"


def _unavailable(exc: StoreError) -> GatewayError:
    """The store cannot take a change now (the replicas' Redis is away): 503, its sentence."""
    return GatewayError(str(exc), code="store_unavailable", status=503)


def _bad(field: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {why}", param=field)


def _whole(field: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _bad(field, "a whole number above 0, or null for no limit")
    try:
        number = float(value)
    except ValueError:
        raise _bad(field, "a whole number above 0, or null for no limit") from None
    if number != int(number) or number < 1 or number > 10**12:
        raise _bad(field, "a whole number above 0, or null for no limit")
    return int(number)


def _amount(field: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _bad(field, "a number above 0, or null for no budget")
    try:
        number = float(value)
    except ValueError:
        raise _bad(field, "a number above 0, or null for no budget") from None
    if not 0 < number < 1e12:
        raise _bad(field, "a number above 0, or null for no budget")
    return number


def parse_time(field: str, value: Any) -> float | None:
    """ISO 8601 (a date: its midnight UTC), or Unix seconds; None stays None."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip():
        text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
        try:
            if len(text) == 10:
                day = date.fromisoformat(text)
                return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
            when = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    raise _bad(field, "an ISO 8601 time or date (2026-12-31T18:00Z, 2026-12-31), or null")


def _models(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _bad("models", "a list of model name patterns, e.g. ['claude-sonnet-*']")
    patterns = tuple(v.strip() for v in value if v.strip())
    problem = check_patterns(patterns)
    if problem is not None or len(patterns) > 100:
        raise _bad("models", problem or "at most 100 patterns")
    return patterns


def parse_changes(fields: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The key fields in ``fields``, checked and converted (only those given)."""
    unknown = sorted(set(fields) - FIELDS)
    if unknown:
        raise _bad(unknown[0], f"unknown field; a key has {', '.join(sorted(FIELDS))}")
    out: dict[str, Any] = {}
    if "name" in fields:
        name = fields["name"]
        problem = check_name(name) if isinstance(name, str) else "a key needs a name"
        if problem is not None:
            raise _bad("name", problem)
        out["name"] = name
    if "models" in fields:
        out["models"] = _models(fields["models"])
    for field in ("rpm", "tpm"):
        if field in fields:
            out[field] = _whole(field, fields[field])
    for field in ("credits_per_day", "credits_per_month"):
        if field in fields:
            out[field] = _amount(field, fields[field])
    if "expires_at" in fields and "expires_in_days" in fields:
        raise _bad("expires_at", "give expires_at or expires_in_days, not both")
    if "expires_at" in fields:
        out["expires_at"] = parse_time("expires_at", fields["expires_at"])
    if "expires_in_days" in fields:
        days = _amount("expires_in_days", fields["expires_in_days"])
        out["expires_at"] = None if days is None else now + days * 86400
    if out.get("expires_at") is not None and not 0 <= out["expires_at"] <= LATEST:
        field = "expires_at" if "expires_at" in fields else "expires_in_days"
        raise _bad(field, "a time between 1970 and 9999")
    if "enabled" in fields:
        enabled = fields["enabled"]
        if not isinstance(enabled, bool):
            raise _bad("enabled", "true or false")
        out["enabled"] = enabled
    return out


def _usage_view(counts: UsageCounts) -> dict[str, Any]:
    return {
        "requests": counts.requests,
        "errors": counts.errors,
        "refused": counts.refused,
        "input_tokens": counts.input_tokens,
        "output_tokens": counts.output_tokens,
        "cache_read_tokens": counts.cache_read_tokens,
        "cache_write_tokens": counts.cache_write_tokens,
        "credits": round(counts.credits, 4),
        "credits_estimated": round(counts.credits_estimated, 4),
    }


class KeyAdmin:
    """The operations on keys and usage; every answer is plain data."""

    def __init__(self, teams: Teams) -> None:
        self.teams = teams
        self.store = teams.store

    def _now(self) -> float:
        return self.teams.clock()

    def view(self, key: KeyRecord, today: UsageCounts, month: UsageCounts) -> dict[str, Any]:
        return {
            "id": key.id,
            "name": key.name,
            "key": masked(key.hint),
            "status": status_of(key, self._now()),
            "enabled": key.enabled,
            "created_at": iso(key.created_at),
            "last_used_at": iso(key.last_used_at),
            "expires_at": iso(key.expires_at),
            "revoked_at": iso(key.revoked_at),
            "models": list(key.models),
            "rpm": key.rpm,
            "tpm": key.tpm,
            "credits_per_day": key.credits_per_day,
            "credits_per_month": key.credits_per_month,
            "usage": {"today": _usage_view(today), "month": _usage_view(month)},
        }

    async def _this_month(self) -> tuple[str, dict[str, UsageCounts], dict[str, UsageCounts]]:
        today = day_of(self._now())
        rows = await self.store.usage(UsageQuery(since=today[:7] + "-01"))
        by_day: dict[str, UsageCounts] = {}
        by_month: dict[str, UsageCounts] = {}
        for row in rows:
            for table, wanted in ((by_month, True), (by_day, row.day == today)):
                if wanted:
                    table.setdefault(row.key_id, UsageCounts(row.day, row.key_id, "")).add(row)
        return today, by_day, by_month

    async def _views(self, keys: list[KeyRecord]) -> list[dict[str, Any]]:
        today, by_day, by_month = await self._this_month()

        def empty(key_id: str) -> UsageCounts:
            return UsageCounts(today, key_id, "")

        return [
            self.view(k, by_day.get(k.id) or empty(k.id), by_month.get(k.id) or empty(k.id))
            for k in keys
        ]

    async def find(self, ref: str) -> KeyRecord:
        """A key by id, or by name (the live key of that name, else the latest revoked one)."""
        keys = await self.store.list_keys()
        for key in keys:
            if key.id == ref:
                return key
        named = [k for k in keys if k.name == ref]
        named.sort(key=lambda k: (k.revoked_at is None, k.revoked_at or 0.0))
        if not named:
            raise NotFound(f"No key with the id or name {ref!r}.")
        return named[-1]

    async def create(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """A new key; the answer's ``secret`` is the key itself, shown this once."""
        now = self._now()
        values = parse_changes(fields, now)
        if "name" not in values:
            raise _bad("name", "a key needs a name")
        secret = new_secret()
        key = KeyRecord(
            id=new_key_id(),
            digest=key_digest(secret),
            hint=key_hint(secret),
            created_at=now,
            **values,
        )
        try:
            await self.store.add_key(key)
        except KeyNameTaken as exc:
            raise InvalidRequest(str(exc), param="name", code="key_exists", status=409) from None
        except StoreError as exc:
            raise _unavailable(exc) from None
        (view,) = await self._views([key])
        return {"secret": secret, **view}

    async def list_keys(self, *, include_revoked: bool = False) -> list[dict[str, Any]]:
        keys = [k for k in await self.store.list_keys() if include_revoked or k.revoked_at is None]
        return await self._views(keys)

    async def get(self, ref: str) -> dict[str, Any]:
        (view,) = await self._views([await self.find(ref)])
        return view

    async def update(self, ref: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        key = await self.find(ref)
        if key.revoked_at is not None:
            raise InvalidRequest(
                f"Key {key.name!r} is revoked; make a new one instead.", code="key_revoked"
            )
        values = parse_changes(fields, self._now())
        changed = replace(key, **values)
        try:
            await self.store.put_key(changed)
        except KeyNameTaken as exc:
            raise InvalidRequest(str(exc), param="name", code="key_exists", status=409) from None
        except StoreError as exc:
            raise _unavailable(exc) from None
        (view,) = await self._views([changed])
        return view

    async def revoke(self, ref: str) -> dict[str, Any]:
        """Revoke for good (the key answers 401 from now on); its usage stays."""
        key = await self.find(ref)
        if key.revoked_at is None:
            key = replace(key, revoked_at=self._now())
            try:
                await self.store.put_key(key)
            except StoreError as exc:
                raise _unavailable(exc) from None
        (view,) = await self._views([key])
        return view

    # --- usage ---------------------------------------------------------------------------

    async def usage(
        self,
        *,
        key: str | None = None,
        account: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> list[dict[str, Any]]:
        """Usage rows by day, key and account (``key``: an id or name; days ``YYYY-MM-DD``,
        inclusive)."""
        for field, day in (("from", since), ("to", until)):
            if day is not None:
                try:
                    date.fromisoformat(day)
                except ValueError:
                    raise _bad(field, "a day written YYYY-MM-DD") from None
        names = {k.id: k.name for k in await self.store.list_keys()}
        names[OPERATOR_KEY_ID] = "operator"
        key_id = None
        if key is not None:
            key_id = OPERATOR_KEY_ID if key == "operator" else (await self.find(key)).id
        rows = await self.store.usage(UsageQuery(key_id, account, since, until))
        out = [{"key": names.get(r.key_id, r.key_id), **r.to_dict()} for r in rows]
        out.sort(key=lambda r: (r["day"], r["key"], r["account"]))
        return out

    async def daily(self, ref: str, days: int = 30) -> list[dict[str, Any]]:
        """A key's usage on each of the last ``days`` days (UTC), oldest first, days without
        any included: what the page plots."""
        key_id = OPERATOR_KEY_ID if ref == "operator" else (await self.find(ref)).id
        end = datetime.fromtimestamp(self._now(), UTC).date()
        start = end - timedelta(days=days - 1)
        rows = await self.store.usage(UsageQuery(key_id=key_id, since=start.isoformat()))
        by_day: dict[str, UsageCounts] = {}
        for row in rows:
            by_day.setdefault(row.day, UsageCounts(row.day, key_id, "")).add(row)
        out = []
        for i in range(days):
            day = (start + timedelta(days=i)).isoformat()
            out.append({"day": day, **_usage_view(by_day.get(day) or UsageCounts(day, key_id, ""))})
        return out


def usage_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=USAGE_FIELDS, extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for row in rows:
        # A spreadsheet must not read a key's or account's name as a formula.
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
