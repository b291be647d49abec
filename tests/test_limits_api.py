"""The API's limits on a real server: per-key rate limit, CORS, body size, message count, and
the per-account concurrency bound with its queue timeout."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anthropic
import httpx
import openai
import pytest

from ki2api.api.limits import Rate, RateLimiter, parse_rate
from ki2api.pipeline.concurrency import AccountBusy, AccountSlots
from ki2api.simulator import Delay, Script, text_answer
from tests.stack import Stack, StackFactory

pytestmark = pytest.mark.timeout(30)

CHAT: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "messages": [{"role": "user", "content": "hi"}],
}


def test_parse_rate() -> None:
    assert parse_rate("60/minute") == Rate(60, 60.0)
    assert parse_rate("10 / second") == Rate(10, 1.0)
    assert parse_rate("1000/day") == Rate(1000, 86400.0)
    assert parse_rate("100/5minutes") == Rate(100, 300.0)
    assert parse_rate("5 per hour") == Rate(5, 3600.0)
    for bad in ("", "fast", "0/minute", "-1/minute", "60/fortnight", "60"):
        with pytest.raises(ValueError, match="RATE_LIMIT"):
            parse_rate(bad)


def test_token_bucket_refills_at_the_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(Rate(2, 1.0), clock=lambda: now[0])
    assert limiter.take("k") == 0 and limiter.take("k") == 0
    assert limiter.take("k") == pytest.approx(0.5)
    assert limiter.take("other") == 0  # buckets are per key
    now[0] = 0.5
    assert limiter.take("k") == 0
    assert limiter.take("k") > 0


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(Rate(1, 60.0))
    for i in range(5000):
        limiter.take(f"key-{i}")
    assert len(limiter._buckets) <= 1024


def test_rate_limit_answers_429_with_retry_after_in_each_format(
    stack_factory: StackFactory, request: pytest.FixtureRequest
) -> None:
    stack = stack_factory({"RATE_LIMIT": "2/minute"})
    c = openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)
    request.addfinalizer(c.close)
    c.chat.completions.create(**CHAT)
    c.chat.completions.create(**CHAT)
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(**CHAT)
    r = info.value.response
    assert info.value.code == "rate_limit_exceeded"
    assert 20 <= int(r.headers["retry-after"]) <= 31  # one request comes back every 30 s
    assert r.headers["x-should-retry"] == "true" and r.headers["x-request-id"]

    a = anthropic.Anthropic(base_url=stack.url, api_key=stack.api_key, max_retries=0)
    request.addfinalizer(a.close)
    with pytest.raises(anthropic.RateLimitError) as ainfo:
        a.messages.create(
            model="claude-sonnet-4-6", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
    assert ainfo.value.status_code == 429
    assert ainfo.value.response.json()["error"]["type"] == "rate_limit_error"
    assert int(ainfo.value.response.headers["retry-after"]) > 0
    # Wrong keys are not counted (and still get 401); /health is not rate limited.
    bad = httpx.post(f"{stack.base_url}/chat/completions", json=CHAT, headers={"x-api-key": "x"})
    assert bad.status_code == 401
    assert httpx.get(f"{stack.url}/health").status_code == 200


def test_no_rate_limit_by_default(stack: Stack) -> None:
    with openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0) as c:
        for _ in range(30):
            c.models.list()


def test_a_bad_rate_limit_setting_fails_at_start(stack_factory: StackFactory) -> None:
    with pytest.raises(ValueError, match="RATE_LIMIT"):
        stack_factory({"RATE_LIMIT": "lots"})


def test_cors_only_when_configured(stack_factory: StackFactory) -> None:
    plain = stack_factory()
    preflight = {
        "origin": "https://app.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
    }
    r = httpx.options(f"{plain.base_url}/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers

    stack = stack_factory({"CORS_ORIGINS": "https://app.example, https://other.example"})
    r = httpx.options(f"{stack.base_url}/chat/completions", headers=preflight)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    r = httpx.options(
        f"{stack.base_url}/chat/completions",
        headers={**preflight, "origin": "https://evil.example"},
    )
    assert r.headers.get("access-control-allow-origin") != "https://evil.example"
    r = httpx.post(
        f"{stack.base_url}/chat/completions",
        json=CHAT,
        headers={**stack.headers(), "origin": "https://other.example"},
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://other.example"
    assert "x-request-id" in r.headers["access-control-expose-headers"]


def test_body_over_the_limit_is_413_in_each_format(stack_factory: StackFactory) -> None:
    stack = stack_factory({"MAX_BODY_BYTES": "2000"})
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    r = httpx.post(f"{stack.base_url}/chat/completions", json=big, headers=stack.headers())
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(
        f"{stack.base_url}/messages", json={**big, "max_tokens": 5}, headers=stack.headers()
    )
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "request_too_large"

    # Without a content-length (chunked upload) the limit holds too.
    def chunks():
        yield b'{"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    r = httpx.post(f"{stack.base_url}/chat/completions", content=chunks(), headers=stack.headers())
    assert r.status_code == 413
    assert not stack.state.requests


def test_too_many_messages_is_400(stack_factory: StackFactory) -> None:
    stack = stack_factory({"MAX_MESSAGES": "5"})
    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(7)]
    r = httpx.post(
        f"{stack.base_url}/chat/completions",
        json={**CHAT, "messages": many},
        headers=stack.headers(),
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("too_many_messages", "messages")
    r = httpx.post(
        f"{stack.base_url}/messages",
        json={**CHAT, "messages": many, "max_tokens": 5},
        headers=stack.headers(),
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert not stack.state.requests


async def test_account_slots_queue_then_time_out() -> None:
    slots = AccountSlots(limit=2, queue_timeout=0.2)
    first, second = await slots.acquire("a"), await slots.acquire("a")
    assert slots.in_use("a") == 2
    other = await slots.acquire("b")  # accounts are independent
    waiter = asyncio.ensure_future(slots.acquire("a"))
    await asyncio.sleep(0.05)
    first.release()
    first.release()  # idempotent
    third = await waiter
    assert slots.in_use("a") == 2
    started = time.monotonic()
    with pytest.raises(AccountBusy) as info:
        await slots.acquire("a")
    assert 0.15 < time.monotonic() - started < 1
    assert info.value.status == 503 and info.value.should_retry
    for slot in (second, third, other):
        slot.release()
    assert slots.in_use("a") == 0
    unbounded = AccountSlots(limit=0, queue_timeout=0)
    assert [await unbounded.acquire("a") for _ in range(100)]


def test_concurrent_upstream_requests_per_account_are_bounded(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory({"MAX_CONCURRENT_PER_ACCOUNT": "2", "QUEUE_TIMEOUT": "5"})
    peak = [0]

    def answer() -> Script:
        return text_answer("slow", chunks=1) + [Delay(0.3)] + text_answer(" done").steps

    for _ in range(6):
        stack.state.enqueue(answer())

    async def run() -> list[str]:
        c = openai.AsyncOpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)

        async def watch() -> None:
            while True:
                peak[0] = max(peak[0], stack.state.open_streams)
                await asyncio.sleep(0.01)

        watcher = asyncio.ensure_future(watch())
        results = await asyncio.gather(*[c.chat.completions.create(**CHAT) for _ in range(6)])
        watcher.cancel()
        await c.close()
        return [r.choices[0].message.content or "" for r in results]

    answers = asyncio.run(run())
    assert answers == ["slow done"] * 6
    assert peak[0] == 2


def test_queue_timeout_gives_503_and_the_stream_slot_comes_back(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory({"MAX_CONCURRENT_PER_ACCOUNT": "1", "QUEUE_TIMEOUT": "0.3"})
    stack.state.enqueue(text_answer("hold", chunks=1) + [Delay(1.5)] + text_answer("!").steps)
    with httpx.stream(
        "POST",
        f"{stack.base_url}/chat/completions",
        json={**CHAT, "stream": True},
        headers=stack.headers(),
        timeout=10,
    ) as held:
        assert held.status_code == 200
        r = httpx.post(
            f"{stack.base_url}/messages", json={**CHAT, "max_tokens": 5}, headers=stack.headers()
        )
        assert r.status_code == 529
        assert r.json()["error"]["type"] == "overloaded_error"
        assert "in flight" in r.json()["error"]["message"]
        held.read()
    # The slot was given back when the stream ended.
    r = httpx.post(f"{stack.base_url}/chat/completions", json=CHAT, headers=stack.headers())
    assert r.status_code == 200
