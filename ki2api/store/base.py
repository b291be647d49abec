"""The store interface: what the gateway keeps across restarts, whatever keeps it.

Callers (``ki2api.teams``, the CLI, the runtime) use only this protocol, never SQL: the
embedded backend (:class:`ki2api.store.sqlite.SqliteStore`) and a shared one for several
replicas (issue 21) are interchangeable. The operations are the units that must be atomic:

- keys: add, find by digest (on every request: answer from memory where possible), list,
  replace, forget;
- ``admit``: check a request against a key's limits and count it, in one step, so that two
  requests racing for a key's last slot cannot both get it;
- ``record_usage``: what an answer used, counted at once against the key's limits (the next
  ``admit`` sees it) and persisted soon after, in batches (it never blocks);
- ``usage``: the stored rows, with what is still waiting in the batch included;
- accounts added at run time, and tokens that rotated: put, load, delete; the proxy an
  account was given at run time (any account, configured or not): put, load, delete;
- changes another process (the CLI) made: ``add_change_listener``'s callbacks are awaited
  within a few seconds of one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from ki2api.store.records import (
    KeyRecord,
    Limits,
    Refusal,
    StoredAccount,
    UsageCounts,
    UsageQuery,
)

ChangeListener = Callable[[], Awaitable[None]]


class StoreError(Exception):
    """The store cannot be used; the message is one sentence that says what to do."""


class KeyNameTaken(StoreError):
    """Another live key has this name."""


class Store(Protocol):
    location: str  # where the data lives, for messages (a path, a URL without credentials)
    persistent: bool  # False: the data is lost on restart (a Space without persistent storage)

    async def open(self) -> None:
        """Connect, check and migrate; raises :class:`StoreError` when the data is unusable."""
        ...

    async def aclose(self) -> None:
        """Persist everything still waiting, then disconnect."""
        ...

    # --- keys ---
    async def add_key(self, key: KeyRecord) -> None: ...

    async def find_key(self, digest: str) -> KeyRecord | None: ...

    async def list_keys(self) -> list[KeyRecord]: ...

    async def put_key(self, key: KeyRecord) -> None:
        """Replace the key with this id (name, limits, revocation, ...)."""
        ...

    def touch_key(self, key_id: str, when: float) -> None:
        """Note a key's last use; persisted with the next batch (never blocks)."""
        ...

    # --- limits and usage ---
    async def admit(self, key_id: str, limits: Limits, now: float) -> Refusal | None:
        """Check a request against ``limits`` and count it, atomically; None: admitted."""
        ...

    def record_usage(self, usage: UsageCounts, *, tpm: int | None = None) -> None:
        """Count what a request used (against the key's TPM bucket ``tpm`` and its credit
        budgets) and queue it for persisting. Never blocks."""
        ...

    async def spent(self, key_id: str, now: float) -> tuple[float, float]:
        """The key's credits spent today and this month (UTC)."""
        ...

    async def usage(self, query: UsageQuery) -> list[UsageCounts]: ...

    async def flush(self) -> None:
        """Persist what is waiting in the batch now."""
        ...

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Await ``listener`` after another process changed the stored data (keys, accounts,
        proxies: reload what you hold). A listener that raises is logged and kept."""
        ...

    # --- accounts ---
    async def load_accounts(self) -> list[StoredAccount]: ...

    async def put_account(self, account: StoredAccount, *, existing_only: bool = False) -> None:
        """Insert or replace the account; ``existing_only``: replace only a row still there (a
        token refresh must not bring back an account another process deleted)."""
        ...

    async def delete_account(self, label: str) -> None:
        """Forget the account and the proxy it was given at run time."""
        ...

    async def load_account_proxies(self) -> dict[str, str | None]:
        """The proxies accounts were given at run time, by label (None: ``KIRO_PROXY``)."""
        ...

    async def put_account_proxy(self, label: str, proxy: str | None) -> None: ...

    async def delete_account_proxy(self, label: str) -> None:
        """The account is back on the proxy its configuration names."""
        ...
