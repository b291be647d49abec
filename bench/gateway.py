"""Ki2API as the benchmark runs it: its own process, served exactly as ``python app.py``
serves it (``ki2api.server.run.serve``: uvicorn, uvloop and httptools when installed), without the
Gradio UI, in front of the benchmark's simulator, with one account and no per-account cap.

    python -m bench.gateway --port 8990 --upstream http://127.0.0.1:8991
"""

from __future__ import annotations

import argparse

from bench.contenders import CONTENDERS, use_contender
from ki2api.server.run import serve
from ki2api.settings import Settings

API_KEY = "bench-api-key-0123456789"


def settings_for(upstream: str, port: int, log_level: str) -> Settings:
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
    args = parser.parse_args()
    if args.client:
        use_contender(args.client)
    serve(settings_for(args.upstream, args.port, args.log_level), with_ui=False)


if __name__ == "__main__":
    main()
