"""The ``ki2api`` command (also ``python -m ki2api``): serve, simulate, accounts, keys, usage,
settings, deploy.

Each subcommand is a thin shell over a module that does the work; imports are lazy so that
``--help`` is instant and a broken optional part never stops the others.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ki2api import __version__
from ki2api.cli.accounts import account_commands, accounts_command
from ki2api.cli.keys import key_commands, keys_command
from ki2api.cli.table import print_table

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

    account_commands(sub)

    key_commands(sub)
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
    print_table(["VARIABLE", "VALUE", "FROM"], rows)
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
    "accounts": accounts_command,
    "keys": keys_command,
    "usage": keys_command,
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
