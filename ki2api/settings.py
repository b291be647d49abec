"""Settings, read once from the environment (on a Space: its secrets and variables).

The variable names are part of the public interface: the README's *Configuration* table is
generated from the declarations below. Nothing here holds state: the app is built from a
:class:`Settings` value (``create_app(settings)``).

How a setting is declared (one declaration each; keep to this shape when adding one)::

    port: int = setting(8989, "PORT", "where to listen", ge=1, le=65535, on_space=7860)

- The annotation is the type the variable's text becomes: ``int``, ``float``, ``bool``
  (``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``), ``Literal[...]`` for a
  choice (matched case-insensitively), ``str | None`` for an optional text, ``Path``.
- ``setting(default, "ENV_NAME", "description", **rules)``. The rules are pydantic's (``ge``,
  ``le``, ``gt``, ``default_factory``) and ours: ``unit`` ("seconds" or "bytes"), ``must`` (what
  a good value looks like, when the type and range do not say it), ``secret`` (the value is
  never shown: not in errors, ``repr`` or ``ki2api settings``), ``on_space`` (the default on a
  Hugging Face Space), ``shown`` (the table's default column, when the value does not speak for
  itself), ``zh`` (a Chinese description: the setting is then listed in the README's 常用设置
  table as well).
- A check beyond type and range is a ``@field_validator`` under the fields that raises
  ``ValueError``; the error the operator reads is built from the declaration (``ENV_NAME must
  be <must> (got "...")``), so the validator's own text does not matter.
- ``internal(default, "description")`` declares a field that is not read from the environment
  (set by :meth:`Settings.from_env` or by code and tests).
- After adding or changing one, run ``python -m ki2api settings --update-readme``;
  tests/test_settings.py fails while the README's tables differ from the declarations.

For example, a file that must exist and a folder::

    kiro_ca_bundle: Path | None = setting(
        None,
        "KIRO_CA_BUNDLE",
        "a PEM file of extra certificate authorities to trust for Kiro",
        must="the path of a PEM file",
    )
    data_dir: Path = setting(Path("data"), "DATA_DIR", "where ... is kept", must="a folder")

    @field_validator("kiro_ca_bundle")
    @classmethod
    def _ca_bundle(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_file():
            raise ValueError("not a file")
        return value

and a bad one reads ``KIRO_CA_BUNDLE must be the path of a PEM file (got "/etc/no.pem")``.

``Settings(...)`` takes the fields by name and reads nothing else (tests build it so);
:meth:`Settings.from_env` reads the environment, or the mapping it is given. Settings are
frozen pydantic models, and :meth:`Settings.replace` makes a changed, re-checked copy. A field
is an instance attribute: reading one runs no code of pydantic's (only a name that is not a
field reaches its ``__getattr__``), though that hook makes each read some 30-50 ns slower than
a slots dataclass's; the request path reads a handful per request.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_API_KEY = "ki2api-key-2024"
DEFAULT_REGION = "us-east-1"
DEFAULT_KIRO_API_URL = "https://codewhisperer.{region}.amazonaws.com/generateAssistantResponse"

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
PoolStrategy = Literal["lru", "round_robin", "first"]
AuthMethod = Literal["social", "idc", "api_key"]
# How login files and KIRO_AUTH_METHOD may spell a method (the Kiro IDE writes several).
AUTH_METHOD_SPELLINGS: Mapping[str, AuthMethod] = {
    "social": "social",
    "github": "social",
    "google": "social",
    "idc": "idc",
    "builderid": "idc",
    "builder_id": "idc",
    "iam_identity_center": "idc",
    "sso": "idc",
    "api_key": "api_key",
    "apikey": "api_key",
}


def auth_method_named(raw: str) -> AuthMethod | None:
    """``"Builder-ID"`` → ``"idc"``; ``None`` for a spelling nobody uses."""
    return AUTH_METHOD_SPELLINGS.get(raw.strip().lower().replace("-", "_"))


def default_token_file(environ: Mapping[str, str] | None = None) -> Path:
    """Where the Kiro IDE keeps its login, on Windows, macOS and Linux alike."""
    env = os.environ if environ is None else environ
    home = env.get("USERPROFILE") if os.name == "nt" else None
    base = Path(home) if home else Path(env.get("HOME") or Path.home())
    return base / ".aws" / "sso" / "cache" / "kiro-auth-token.json"


SPACE_DATA = Path("/data")  # where a Space's persistent storage is mounted, when it has one


def user_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The user's data folder for Ki2API, on Windows, macOS and Linux alike."""
    env = os.environ if environ is None else environ
    home = Path(env.get("USERPROFILE" if os.name == "nt" else "HOME") or Path.home())
    if os.name == "nt":
        return Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local") / "ki2api"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "ki2api"
    return Path(env.get("XDG_DATA_HOME") or home / ".local" / "share") / "ki2api"


def space_has_storage(root: Path | None = None) -> bool:
    """A Space with persistent storage has it mounted, writable, at ``/data``."""
    root = root or SPACE_DATA
    return root.is_dir() and os.access(root, os.W_OK)


def default_data_dir(environ: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """Where the store keeps its database when ``DATA_DIR`` is unset, and whether it outlives a
    restart: on a Space, ``/data`` when persistent storage is attached (else the container's
    disk, which a restart wipes); elsewhere the user's data folder."""
    env = os.environ if environ is None else environ
    if (env.get("SPACE_ID") or "").strip():
        if space_has_storage():
            return SPACE_DATA, True
        return user_data_dir(env), False
    return user_data_dir(env), True


# --- RATE_LIMIT's syntax (ki2api/api/limits.py applies it) ------------------------------------

_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d*)\s*(second|minute|hour|day)s?\s*$", re.I)


@dataclass(frozen=True, slots=True)
class Rate:
    requests: int
    period: float  # seconds

    @property
    def per_second(self) -> float:
        return self.requests / self.period


def parse_rate(text: str) -> Rate:
    """``"60/minute"``, ``"10/second"``, ``"1000/day"``, ``"100/5minutes"`` → :class:`Rate`."""
    match = _RATE.match(text)
    if match is None or int(match.group(1)) <= 0 or int(match.group(2) or 1) <= 0:
        raise ValueError(
            f"RATE_LIMIT={text!r} is not a rate: write it like '60/minute' "
            "(second, minute, hour or day)"
        )
    count, multiple, unit = match.groups()
    return Rate(int(count), _PERIODS[unit.lower()] * int(multiple or 1))


# --- the declaration helpers ------------------------------------------------------------------


def setting(
    default: Any = None,
    env: str = "",
    description: str = "",
    *,
    unit: Literal["seconds", "bytes"] | None = None,
    must: str | None = None,
    secret: bool = False,
    on_space: Any = None,
    shown: str | None = None,
    zh: str | None = None,
    **rules: Any,
) -> Any:
    """One setting read from the variable ``env``; see the module's docstring."""
    extra = {
        key: value
        for key, value in (
            ("unit", unit),
            ("must", must),
            ("secret", secret or None),
            ("on_space", on_space),
            ("shown", shown),
            ("zh", zh),
        )
        if value is not None
    }
    if "default_factory" not in rules:
        rules["default"] = default
    if isinstance(default, float):
        rules.setdefault("allow_inf_nan", False)  # "nan" and "inf" parse as floats
    return Field(
        validation_alias=env or None,
        description=description,
        json_schema_extra=extra or None,
        repr=not secret,
        **rules,
    )


def internal(default: Any, description: str, **rules: Any) -> Any:
    """A field not read from the environment: :meth:`Settings.from_env`, code or tests set it."""
    return Field(default, description=description, **rules)


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _env_name(info: FieldInfo) -> str | None:
    alias = info.validation_alias
    return alias if isinstance(alias, str) else None


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _url(value: Any, schemes: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        parts = urlsplit(value.replace("{region}", DEFAULT_REGION))
        if parts.scheme.lower() not in schemes or not parts.hostname:
            raise ValueError("not a URL")
    return value


def _paths(value: Any) -> Any:
    if isinstance(value, str):  # separated like PATH
        return tuple(part for part in value.split(os.pathsep) if part.strip())
    return value


URL_RULE = "an http:// or https:// URL"


# --- the settings -----------------------------------------------------------------------------


class Timeouts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True)

    connect: float = setting(
        10.0,
        "KIRO_CONNECT_TIMEOUT",
        "seconds to connect to Kiro",
        unit="seconds",
        gt=0,
    )
    first_byte: float = setting(
        60.0,
        "KIRO_FIRST_BYTE_TIMEOUT",
        "seconds to the first byte of Kiro's answer (the model may think a while first)",
        unit="seconds",
        gt=0,
    )
    idle: float = setting(
        60.0,
        "KIRO_IDLE_TIMEOUT",
        "longest silence, in seconds, between two frames of Kiro's answer",
        unit="seconds",
        gt=0,
    )
    refresh: float = internal(15.0, "seconds for a token refresh or an account call", gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        validate_by_name=True,  # Settings(port=...) as well as the variable's name
        validate_default=False,  # the declared defaults are right; only given values are checked
    )

    # --- the gateway's own API ---
    api_key: str = setting(
        DEFAULT_API_KEY,
        "API_KEY",
        "the key clients send (`x-api-key: …` or `Authorization: Bearer …`)",
        secret=True,
        shown=f"`{DEFAULT_API_KEY}` (refused on a Space)",
        zh="客户端使用的密钥（`x-api-key` 或 `Authorization: Bearer`）；公开部署务必修改",
        min_length=1,
    )
    api_key_is_default: bool = internal(True, "API_KEY was not set")
    admin_key: str | None = setting(
        None,
        "ADMIN_KEY",
        "key for `/admin/accounts`, `/metrics` and the page's admin sign-in; while unset, "
        "administration is off (403 saying how to turn it on) and the API key is never an "
        "admin's",
        secret=True,
        shown="none (off)",
        zh="管理接口 `/admin/accounts`、`/metrics` 与网页管理员登录的密钥；未设置时管理功能关闭"
        "（返回 403 并说明如何开启），API key 不能用于管理",
    )
    metrics_public: bool = setting(
        False,
        "METRICS_PUBLIC",
        "`1` lets anyone read `/metrics`; otherwise it needs `ADMIN_KEY`",
        zh="设为 `1` 时任何人都可读取 `/metrics`；否则需要 `ADMIN_KEY`",
    )
    host: str = setting(
        "127.0.0.1", "HOST", "the address to listen on", on_space="0.0.0.0", min_length=1
    )
    port: int = setting(8989, "PORT", "the port to listen on", on_space=7860, ge=1, le=65535)
    on_space: bool = setting(
        False,
        "SPACE_ID",
        "set by Hugging Face on a Space: listens on `0.0.0.0:7860`, trusts the proxy's "
        "forwarded headers and keeps the API off until `API_KEY` is set",
        shown="–",
    )
    space_host: str | None = setting(
        None, "SPACE_HOST", "set by Hugging Face on a Space: the page shows it as the base URL"
    )
    demo: bool = setting(
        False, "KI2API_DEMO", "`1` runs against the built-in simulator (same as `--demo`)"
    )
    log_level: LogLevel = setting("info", "LOG_LEVEL", "how much the log says")

    # --- Kiro credentials (the accounts module reads and extends these) ---
    kiro_token_file: Path = setting(
        env="KIRO_TOKEN_FILE",
        description="the Kiro login file (IdC logins: the `<clientIdHash>.json` beside it too)",
        default_factory=default_token_file,
        shown="`~/.aws/sso/cache/kiro-auth-token.json`",
        must="the path of a login file, not of a folder",
        zh="Kiro 登录文件路径（默认见上）",
    )
    kiro_token_file_explicit: bool = internal(False, "KIRO_TOKEN_FILE was set")
    kiro_token_dirs: tuple[Path, ...] = setting(
        env="KIRO_TOKEN_DIRS",
        description="more folders (separated like `PATH`: `:`, on Windows `;`) that "
        "`POST /admin/accounts` may adopt a `tokenFile` from, besides the Kiro login folder",
        default_factory=lambda: (default_token_file().parent,),
        shown="the Kiro login folder only",
        must="folders separated by " + repr(os.pathsep) + ", none of them a file",
        zh="`POST /admin/accounts` 的 `tokenFile` 只能来自 Kiro 登录目录或这里列出的目录"
        "（分隔符同 `PATH`：`:`，Windows 为 `;`）",
    )
    kiro_access_token: str | None = setting(
        None,
        "KIRO_ACCESS_TOKEN",
        "one account's access token, given directly (e.g. as a Space secret); a `ksk_…` API "
        "key works too",
        secret=True,
        zh="直接提供访问令牌（例如 Space 的 Secrets）；也可以是 `ksk_…` API key",
    )
    kiro_refresh_token: str | None = setting(
        None,
        "KIRO_REFRESH_TOKEN",
        "that account's refresh token",
        secret=True,
        zh="直接提供刷新令牌（例如 Space 的 Secrets）",
    )
    kiro_auth_method: AuthMethod | None = setting(
        None,
        "KIRO_AUTH_METHOD",
        "`social`, `idc` or `api_key` (guessed from the fields when unset)",
        must="social, idc or api_key",
    )
    kiro_client_id: str | None = setting(
        None, "KIRO_CLIENT_ID", "the OIDC client of an IdC / Builder ID login"
    )
    kiro_client_secret: str | None = setting(
        None, "KIRO_CLIENT_SECRET", "that OIDC client's secret", secret=True
    )
    kiro_profile_arn: str | None = setting(
        None,
        "KIRO_PROFILE_ARN",
        "the account's profile ARN",
        shown="the login's own, else the social one",
    )
    kiro_accounts: str | None = setting(
        None,
        "KIRO_ACCOUNTS",
        'a JSON list of accounts (`[{"label", "refreshToken", "accessToken", "authMethod", '
        '"clientId", "clientSecret", "region", "minIntervalMs", "proxy"}, …]`), or a path to '
        "a file holding it; an account's `proxy` (a URL as in `KIRO_PROXY`: `http://`, "
        "`https://`, `socks4://`, `socks5://`, `socks5h://`; or `direct`) overrides `KIRO_PROXY`",
        secret=True,
        zh="多账号 JSON 列表（或其文件路径），账号池自动轮换与故障切换；"
        "每个账号可设 `minIntervalMs` 和自己的 `proxy`（同 `KIRO_PROXY`：`http://`、`https://`、"
        "`socks4://`、`socks5://`、`socks5h://`；或 `direct`）",
    )
    kiro_region: str = setting(
        DEFAULT_REGION,
        "KIRO_REGION",
        "the accounts' region",
        must="an AWS region such as us-east-1",
        pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$",
    )
    kiro_pool_strategy: PoolStrategy = setting(
        "lru", "KIRO_POOL_STRATEGY", "which healthy account serves a new conversation"
    )
    # --- account hygiene (ki2api/pipeline/sticky.py, ki2api/kiro/accounts/account.py) ---
    kiro_sticky_ttl: float = setting(
        3600.0,
        "KIRO_STICKY_TTL",
        "seconds a conversation stays on the account that served it after its last turn, "
        "while that account can serve (`lru` and `round_robin`); `0` = off",
        unit="seconds",
        ge=0,
        zh="同一对话固定使用服务过它的账号（该账号可用时），在最后一轮之后记住的秒数（`0` 关闭）",
    )
    kiro_sticky_max: int = setting(
        10_000,
        "KIRO_STICKY_MAX",
        "conversations remembered for that (the least recently used are forgotten first)",
        ge=1,
    )
    kiro_min_interval_ms: float = setting(
        0.0,
        "KIRO_MIN_INTERVAL_MS",
        "least milliseconds between two requests sent on one account (an account's own "
        "`minIntervalMs` wins): a request waits its turn, or goes to another account, or gets "
        "429 with `Retry-After` when every turn is further off than `QUEUE_TIMEOUT`",
        shown="`0` (off)",
        ge=0,
        le=3_600_000,
        zh="同一账号两次请求之间的最短间隔（毫秒，默认 `0` 关闭）；请求排队等待，等待超过 "
        "`QUEUE_TIMEOUT` 时改用其他账号或返回带 `Retry-After` 的 429",
    )
    kiro_usage_refresh: float | None = setting(
        None,
        "KIRO_USAGE_REFRESH",
        "seconds between two `getUsageLimits` calls per account (remaining credits and reset "
        "date, on the Status tab and in `/admin/accounts`); `0` = only on demand",
        unit="seconds",
        shown="`1800`",  # None: ki2api/kiro/accounts/credits.py's DEFAULT_EVERY (the tests: 0)
        ge=0,
        zh="后台查询每个账号剩余额度与重置日期（`getUsageLimits`）的间隔秒数（默认 `1800`，"
        "`0` 关闭），显示在状态页和 `/admin/accounts`",
    )
    kiro_proxy: str | None = setting(
        None,
        "KIRO_PROXY",
        "the default proxy for the calls to Kiro (an account's own `proxy` wins): "
        "`http://`, `https://` (TLS to the proxy, its certificate checked as Kiro's), "
        "`socks4://`, `socks5://` or `socks5h://`, with credentials if needed",
        must="a proxy URL such as http://127.0.0.1:7890 or socks5h://user:pass@host:1080",
        secret=True,  # it may hold the proxy's password
        zh="访问 AWS 所用的默认代理（账号自己的 `proxy` 优先）：`http://`、`https://`（到代理本身"
        "也用 TLS，其证书与 Kiro 的一样校验）、`socks4://`、`socks5://` 或 `socks5h://`，"
        "可带用户名密码",
    )
    kiro_ca_bundle: Path | None = setting(
        None,
        "KIRO_CA_BUNDLE",
        "a PEM file of certificate authorities trusted for Kiro and for an `https://` proxy "
        "on top of the public roots (a corporate TLS proxy, a private endpoint)",
        must="the path of a PEM file",
        zh="额外信任的证书颁发机构（PEM 文件），与公共根证书一起用于 Kiro 和 `https://` 代理"
        "（企业 TLS 代理、私有端点）",
    )
    ssl_cert_file: Path | None = setting(
        None,
        "SSL_CERT_FILE",
        "the standard variable: a PEM file that replaces the public roots",
        must="the path of a PEM file",
        zh="标准变量：用这个 PEM 文件代替公共根证书",
    )

    # --- upstream URLs (all overridable; {region} is filled in) ---
    kiro_api_url: str = setting(
        DEFAULT_KIRO_API_URL, "KIRO_API_URL", "the full chat URL", must=URL_RULE
    )
    kiro_refresh_url: str = setting(
        "https://prod.{region}.auth.desktop.kiro.dev/refreshToken",
        "KIRO_REFRESH_URL",
        "the social-login refresh URL",
        must=URL_RULE,
    )
    kiro_oidc_url: str = setting(
        "https://oidc.{region}.amazonaws.com/token",
        "KIRO_OIDC_URL",
        "the IdC / Builder ID token URL",
        must=URL_RULE,
    )
    kiro_mcp_url: str = setting(
        "https://q.{region}.amazonaws.com/mcp",
        "KIRO_MCP_URL",
        "Kiro's web-search (MCP) URL, used only for requests with a web-search tool",
        must=URL_RULE,
    )
    # ListAvailableModels (POST / with x-amz-target); None: the management host, or the host of
    # KIRO_API_URL when that is set (a proxy or the simulator answers both)
    kiro_models_url: str | None = setting(
        None,
        "KIRO_MODELS_URL",
        "where accounts are asked for their models (`ListAvailableModels`)",
        shown="`https://management.{region}.kiro.dev/`, or `KIRO_API_URL`'s host when that is set",
        must=URL_RULE,
    )
    kiro_models_ttl: float = setting(
        3600.0,
        "KIRO_MODELS_TTL",
        "seconds an account's model list is trusted before it is asked again",
        unit="seconds",
        ge=1,
    )
    timeouts: Timeouts = internal(Timeouts(), "the upstream timeouts (KIRO_*_TIMEOUT)")

    # --- models (ki2api/kiro/wire/models.py, ki2api/kiro/accounts/available_models.py) ---
    model_aliases: str | None = setting(
        None,
        "MODEL_ALIASES",
        'JSON object of client names → model names, e.g. `{"gpt-4o": "claude-sonnet-4-6"}`',
        must='a JSON object of names, e.g. {"gpt-4o": "claude-sonnet-4-6"}',
        zh='模型别名 JSON，例如 `{"gpt-4o": "claude-sonnet-4-6"}`',
    )
    model_fallback: str | None = setting(
        None,
        "MODEL_FALLBACK",
        "the model unknown names get (e.g. `auto`); unset: 404",
        zh="未知模型名使用的模型（如 `auto`）；不设置则返回 404",
    )

    # --- web search and Responses ---
    web_search_max_rounds: int = setting(
        5,
        "WEB_SEARCH_MAX_ROUNDS",
        "most searches the gateway runs for the model in one answer (the client's `max_uses` "
        "may lower it)",
        ge=0,
    )
    reasoning_secret: str | None = setting(
        None,
        "REASONING_SECRET",
        "key that seals Responses' `reasoning.encrypted_content` (set it so items survive a "
        "restart or span replicas)",
        secret=True,
        shown="random per process",
    )

    # --- limits ---
    max_concurrent_per_account: int = setting(
        16,
        "MAX_CONCURRENT_PER_ACCOUNT",
        "upstream requests in flight per account; `0` = no limit",
        ge=0,
    )
    queue_timeout: float = setting(
        30.0,
        "QUEUE_TIMEOUT",
        "seconds a request waits for a free slot on an account",
        unit="seconds",
        ge=0,
    )
    rate_limit: str | None = setting(
        None,
        "RATE_LIMIT",
        "per-key limit such as `60/minute` (429 with `Retry-After`)",
        shown="off",
        must="a rate such as 60/minute (per second, minute, hour or day)",
    )
    cors_origins: tuple[str, ...] = setting(
        (),
        "CORS_ORIGINS",
        "comma-separated origins allowed to call the API from a browser; `*` = any",
        must="comma-separated origins such as https://app.example.com (no path), or *",
    )
    max_body_bytes: int = setting(
        20 * 1024 * 1024,
        "MAX_BODY_BYTES",
        "largest request body on `/v1` and `/admin` (413 past it)",
        unit="bytes",
        ge=1,
    )
    max_messages: int = setting(
        10_000, "MAX_MESSAGES", "most messages in one request (400 past it); `0` = no limit", ge=0
    )
    max_image_bytes: int = setting(
        5 * 1024 * 1024,
        "MAX_IMAGE_BYTES",
        "largest image a request may carry or point to (400 past it)",
        unit="bytes",
        ge=1,
    )
    # All of a request's images together, as sent upstream: base64 makes 600 KB about 800 KB of
    # the ~1.2 MB body Kiro takes (ki2api/kiro/wire/request_builder.py), leaving room for the text.
    image_budget_bytes: int = setting(
        600_000,
        "IMAGE_BUDGET_BYTES",
        "all of a request's images together, as sent to Kiro (must fit its ~1.2 MB body in "
        "base64); an image over its share is scaled down and re-encoded as JPEG",
        unit="bytes",
        ge=1,
        zh="一次请求中所有图片合计的上限（默认 600 KB，base64 后仍在 Kiro 约 1.2 MB 的请求体"
        "上限内）；超出份额的图片会被缩小并转为 JPEG，而不是报错",
    )
    allow_private_image_urls: bool = setting(
        False,
        "ALLOW_PRIVATE_IMAGE_URLS",
        "`1` lets image URLs point at private or loopback addresses",
    )
    header_timeout: float = setting(
        10.0,
        "HEADER_TIMEOUT",
        "seconds a connection has to send a complete request head; `0` turns the deadline off",
        unit="seconds",
        ge=0,
        zh="连接发送完整请求头的时限（秒，默认 `10`；`0` 关闭）",
    )
    page_max_body_bytes: int = setting(
        1024 * 1024,
        "PAGE_MAX_BODY_BYTES",
        "body limit of every route outside `/v1` and `/admin` (the web page's), 413 past it",
        unit="bytes",
        ge=1,
        zh="`/v1`、`/admin` 以外所有路由（网页）的请求体上限，超过返回 413（默认 1 MB）",
    )
    playground_max_share: float = setting(
        0.25,
        "PLAYGROUND_MAX_SHARE",
        "the most of the pool's slots (accounts × `MAX_CONCURRENT_PER_ACCOUNT`) the playground's "
        "chats may hold at once; `0` keeps them off the pool",
        ge=0,
        le=1,
        zh="试用页对话最多同时占用账号池槽位（账号数 × `MAX_CONCURRENT_PER_ACCOUNT`）的比例，"
        "`0` 表示不用账号池（默认 `0.25`）",
    )

    # --- stored state: client keys, usage, accounts added at run time (ki2api/store/) ---
    data_dir: Path = setting(
        env="DATA_DIR",
        description="the folder of the database: client keys, their usage, accounts added at "
        "run time",
        default_factory=lambda: default_data_dir()[0],
        shown="`/data` on a Space with persistent storage, else the user's data folder "
        "(`~/.local/share/ki2api`, `~/Library/Application Support/ki2api`, "
        "`%LOCALAPPDATA%\\ki2api`)",
        must="a folder, not a file",
        zh="数据库所在目录（客户端密钥、用量、运行时添加的账号）；Space 上有持久存储时默认 `/data`",
    )
    data_dir_persistent: bool = internal(
        True, "False on a Space without persistent storage: a restart wipes DATA_DIR"
    )
    usage_flush_seconds: float = setting(
        1.0,
        "USAGE_FLUSH_SECONDS",
        "seconds between two writes of the usage batch to the database (and one at shutdown); "
        "a crash loses at most this much",
        unit="seconds",
        gt=0,
        le=3600,
    )

    # --- the backup of the stored state to a private Hub dataset (ki2api/store/backup.py) ---
    backup_dataset: str | None = setting(
        None,
        "BACKUP_DATASET",
        "a private Hub dataset (`owner/name`) the stored state is backed up to (client keys as "
        "hashes and usage, never an account token) and restored from on a fresh start; see "
        "docs/deploy.md",
        shown="off",
        must="a dataset id such as alice/ki2api-state",
        pattern=r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$",
        zh="没有持久存储的 Space：把数据库（密钥只存哈希，不含账号令牌）定期备份到这个私有数据集"
        "（`owner/name`），重启后自动恢复",
    )
    backup_every: float = setting(
        10.0, "BACKUP_EVERY_MINUTES", "minutes between two backups to `BACKUP_DATASET`", gt=0
    )
    hf_token: str | None = setting(
        None,
        "HF_TOKEN",
        "a Hugging Face token that may write `BACKUP_DATASET` (`ki2api deploy` reads it too)",
        secret=True,
    )
    hf_endpoint: str | None = setting(
        None,
        "HF_ENDPOINT",
        "another Hugging Face Hub than huggingface.co, for `BACKUP_DATASET`",
        shown="`https://huggingface.co`",
        must=URL_RULE,
    )
    # --- state shared by replicas (ki2api/shared/); unset: everything stays in the process ---
    redis_url: str | None = setting(
        None,
        "REDIS_URL",
        "shares tokens, account states, limits and usage between replicas (README, Scaling "
        "out), e.g. `redis://redis:6379/0`",
        shown="off: all in the process",
        must="a redis://, rediss:// or unix:// URL",
        secret=True,  # it may hold Redis's password
        zh="多副本通过 Redis 共享状态（见“横向扩展”），例如 `redis://redis:6379/0`；不设置则一切在进程内",
    )
    redis_optional: bool = setting(
        False,
        "REDIS_OPTIONAL",
        "`1`: Redis unreachable at start → start on local state with a warning (else exit 2)",
        zh="设为 `1` 时，启动时连不上 Redis 也先用本地状态启动（带警告）；否则退出（退出码 2）",
    )
    redis_timeout: float = setting(
        0.5,
        "REDIS_TIMEOUT",
        "seconds one Redis call may take before the replica serves from its own state",
        unit="seconds",
        gt=0,
        le=30,
    )
    redis_prefix: str = setting(
        "ki2api",
        "REDIS_PREFIX",
        "prefix of every Redis key, for deployments sharing one Redis",
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        must="1-64 letters, digits and _ . : -",
    )
    upstream_attempts: int = internal(3, "tries per request across accounts", ge=1)
    image_fetch_timeout: float = internal(10.0, "seconds to fetch an image URL", gt=0)
    keepalive_interval: float = internal(
        15.0, "seconds between SSE comments / Anthropic pings while the upstream is silent", ge=0
    )

    # --- checks beyond type and range (the message comes from the declaration's `must`) ---

    @field_validator("log_level", "kiro_pool_strategy", mode="before")
    @classmethod
    def _choice(cls, value: Any) -> Any:
        return _lower(value)

    @field_validator("kiro_auth_method", mode="before")
    @classmethod
    def _auth_method(cls, value: Any) -> Any:
        if isinstance(value, str):
            method = auth_method_named(value)
            if method is None:
                raise ValueError("unknown method")
            return method
        return value

    @field_validator("on_space", mode="before")
    @classmethod
    def _space_id(cls, value: Any) -> Any:
        return bool(value.strip()) if isinstance(value, str) else value  # SPACE_ID=owner/name

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: Any) -> Any:
        if isinstance(value, str) and urlsplit(value).scheme.lower() not in (
            "redis",
            "rediss",
            "unix",
        ):
            raise ValueError("not a Redis URL")
        return value

    @field_validator("kiro_api_url", "kiro_refresh_url", "kiro_oidc_url", "kiro_mcp_url")
    @classmethod
    def _upstream_url(cls, value: Any) -> Any:
        return _url(value, ("http", "https"))

    @field_validator("kiro_models_url", "hf_endpoint")
    @classmethod
    def _other_url(cls, value: Any) -> Any:
        return _url(value, ("http", "https"))

    @field_validator("kiro_proxy")
    @classmethod
    def _proxy(cls, value: Any) -> Any:
        return _url(value, ("http", "https", "socks4", "socks5", "socks5h"))

    @field_validator("kiro_ca_bundle", "ssl_cert_file")
    @classmethod
    def _pem_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_file():
            raise ValueError("not a file")
        return None if value is None else value.expanduser()

    @field_validator("kiro_token_file")
    @classmethod
    def _token_file(cls, value: Path) -> Path:
        value = value.expanduser()
        if value.is_dir():
            raise ValueError("a folder")
        return value

    @field_validator("data_dir")
    @classmethod
    def _data_dir(cls, value: Path) -> Path:
        value = value.expanduser()
        if value.is_file():
            raise ValueError("a file")
        return value

    @field_validator("kiro_token_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: Any) -> Any:
        return _paths(value)

    @field_validator("kiro_token_dirs")
    @classmethod
    def _token_dirs(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        folders = tuple(path.expanduser() for path in value)
        if any(path.is_file() for path in folders):
            raise ValueError("a file")
        return folders

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = tuple(o.strip() for o in value.split(",") if o.strip())
        if isinstance(value, tuple | list):
            for origin in value:
                # Browsers send an origin as scheme://host[:port]: one with a path never matches.
                if origin != "*" and not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/?#\s]+", origin):
                    raise ValueError("not an origin")
        return value

    @field_validator("model_aliases")
    @classmethod
    def _aliases(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                data = json.loads(value)
            except ValueError:
                data = None
            if not isinstance(data, dict) or not all(
                isinstance(v, str) and k.strip() and v.strip() for k, v in data.items()
            ):
                raise ValueError("not an object of names")
        return value

    # --- reading the environment -------------------------------------------------------------

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Settings(...) is its arguments and the declared defaults, nothing else; the
        # environment comes in through from_env, which may be given another mapping.
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, /, **overrides: Any) -> Settings:
        """The settings in ``environ`` (default: ``os.environ``), then ``overrides`` by field
        name. Raises :class:`SettingsError` naming every bad variable."""
        env = os.environ if environ is None else environ
        given = EnvironSource(cls, env)()
        values: dict[str, Any] = dict(given)
        if given.get("on_space"):
            for name, info in cls.model_fields.items():
                if name not in given and "on_space" in _extra(info):
                    values[name] = _extra(info)["on_space"]
        values["api_key_is_default"] = "api_key" not in given
        values["kiro_token_file_explicit"] = "kiro_token_file" in given
        values.setdefault("kiro_token_file", default_token_file(env))
        login_folder = default_token_file(env).parent
        values["kiro_token_dirs"] = (login_folder, *_paths(given.get("kiro_token_dirs", "")))
        if "data_dir" not in given:
            values["data_dir"], values["data_dir_persistent"] = default_data_dir(env)
        values.update(overrides)
        return cls._checked(values, shown=given)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (by field name), checked like the original."""
        return self._checked({**dict(self), **changes}, shown=changes)

    __replace__ = replace  # copy.replace(settings, ...) on Python 3.13+

    @classmethod
    def _checked(cls, values: dict[str, Any], *, shown: Mapping[str, Any]) -> Settings:
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SettingsError(_problems(cls, exc, shown)) from None

    def url(self, template: str, region: str | None = None) -> str:
        return template.replace("{region}", region or self.kiro_region)


class EnvironSource(PydanticBaseSettingsSource):
    """The declared variables found in one mapping (``os.environ`` or a test's), as the raw
    text for pydantic to convert; an unset, empty or blank variable is left out, and
    surrounding whitespace (a pasted secret's newline) is dropped. Nested models (the
    timeouts) are read the same way, into their own dict."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        env = _env_name(field)
        raw = self.environ.get(env) if env else None
        return (raw.strip() if raw and raw.strip() else None), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._read(self.settings_cls)

    def _read(self, model: type[BaseModel]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, info in model.model_fields.items():
            nested = info.annotation
            if isinstance(nested, type) and issubclass(nested, BaseModel):
                if inner := self._read(nested):
                    found[name] = inner
                continue
            value, _, _ = self.get_field_value(info, name)
            if value is not None:
                found[name] = value
        return found


# --- what an operator reads when a value is wrong ---------------------------------------------


class SettingsError(ValueError):
    """Bad settings: one sentence per bad variable, in ``problems``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _problems(model: type[BaseModel], exc: ValidationError, given: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for error in exc.errors():
        sentence = _sentence(model, error, given)
        if sentence not in out:
            out.append(sentence)
    return out


def _sentence(model: type[BaseModel], error: Any, given: Mapping[str, Any]) -> str:
    """``PORT must be a whole number from 1 to 65535 (got "80a")``."""
    info: FieldInfo | None = None
    value: Any = given
    name = ""
    for part in error["loc"]:
        found = _field(model, part) if isinstance(part, str) else None
        if found is None:
            break
        name, info = found
        value = value.get(name, value.get(part)) if isinstance(value, Mapping) else None
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            model = nested
    if info is None:
        if error["type"] == "extra_forbidden":
            return f"{'.'.join(map(str, error['loc']))} is not a setting"
        return str(error["msg"])
    label = _env_name(info) or name
    if value is None or isinstance(value, Mapping):
        value = error.get("input")
    if _extra(info).get("secret"):
        return f"{label} must be {requirement(info)} (its value is not shown)"
    return f"{label} must be {requirement(info)} (got {_quoted(value)})"


def _field(model: type[BaseModel], key: str) -> tuple[str, FieldInfo] | None:
    for name, info in model.model_fields.items():
        if key in (name, _env_name(info)):
            return name, info
    return None


def _quoted(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    cut = "…" if len(text) > 200 else ""  # room for a list of paths, not for a pasted file
    return json.dumps(text[:200], ensure_ascii=False) + cut


def requirement(info: FieldInfo) -> str:
    """What a good value is, from the declaration: "a whole number from 1 to 65535"."""
    extra = _extra(info)
    if "must" in extra:
        return str(extra["must"])
    kind = _plain(info.annotation)
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(str(choice) for choice in get_args(kind))
    if kind is bool:
        return "1, true, yes or on, or 0, false, no or off"
    noun = "a whole number" if kind is int else "a number"
    if unit := extra.get("unit"):
        noun += f" of {unit}"
    low, high, above = (_bound(info, key) for key in ("ge", "le", "gt"))
    if low is not None and high is not None:
        return f"{noun} from {_number(low)} to {_number(high)}"
    if low is not None:
        return f"{noun}, {_number(low)} or more"
    if above is not None:
        return f"{noun} above {_number(above)}"
    if kind is str:
        return "a non-empty value"
    return noun if kind in (int, float) else "valid"


def _bound(info: FieldInfo, key: str) -> float | None:
    for rule in info.metadata:
        if (value := getattr(rule, key, None)) is not None:
            return float(value)
    return None


def _plain(annotation: Any) -> Any:
    """``X | None`` → ``X``."""
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    if args and get_origin(annotation) is not Literal and len(args) == 1:
        return args[0]
    return annotation


def _number(value: float) -> str:
    return f"{value:g}"


# --- the README's tables ----------------------------------------------------------------------

README_TABLES = {
    "en": (
        "<!-- settings table: generated from ki2api/settings.py by "
        "`python -m ki2api settings --update-readme`; edit the declarations, not this table -->",
        "<!-- end of settings table -->",
    ),
    "zh": (
        "<!-- 常用设置: generated from ki2api/settings.py by "
        "`python -m ki2api settings --update-readme` (the settings declared with zh=...) -->",
        "<!-- end of 常用设置 -->",
    ),
}


class Declared(NamedTuple):
    env: str  # the variable
    path: tuple[str, ...]  # the attributes that hold it: ("port",), ("timeouts", "idle")
    info: FieldInfo  # the declaration

    def value(self, settings: Settings) -> Any:
        found: Any = settings
        for name in self.path:
            found = getattr(found, name)
        return found

    def raw(self, given: Mapping[str, Any]) -> Any:
        """Its text in what :class:`EnvironSource` read, or None when it was not set."""
        found: Any = given
        for name in self.path:
            found = found.get(name) if isinstance(found, Mapping) else None
        return found

    @property
    def secret(self) -> bool:
        return bool(_extra(self.info).get("secret"))


def declared(model: type[BaseModel] = Settings, within: tuple[str, ...] = ()) -> Iterator[Declared]:
    """Every setting read from the environment, in declaration order (the timeouts where
    :class:`Timeouts` sits)."""
    for name, info in model.model_fields.items():
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            yield from declared(nested, (*within, name))
        elif env := _env_name(info):
            yield Declared(env, (*within, name), info)


def shown_default(info: FieldInfo) -> str:
    extra = _extra(info)
    if "shown" in extra:
        text = str(extra["shown"])
    else:
        value = info.default
        if value is None or value == ():
            text = "–"
        elif isinstance(value, bool):
            text = "on" if value else "off"
        elif isinstance(value, float):
            text = f"`{value:g}`"
        elif isinstance(value, int) and extra.get("unit") == "bytes":
            text = f"`{value}` ({_size(value)})"
        else:
            text = f"`{value}`"
    if "on_space" in extra:
        text += f" (on a Space `{extra['on_space']}`)"
    return text


def _size(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10), ("MB", 1_000_000), ("kB", 1000)):
        if n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _description(info: FieldInfo) -> str:
    text = info.description or ""
    kind = _plain(info.annotation)
    choices = [f"`{choice}`" for choice in get_args(kind)] if get_origin(kind) is Literal else []
    if not all(choice in text for choice in choices):
        text += ": " + ", ".join(choices)
    return text


def markdown_table(lang: Literal["en", "zh"] = "en") -> str:
    """The README's settings table: every variable (``en``), or those with a Chinese
    description (``zh``, the 常用设置 table)."""
    if lang == "zh":
        lines = ["| 变量 | 作用 |", "| --- | --- |"]
        for env, _, info in declared():
            if zh := _extra(info).get("zh"):
                lines.append(f"| `{env}` | {_cell(str(zh))} |")
        return "\n".join(lines)
    lines = ["| variable | meaning | default |", "| --- | --- | --- |"]
    for env, _, info in declared():
        lines.append(f"| `{env}` | {_cell(_description(info))} | {_cell(shown_default(info))} |")
    return "\n".join(lines)


def with_tables(readme: str) -> str:
    """``readme`` with each generated table (between its markers) brought up to date."""
    for lang, (begin, end) in README_TABLES.items():
        start, stop = readme.find(begin), readme.find(end)
        if start < 0 or stop < start:
            raise ValueError(f"README.md has no {lang} settings table markers: {begin} … {end}")
        table = markdown_table("zh" if lang == "zh" else "en")
        readme = readme[: start + len(begin)] + "\n" + table + "\n" + readme[stop:]
    return readme
