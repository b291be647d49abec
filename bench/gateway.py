"""Ki2API as the benchmark runs it: its own process, served exactly as ``python app.py``
serves it (``ki2api.server.run.serve``: uvicorn, uvloop and httptools when installed), without the
Gradio UI, in front of the benchmark's simulator, with one account and no per-account cap.

    python -m bench.gateway --port 8990 --upstream http://127.0.0.1:8991

``bench/teams.py`` adds ``--accounts 4 --admin-key K`` (several accounts; keys made through the
admin API) and ``--unaccounted`` (client keys and usage accounting switched off: the baseline
the accounting is measured against).

The scale-out phase (:mod:`bench.scaleout`) runs it with ``--redis-url`` (shared state), and
with ``--cap`` / ``--rate-limit`` so that every request takes the per-request paths that
shared state changes (a place in the account's cap, a token from the key's bucket).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import orjson

from bench.contenders import CONTENDERS, use_contender
from ki2api.model.context import RequestContext
from ki2api.server.run import serve
from ki2api.settings import Settings
from ki2api.store import SqliteStore
from ki2api.teams.gate import KeyCaller, Teams

API_KEY = "bench-api-key-0123456789"


def settings_for(
    upstream: str,
    port: int,
    log_level: str,
    extra: dict[str, str] | None = None,
    *,
    accounts: int = 1,
    admin_key: str | None = None,
) -> Settings:
    env = {
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
    if accounts > 1:
        del env["KIRO_ACCESS_TOKEN"]
        env["KIRO_ACCOUNTS"] = orjson.dumps(
            [
                {"label": f"bench-{i}", "accessToken": f"bench-access-token-{i}"}
                for i in range(accounts)
            ]
        ).decode()
    if admin_key:
        env["ADMIN_KEY"] = admin_key
    if "DATA_DIR" in os.environ:  # each gateway its own store (bench/teams.py runs three)
        env["DATA_DIR"] = os.environ["DATA_DIR"]
    return Settings.from_env(env)


class Unaccounted(Teams):
    """No client keys, no limits, no usage: what the gateway did before them (its store, in
    memory, only answers the start's question for accounts added at run time: none)."""

    def __init__(self, settings: Settings, store: Any = None, **kwargs: Any) -> None:
        super().__init__(settings, SqliteStore(":memory:"), **kwargs)

    async def find(self, presented: str) -> KeyCaller | None:
        return None

    async def admit(self, ctx: RequestContext, requested: str, model: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description="Ki2API for the benchmark")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the simulator's base URL")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--accounts", type=int, default=1, help="simulated Kiro accounts")
    parser.add_argument("--admin-key", help="ADMIN_KEY (the admin API: keys, usage)")
    parser.add_argument(
        "--unaccounted", action="store_true", help="no client keys and no usage accounting"
    )
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
    if args.unaccounted:
        import ki2api.runtime

        ki2api.runtime.Teams = Unaccounted  # type: ignore[misc]
    extra = {"MAX_CONCURRENT_PER_ACCOUNT": str(args.cap)}
    if args.redis_url:
        extra["REDIS_URL"] = args.redis_url
    if args.rate_limit:
        extra["RATE_LIMIT"] = args.rate_limit
    settings = settings_for(
        args.upstream,
        args.port,
        args.log_level,
        extra,
        accounts=args.accounts,
        admin_key=args.admin_key,
    )
    serve(settings, with_ui=False)


if __name__ == "__main__":
    main()
