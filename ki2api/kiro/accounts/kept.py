"""Accounts added at run time, and proxies set at run time, kept in the store
(:mod:`ki2api.store`) across restarts.

An account added through the admin API, the page or the CLI is stored with its tokens, stored
again each time its tokens are refreshed (so the refresh token Kiro rotated is the one used
after a restart; only while its row is there: a refresh never brings back an account another
process removed), and deleted with it; one that lives in a login file is stored as that file's
path (the file keeps its tokens). A proxy set at run time on any account (``pool.set_proxy``) is
stored apart, by label, and holds over the one the account's configuration names until it is
set back to ``configured``. At start, :meth:`StoredAccounts.restore` adds the stored accounts
back after the configured ones (one that duplicates a configured account is skipped), then
applies the stored proxies.

Another process (the CLI) may change the store while the server runs: the store tells
:meth:`StoredAccounts.changed`, and the pool catches up — accounts added there are added,
accounts removed there are removed (only those this process saw stored: one whose first write
is still on its way stays), proxies set there are applied, proxies undone there go back to the
configured one.

Writes and catch-ups go through one task in order (a refresh's write never overtakes a
removal's), off the request path; ``aclose`` waits for the last of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ki2api.kiro.accounts.credentials import AccountSpec, spec_fields
from ki2api.kiro.accounts.pool import AccountPool
from ki2api.kiro.accounts.proxy import check_account_proxy
from ki2api.model.errors import GatewayError
from ki2api.store import Store, StoredAccount

log = logging.getLogger("ki2api.accounts")


def stored_account(spec: AccountSpec, when: float | None = None) -> StoredAccount:
    """How an account added at run time is stored: its fields (tokens, own proxy) and source."""
    data = {"source": spec.source, **spec_fields(spec)}
    return StoredAccount(spec.label, data, time.time() if when is None else when)


def stored_proxy(proxy: str | None) -> str | None:
    """A stored proxy as the pool takes it; ``ValueError`` (never showing credentials) for
    one that cannot be used (a file edited by hand, an older Ki2API's rules)."""
    return None if proxy is None else check_account_proxy(proxy)


@dataclass(slots=True)
class _Job:
    what: str  # for the log: "store account x"
    run: Callable[[], Awaitable[None]]
    account: str | None = None  # a label whose row this job adds or deletes
    proxy: str | None = None  # a label whose proxy row this job writes


class StoredAccounts:
    """The pool's :class:`ki2api.kiro.accounts.pool.AccountKeeper` on a store, and the pool's
    view of the store kept up with other processes' changes (:meth:`changed`)."""

    def __init__(self, store: Store, pool: AccountPool) -> None:
        self.store = store
        self.pool = pool
        self._loop = asyncio.get_running_loop()  # the page's sync handlers call from threads
        self._jobs: deque[_Job] = deque()
        self._writer: asyncio.Task[None] | None = None
        # What this process knows is stored: account rows (label -> updated_at, as read or
        # written here) and proxy rows. A catch-up compares the store with these.
        self._seen: dict[str, float] = {}
        self._proxies: dict[str, str | None] = {}
        # Labels with a write on its way: a catch-up leaves them to it.
        self._adding: Counter[str] = Counter()
        self._proxying: Counter[str] = Counter()
        self._refused: dict[str, float] = {}  # stored accounts the pool refused (by updated_at)
        self._following = False
        self._catch_up_queued = False
        self.failed = 0  # writes that failed (logged): the CLI's exit code says so

    # --- the keeper (called by the pool; never blocks) ---------------------------------------

    def keep(self, spec: AccountSpec, *, existing_only: bool = False) -> None:
        label = spec.label

        async def put() -> None:
            row = stored_account(spec)
            await self.store.put_account(row, existing_only=existing_only)
            if not existing_only or label in self._seen:
                self._seen[label] = row.updated_at

        self._submit(_Job(f"store account {label}", put, None if existing_only else label))

    def forget(self, label: str) -> None:
        async def delete() -> None:
            await self.store.delete_account(label)  # its proxy row too
            self._seen.pop(label, None)
            self._proxies.pop(label, None)

        self._submit(_Job(f"delete account {label}", delete, label, label))

    def keep_proxy(self, label: str, proxy: str | None) -> None:
        async def put() -> None:
            await self.store.put_account_proxy(label, proxy)
            self._proxies[label] = proxy

        self._submit(_Job(f"store the proxy of account {label}", put, proxy=label))

    def forget_proxy(self, label: str) -> None:
        async def delete() -> None:
            await self.store.delete_account_proxy(label)
            self._proxies.pop(label, None)

        self._submit(_Job(f"delete the proxy of account {label}", delete, proxy=label))

    def _submit(self, job: _Job) -> None:
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self._loop:
            self._enqueue(job)
        else:
            self._loop.call_soon_threadsafe(self._enqueue, job)

    def _enqueue(self, job: _Job) -> None:
        if job.account is not None:
            self._adding[job.account] += 1
        if job.proxy is not None:
            self._proxying[job.proxy] += 1
        self._jobs.append(job)
        if self._writer is None or self._writer.done():
            self._writer = self._loop.create_task(self._write())

    async def _write(self) -> None:
        while self._jobs:
            job = self._jobs.popleft()
            try:
                await job.run()
            except Exception:  # the account still works from memory; say so, go on
                self.failed += 1
                log.exception("could not %s", job.what)
            finally:
                if job.account is not None:
                    self._adding[job.account] -= 1
                    if not self._adding[job.account]:
                        del self._adding[job.account]
                if job.proxy is not None:
                    self._proxying[job.proxy] -= 1
                    if not self._proxying[job.proxy]:
                        del self._proxying[job.proxy]

    async def settled(self) -> None:
        """Wait until every write and catch-up queued so far is done."""
        while self._writer is not None and not self._writer.done():
            await self._writer

    async def aclose(self) -> None:
        self._following = False
        await self.settled()

    # --- the store's contents into the pool -----------------------------------------------

    async def restore(self) -> int:
        """Add the stored accounts to the pool, then apply the stored proxies to the accounts
        there; how many accounts were added."""
        added = await self._catch_up(starting=True)
        if added:
            log.info("%d account(s) added at run time restored from %s", added, self.store.location)
        return added

    def follow(self) -> None:
        """From now on, catch up with the changes other processes make to the store."""
        self._following = True
        self.store.add_change_listener(self.changed)

    def stop_following(self) -> None:
        self._following = False

    async def changed(self) -> None:
        """The store's change listener: catch up, in turn with the writes queued before."""
        if not self._following or self._catch_up_queued:
            return
        self._catch_up_queued = True

        async def catch_up() -> None:
            self._catch_up_queued = False
            await self._catch_up(starting=False)

        self._enqueue(_Job("catch up with the accounts stored by another process", catch_up))

    async def _catch_up(self, *, starting: bool) -> int:
        rows = {row.label: row for row in await self.store.load_accounts()}
        proxies = await self.store.load_account_proxies()
        # From here to the end nothing awaits: the pool and the counts of writes on their way
        # stay as they are while they are compared.
        pool, added = self.pool, 0
        for label, row in rows.items():
            if label in self._adding:
                continue  # this process writes it (a removal, or an add not yet seen)
            known = self._seen.get(label)
            self._seen[label] = row.updated_at
            account = pool.account(label)
            if account is None:
                if self._refused.get(label) != row.updated_at and self._adopt(row):
                    added += 1
                    if not starting:
                        log.info("account %s added by another process", label)
            elif not pool.kept(label):
                if starting:  # a configured account has the label
                    log.warning("stored account %s not restored: its label is taken", label)
            elif known is not None and known != row.updated_at:
                log.info("account %s replaced by another process", label)
                self._adopt(row, replace=True)
        for label in [label for label in self._seen if label not in rows]:
            if label in self._adding:
                continue
            del self._seen[label]
            self._refused.pop(label, None)
            if pool.account(label) is not None and pool.kept(label):
                pool.remove_account(label, from_store=True)
                log.info("account %s removed by another process", label)
        for label in {*proxies, *self._proxies}:
            if label in self._proxying:
                continue
            account = pool.account(label)
            if label not in proxies:
                self._proxies.pop(label, None)
                if account is not None:
                    pool.use_proxy(label, account.configured_proxy)
                continue
            self._proxies[label] = proxies[label]
            if account is None:
                if starting:
                    log.warning(
                        "a proxy is stored for account %s, which is not configured; ignored", label
                    )
                continue
            try:
                pool.use_proxy(label, stored_proxy(proxies[label]))
            except ValueError as exc:
                log.error("the stored proxy of account %s is unusable (%s); ignored", label, exc)
        return added

    def _adopt(self, row: StoredAccount, *, replace: bool = False) -> bool:
        fields = dict(row.data)
        source = str(fields.pop("source", "admin"))
        if source.startswith("file:"):
            source = "admin"  # one added as a login file's path: the path is what is stored
        try:
            self.pool.add_account(
                fields, label=row.label, source=source, replace_existing=replace, from_store=True
            )
        except GatewayError as exc:
            self._refused[row.label] = row.updated_at
            log.warning("stored account %s not restored: %s", row.label, exc.message)
            return False
        self._refused.pop(row.label, None)
        return True


__all__ = ["StoredAccounts", "stored_account", "stored_proxy"]
