"""Retries before the first byte: a brief throttle is waited out, a failing account is skipped."""

from __future__ import annotations

import json
import time

import openai

from ki2api.simulator import get_fault, text_answer
from tests.stack import StackFactory


def test_one_brief_throttle_is_waited_out_on_a_single_account(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory()
    stack.state.enqueue(get_fault("throttled"), text_answer("after the throttle"))
    c = openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)
    started = time.monotonic()
    result = c.chat.completions.create(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}]
    )
    assert result.choices[0].message.content == "after the throttle"
    assert time.monotonic() - started < 3


def test_server_error_moves_to_the_next_account(stack_factory: StackFactory) -> None:
    accounts = [
        {"label": "first", "accessToken": "tok-first-aaaa"},
        {"label": "second", "accessToken": "tok-second-bbbb"},
    ]
    stack = stack_factory(
        {
            "KIRO_ACCESS_TOKEN": "",
            "KIRO_ACCOUNTS": json.dumps(accounts),
            "KIRO_POOL_STRATEGY": "first",
        }
    )
    stack.state.require_known_tokens = True
    stack.state.add_account(access_token="tok-first-aaaa", refresh_token="rt-a")
    stack.state.add_account(access_token="tok-second-bbbb", refresh_token="rt-b")
    stack.state.enqueue(get_fault("server_error"), text_answer("from the second account"))
    c = openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)
    result = c.chat.completions.create(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}]
    )
    assert result.choices[0].message.content == "from the second account"
    used = [r.headers["authorization"] for r in stack.state.requests]
    assert used == ["Bearer tok-first-aaaa", "Bearer tok-second-bbbb"]
