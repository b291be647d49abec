"""The ``ki2api`` command (also ``python -m ki2api``): serve, simulate, accounts, deploy.

Each subcommand is a thin shell over a module that does the work; imports are lazy so that
``--help`` is instant and a broken optional part never stops the others.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ki2api import __version__

DESCRIPTION = "OpenAI- and Anthropic-compatible gateway to the Claude models behind a Kiro account."


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0-65535)")
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

    simulate = sub.add_parser(
        "simulate",
        help="run the Kiro simulator alone",
        description="Run the Kiro look-alike server (python -m ki2api.simulator); "
        "any further arguments go to it.",
        add_help=False,
    )
    simulate.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    accounts = sub.add_parser(
        "accounts",
        help="list the Kiro credentials found (masked), with expiry and state",
        description="List the Kiro credentials the gateway would use, from the same "
        "environment and login file as `serve`. Tokens are masked.",
    )
    accounts.add_argument(
        "--refresh", action="store_true", help="refresh every account's access token now"
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
    from ki2api.server import serve
    from ki2api.settings import Settings

    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.demo:
        overrides["demo"] = True
    serve(Settings.from_env(None, **overrides))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    import runpy

    # The simulator owns its options; hand it the rest of the command line.
    sys.argv = ["ki2api simulate", *args.args]
    try:
        runpy.run_module("ki2api.simulator", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def _accounts(args: argparse.Namespace) -> int:
    from ki2api.cli_accounts import run_accounts

    return run_accounts(refresh=args.refresh)


def _deploy(args: argparse.Namespace) -> int:
    from ki2api.deploy import DeployError, DeployOptions, deploy

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


_COMMANDS = {"serve": _serve, "simulate": _simulate, "accounts": _accounts, "deploy": _deploy}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("Stopped.", file=sys.stderr)
        return 130
