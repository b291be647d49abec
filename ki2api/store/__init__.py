"""Stored state: client keys, usage, accounts added at run time (see :mod:`ki2api.store.base`).

Layer: above ``model`` and ``settings``, below ``kiro``; it imports nothing else of ours.
"""

from ki2api.store.base import KeyNameTaken, Store, StoreError
from ki2api.store.records import (
    OPERATOR_KEY_ID,
    KeyRecord,
    Limits,
    Rate,
    Refusal,
    StoredAccount,
    UsageCounts,
    UsageQuery,
    day_of,
    parse_rate,
)
from ki2api.store.sqlite import DB_NAME, SqliteStore

__all__ = [
    "DB_NAME",
    "OPERATOR_KEY_ID",
    "KeyNameTaken",
    "KeyRecord",
    "Limits",
    "Rate",
    "Refusal",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoredAccount",
    "UsageCounts",
    "UsageQuery",
    "day_of",
    "parse_rate",
]
