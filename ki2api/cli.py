"""The ``ki2api`` command (also ``python -m ki2api``): serve, simulate, accounts, keys, usage,
settings, deploy.

Each subcommand is a thin shell over a module that does the work; imports are lazy so that
``--help`` is instant and a broken optional part never stops the others.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ki2api import __version__

if TYPE_CHECKING:
    from ki2api.kiro.accounts.account import AccountStatus
    from ki2api.kiro.accounts.kept import StoredAccounts
    from ki2api.kiro.accounts.pool import AccountPool
    from ki2api.settings import Settings

DESCRIPTION = "OpenAI- and Anthropic-compatible gateway to the Claude models behind a Kiro account."


def _port(value: str) -> int:
    port = int(value)
    if not 1 <= port <= 65535:  # as PORT (ki2api/settings.py)
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1-65535)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ki2api", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"ki2api {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the gateway (what app.py does)",
        description="Run the gateway: the API under /v1 and the web page at /. "
        "Settings come from the environment (see the README); options override them.",
    )
    serve.add_argument("--host", help="address to listen on (default: HOST or 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port to listen on (default: PORT or 8989)")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="answer from the built-in Kiro simulator (no Kiro account needed)",
    )

    sub.add_parser(
        "simulate",
        help="run the Kiro simulator alone",
        description="Run the Kiro look-alike server (python -m ki2api.simulator); "
        "any further arguments go to it.",
        add_help=False,
    )

    _account_commands(sub)

    _key_commands(sub)
    settings = sub.add_parser(
        "settings",
        help="check the settings in the environment (secrets masked)",
        description="Read the settings from the environment as `serve` would and list them, "
        "secrets masked; each bad value is one line and exit code 2. --markdown prints the "
        "README's settings table instead.",
    )
    settings.add_argument(
        "--markdown",
        nargs="?",
        const="en",
        choices=["en", "zh"],
        help="print the README's table of every setting (zh: the Chinese one)",
    )
    settings.add_argument(
        "--update-readme",
        nargs="?",
        const=Path("README.md"),
        type=Path,
        metavar="PATH",
        help="rewrite the generated tables in README.md (or PATH) from the declarations",
    )

    deploy = sub.add_parser(
        "deploy",
        help="create or update a Hugging Face Space running this checkout",
        description="Create or update a Gradio Space, upload the app, set its secrets from "
        "your Kiro login plus a generated API_KEY (printed once), wait until it runs, and "
        "print the base URL and a test command.",
    )
    deploy.add_argument(
        "--space",
        required=True,
        metavar="OWNER/NAME",
        help="the Space to create or update (NAME alone: under your own user)",
    )
    deploy.add_argument("--private", action="store_true", help="create the Space as private")
    deploy.add_argument(
        "--token",
        metavar="HF_TOKEN",
        help="Hugging Face write token (default: HF_TOKEN or hf login)",
    )
    deploy.add_argument(
        "--api-key", metavar="KEY", help="use this API_KEY instead of generating one"
    )
    deploy.add_argument(
        "--new-api-key",
        action="store_true",
        help="replace the Space's existing API_KEY with a new generated one",
    )
    deploy.add_argument(
        "--kiro-token-file",
        type=Path,
        metavar="PATH",
        help="Kiro login file to ship (default: KIRO_* variables, else "
        "~/.aws/sso/cache/kiro-auth-token.json)",
    )
    deploy.add_argument(
        "--code-only",
        action="store_true",
        help="upload the app only and leave the Space's secrets alone",
    )
    deploy.add_argument("--no-wait", action="store_true", help="do not wait for the Space to start")
    deploy.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="how long to wait for the Space to start (default: 900)",
    )
    deploy.add_argument(
        "--source",
        type=Path,
        metavar="DIR",
        help="the checkout to upload (default: the one this ki2api runs from)",
    )
    deploy.add_argument(
        "--endpoint", metavar="URL", help="Hugging Face endpoint (default: HF_ENDPOINT or the Hub)"
    )
    return parser


def _account_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


OFF = "off"  # a limit option's value for "no limit"


def _limit(kind: type[int] | type[float]) -> Callable[[str], int | float | str]:
    def parse(value: str) -> int | float | str:
        if value.strip().lower() in ("off", "none", "no"):
            return OFF
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number (or 'off')") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"{value} is not above 0 (write 'off' for no limit)")
        return number

    return parse


def _key_options(parser: argparse.ArgumentParser, *, creating: bool) -> None:
    parser.add_argument("--name", required=creating, help="the key's name, e.g. alice")
    parser.add_argument(
        "--models",
        metavar="PATTERNS",
        help="comma-separated model patterns the key may use, e.g. 'claude-sonnet-*' "
        "(default: every model; 'off' removes the list)",
    )
    parser.add_argument("--rpm", type=_limit(int), help="requests per minute")
    parser.add_argument("--tpm", type=_limit(int), help="tokens (input + output) per minute")
    parser.add_argument(
        "--credits-per-day", type=_limit(float), metavar="CREDITS", help="Kiro credits a day (UTC)"
    )
    parser.add_argument(
        "--credits-per-month", type=_limit(float), metavar="CREDITS", help="Kiro credits a month"
    )
    expiry = parser.add_mutually_exclusive_group()
    expiry.add_argument(
        "--expires", metavar="WHEN", help="expiry, ISO 8601 (2026-12-31 or 2026-12-31T18:00Z)"
    )
    expiry.add_argument("--expires-in-days", type=_limit(float), metavar="DAYS")
    if not creating:
        expiry.add_argument("--no-expiry", action="store_true", help="remove the expiry")
    state = parser.add_mutually_exclusive_group()
    state.add_argument("--disable", action="store_true", help="refuse the key until enabled")
    if not creating:
        state.add_argument("--enable", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _key_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser(
        "keys",
        help="make, list, change and revoke client keys (in DATA_DIR; with REDIS_URL, Redis)",
        description="Client keys for the people sharing this gateway, each with its own limits "
        "and usage. Works on the database in DATA_DIR, the one the server uses (a running "
        "server sees the change within a few seconds), or with REDIS_URL on the replicas' "
        "Redis (every replica sees it within a second). A new key is printed once.",
    )
    actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="make a key (printed once)")
    _key_options(create, creating=True)
    listing = actions.add_parser("list", help="every key (masked), with today's usage")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    listing.add_argument("--json", action="store_true", help="print JSON")
    update = actions.add_parser("update", help="change a key's name, limits, expiry or state")
    update.add_argument("key", metavar="KEY", help="the key's name or id")
    _key_options(update, creating=False)
    revoke = actions.add_parser("revoke", help="revoke a key for good (its usage stays)")
    revoke.add_argument("key", metavar="KEY", help="the key's name or id")
    revoke.add_argument("--json", action="store_true", help="print JSON")

    usage = sub.add_parser(
        "usage",
        help="usage by day, key and account (from DATA_DIR)",
        description="Requests, errors, refusals, tokens and Kiro credits by day (UTC), key and "
        "account, from the database in DATA_DIR.",
    )
    usage.add_argument("--key", help="one key (name or id; 'operator' for API_KEY)")
    usage.add_argument("--account", help="one account's label")
    usage.add_argument("--from", dest="since", metavar="YYYY-MM-DD", help="first day")
    usage.add_argument("--to", dest="until", metavar="YYYY-MM-DD", help="last day")
    shape = usage.add_mutually_exclusive_group()
    shape.add_argument("--csv", action="store_true", help="print CSV")
    shape.add_argument("--json", action="store_true", help="print JSON")


def _key_fields(args: argparse.Namespace) -> dict[str, object]:
    fields: dict[str, object] = {}
    for option in ("name", "rpm", "tpm", "credits_per_day", "credits_per_month"):
        value = getattr(args, option)
        if value is not None:
            fields[option] = None if value == OFF else value  # '--rpm off': no limit
    if args.models is not None:
        off = args.models.strip().lower() in ("off", "none", "")
        fields["models"] = [] if off else args.models
    if args.expires is not None:
        fields["expires_at"] = args.expires
    if args.expires_in_days is not None:
        days = args.expires_in_days
        fields["expires_in_days" if days != OFF else "expires_at"] = None if days == OFF else days
    if getattr(args, "no_expiry", False):
        fields["expires_at"] = None
    if args.disable:
        fields["enabled"] = False
    if getattr(args, "enable", False):
        fields["enabled"] = True
    return fields


def _keys(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_run_keys(args))


async def _run_keys(args: argparse.Namespace) -> int:
    import orjson

    from ki2api.model.errors import GatewayError
    from ki2api.server.run import settings_or_exit
    from ki2api.store import StoreError
    from ki2api.teams.gate import Teams
    from ki2api.teams.manage import KeyAdmin, usage_csv

    teams = Teams(settings_or_exit())
    try:
        await teams.open()
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    admin = KeyAdmin(teams)
    try:
        if args.command == "usage":
            rows = await admin.usage(
                key=args.key, account=args.account, since=args.since, until=args.until
            )
            if args.csv:
                print(usage_csv(rows), end="")
            elif args.json:
                print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
            else:
                _print_usage(rows)
            return 0
        if args.action == "list":
            keys = await admin.list_keys(include_revoked=args.all)
        elif args.action == "create":
            made = await admin.create(_key_fields(args))
            if not args.json:
                print(f"Key {made['name']!r} (shown once: copy it now):\n\n    {made['secret']}\n")
            keys = [made]
        elif args.action == "update":
            fields = _key_fields(args)
            if not fields:
                print("error: nothing to change (see --help)", file=sys.stderr)
                return 1
            keys = [await admin.update(args.key, fields)]
        else:
            keys = [await admin.revoke(args.key)]
        if args.json:
            print(orjson.dumps(keys if args.action == "list" else keys[0]).decode())
        else:
            _print_keys(keys)
        return 0
    except GatewayError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await teams.aclose()


def _limit_text(value: object, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}" if isinstance(value, float) else f"{value}"


def _print_keys(keys: list[dict[str, object]]) -> None:
    rows = []
    for k in keys:
        usage = k["usage"]
        assert isinstance(usage, dict)
        today, month = usage["today"], usage["month"]
        models = k["models"]
        assert isinstance(models, list)
        rows.append(
            [
                str(k["name"]),
                str(k["key"]),
                str(k["status"]),
                ",".join(models) or "*",
                _limit_text(k["rpm"]),
                _limit_text(k["tpm"]),
                f"{today['credits']:.2f}/{_limit_text(k['credits_per_day'])}",
                f"{month['credits']:.2f}/{_limit_text(k['credits_per_month'])}",
                str(today["requests"]),
                str(k["expires_at"] or "-"),
                str(k["last_used_at"] or "-"),
            ]
        )
    _print_table(
        [
            "NAME",
            "KEY",
            "STATUS",
            "MODELS",
            "RPM",
            "TPM",
            "CREDITS TODAY",
            "CREDITS MONTH",
            "REQUESTS TODAY",
            "EXPIRES",
            "LAST USED",
        ],
        rows,
    )


def _print_usage(rows: list[dict[str, object]]) -> None:
    _print_table(
        ["DAY", "KEY", "ACCOUNT", "REQUESTS", "ERRORS", "REFUSED", "IN", "OUT", "CREDITS"],
        [
            [
                str(r["day"]),
                str(r["key"]),
                str(r["account"] or "-"),
                str(r["requests"]),
                str(r["errors"]),
                str(r["refused"]),
                str(r["input_tokens"]),
                str(r["output_tokens"]),
                f"{r['credits']:.4f}" + (" (est.)" if r["credits_estimated"] else ""),
            ]
            for r in rows
        ],
    )


def _serve(args: argparse.Namespace) -> int:
    from ki2api.server.run import serve, settings_or_exit

    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.demo:
        overrides["demo"] = True
    serve(settings_or_exit(**overrides))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    try:
        from ki2api.simulator.__main__ import main as simulator_main
    except ImportError:
        print("error: this installation has no Kiro simulator (ki2api.simulator).", file=sys.stderr)
        return 1
    # The simulator owns its options (--port, --latency-ms, faults, ...): pass the rest on.
    try:
        return simulator_main(args.args, prog="ki2api simulate")
    except SystemExit as exc:  # its own --help or a usage error
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def _accounts(args: argparse.Namespace) -> int:
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
    _print_table(ACCOUNT_COLUMNS, rows)
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
            [s.label, s.source, s.auth_method, s.token, _expiry(s.expires_at), proxy, s.description]
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
        _print_table(ACCOUNT_COLUMNS, rows)
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


def _expiry(when: datetime | None, now: datetime | None = None) -> str:
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


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def _settings(args: argparse.Namespace) -> int:
    from ki2api import settings as declarations

    if args.markdown:
        print(declarations.markdown_table(args.markdown))
        return 0
    if args.update_readme:
        path: Path = args.update_readme
        text = path.read_text(encoding="utf-8")
        try:
            updated = declarations.with_tables(text)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if updated != text:
            path.write_text(updated, encoding="utf-8")
        print(f"{path}: {'updated' if updated != text else 'already up to date'}")
        return 0
    return _show_settings()


def _show_settings() -> int:
    import os

    from ki2api.kiro.accounts.credentials import mask_secret
    from ki2api.server.run import settings_or_exit
    from ki2api.settings import EnvironSource, Settings, declared

    settings = settings_or_exit()
    given = EnvironSource(Settings, os.environ)()
    rows = []
    for item in declared():
        value = item.value(settings)
        if item.secret:
            shown = ("set " + mask_secret(value)) if value else "–"
        elif isinstance(value, bool):
            shown = "on" if value else "off"
        elif isinstance(value, float):
            shown = f"{value:g}"
        elif isinstance(value, tuple):
            shown = ", ".join(str(part) for part in value) or "–"
        else:
            shown = "–" if value is None else str(value)
        rows.append([item.env, shown, "default" if item.raw(given) is None else "set"])
    _print_table(["VARIABLE", "VALUE", "FROM"], rows)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from ki2api.deploy.space import DeployError, DeployOptions, deploy

    extra: dict[str, object] = {"root": args.source.resolve()} if args.source else {}
    options = DeployOptions(
        space=args.space,
        private=args.private,
        token=args.token,
        api_key=args.api_key,
        new_api_key=args.new_api_key,
        kiro_token_file=args.kiro_token_file,
        code_only=args.code_only,
        wait=not args.no_wait,
        timeout=args.timeout,
        endpoint=args.endpoint,
        **extra,  # type: ignore[arg-type]
    )
    try:
        deploy(options, say=lambda line: print(line, flush=True))
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


_COMMANDS = {
    "serve": _serve,
    "simulate": _simulate,
    "accounts": _accounts,
    "keys": _keys,
    "usage": _keys,
    "settings": _settings,
    "deploy": _deploy,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "simulate":
        args.args = extra  # the simulator parses its own options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("Stopped.", file=sys.stderr)
        return 130
