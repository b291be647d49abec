"""``python -m ki2api.simulator``: run the Kiro simulator on its own and print its URL."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn

from ki2api.simulator.app import create_simulator_app
from ki2api.simulator.faults import FAULTS, RANDOM_FAULTS
from ki2api.simulator.server import bind_socket, make_config, url_for
from ki2api.simulator.state import SimulatorState

PROG = "python -m ki2api.simulator"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="A Kiro look-alike HTTP server for tests, benchmarks and demos. "
        "It never talks to AWS; every answer is simulated.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=9999, help="port (0 = any free port)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before each answer")
    parser.add_argument(
        "--chunk-interval-ms", type=float, default=0.0, help="between two frames (on a clock)"
    )
    parser.add_argument(
        "--require-known-tokens",
        action="store_true",
        help="accept only tokens the simulator issued (by default any bearer token works)",
    )
    parser.add_argument(
        "--fault-rate", type=float, default=0.0, help="share of chat requests given a random fault"
    )
    parser.add_argument(
        "--faults",
        default=",".join(RANDOM_FAULTS),
        help=f"comma-separated faults to draw from; known: {', '.join(FAULTS)}",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random faults")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    faults = [name.strip() for name in args.faults.split(",") if name.strip()]
    unknown = [name for name in faults if name not in FAULTS]
    if unknown:
        print(f"unknown fault(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    state = SimulatorState(
        latency=args.latency_ms / 1000,
        chunk_interval=args.chunk_interval_ms / 1000,
        require_known_tokens=args.require_known_tokens,
        fault_rate=args.fault_rate,
        fault_seed=args.seed,
        random_faults=faults,
    )
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        print(
            f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}; "
            f"pick another port with --port (0 = any free port)",
            file=sys.stderr,
        )
        return 1
    print(f"Ki2API Kiro simulator listening on {url_for(sock)}", flush=True)
    uvicorn.Server(make_config(create_simulator_app(state), log_level=args.log_level)).run(
        sockets=[sock]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
