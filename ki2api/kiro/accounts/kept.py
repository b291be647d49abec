"""Accounts added at run time, kept in the store (:mod:`ki2api.store`) across restarts.

An account added through the admin API or the page is stored with its tokens, stored again
each time its tokens are refreshed (so the refresh token Kiro rotated is the one used after a
restart), and deleted with it; one that lives in a login file is stored as that file's path
(the file keeps its tokens). At start, :func:`restore` adds them back after the configured
accounts; one that duplicates a configured account is skipped.

Writes go through one task in order (a refresh's write never overtakes a removal's), off the
request path; ``aclose`` waits for the last of them.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ki2api.kiro.accounts.credentials import AccountSpec, spec_fields
from ki2api.kiro.accounts.pool import AccountPool
from ki2api.model.errors import GatewayError
from ki2api.store import Store, StoredAccount

log = logging.getLogger("ki2api.accounts")


class StoredAccounts:
    """The pool's :class:`ki2api.kiro.accounts.pool.AccountKeeper` on a store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._loop = asyncio.get_running_loop()  # the page's sync handlers call from threads
        self._writes: asyncio.Queue[tuple[str, AccountSpec | None]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    def keep(self, spec: AccountSpec) -> None:
        self._put(spec.label, spec)

    def forget(self, label: str) -> None:
        self._put(label, None)

    def keep_proxy(self, label: str, proxy: str | None) -> None:
        pass  # not stored yet: held in memory until the next start

    def forget_proxy(self, label: str) -> None:
        pass

    def _put(self, label: str, spec: AccountSpec | None) -> None:
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self._loop:
            self._enqueue(label, spec)
        else:
            self._loop.call_soon_threadsafe(self._enqueue, label, spec)

    def _enqueue(self, label: str, spec: AccountSpec | None) -> None:
        self._writes.put_nowait((label, spec))
        if self._writer is None or self._writer.done():
            self._writer = self._loop.create_task(self._write())

    async def _write(self) -> None:
        while not self._writes.empty():
            label, spec = self._writes.get_nowait()
            try:
                if spec is None:
                    await self.store.delete_account(label)
                else:
                    data = {"source": spec.source, **spec_fields(spec)}
                    await self.store.put_account(StoredAccount(label, data, time.time()))
            except Exception:  # the account still works from memory; say so, go on
                log.exception("could not store account %s", label)

    async def aclose(self) -> None:
        if self._writer is not None:
            await self._writer


async def restore(pool: AccountPool, store: Store) -> int:
    """Add the stored accounts back to the pool; how many were added."""
    added = 0
    for stored in await store.load_accounts():
        fields = dict(stored.data)
        source = str(fields.pop("source", "admin"))
        if source.startswith("file:"):
            source = "admin"  # one added as a login file's path: the path is what is stored
        try:
            pool.add_account(fields, label=stored.label, source=source)
        except GatewayError as exc:
            log.warning("stored account %s not restored: %s", stored.label, exc.message)
            continue
        added += 1
    if added:
        log.info("%d account(s) added at run time restored from %s", added, store.location)
    return added
