"""An upstream that never stops answering: the gateway stops reading at the largest answer Kiro
can give, fails in the client's format, and closes the upstream request; memory stays bounded."""

from __future__ import annotations

import resource
from typing import Any

import anthropic
import openai
import pytest

from ki2api.kiro.http.client import MAX_ANSWER_BYTES
from ki2api.simulator import Event, Flood, Script
from tests.stack import API_KEY, Stack

pytestmark = pytest.mark.timeout(240)

MODEL = "claude-sonnet-4-5"
MESSAGES: list[Any] = [{"role": "user", "content": "tell me everything"}]
CAP_MB = MAX_ANSWER_BYTES // (1024 * 1024)
MEMORY_BOUND = 600 * 1024 * 1024  # gateway and simulator share this process


def endless(stack: Stack) -> None:
    frame = Event("assistantResponseEvent", {"content": "All work and no play. " * 2000})
    stack.state.enqueue(Script((Event("initial-response", {"conversationId": "c"}), Flood(frame))))


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def check_upstream_closed(stack: Stack) -> None:
    assert stack.state.wait_idle(timeout=30), "the endless upstream answer was left open"
    record = stack.state.last_request
    assert record is not None and record.bytes_sent < 2 * MAX_ANSWER_BYTES


def test_an_endless_whole_answer_is_a_502_in_openai_format(stack: Stack) -> None:
    # Before: the whole answer was buffered without end (5 GB in 20 s).
    endless(stack)
    client = openai.OpenAI(base_url=stack.base_url, api_key=API_KEY, max_retries=0, timeout=120)
    before = peak_rss()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == 502
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "upstream_protocol_error"
    assert f"{CAP_MB} MB" in error["message"]
    check_upstream_closed(stack)
    assert peak_rss() - before < MEMORY_BOUND


def test_an_endless_response_is_a_502_on_the_responses_api(stack: Stack) -> None:
    endless(stack)
    client = openai.OpenAI(base_url=stack.base_url, api_key=API_KEY, max_retries=0, timeout=120)
    with pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(model=MODEL, input="tell me everything")
    assert caught.value.status_code == 502
    assert f"{CAP_MB} MB" in caught.value.message
    check_upstream_closed(stack)


def test_anthropic_answers_are_bounded_by_their_max_tokens(stack: Stack) -> None:
    # Anthropic's API requires max_tokens, and the gateway stops the answer there (the cap is
    # for the formats where it is optional).
    endless(stack)
    client = anthropic.Anthropic(base_url=stack.url, api_key=API_KEY, max_retries=0, timeout=120)
    message = client.messages.create(model=MODEL, max_tokens=64_000, messages=MESSAGES)
    assert message.stop_reason == "max_tokens"
    check_upstream_closed(stack)


def test_an_endless_streamed_answer_ends_with_an_error_event(stack: Stack) -> None:
    endless(stack)
    client = openai.OpenAI(base_url=stack.base_url, api_key=API_KEY, max_retries=0, timeout=120)
    received = 0
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            if chunk.choices:
                received += len(chunk.choices[0].delta.content or "")
    assert f"{CAP_MB} MB" in caught.value.message
    assert 0 < received <= MAX_ANSWER_BYTES
    check_upstream_closed(stack)
