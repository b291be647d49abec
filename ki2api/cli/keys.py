"""``ki2api keys`` and ``ki2api usage``: client keys and their usage, on the store the server
uses (DATA_DIR, or Redis with REDIS_URL)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ki2api.cli.table import print_table

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


def key_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def keys_command(args: argparse.Namespace) -> int:
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
    print_table(
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
    print_table(
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
