"""The limits' arithmetic, in memory and without I/O: what ``Store.admit`` decides.

Per key:

- requests: a token bucket holding ``rate.requests``, refilled over ``rate.period`` (the key's
  RPM, or ``RATE_LIMIT``); a request takes one, and waits ``(1 - level) / refill`` when none is
  left, like ``RATE_LIMIT`` always did;
- tokens per minute: a bucket of ``tpm`` refilled over a minute, spent by the tokens of answers
  as they end (it may go below zero: a long answer is never cut, the key waits longer after
  it); a request is admitted while a whole token is left;
- credits per day and per month: totals for the current UTC day and month, compared with the
  budgets; spent as answers end; they reset at midnight UTC and on the first of the month.

A refused request takes nothing. The first backend keeps these in its own memory (one process);
another backend (issue 21's Redis) does the same sums where its replicas share them.
"""

from __future__ import annotations

import calendar
import time

from ki2api.store.records import Limits, Refusal

_MINUTE = 60.0


class KeyCounters:
    __slots__ = (
        "day_ends",
        "requests",
        "requests_at",
        "tokens",
        "tokens_at",
        "day",
        "day_credits",
        "month",
        "month_credits",
    )

    def __init__(self, now: float) -> None:
        self.requests: float | None = None  # bucket level; None: full (not used yet)
        self.requests_at = now
        self.tokens: float | None = None
        self.tokens_at = now
        self.day_ends = 0.0  # when the current day of credits ends (UTC midnight)
        self.day = ""
        self.day_credits = 0.0
        self.month = ""
        self.month_credits = 0.0

    def roll(self, now: float) -> None:
        """Start a new day (and month) of credits once the old one is over."""
        if self.day_ends > now >= self.day_ends - 86400.0:
            return  # the same day: no calendar arithmetic on the request path
        self.day_ends = (now // 86400.0 + 1.0) * 86400.0
        t = time.gmtime(now)
        day = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
        if day != self.day:
            self.day, self.day_credits = day, 0.0
            month = day[:7]
            if month != self.month:
                self.month, self.month_credits = month, 0.0


def _refill(level: float | None, since: float, now: float, capacity: float, rate: float) -> float:
    if level is None:
        return capacity
    return min(capacity, level + max(0.0, now - since) * rate)


def take_one(
    level: float | None, since: float, now: float, capacity: float, rate: float
) -> tuple[float, float]:
    """A token bucket's new level after taking one token, and 0; or, when less than one is
    left, its level and the seconds until one is there."""
    level = _refill(level, since, now, capacity, rate)
    if level >= 1.0:
        return level - 1.0, 0.0
    return level, (1.0 - level) / rate


def seconds_to_next_day(now: float) -> float:
    return 86400.0 - now % 86400.0


def seconds_to_next_month(now: float) -> float:
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0)) - now


class Counters:
    """Every key's counters: ``admit`` checks and counts a request, ``spend`` what it used."""

    def __init__(self) -> None:
        self._keys: dict[str, KeyCounters] = {}

    def _get(self, key_id: str, now: float) -> KeyCounters:
        counters = self._keys.get(key_id)
        if counters is None:
            counters = self._keys[key_id] = KeyCounters(now)
        counters.roll(now)
        return counters

    def seed(self, key_id: str, now: float, day_credits: float, month_credits: float) -> None:
        """The credits already spent today and this month (from the stored usage)."""
        counters = self._get(key_id, now)
        counters.day_credits = day_credits
        counters.month_credits = month_credits

    def admit(self, key_id: str, limits: Limits, now: float) -> Refusal | None:
        c = self._get(key_id, now)
        budget = limits.credits_per_day
        if budget is not None and c.day_credits >= budget:
            return Refusal("credits_per_day", seconds_to_next_day(now), budget, c.day_credits)
        budget = limits.credits_per_month
        if budget is not None and c.month_credits >= budget:
            return Refusal("credits_per_month", seconds_to_next_month(now), budget, c.month_credits)
        tpm = limits.tpm
        if tpm is not None:
            refill = tpm / _MINUTE
            level = _refill(c.tokens, c.tokens_at, now, float(tpm), refill)
            c.tokens, c.tokens_at = level, now
            if level < 1.0:
                return Refusal("tpm", (1.0 - level) / refill, tpm, tpm - level)
        rate = limits.rate
        if rate is not None:
            capacity = float(rate.requests)
            c.requests, wait = take_one(c.requests, c.requests_at, now, capacity, rate.per_second)
            c.requests_at = now
            if wait > 0:
                return Refusal("rpm", wait, rate.requests, capacity - c.requests)
        return None

    def spend(self, key_id: str, tokens: int, credits: float, now: float, tpm: int | None) -> None:
        c = self._get(key_id, now)
        c.day_credits += credits
        c.month_credits += credits
        if tpm is not None and tokens:
            level = _refill(c.tokens, c.tokens_at, now, float(tpm), tpm / _MINUTE)
            c.tokens, c.tokens_at = level - tokens, now

    def spent(self, key_id: str, now: float) -> tuple[float, float]:
        """Credits spent today and this month."""
        c = self._get(key_id, now)
        return c.day_credits, c.month_credits

    def forget(self, key_id: str) -> None:
        self._keys.pop(key_id, None)
