"""The page's words in English and 简体中文, and the registry that re-labels the page on a switch.

Text that handlers produce (status tables, snippets, chat notes) is looked up with :func:`t`;
static labels and Markdown are registered once with :meth:`Texts.add` and updated together when
the visitor picks a language.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import gradio as gr

Lang = Literal["en", "zh"]
LANGUAGES: dict[str, Lang] = {"English": "en", "简体中文": "zh"}

STRINGS: dict[str, tuple[str, str]] = {
    # header
    "tagline": (
        "An **OpenAI- and Anthropic-compatible API** in front of the Claude models of a "
        "[Kiro](https://kiro.dev) account. Point any `openai` / `anthropic` SDK, curl or your "
        "editor at this address — try a model below, then copy a snippet from **Connect**.",
        "在 [Kiro](https://kiro.dev) 账号的 Claude 模型前提供 **OpenAI / Anthropic 兼容接口**。"
        "任何 `openai` / `anthropic` SDK、curl 或编辑器都可以直接连接本地址 —— 先在下面试用模型，"
        "再到 **连接** 页复制代码。",
    ),
    "demo_banner": (
        "**Demo mode** — answers come from Ki2API's built-in **simulator**, not from a real model. "
        "Set a Kiro login (or paste your own token under **Tokens**) for real answers.",
        "**演示模式** —— 回答来自 Ki2API 内置的 **模拟器**，不是真实模型。"
        "配置 Kiro 登录（或在 **令牌** 页粘贴你自己的令牌）即可获得真实回答。",
    ),
    "no_accounts_banner": (
        "**No Kiro account is configured**, so chats answer with an error. Paste your own "
        "token under **Tokens**, restart with `python app.py --demo` to try the built-in "
        "simulator, or set `KIRO_ACCESS_TOKEN` / `KIRO_REFRESH_TOKEN` (or log in to Kiro on "
        "this machine: `~/.aws/sso/cache/kiro-auth-token.json` is read) and restart.",
        "**尚未配置 Kiro 账号**，对话会返回错误。可以在 **令牌** 页粘贴你自己的令牌，"
        "或用 `python app.py --demo` 重启以试用内置模拟器，"
        "或设置 `KIRO_ACCESS_TOKEN` / `KIRO_REFRESH_TOKEN`"
        "（或在本机登录 Kiro：会读取 `~/.aws/sso/cache/kiro-auth-token.json`）后重启。",
    ),
    "space_setup_title": (
        "**This Space has no `API_KEY` secret yet, so its API is switched off.**",
        "**此 Space 还没有设置 `API_KEY` 密钥，因此 API 处于关闭状态。**",
    ),
    "space_setup_steps": (
        "1. Open the Space's **Settings → Variables and secrets**.\n"
        "2. Add a secret named `API_KEY` with a long random value.\n"
        "3. Restart the Space, then send it as `Authorization: Bearer <API_KEY>`.",
        "1. 打开 Space 的 **Settings → Variables and secrets**。\n"
        "2. 新建名为 `API_KEY` 的机密变量（secret），值为一段足够长的随机字符串。\n"
        "3. 重启 Space，之后请求时带上 `Authorization: Bearer <API_KEY>`。",
    ),
    "language": ("Language / 语言", "语言 / Language"),
    "tab_playground": ("Playground", "试用"),
    "tab_tokens": ("Tokens", "令牌"),
    "tab_status": ("Status", "状态"),
    "tab_connect": ("Connect", "连接"),
    "footer": (
        "Ki2API · built with [Gradio](https://www.gradio.app)",
        "Ki2API · 基于 [Gradio](https://www.gradio.app) 构建",
    ),
    # playground
    "chat": ("Chat", "对话"),
    "chat_placeholder": (
        "Ask anything. Answers stream in as they are generated.",
        "随便问点什么，回答会实时流式显示。",
    ),
    "message": ("Message", "消息"),
    "message_placeholder": ("Type a message and press Enter", "输入消息后按回车发送"),
    "send": ("Send", "发送"),
    "stop": ("Stop", "停止"),
    "clear": ("New chat", "新对话"),
    "model": ("Model", "模型"),
    "system": ("System prompt", "系统提示词"),
    "system_placeholder": ("Optional: how the model should behave", "可选：设定模型的行为"),
    "thinking": ("Show thinking (reasoning)", "显示思考过程（推理）"),
    "tools": (
        "Offer example tools (get_weather, get_time)",
        "提供示例工具（get_weather、get_time）",
    ),
    "settings": ("Settings", "设置"),
    "metrics_idle": (
        "Time to first token and speed appear here after each answer.",
        "每次回答后，这里会显示首字延迟和生成速度。",
    ),
    "ttft": ("first token", "首字延迟"),
    "speed": ("tokens/s", "tokens/秒"),
    "tokens_out": ("output tokens", "输出 tokens"),
    "stopped": ("stopped", "已停止"),
    "thinking_title": ("Thinking", "思考过程"),
    "tool_title": ("Tool call", "工具调用"),
    "error_prefix": ("The gateway could not answer", "网关无法回答"),
    "using_pool": ("Answers use the server's Kiro accounts.", "回答使用服务器配置的 Kiro 账号。"),
    "using_sign_in": (
        "To chat, sign in with the API key under **Tokens**, or paste your own Kiro token there.",
        "要开始对话，请在 **令牌** 页用 API 密钥登录，或在那里粘贴你自己的 Kiro 令牌。",
    ),
    "chat_sign_in": (
        "Sign in with the API key (Tokens tab), or paste your own Kiro token there, to chat on "
        "this server's accounts.",
        "请先在 **令牌** 页用 API 密钥登录，或在那里粘贴你自己的 Kiro 令牌，"
        "再使用服务器的账号对话。",
    ),
    "chat_no_accounts": (
        "No Kiro account is configured on this server. Paste your own Kiro token in the Tokens "
        "tab to chat with it, or restart with `python app.py --demo` to try the built-in "
        "simulator.",
        "本服务器尚未配置 Kiro 账号。可以在 **令牌** 页粘贴你自己的 Kiro 令牌来对话，"
        "或用 `python app.py --demo` 重启以试用内置模拟器。",
    ),
    "using_no_accounts": (
        "This server has no Kiro account yet: paste your own Kiro token under **Tokens** to chat.",
        "本服务器还没有 Kiro 账号：在 **令牌** 页粘贴你自己的 Kiro 令牌即可对话。",
    ),
    "using_own": (
        "Answers use **your own token** {masked}.",
        "回答使用 **你自己的令牌** {masked}。",
    ),
    # tokens
    "own_token_title": ("### Your own Kiro token", "### 你自己的 Kiro 令牌"),
    "own_token_help": (
        "Paste a Kiro access token, refresh token, API key (`ksk_…`) or the whole content of "
        "`~/.aws/sso/cache/kiro-auth-token.json`. It stays **in this browser tab's session only**: "
        "it is used for your playground chats, never saved on the server, never shown again in "
        "full, and gone when you close the tab.",
        "粘贴 Kiro 的访问令牌、刷新令牌、API 密钥（`ksk_…`），或 "
        "`~/.aws/sso/cache/kiro-auth-token.json` 的完整内容。"
        "令牌**只保存在当前浏览器标签页的会话中**："
        "仅用于你自己的试用对话，不会存到服务器，不会再次完整显示，关闭标签页后即失效。",
    ),
    "token_box": ("Kiro token or kiro-auth-token.json", "Kiro 令牌或 kiro-auth-token.json"),
    "use_token": ("Use this token", "使用此令牌"),
    "forget_token": ("Forget it", "清除"),
    "no_own_token": (
        "No token of your own: chats use the server's accounts.",
        "未设置自己的令牌：对话使用服务器的账号。",
    ),
    "own_token_set": (
        "Using your token {masked} ({method}{expiry}) in this tab only.",
        "当前标签页正在使用你的令牌 {masked}（{method}{expiry}）。",
    ),
    "expires": (", expires {when}", "，{when} 过期"),
    "bad_token": ("That token cannot be used: {why}", "无法使用该令牌：{why}"),
    "admin_title": ("### Sign in: server accounts", "### 登录：服务器账号"),
    "admin_help": (
        "Sign in with the API key to chat on the server's accounts in the playground, or with "
        "`ADMIN_KEY` to also add, refresh and remove them. The sign-in lasts for this tab only. "
        "Administration stays off until the server has an `ADMIN_KEY` (an environment variable, "
        "or a secret on a Space), separate from the API key.",
        "使用 API 密钥登录后可在试用页使用服务器的账号对话；使用 `ADMIN_KEY` 登录后还可添加、刷新、"
        "删除这些账号。登录状态只在当前标签页有效。服务器设置 `ADMIN_KEY`（环境变量，或 Space 的"
        "机密变量，与 API 密钥不同）之前，管理功能保持关闭。",
    ),
    "admin_key": ("API key or admin key", "API 密钥或管理员密钥"),
    "sign_in": ("Sign in", "登录"),
    "sign_out": ("Sign out", "退出"),
    "signed_in": ("Signed in as administrator.", "已以管理员身份登录。"),
    "signed_in_api": (
        "Signed in with the API key: the playground uses the server's accounts.",
        "已用 API 密钥登录：试用页将使用服务器的账号。",
    ),
    "signed_out": ("Not signed in.", "未登录。"),
    "wrong_key": ("Wrong key.", "密钥错误。"),
    "admin_disabled": (
        "Administration is off: set `ADMIN_KEY` (an environment variable, or a secret on a "
        "Space) and restart the server to turn it on.",
        "管理功能已关闭：设置 `ADMIN_KEY`（环境变量，或 Space 的机密变量）并重启服务后即可开启。",
    ),
    "new_account": (
        "New account: token or kiro-auth-token.json",
        "新账号：令牌或 kiro-auth-token.json",
    ),
    "new_label": ("Label (optional)", "标签（可选）"),
    "add_account": ("Add account", "添加账号"),
    "account": ("Account", "账号"),
    "refresh_account": ("Refresh token", "刷新令牌"),
    "remove_account": ("Remove", "删除"),
    "added": ("Added account {label}.", "已添加账号 {label}。"),
    "added_proxy": (
        "Added account {label}; proxy: {proxy}.",
        "已添加账号 {label}；代理：{proxy}。",
    ),
    "new_proxy": ("Proxy (optional)", "代理（可选）"),
    "new_proxy_placeholder": (
        "socks5://user:password@host:1080, or direct",
        "socks5://user:password@host:1080，或 direct",
    ),
    "accounts_proxies": ("Accounts and their proxies", "账号及其代理"),
    "account_proxy": ("Proxy for this account", "此账号的代理"),
    "account_proxy_placeholder": (
        "a proxy URL, direct, or empty for the default (KIRO_PROXY)",
        "代理地址、direct，或留空使用默认代理（KIRO_PROXY）",
    ),
    "set_proxy": ("Set proxy", "设置代理"),
    "proxy_configured": ("Back to configured", "恢复配置"),
    "proxy_help": (
        "Proxy: a URL such as `socks5://user:password@host:1080` or `http://host:3128`; "
        "`direct` for none; empty for the default of all accounts (`KIRO_PROXY`). "
        "**Back to configured** undoes a change made here. The password is never shown again.",
        "代理：例如 `socks5://user:password@host:1080` 或 `http://host:3128`；"
        "`direct` 表示不使用代理；留空则使用所有账号的默认代理（`KIRO_PROXY`）。"
        "**恢复配置** 会撤销在这里做的修改。密码不会再次显示。",
    ),
    "proxy_set": ("Proxy of {label}: {proxy}.", "{label} 的代理：{proxy}。"),
    "proxy_back": (
        "{label} is back on its configured proxy: {proxy}.",
        "{label} 已恢复为配置中的代理：{proxy}。",
    ),
    "refreshed": ("Refreshed {label}: {state}.", "已刷新 {label}：{state}。"),
    "removed": ("Removed {label}.", "已删除 {label}。"),
    "need_admin": ("Sign in as administrator first.", "请先以管理员身份登录。"),
    "aliases": (
        "Model aliases (JSON, MODEL_ALIASES; in memory until restart)",
        "模型别名（JSON，即 MODEL_ALIASES；重启前有效）",
    ),
    "save_aliases": ("Save aliases", "保存别名"),
    "aliases_saved": ("{count} alias(es) in use.", "当前生效的别名：{count} 个。"),
    "failed": ("Failed: {why}", "失败：{why}"),
    # client keys (the admin section)
    "keys_title": ("### Client keys", "### 客户端密钥"),
    "keys_help": (
        "Give each person or app a key of its own, with its own limits: it is used like the API "
        "key (`Authorization: Bearer ki2-…`), counted on its own, and revoked without touching "
        "anyone else's. The server keeps only a hash of each key. Times are UTC; a limit of 0 "
        "(or empty) means none.",
        "为每个人或应用分配独立的密钥和限额：用法与 API 密钥相同（`Authorization: Bearer ki2-…`），"
        "用量单独统计，吊销时不影响其他人。服务器只保存每个密钥的哈希值。时间均为 UTC；"
        "限额为 0（或留空）表示不限。",
    ),
    "credits_legend": (
        "Usage cells: requests · tokens (input + output) · Kiro credits. "
        "≈ marks credits estimated from the tokens, where Kiro reported none.",
        "用量格式：请求数 · tokens（输入 + 输出）· Kiro 额度。"
        "带 ≈ 的额度是在 Kiro 未报告时根据 tokens 估算的。",
    ),
    "key_col_name": ("name", "名称"),
    "key_col_key": ("key", "密钥"),
    "key_col_status": ("status", "状态"),
    "key_col_created": ("created (UTC)", "创建时间（UTC）"),
    "key_col_last_used": ("last used (UTC)", "最近使用（UTC）"),
    "key_col_expires": ("expires (UTC)", "过期时间（UTC）"),
    "key_col_models": ("models", "模型"),
    "key_col_rpm": ("RPM", "每分钟请求"),
    "key_col_tpm": ("TPM", "每分钟 tokens"),
    "key_col_per_day": ("credits / day", "额度 / 天"),
    "key_col_per_month": ("credits / month", "额度 / 月"),
    "key_col_today": ("today", "今日"),
    "key_col_month": ("this month", "本月"),
    "key_status_active": ("active", "启用"),
    "key_status_disabled": ("disabled", "已停用"),
    "key_status_expired": ("expired", "已过期"),
    "key_status_revoked": ("revoked", "已吊销"),
    "key_never": ("never", "从未"),
    "key_no_expiry": ("never", "永不过期"),
    "key_all_models": ("all", "全部"),
    "usage_cell": (
        "{requests} req · {tokens} tok · {credits} cr",
        "{requests} 次 · {tokens} tokens · {credits} 额度",
    ),
    "no_keys": ("no client keys yet", "还没有客户端密钥"),
    "key_pick": (
        "Key to change or revoke (picking one fills the form)",
        "要修改或吊销的密钥（选中后会填入下方表单）",
    ),
    "key_refresh": ("Refresh", "刷新"),
    "key_name": ("Name", "名称"),
    "key_models": (
        "Models allowed (patterns, comma-separated; empty: all)",
        "允许的模型（通配模式，逗号分隔；留空：全部）",
    ),
    "key_expires": ("Expires", "过期时间"),
    "key_expires_placeholder": (
        "2026-12-31, or days from now (30); empty: never",
        "2026-12-31，或从现在起的天数（30）；留空：永不过期",
    ),
    "key_rpm": ("Requests / minute", "每分钟请求数"),
    "key_tpm": ("Tokens / minute", "每分钟 tokens"),
    "key_per_day": ("Credits / day", "每日额度"),
    "key_per_month": ("Credits / month", "每月额度"),
    "key_enabled": ("Enabled", "启用"),
    "key_create": ("Create key", "创建密钥"),
    "key_save": ("Save changes", "保存修改"),
    "key_revoke": ("Revoke", "吊销"),
    "key_shown_once": (
        "**Copy this key now: it is shown this once.** The server keeps only its hash, so it "
        "cannot be shown again; a lost key is revoked and replaced.",
        "**请立即复制此密钥：它只显示这一次。** 服务器只保存其哈希值，无法再次显示；"
        "密钥丢失时请吊销并重新创建。",
    ),
    "new_key_secret": ("New key (shown once)", "新密钥（仅显示一次）"),
    "key_created": (
        "Created key **{name}** (`{masked}`).",
        "已创建密钥 **{name}**（`{masked}`）。",
    ),
    "key_pick_first": ("Pick a key first.", "请先选择一个密钥。"),
    "key_saved": ("Saved key **{name}**.", "已保存密钥 **{name}**。"),
    "key_revoke_confirm": (
        "Revoke **{name}** for good? Its holder is refused from then on, and a revoked key "
        "cannot come back. Click **Revoke** again within {seconds} s to confirm.",
        "确定永久吊销 **{name}**？吊销后持有者的请求将被拒绝，且无法恢复。请在 {seconds} 秒内"
        "再次点击 **吊销** 以确认。",
    ),
    "key_revoked": (
        "Revoked key **{name}**: it is refused from now on; its usage stays.",
        "已吊销密钥 **{name}**：此后将被拒绝；其用量记录保留。",
    ),
    # status
    "status_title": ("### Accounts", "### 账号"),
    "traffic_title": ("### Traffic (last 15 minutes)", "### 流量（最近 15 分钟）"),
    "col_label": ("label", "标签"),
    "col_state": ("state", "状态"),
    "col_token": ("token", "令牌"),
    "col_expires": ("token expires", "令牌过期"),
    "col_requests": ("requests", "请求"),
    "col_errors": ("errors", "错误"),
    "col_credits": ("credits (left · reset)", "额度（剩余 · 重置）"),
    "col_note": ("note", "备注"),
    "col_cooldowns": ("cooldowns (what · why · for how long)", "冷却（对象 · 原因 · 剩余）"),
    "col_proxy": ("proxy", "代理"),
    "proxy_direct": ("direct (no proxy)", "直连（不使用代理）"),
    "proxy_default": ("default (KIRO_PROXY): {proxy}", "默认（KIRO_PROXY）：{proxy}"),
    "proxy_default_none": (
        "default (KIRO_PROXY unset): no proxy",
        "默认（未设置 KIRO_PROXY）：不使用代理",
    ),
    "all_models": ("all models", "所有模型"),
    "cause_rate_limit": ("rate limit", "限流"),
    "cause_capacity": ("model capacity", "模型容量不足"),
    "cause_quota": ("quota used up", "额度用尽"),
    "cause_refresh": ("token refresh failed", "令牌刷新失败"),
    "no_accounts": ("no accounts configured", "未配置账号"),
    "state_healthy": ("healthy", "正常"),
    "state_cooling_down": ("cooling down", "冷却中"),
    "state_needs_login": ("needs login", "需要重新登录"),
    "state_disabled": ("disabled", "已停用"),
    "state_suspended": ("suspended by Kiro", "已被 Kiro 封禁"),
    "credits_left": (
        "{left} of {limit} left · resets {when}",
        "剩余 {left} / {limit} · {when}重置",
    ),
    "credits_no_reset": ("{left} of {limit} left", "剩余 {left} / {limit}"),
    "credits_unknown": ("not asked yet", "尚未查询"),
    "pacing": ("⏱ {ms} ms apart · {n} waiting", "⏱ 间隔 {ms} 毫秒 · {n} 个等待中"),
    "storage_ephemeral": (
        "**This Space has no persistent storage**: API keys, usage and accounts added here "
        "are **lost when the Space restarts**. Attach storage in the "
        "Space's **Settings → Persistent storage** (it is mounted at `/data`), or back the "
        "database up to a private dataset: add the secrets `BACKUP_DATASET` (e.g. "
        "`you/ki2api-state`) and `HF_TOKEN` (a token that may write it), then restart.",
        "**此 Space 没有持久存储**：在这里创建的 API 密钥、用量和账号"
        "**会在 Space 重启后丢失**。可以在 Space 的 **Settings → Persistent storage** 中添加存储"
        "（挂载在 `/data`），或者把数据库备份到私有数据集：添加机密变量 `BACKUP_DATASET`"
        "（例如 `you/ki2api-state`）和 `HF_TOKEN`（有写权限的令牌），然后重启。",
    ),
    "storage_backed_up": (
        "**This Space has no persistent storage**; its database is backed up to the private "
        "dataset `{dataset}` every {every} min (keys as hashes; account tokens are not part "
        "of the backup). Changes since the last backup are lost when the Space restarts.",
        "**此 Space 没有持久存储**；数据库每 {every} 分钟备份到私有数据集 `{dataset}`"
        "（密钥只存哈希；账号令牌不在备份中）。上次备份之后的改动会在 Space 重启时丢失。",
    ),
    "unit_s": ("s", "秒"),
    "unit_min": ("min", "分钟"),
    "unit_h": ("h", "小时"),
    "unit_d": ("d", "天"),
    "expired": ("expired", "已过期"),
    "unknown": ("unknown", "未知"),
    "in": ("in {d}", "{d} 后"),
    "requests": ("requests", "请求"),
    "errors": ("errors", "错误"),
    "latency": ("latency p50 / p95", "延迟 p50 / p95"),
    "ttft_p50": ("first token p50", "首字延迟 p50"),
    "active": ("answers in flight", "进行中的回答"),
    "usable": ("usable accounts", "可用账号"),
    "shared_ok": (
        "Shared state: Redis, connected ({replicas} replica(s) seen).",
        "共享状态：Redis 已连接（当前 {replicas} 个副本）。",
    ),
    "shared_lost": (
        "⚠️ Redis unreachable since {since}: this replica serves from its own state (limits "
        "and cooldowns count per replica) and catches up when Redis returns.",
        "⚠️ 自 {since} 起无法连接 Redis：本副本暂用自己的状态提供服务（限流和冷却按副本各自计算），"
        "Redis 恢复后自动同步。",
    ),
    "plot_title": ("Latency of recent requests", "最近请求的延迟"),
    "plot_x": ("time (your clock)", "时间（本机时钟）"),
    "plot_y": ("seconds", "秒"),
    "plot_legend": ("latency", "延迟"),
    "plot_empty": (
        "No requests yet — send one in the playground.",
        "还没有请求 —— 去试用页发一条吧。",
    ),
    "series_latency": ("total", "总耗时"),
    "series_ttft": ("first token", "首字"),
    "usage_title": ("### Usage by key (UTC days)", "### 各密钥用量（按 UTC 日）"),
    "usage_sign_in": (
        "Sign in under **Tokens** with your key to see its usage here (the admin key: every "
        "key's).",
        "在 **令牌** 页用你的密钥登录后，这里会显示它的用量（管理员密钥：所有密钥的用量）。",
    ),
    "usage_note": (
        "Every client key, and the operator's `API_KEY`. ≈ marks credits estimated from the "
        "tokens, where Kiro reported none.",
        "所有客户端密钥，以及部署者的 `API_KEY`。带 ≈ 的额度是在 Kiro 未报告时根据 tokens 估算的。",
    ),
    "usage_note_own": (
        "The key you signed in with. ≈ marks credits estimated from the tokens, where Kiro "
        "reported none.",
        "你登录所用的密钥。带 ≈ 的额度是在 Kiro 未报告时根据 tokens 估算的。",
    ),
    "usage_none": ("No usage in the last 30 days.", "最近 30 天没有用量。"),
    "usage_operator": ("operator (API_KEY)", "部署者（API_KEY）"),
    "usage_col_key": ("key", "密钥"),
    "usage_col_requests_today": ("requests today", "今日请求"),
    "usage_col_tokens_today": ("tokens today", "今日 tokens"),
    "usage_col_credits_today": ("credits today", "今日额度"),
    "usage_col_requests_month": ("requests this month", "本月请求"),
    "usage_col_tokens_month": ("tokens this month", "本月 tokens"),
    "usage_col_credits_month": ("credits this month", "本月额度"),
    "usage_plot_title": ("Kiro credits per day, last 30 days", "最近 30 天每日 Kiro 额度"),
    "usage_plot_x": ("day (UTC)", "日期（UTC）"),
    "usage_plot_y": ("credits", "额度"),
    "usage_plot_legend": ("key", "密钥"),
    # connect
    "connect_intro": (
        "Base URL of this deployment: **`{base}`** — OpenAI clients use **`{base}/v1`**. "
        "Send the API key as `Authorization: Bearer …` (or `x-api-key`).",
        "本部署的地址：**`{base}`** —— OpenAI 客户端使用 **`{base}/v1`**。"
        "请求时通过 `Authorization: Bearer …`（或 `x-api-key`）携带 API 密钥。",
    ),
    "key_default": (
        "This server uses the **default** API key `{key}` (fine on your own machine; set `API_KEY` "
        "before exposing it).",
        "本服务器使用**默认** API 密钥 `{key}`（本机使用没问题；对外开放前请设置 `API_KEY`）。",
    ),
    "key_secret": (
        "Replace `$KI2API_KEY` with the API key the owner of this deployment gave you.",
        "把 `$KI2API_KEY` 换成部署者提供给你的 API 密钥。",
    ),
    "models_title": ("**Models:** {models}", "**可用模型：** {models}"),
    "snippet_curl": ("curl", "curl"),
    "snippet_openai": ("Python — openai SDK", "Python —— openai SDK"),
    "snippet_anthropic": ("Python — anthropic SDK", "Python —— anthropic SDK"),
    "snippet_claude_code": (
        "Claude Code (coding agent): two environment variables",
        "Claude Code（编程智能体）：两个环境变量",
    ),
    "snippet_codex": (
        "Codex CLI (coding agent): a provider in config.toml",
        "Codex CLI（编程智能体）：在 config.toml 中添加服务提供方",
    ),
    "snippet_opencode": (
        "opencode (coding agent): opencode.json in your project",
        "opencode（编程智能体）：项目中的 opencode.json",
    ),
    "snippet_editor": (
        "Editors (Continue, Cline, Cursor …): an OpenAI-compatible provider",
        "编辑器（Continue、Cline、Cursor 等）：OpenAI 兼容提供方",
    ),
}


def t(name: str, lang: str = "en", /, **values: object) -> str:
    en, zh = STRINGS[name]
    text = zh if lang == "zh" else en
    return text.format(**values) if values else text


def lang_from_header(accept_language: str | None) -> Lang:
    """Chinese for browsers that prefer it (first listed language), else English."""
    first = (accept_language or "").split(",")[0].strip().lower()
    return "zh" if first.startswith("zh") else "en"


@dataclass
class Texts:
    """Components whose props follow the language: ``add(box, label="model")``."""

    entries: list[tuple[gr.components.Component | gr.blocks.BlockContext, dict[str, str]]] = field(
        default_factory=list
    )

    def add(self, component: Any, **props: str) -> Any:
        self.entries.append((component, props))
        return component

    def button(self, key: str, **options: Any) -> Any:
        """A button whose words follow the language: ``button("send", variant="primary")``."""
        return self.add(gr.Button(t(key), **options), value=key)

    def textbox(self, label: str, placeholder: str, **options: Any) -> Any:
        """A text box whose label and placeholder (keys of :data:`STRINGS`) follow the language."""
        box = gr.Textbox(label=t(label), placeholder=t(placeholder), **options)
        return self.add(box, label=label, placeholder=placeholder)

    @property
    def components(self) -> list[Any]:
        return [c for c, _ in self.entries]

    def updates(self, lang: str) -> list[Any]:
        updates: list[Any] = []
        for _, props in self.entries:
            values: dict[str, Any] = {p: t(k, lang) for p, k in props.items()}
            updates.append(gr.update(**values))
        return updates
