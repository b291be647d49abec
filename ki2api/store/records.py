"""The values a store keeps and answers with: plain frozen data, no I/O.

Times are Unix seconds (``time.time()``); days are UTC dates written ``YYYY-MM-DD`` and months
``YYYY-MM``, so a day's budget resets at midnight UTC for everyone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from ki2api.settings import Rate

OPERATOR_KEY_ID = "operator"  # API_KEY's usage rows: the operator's own key, never stored

_last_day: list[tuple[float, str]] = [(-1.0, "")]  # (the day's start, its name): one entry


def day_of(when: float) -> str:
    """The UTC day ``when`` falls on, ``YYYY-MM-DD``."""
    start, name = _last_day[0]
    if start <= when < start + 86400.0:
        return name  # the usual case: the same day as the last call
    start = when // 86400.0 * 86400.0
    name = time.strftime("%Y-%m-%d", time.gmtime(when))
    _last_day[0] = (start, name)
    return name


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A client key as stored: never the key itself, only its digest and last 4 characters."""

    id: str
    name: str
    digest: str  # SHA-256 of the key, hex (ki2api.teams.keys)
    hint: str  # the key's last 4 characters, to tell keys apart in a list
    created_at: float
    last_used_at: float | None = None
    expires_at: float | None = None
    revoked_at: float | None = None
    enabled: bool = True
    models: tuple[str, ...] = ()  # glob patterns ('claude-sonnet-*'); empty: every model
    rpm: int | None = None
    tpm: int | None = None
    credits_per_day: float | None = None
    credits_per_month: float | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """What :meth:`Store.admit` checks for one key; ``None`` is no limit."""

    rate: Rate | None = None  # requests (the key's RPM, else RATE_LIMIT)
    tpm: int | None = None  # input + output tokens per minute
    credits_per_day: float | None = None
    credits_per_month: float | None = None

    @property
    def unlimited(self) -> bool:
        return (
            self.rate is None
            and self.tpm is None
            and self.credits_per_day is None
            and self.credits_per_month is None
        )


LimitName = Literal["rpm", "tpm", "credits_per_day", "credits_per_month"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why :meth:`Store.admit` refused a request, and when trying again can help."""

    limit: LimitName
    retry_after: float  # seconds
    allowed: float  # the limit's value
    used: float  # how much of it was spent when the request came


@dataclass(slots=True)
class UsageCounts:
    """One row of usage: a key's requests on one account on one day (summed)."""

    day: str
    key_id: str
    account: str  # "" for requests that reached no account (refused, failed before)
    requests: int = 0
    errors: int = 0
    refused: int = 0  # refused by the key's limits (not counted in requests)
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    credits: float = 0.0  # Kiro's metering, plus estimates where it sent none
    credits_estimated: float = 0.0  # the part of ``credits`` that is estimated

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, other: UsageCounts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.refused += other.refused
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.credits += other.credits
        self.credits_estimated += other.credits_estimated

    def to_dict(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "key_id": self.key_id,
            "account": self.account,
            "requests": self.requests,
            "errors": self.errors,
            "refused": self.refused,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "credits": round(self.credits, 6),
            "credits_estimated": round(self.credits_estimated, 6),
        }


USAGE_COLUMNS = (
    "requests",
    "errors",
    "refused",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "credits",
    "credits_estimated",
)


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """Filters of :meth:`Store.usage`; days inclusive, ``None``: no bound."""

    key_id: str | None = None
    account: str | None = None
    since: str | None = None  # YYYY-MM-DD
    until: str | None = None


@dataclass(frozen=True, slots=True)
class StoredAccount:
    """An account added at run time (or whose tokens rotated), as the pool can load it again:
    ``data`` holds the fields ``KIRO_ACCOUNTS`` takes (tokens included)."""

    label: str
    data: dict[str, Any] = field(hash=False)
    updated_at: float = 0.0
