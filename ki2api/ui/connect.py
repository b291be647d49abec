"""Connect: this deployment's base URL and copy-paste snippets for common clients."""

from __future__ import annotations

from collections.abc import Mapping

from ki2api.settings import DEFAULT_API_KEY, Settings
from ki2api.ui.i18n import t

KEY_PLACEHOLDER = "$KI2API_KEY"


def base_url(settings: Settings, headers: Mapping[str, str] | None) -> str:
    """``https://{SPACE_HOST}`` on a Space, else the scheme and host the browser used."""
    if settings.space_host:
        return f"https://{settings.space_host}"
    headers = headers or {}
    host = headers.get("x-forwarded-host") or headers.get("host")
    if not host:
        shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        return f"http://{shown}:{settings.port}"
    scheme = (headers.get("x-forwarded-proto") or "http").split(",")[0].strip()
    scheme = scheme if scheme in ("http", "https") else "http"
    return f"{scheme}://{host.split(',')[0].strip()}"


def shown_key(settings: Settings) -> str:
    """The public default key may be shown (it is in the README); a real one never is."""
    return DEFAULT_API_KEY if settings.api_key_is_default and not settings.on_space else ""


# The snippets' comments, in the visitor's language (the editors' own menu names stay as the
# editors spell them, quoted).
COMMENTS: dict[str, dict[str, str]] = {
    "claude_code": {
        "en": "# Claude Code: these two are all it needs; its own default models are mapped\n"
        "# to the newest of the same family this server has (opus, sonnet, haiku)\n",
        "zh": "# Claude Code 只需要这两个变量；它自带的默认模型会映射到本服务器上\n"
        "# 同系列（opus、sonnet、haiku）中最新的模型\n",
    },
    "codex": {
        "en": "# Codex CLI: ~/.codex/config.toml (or $CODEX_HOME/config.toml); the Responses API.\n"
        "# Its namespace, custom (apply_patch) and web_search tools work; other built-in\n"
        "# tools are dropped with an x-ki2api-warning header (see docs/errors.md)\n",
        "zh": "# Codex CLI 的配置文件：~/.codex/config.toml（或 $CODEX_HOME/config.toml），\n"
        "# 使用 Responses 接口。它的各类工具（含 apply_patch 与联网搜索）都可用；网关无法执行的\n"
        "# 内置工具会被忽略，并在响应头 x-ki2api-warning 中说明（见 docs/errors.md）\n",
    },
    "then": {"en": "then: ", "zh": "然后："},
    "editor": {
        "en": '# Continue (config.yaml). Cline: API Provider "OpenAI Compatible" (or "Anthropic"\n'
        "# with a custom base URL) and the same base URL, key and model id. Cursor: Models →\n"
        "# OpenAI API Key + Override OpenAI Base URL (it must be reachable from the internet)\n",
        "zh": "# Continue（config.yaml）。Cline：“API Provider” 选 “OpenAI Compatible”（或选\n"
        "# “Anthropic” 并填自定义地址），地址、密钥和模型名同下。Cursor：“Models” →\n"
        "# “OpenAI API Key” 和 “Override OpenAI Base URL”（本地址须能从互联网访问）\n",
    },
}


def snippets(base: str, key: str, model: str, lang: str = "en") -> dict[str, str]:
    literal = key or KEY_PLACEHOLDER
    said = {name: text["zh" if lang == "zh" else "en"] for name, text in COMMENTS.items()}
    py_key = f'"{key}"' if key else 'os.environ["KI2API_KEY"]'
    py_import = "" if key else "import os\n"
    return {
        "curl": (
            f"curl {base}/v1/chat/completions \\\n"
            f'  -H "Authorization: Bearer {literal}" \\\n'
            '  -H "Content-Type: application/json" \\\n'
            f'  -d \'{{"model": "{model}", "stream": true,\n'
            '       "messages": [{"role": "user", "content": "Hello!"}]}\''
        ),
        "openai": (
            f"{py_import}from openai import OpenAI\n\n"
            f'client = OpenAI(base_url="{base}/v1", api_key={py_key})\n'
            "stream = client.chat.completions.create(\n"
            f'    model="{model}",\n'
            '    messages=[{"role": "user", "content": "Hello!"}],\n'
            "    stream=True,\n"
            ")\n"
            "for chunk in stream:\n"
            '    print(chunk.choices[0].delta.content or "", end="", flush=True)\n'
        ),
        "anthropic": (
            f"{py_import}import anthropic\n\n"
            f'client = anthropic.Anthropic(base_url="{base}", api_key={py_key})\n'
            "message = client.messages.create(\n"
            f'    model="{model}",\n'
            "    max_tokens=1024,\n"
            '    messages=[{"role": "user", "content": "Hello!"}],\n'
            ")\n"
            "print(message.content[0].text)\n"
        ),
        "claude_code": (
            f"{said['claude_code']}"
            f"export ANTHROPIC_BASE_URL={base}\n"
            f"export ANTHROPIC_API_KEY={literal}\n"
            "claude\n"
        ),
        "codex": (
            f"{said['codex']}"
            f'model = "{model}"\n'
            'model_provider = "ki2api"\n\n'
            "[model_providers.ki2api]\n"
            'name = "Ki2API"\n'
            f'base_url = "{base}/v1"\n'
            'env_key = "KI2API_KEY"\n'
            'wire_api = "responses"\n'
            f"# {said['then']}export KI2API_KEY={literal}; codex\n"
        ),
        "opencode": (
            "{\n"
            '  "$schema": "https://opencode.ai/config.json",\n'
            '  "provider": {\n'
            '    "ki2api": {\n'
            '      "npm": "@ai-sdk/openai-compatible",\n'
            '      "name": "Ki2API",\n'
            f'      "options": {{"baseURL": "{base}/v1", "apiKey": "{{env:KI2API_KEY}}"}},\n'
            f'      "models": {{"{model}": {{"name": "{model}"}}}}\n'
            "    }\n"
            "  },\n"
            f'  "model": "ki2api/{model}"\n'
            "}\n"
            f"// {said['then']}export KI2API_KEY={literal}; opencode\n"
        ),
        "editor": (
            f"{said['editor']}"
            "models:\n"
            f"  - name: {model} (Ki2API)\n"
            "    provider: openai\n"
            f"    model: {model}\n"
            f"    apiBase: {base}/v1\n"
            f"    apiKey: {literal}\n"
        ),
    }


def intro(settings: Settings, base: str, models: list[str], lang: str) -> str:
    lines = [t("connect_intro", lang, base=base)]
    key = shown_key(settings)
    lines.append(t("key_default", lang, key=key) if key else t("key_secret", lang))
    lines.append(t("models_title", lang, models=", ".join(f"`{m}`" for m in models)))
    return "\n\n".join(lines)
