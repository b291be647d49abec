"""``ki2api accounts``: list the Kiro accounts, add or remove one, set one's proxy, on the store
in DATA_DIR (a running server follows within a few seconds)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ki2api.cli.table import expiry, print_table

if TYPE_CHECKING:
    from ki2api.kiro.accounts.account import AccountStatus
    from ki2api.kiro.accounts.kept import StoredAccounts
    from ki2api.kiro.accounts.pool import AccountPool
    from ki2api.settings import Settings


def account_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    accounts = sub.add_parser(
        "accounts",
        help="list the Kiro accounts (masked); add or remove one, set one's proxy",
        description="Without ACTION: list the Kiro accounts the gateway would use, from the "
        "same environment and login file as `serve` plus those added at run time and the "
        "proxies set at run time (kept in DATA_DIR). Tokens and proxy passwords are masked. "
        "The actions work on the database in DATA_DIR, as `keys` does: a running server "
        "picks the change up within a few seconds.",
    )
    accounts.add_argument(
        "--refresh", action="store_true", help="refresh every account's access token now"
    )
    actions = accounts.add_subparsers(dest="action", metavar="ACTION")
    add = actions.add_parser(
        "add",
        allow_abbrev=False,  # "--token TOKEN" must not pass for --token-file
        help="add an account (kept in DATA_DIR)",
        description="Add a Kiro account, kept in DATA_DIR with its tokens as Kiro rotates "
        "them. Tokens are read from a file or stdin, never from the command line.",
    )
    add.add_argument("--label", help="the account's label (default: from the JSON, or added)")
    add.add_argument(
        "--proxy",
        metavar="URL",
        help="its own outbound proxy: a URL as KIRO_PROXY takes (with credentials if needed), "
        "or direct (default: KIRO_PROXY)",
    )
    given = add.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="a Kiro login file (kiro-auth-token.json): the account reads and writes it",
    )
    given.add_argument(
        "--json",
        metavar="FILE",
        help="a file ('-': stdin) holding the account's fields as JSON, a "
        "kiro-auth-token.json's contents, or a token / API key",
    )
    remove = actions.add_parser(
        "remove",
        help="remove an account added at run time",
        description="Remove an account added at run time (admin API, page or `accounts add`); "
        "a configured one is removed where it is configured.",
    )
    remove.add_argument("label", metavar="LABEL")
    proxy = actions.add_parser(
        "proxy",
        help="set an account's outbound proxy (kept in DATA_DIR)",
        description="Route an account's calls (chats, token refreshes, credits) through "
        "another proxy: a URL, direct (none), default (KIRO_PROXY) or configured (back to the "
        "one its configuration names). Holds over its configuration across restarts.",
    )
    proxy.add_argument("label", metavar="LABEL")
    proxy.add_argument("proxy", metavar="URL|direct|default|configured")


def accounts_command(args: argparse.Namespace) -> int:
    import asyncio

    if args.action is None:
        return asyncio.run(_list_accounts(refresh=args.refresh))
    if args.refresh:
        print(f"error: --refresh lists the accounts; not with {args.action}", file=sys.stderr)
        return 2
    return asyncio.run(_change_accounts(args))


Accounts = tuple["Settings", "AccountPool", "StoredAccounts | None"]


@contextlib.asynccontextmanager
async def _account_pool(*, changing: bool) -> AsyncIterator[Accounts]:
    """The accounts as a server on this DATA_DIR would have them: configured ones, then those
    kept in the store, with the stored proxies; the pool's changes are written to the store
    when ``changing`` (a store that cannot be opened: :class:`StoreError`). Listing does not
    make a database that is not there, and only warns about one it cannot use."""
    from ki2api.kiro.accounts.kept import StoredAccounts
    from ki2api.kiro.accounts.pool import AccountPool
    from ki2api.kiro.http.client import UpstreamHttp
    from ki2api.server.run import settings_or_exit
    from ki2api.store import StoreError
    from ki2api.teams.gate import local_store

    settings = settings_or_exit()
    store = local_store(settings)
    async with UpstreamHttp(settings) as http:
        pool = AccountPool.from_settings(settings, http)
        kept: StoredAccounts | None = None
        try:
            if changing or (store.file is not None and store.file.exists()):
                try:
                    await store.open()
                except StoreError as exc:
                    if changing:
                        raise
                    print(f"warning: {exc}", file=sys.stderr)
                else:
                    kept = StoredAccounts(store, pool)
                    await kept.restore()
                    pool.keeper = kept
            yield settings, pool, kept
        finally:
            await pool.aclose()
            if kept is not None:
                await kept.aclose()  # the writes queued by the pool's changes
            await store.aclose()


async def _list_accounts(*, refresh: bool) -> int:
    from ki2api.kiro.accounts.pool import NOT_CONFIGURED_MESSAGE
    from ki2api.model.errors import GatewayError

    failed = False
    async with _account_pool(changing=False) as (settings, pool, kept):
        for problem in pool.problems:
            print(f"warning: {problem}", file=sys.stderr)
        statuses = pool.snapshot()
        if not statuses:
            print(NOT_CONFIGURED_MESSAGE.format(path=settings.kiro_token_file), file=sys.stderr)
            return 1
        if refresh:  # an account added at run time: its rotated tokens go back to the store
            for status in statuses:
                try:
                    await pool.refresh_account(status.label)
                    print(f"refreshed {status.label}")
                except GatewayError as exc:
                    failed = True
                    print(f"could not refresh {status.label}: {exc.message}", file=sys.stderr)
            statuses = pool.snapshot()
        rows = _account_rows(settings, pool, statuses)
    if kept is not None and kept.failed:
        print(f"error: could not write to {kept.store.location} (see above)", file=sys.stderr)
        return 2
    print_table(ACCOUNT_COLUMNS, rows)
    return 1 if failed else 0


ACCOUNT_COLUMNS = ["ACCOUNT", "SOURCE", "METHOD", "TOKEN", "EXPIRES", "PROXY", "STATE"]


def _account_rows(
    settings: Settings, pool: AccountPool, statuses: list[AccountStatus]
) -> list[list[str]]:
    rows = []
    for s in statuses:
        proxy = s.proxy or ("default" if settings.kiro_proxy else "-")
        account = pool.account(s.label)
        if account is not None and account.spec.proxy != account.configured_proxy:
            proxy += " (set at run time)"
        rows.append(
            [s.label, s.source, s.auth_method, s.token, expiry(s.expires_at), proxy, s.description]
        )
    return rows


async def _change_accounts(args: argparse.Namespace) -> int:
    from ki2api.model.errors import GatewayError, InvalidRequest, NotFound
    from ki2api.store import StoreError

    rows: list[list[str]] = []
    try:
        async with _account_pool(changing=True) as (settings, pool, kept):
            if args.action == "add":
                status = await _add_account(args, settings, pool)
                rows = _account_rows(settings, pool, [status])
            elif args.action == "remove":
                label = args.label
                found = [s for s in pool.snapshot() if s.label == label]
                if not found:
                    raise NotFound(f"no account labelled {label!r}")
                if not pool.kept(label):
                    raise InvalidRequest(
                        f"account {label!r} is configured in {_configured_where(found[0].source)}"
                        ", not added at run time: remove it there, then restart the server"
                    )
                pool.remove_account(label)
            else:
                value = args.proxy.strip()
                status = pool.set_proxy(args.label, None if value.lower() == "default" else value)
                rows = _account_rows(settings, pool, [status])
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    assert kept is not None  # the store opened
    if kept.failed:
        print(f"error: could not write to {kept.store.location} (see above)", file=sys.stderr)
        return 2
    if rows:
        print_table(ACCOUNT_COLUMNS, rows)
    else:
        print(f"removed {args.label}")
    print(f"Kept in {kept.store.location}; a running server follows within a few seconds.")
    return 0


def _configured_where(source: str) -> str:
    """Where a configured account comes from, for a message (no secret in it)."""
    if source == "env":
        return "the environment (KIRO_ACCESS_TOKEN / KIRO_REFRESH_TOKEN)"
    if source.startswith("file:"):
        return f"the login file {source[5:]} (KIRO_TOKEN_FILE or a KIRO_ACCOUNTS tokenFile)"
    return source  # KIRO_ACCOUNTS[i], or the file KIRO_ACCOUNTS names with its index


async def _add_account(
    args: argparse.Namespace, settings: Settings, pool: AccountPool
) -> AccountStatus:
    """Read the account as ``POST /admin/accounts`` takes it (ki2api/kiro/accounts/
    credentials.py checks it) and add it to ``pool``, whose keeper stores it."""
    import asyncio
    from dataclasses import replace

    import orjson

    from ki2api.kiro.accounts.credentials import (
        CredentialError,
        parse_pasted_token,
        token_file_of,
    )
    from ki2api.kiro.accounts.proxy import check_account_proxy
    from ki2api.kiro.accounts.tokenfile import load_login_file
    from ki2api.model.errors import InvalidRequest

    given: Any
    if args.token_file is not None:
        given = {"tokenFile": str(args.token_file)}
    else:
        try:
            text = sys.stdin.read() if args.json == "-" else Path(args.json).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"cannot read {args.json}: {exc}") from None
        try:
            given = orjson.loads(text)
        except orjson.JSONDecodeError:
            given = text  # a bare token or key, as pasted
    try:
        if isinstance(given, dict):
            path = token_file_of(given)
            if path is not None:  # a login the account reads and writes: it must be one
                real = path.resolve()
                await asyncio.to_thread(
                    load_login_file, real, label="check", source="cli", settings=settings
                )
                given = {k: v for k, v in given.items() if k not in ("tokenFile", "token_file")}
                given["tokenFile"] = str(real)
            if args.proxy is not None:
                given["proxy"] = args.proxy
            return pool.add_account(given, label=args.label, source="cli")
        if not isinstance(given, str):
            raise InvalidRequest(
                "the JSON must be an account's fields, a kiro-auth-token.json's contents, or a "
                "token / key as a string"
            )
        label = args.label or pool.free_label("added")
        spec = parse_pasted_token(given, settings, label=label)
        if args.proxy is not None:
            try:
                spec = replace(spec, proxy=check_account_proxy(args.proxy))
            except ValueError as exc:
                raise InvalidRequest(f"proxy: {exc}", param="proxy") from None
        return pool.add_account(spec, source="cli")
    except (CredentialError, OSError, ValueError) as exc:
        where = f" ({args.token_file or args.json})" if not isinstance(exc, CredentialError) else ""
        raise InvalidRequest(f"not a usable Kiro account{where}: {exc}") from None
