"""Plain tables and times for the command's listings."""

from __future__ import annotations

from datetime import UTC, datetime


def expiry(when: datetime | None, now: datetime | None = None) -> str:
    """``2026-01-01 12:00Z (in 42 min)`` / ``... (expired 3 h ago)`` / ``unknown``."""
    if when is None:
        return "unknown"
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    span = abs(seconds)
    if span >= 2 * 86400:
        amount = f"{span / 86400:.0f} d"
    elif span >= 5400:
        amount = f"{span / 3600:.0f} h"
    else:
        amount = f"{span / 60:.0f} min"
    relative = f"in {amount}" if seconds >= 0 else f"expired {amount} ago"
    return f"{when.astimezone(UTC):%Y-%m-%d %H:%MZ} ({relative})"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )
