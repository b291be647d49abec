"""The request shapes the benchmark sends, direct to the simulator and through each gateway.

Every OpenAI-format request has the same body whoever receives it (only the model name
differs for LiteLLM, which routes by its own alias); "direct" to the Kiro endpoint sends the
body Ki2API would build for the same prompt.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import orjson

from bench.client import Target, build_request
from bench.gateway import API_KEY
from bench.litellm import MASTER_KEY
from bench.litellm import MODEL as LITELLM_MODEL
from ki2api.simulator.samples import kiro_request_body

PROMPT = "Tell me about foxes in one short paragraph."
MODEL = "claude-sonnet-4.5"

# One marker occurrence per content chunk in each format.
OPENAI_TOKEN = b'"content":"'
OPENAI_EMPTY = b'"content":""'  # Ki2API's first chunk carries only the role
ANTHROPIC_TOKEN_STREAM = b'"text_delta"'
ANTHROPIC_TOKEN_WHOLE = b'"type":"text"'
KIRO_TOKEN = b"assistantResponseEvent"


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def _openai_body(model: str, stream: bool) -> bytes:
    messages = [{"role": "user", "content": PROMPT}]
    return orjson.dumps({"model": model, "messages": messages, "stream": stream})


def _suffix(stream: bool) -> str:
    return "stream" if stream else "whole"


def direct_kiro(sim_url: str, name: str = "direct-kiro") -> Target:
    host, port = _host_port(sim_url)
    body = orjson.dumps(kiro_request_body(PROMPT, model_id=MODEL))
    headers = {"authorization": "Bearer bench-access-token"}
    raw = build_request(host, port, "/generateAssistantResponse", body, headers)
    return Target(name, host, port, raw, KIRO_TOKEN)


def pipe_kiro(pipe_url: str) -> Target:
    """The direct Kiro request, through the byte-forwarding proxy (the floor)."""
    return direct_kiro(pipe_url, "pipe-kiro")


def native_hop_kiro(hop_url: str) -> Target:
    """The direct Kiro request, through the byte-forwarding proxy written in C."""
    return direct_kiro(hop_url, "native-hop-kiro")


def direct_openai(sim_url: str, stream: bool) -> Target:
    host, port = _host_port(sim_url)
    headers = {"authorization": "Bearer sk-dummy-simulator-key"}
    raw = build_request(host, port, "/v1/chat/completions", _openai_body(MODEL, stream), headers)
    return Target(
        f"direct-openai-{_suffix(stream)}", host, port, raw, OPENAI_TOKEN, OPENAI_EMPTY, stream
    )


def ki2api_openai(url: str, stream: bool) -> Target:
    host, port = _host_port(url)
    headers = {"authorization": f"Bearer {API_KEY}"}
    raw = build_request(host, port, "/v1/chat/completions", _openai_body(MODEL, stream), headers)
    return Target(
        f"ki2api-openai-{_suffix(stream)}", host, port, raw, OPENAI_TOKEN, OPENAI_EMPTY, stream
    )


def ki2api_anthropic(url: str, stream: bool) -> Target:
    host, port = _host_port(url)
    body = orjson.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": stream,
        }
    )
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    raw = build_request(host, port, "/v1/messages", body, headers)
    marker = ANTHROPIC_TOKEN_STREAM if stream else ANTHROPIC_TOKEN_WHOLE
    return Target(f"ki2api-anthropic-{_suffix(stream)}", host, port, raw, marker, b"", stream)


def litellm_openai(url: str, stream: bool) -> Target:
    host, port = _host_port(url)
    headers = {"authorization": f"Bearer {MASTER_KEY}"}
    body = _openai_body(LITELLM_MODEL, stream)
    raw = build_request(host, port, "/v1/chat/completions", body, headers)
    return Target(
        f"litellm-openai-{_suffix(stream)}", host, port, raw, OPENAI_TOKEN, OPENAI_EMPTY, stream
    )
