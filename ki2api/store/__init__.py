"""The gateway's stored state (SQLite in ``DATA_DIR``): client keys, usage, accounts added at
run time (see :mod:`ki2api.store.base`), and its backup (:mod:`ki2api.store.backup`).

Layer: with ``model`` and ``settings``, below ``kiro``; of ours it imports only ``settings``.
"""

from ki2api.settings import Rate  # RATE_LIMIT's syntax; a key's RPM is one too
from ki2api.store.base import ChangeListener, KeyNameTaken, Store, StoreError
from ki2api.store.records import (
    OPERATOR_KEY_ID,
    USAGE_COLUMNS,
    KeyRecord,
    Limits,
    Refusal,
    StoredAccount,
    UsageCounts,
    UsageQuery,
    day_of,
)
from ki2api.store.sqlite import DB_NAME, SqliteStore

__all__ = [
    "DB_NAME",
    "ChangeListener",
    "OPERATOR_KEY_ID",
    "USAGE_COLUMNS",
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
]
