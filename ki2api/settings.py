"""Settings, read once from the environment (on a Space: its secrets and variables).

The names are part of the public interface and documented in the README. Nothing here holds
state: the app is built from a :class:`Settings` value (``create_app(settings)``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_API_KEY = "ki2api-key-2024"
DEFAULT_REGION = "us-east-1"


def default_token_file(environ: Mapping[str, str] | None = None) -> Path:
    """Where the Kiro IDE keeps its login, on Windows, macOS and Linux alike."""
    env = os.environ if environ is None else environ
    home = env.get("USERPROFILE") if os.name == "nt" else None
    base = Path(home) if home else Path(env.get("HOME") or Path.home())
    return base / ".aws" / "sso" / "cache" / "kiro-auth-token.json"


def token_dirs(environ: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """Folders the admin API may adopt login files from: the Kiro IDE's own login folder, and
    those listed in ``KIRO_TOKEN_DIRS`` (separated like ``PATH``: ``:``, or ``;`` on Windows)."""
    env = os.environ if environ is None else environ
    named = (env.get("KIRO_TOKEN_DIRS") or "").split(os.pathsep)
    return (default_token_file(env).parent, *(Path(d).expanduser() for d in named if d.strip()))


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    return float(raw) if raw not in (None, "") else default


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 10.0
    first_byte: float = 60.0  # the model may think a while before the first frame
    idle: float = 60.0  # longest silence between two frames
    refresh: float = 15.0


@dataclass(frozen=True, slots=True)
class Settings:
    # --- the gateway's own API ---
    api_key: str = DEFAULT_API_KEY
    api_key_is_default: bool = True
    admin_key: str | None = None  # unset: the admin API and the page's admin section are off
    metrics_public: bool = False  # /metrics without ADMIN_KEY
    host: str = "127.0.0.1"
    port: int = 8989
    on_space: bool = False
    space_host: str | None = None
    demo: bool = False
    log_level: str = "info"

    # --- Kiro credentials (the accounts module reads and extends these) ---
    kiro_access_token: str | None = None
    kiro_refresh_token: str | None = None
    kiro_token_file: Path = field(default_factory=default_token_file)
    kiro_token_file_explicit: bool = False
    kiro_token_dirs: tuple[Path, ...] = field(default_factory=token_dirs)
    kiro_auth_method: str | None = None  # social | idc
    kiro_client_id: str | None = None
    kiro_client_secret: str | None = None
    kiro_profile_arn: str | None = None
    kiro_accounts: str | None = None  # JSON list, or a path to a JSON file
    kiro_region: str = DEFAULT_REGION
    kiro_pool_strategy: str = "lru"  # lru | round_robin | first
    kiro_proxy: str | None = None  # e.g. http://127.0.0.1:7890 where AWS is reached via a proxy
    kiro_http_transport: str = "auto"  # auto (the lean transport) | httpx (httpx's own)

    # --- upstream URLs (all overridable; {region} is filled in) ---
    kiro_api_url: str = "https://codewhisperer.{region}.amazonaws.com/generateAssistantResponse"
    kiro_refresh_url: str = "https://prod.{region}.auth.desktop.kiro.dev/refreshToken"
    kiro_oidc_url: str = "https://oidc.{region}.amazonaws.com/token"
    kiro_mcp_url: str = "https://q.{region}.amazonaws.com/mcp"  # web search (MCP tools/call)
    # ListAvailableModels (POST / with x-amz-target); None: the management host, or the host of
    # KIRO_API_URL when that is set (a proxy or the simulator answers both)
    kiro_models_url: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)

    # --- limits ---
    max_body_bytes: int = 20 * 1024 * 1024
    upstream_attempts: int = 3
    max_image_bytes: int = 5 * 1024 * 1024
    # All of a request's images together, as sent upstream: base64 makes 600 KB about 800 KB of
    # the ~1.2 MB body Kiro takes (ki2api/kiro/wire/request_builder.py), leaving room for the text.
    image_budget_bytes: int = 600_000
    image_fetch_timeout: float = 10.0
    allow_private_image_urls: bool = False
    keepalive_interval: float = 15.0  # SSE comment / Anthropic ping while the upstream is silent
    max_messages: int = 10_000  # per request; 0 = no limit
    rate_limit: str | None = None  # per API key, e.g. "60/minute" (ki2api/api/limits.py)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; "*" = any
    max_concurrent_per_account: int = 16  # upstream requests in flight per account; 0 = no limit
    queue_timeout: float = 30.0  # longest wait for a free slot on an account
    yield_after_write: bool = True  # sched_yield after writing to a client (ki2api/api/endpoint.py)
    header_timeout: float = 10.0  # a connection's request head must be complete within this
    reasoning_secret: str | None = None  # HMAC key for Responses' encrypted reasoning items
    web_search_max_rounds: int = 5  # searches the gateway runs for the model in one answer

    # --- models (ki2api/kiro/wire/models.py, ki2api/kiro/accounts/available_models.py) ---
    model_aliases: str | None = None  # JSON object: client name -> model name
    model_fallback: str | None = None  # what an unknown name gets (e.g. "auto"); None: a 404
    kiro_models_ttl: float = 3600.0  # seconds an account's model list is trusted
    page_max_body_bytes: int = 1024 * 1024  # every route but the API's (the page's events)
    playground_max_share: float = 0.25  # of the pool's slots the page's chats may hold at once

    # --- state shared between replicas (ki2api/shared/); unset: everything stays in-process ---
    redis_url: str | None = None  # e.g. redis://:password@redis:6379/0
    redis_optional: bool = False  # Redis unreachable at start: run on local state, not exit
    redis_timeout: float = 0.5  # seconds any one Redis call may take before local state serves
    redis_prefix: str = "ki2api"  # key prefix: deployments sharing a Redis keep apart

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if environ is None else environ
        on_space = bool(env.get("SPACE_ID"))
        api_key = env.get("API_KEY") or DEFAULT_API_KEY
        token_file = env.get("KIRO_TOKEN_FILE")
        values: dict[str, object] = dict(
            api_key=api_key,
            api_key_is_default=not env.get("API_KEY"),
            admin_key=env.get("ADMIN_KEY") or None,
            metrics_public=_flag(env.get("METRICS_PUBLIC")),
            host=env.get("HOST") or ("0.0.0.0" if on_space else "127.0.0.1"),
            port=int(env.get("PORT") or (7860 if on_space else 8989)),
            on_space=on_space,
            space_host=env.get("SPACE_HOST") or None,
            demo=_flag(env.get("KI2API_DEMO")),
            log_level=(env.get("LOG_LEVEL") or "info").lower(),
            kiro_access_token=env.get("KIRO_ACCESS_TOKEN") or None,
            kiro_refresh_token=env.get("KIRO_REFRESH_TOKEN") or None,
            kiro_token_file=(
                Path(token_file).expanduser() if token_file else default_token_file(env)
            ),
            kiro_token_file_explicit=bool(token_file),
            kiro_token_dirs=token_dirs(env),
            kiro_auth_method=(env.get("KIRO_AUTH_METHOD") or "").lower() or None,
            kiro_client_id=env.get("KIRO_CLIENT_ID") or None,
            kiro_client_secret=env.get("KIRO_CLIENT_SECRET") or None,
            kiro_profile_arn=env.get("KIRO_PROFILE_ARN") or None,
            kiro_accounts=env.get("KIRO_ACCOUNTS") or None,
            kiro_region=env.get("KIRO_REGION") or DEFAULT_REGION,
            kiro_pool_strategy=(env.get("KIRO_POOL_STRATEGY") or "lru").strip().lower(),
            kiro_proxy=env.get("KIRO_PROXY") or None,
            kiro_http_transport=(env.get("KIRO_HTTP_TRANSPORT") or "auto").strip().lower(),
            timeouts=Timeouts(
                connect=_float(env, "KIRO_CONNECT_TIMEOUT", 10.0),
                first_byte=_float(env, "KIRO_FIRST_BYTE_TIMEOUT", 60.0),
                idle=_float(env, "KIRO_IDLE_TIMEOUT", 60.0),
            ),
            max_body_bytes=int(env.get("MAX_BODY_BYTES") or 20 * 1024 * 1024),
            max_image_bytes=int(env.get("MAX_IMAGE_BYTES") or 5 * 1024 * 1024),
            image_budget_bytes=int(env.get("IMAGE_BUDGET_BYTES") or 600_000),
            allow_private_image_urls=_flag(env.get("ALLOW_PRIVATE_IMAGE_URLS")),
            max_messages=int(env.get("MAX_MESSAGES") or 10_000),
            rate_limit=(env.get("RATE_LIMIT") or "").strip() or None,
            cors_origins=tuple(
                o.strip() for o in (env.get("CORS_ORIGINS") or "").split(",") if o.strip()
            ),
            max_concurrent_per_account=int(env.get("MAX_CONCURRENT_PER_ACCOUNT") or 16),
            queue_timeout=_float(env, "QUEUE_TIMEOUT", 30.0),
            yield_after_write=(env.get("YIELD_AFTER_WRITE") or "1").strip().lower()
            not in {"0", "false", "no", "off"},
            header_timeout=_float(env, "HEADER_TIMEOUT", 10.0),
            reasoning_secret=env.get("REASONING_SECRET") or None,
            web_search_max_rounds=int(env.get("WEB_SEARCH_MAX_ROUNDS") or 5),
            model_aliases=(env.get("MODEL_ALIASES") or "").strip() or None,
            model_fallback=(env.get("MODEL_FALLBACK") or "").strip() or None,
            kiro_models_ttl=_float(env, "KIRO_MODELS_TTL", 3600.0),
            page_max_body_bytes=int(env.get("PAGE_MAX_BODY_BYTES") or 1024 * 1024),
            playground_max_share=_float(env, "PLAYGROUND_MAX_SHARE", 0.25),
            redis_url=(env.get("REDIS_URL") or "").strip() or None,
            redis_optional=_flag(env.get("REDIS_OPTIONAL")),
            redis_timeout=_float(env, "REDIS_TIMEOUT", 0.5),
            redis_prefix=(env.get("REDIS_PREFIX") or "").strip() or "ki2api",
        )
        for name, url_var in (
            ("kiro_api_url", "KIRO_API_URL"),
            ("kiro_refresh_url", "KIRO_REFRESH_URL"),
            ("kiro_oidc_url", "KIRO_OIDC_URL"),
            ("kiro_mcp_url", "KIRO_MCP_URL"),
            ("kiro_models_url", "KIRO_MODELS_URL"),
        ):
            if env.get(url_var):
                values[name] = env[url_var]
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def url(self, template: str, region: str | None = None) -> str:
        return template.replace("{region}", region or self.kiro_region)
