"""Requests captured from the real agents (``tests/fixtures/agents/``, written by the agent
tests with ``KI2API_SAVE_AGENT_FIXTURES=1``) go through the front door's parser and the Kiro
request builder into a body the simulator's strict validator accepts; and the gateway answers
each one, streamed and not, without the simulator refusing what it was sent."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ki2api.api.anthropic import protocol as anthropic_protocol
from ki2api.api.openai_chat import protocol as chat_protocol
from ki2api.api.responses import protocol as responses_protocol
from ki2api.kiro.wire.models import ModelCatalog
from ki2api.kiro.wire.request_builder import build_kiro_request
from ki2api.model.request import ChatRequest, ImagePart
from ki2api.simulator.validator import validate_request
from tests.stack import StackFactory

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "agents"
# The front door each agent's requests go to (by file name prefix).
DOORS = {
    "codex": "/v1/responses",
    "opencode": "/v1/chat/completions",
    "claude": "/v1/messages",
}
CAPTURED = sorted(p for p in FIXTURES.glob("*.json") if p.name.split("-")[0] in DOORS)
# Codex's gpt-5 requests name a model the operator maps; here it is mapped to a Claude model.
MODEL_FOR = {"gpt-5.5": "claude-sonnet-4-6"}


async def _no_images(url: str, param: str) -> ImagePart:
    raise AssertionError("the captured requests carry no images")


def load(path: Path) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(path.read_bytes())
    if "_about" in body:  # a whole captured exchange (method, path, headers): take its body
        body = body["body"]
    body["model"] = MODEL_FOR.get(body["model"], body["model"])
    return body


def chat_request(path: Path, body: dict[str, Any]) -> ChatRequest:
    door = DOORS[path.name.split("-")[0]]
    if door == "/v1/responses":
        wire = responses_protocol.parse_wire(body)
        return asyncio.run(responses_protocol.to_chat_request(wire, _no_images))
    if door == "/v1/messages":
        convert = anthropic_protocol.to_chat_request(
            anthropic_protocol.parse_wire(body), _no_images, max_image_bytes=1 << 20
        )
        return asyncio.run(convert)
    return asyncio.run(chat_protocol.to_chat_request(chat_protocol.parse_wire(body), _no_images))


def test_fixtures_are_there():
    names = {p.name for p in CAPTURED}
    assert {"codex-plain.json", "opencode-plain.json", "claude-websearch.json"} <= names


@pytest.mark.parametrize("path", CAPTURED, ids=lambda p: p.name)
def test_captured_request_builds_a_body_the_validator_accepts(path: Path) -> None:
    body = load(path)
    request = chat_request(path, body)
    catalog = ModelCatalog()
    built = build_kiro_request(
        request,
        model=catalog.resolve(request.model),
        profile_arn="arn:aws:codewhisperer:us-east-1:123456789012:profile/X",
        conversation_id="c-agents",
    )
    reason = validate_request(orjson.loads(built.body))
    assert reason is None, reason


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("path", CAPTURED, ids=lambda p: p.name)
def test_captured_request_is_answered(
    path: Path, stream: bool, stack_factory: StackFactory
) -> None:
    stack = stack_factory()
    body = {**load(path), "stream": stream}
    door = DOORS[path.name.split("-")[0]]
    response = httpx.post(stack.url + door, json=body, headers=stack.headers(), timeout=60)
    # Claude Code's WebSearch request is searched by the gateway: no model call at all.
    searched = door == "/v1/messages" and bool(stack.state.searches.calls)
    assert response.status_code == 200, response.text
    if stream:
        assert "text/event-stream" in response.headers["content-type"]
        assert "error" not in [
            line[7:] for line in response.text.splitlines() if line.startswith("event: ")
        ]
    records = stack.state.requests
    assert (records or searched) and all(r.refusal is None for r in records), records
