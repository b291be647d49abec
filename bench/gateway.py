"""Ki2API as the benchmark runs it: its own process, served exactly as ``python app.py``
serves it (``ki2api.server.run.serve``: uvicorn, uvloop and httptools when installed), without the
Gradio UI, in front of the benchmark's simulator, with one account and no per-account cap.

    python -m bench.gateway --port 8990 --upstream http://127.0.0.1:8991

The scale-out phase (:mod:`bench.scaleout`) runs it with ``--redis-url`` (shared state), and
with ``--cap`` / ``--rate-limit`` so that every request takes the per-request paths that
shared state changes (a place in the account's cap, a token from the key's bucket).
"""

from __future__ import annotations

import argparse

from bench.contenders import CONTENDERS, use_contender
from ki2api.server.run import serve
from ki2api.settings import Settings

API_KEY = "bench-api-key-0123456789"


def settings_for(
    upstream: str, port: int, log_level: str, extra: dict[str, str] | None = None
) -> Settings:
    return Settings.from_env(
        {
            "API_KEY": API_KEY,
            "KIRO_API_URL": f"{upstream}/generateAssistantResponse",
            "KIRO_REFRESH_URL": f"{upstream}/refreshToken",
            "KIRO_OIDC_URL": f"{upstream}/token",
            "KIRO_ACCESS_TOKEN": "bench-access-token",
            "LOG_LEVEL": log_level,
            # One simulated account carries the whole load: the per-account concurrency cap
            # (a policy against Kiro's throttling, default 16) would only measure queueing.
            "MAX_CONCURRENT_PER_ACCOUNT": "0",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            **(extra or {}),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Ki2API for the benchmark")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the simulator's base URL")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--client",
        choices=CONTENDERS,
        help="the upstream HTTP client to use instead of the app's own (bench/contenders.py)",
    )
    parser.add_argument("--redis-url", help="share state through this Redis (REDIS_URL)")
    parser.add_argument("--cap", type=int, default=0, help="MAX_CONCURRENT_PER_ACCOUNT")
    parser.add_argument("--rate-limit", help="RATE_LIMIT, e.g. 10000000/minute")
    args = parser.parse_args()
    if args.client:
        use_contender(args.client)
    extra = {"MAX_CONCURRENT_PER_ACCOUNT": str(args.cap)}
    if args.redis_url:
        extra["REDIS_URL"] = args.redis_url
    if args.rate_limit:
        extra["RATE_LIMIT"] = args.rate_limit
    serve(settings_for(args.upstream, args.port, args.log_level, extra), with_ui=False)


if __name__ == "__main__":
    main()
