"""Throttles that tell the truth (docs/errors.md, "What a failure cools down").

The whole path on real sockets: the Kiro simulator scripts 429s with each reason, with and
without ``Retry-After``; the gateway runs on uvicorn; clients are plain HTTP and the real SDKs.
The account pool runs on a fake clock, and the gateway waits out cooldowns through it: a wait
moves the clock instead of sleeping, so every sequence is exact and each is played ``REPEAT``
times, which timing cannot pass by luck.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from ki2api.kiro.accounts.pool import AccountPool
from ki2api.kiro.http.client import UpstreamHttp
from ki2api.model.errors import ModelCapacity, UpstreamThrottled
from ki2api.settings import Settings
from ki2api.simulator import http_error
from ki2api.simulator.faults import throttled
from ki2api.ui import status
from ki2api.ui.i18n import t
from tests.fake_clock import FakeClock, pool_on
from tests.sse_events import openai_stream_error, parse_sse
from tests.stack import Stack, StackFactory

REPEAT = 20
SONNET, HAIKU = "claude-sonnet-4-5", "claude-haiku-4-5"  # Kiro: claude-sonnet-4.5 / -haiku-4.5
PATHS = {"openai": "chat/completions", "anthropic": "messages", "responses": "responses"}
pytestmark = pytest.mark.timeout(120)
# One client for the module: a new one per request builds a TLS context each time, slowly.
CLIENT = httpx.Client(timeout=30)


@pytest.fixture(scope="module", autouse=True)
def _close_client() -> Iterator[None]:
    yield
    CLIENT.close()


ADMIN_KEY = "throttle-tests-admin-key"  # the admin API is off without one
# The accounts' remaining credits are not asked for: a known reset date would stretch a quota
# cooldown to it (pool._quota_cooldown), past the hour these tests count on.
QUIET = {"KIRO_USAGE_REFRESH": "0"}
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def one_account(factory: StackFactory, clock: FakeClock, attempts: int = 1) -> Stack:
    return factory(QUIET, pool=pool_on(clock), upstream_attempts=attempts, admin_key=ADMIN_KEY)


def two_accounts(factory: StackFactory, clock: FakeClock, attempts: int = 3) -> Stack:
    """Accounts a and b, tried in that order (the simulator knows them as sim-a, sim-b)."""
    accounts = [
        {"label": "a", "accessToken": "sim-access-a-000001"},
        {"label": "b", "accessToken": "sim-access-b-000001"},
    ]
    env = {"KIRO_ACCESS_TOKEN": "", "KIRO_ACCOUNTS": json.dumps(accounts), **QUIET}
    stack = factory(
        env,
        pool=pool_on(clock),
        upstream_attempts=attempts,
        kiro_pool_strategy="first",
        admin_key=ADMIN_KEY,
    )
    stack.state.add_account(access_token="sim-access-a-000001", label="sim-a")
    stack.state.add_account(access_token="sim-access-b-000001", label="sim-b")
    return stack


def body_for(fmt: str, model: str, stream: bool = False) -> dict[str, Any]:
    if fmt == "responses":
        return {"model": model, "input": "Hello", "stream": stream}
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Hello"}],
        "stream": stream,
    }
    if fmt == "anthropic":
        body["max_tokens"] = 256
    return body


def post(stack: Stack, model: str = SONNET, fmt: str = "openai", **kw: Any) -> httpx.Response:
    return CLIENT.post(
        f"{stack.base_url}/{PATHS[fmt]}",
        json=body_for(fmt, model, **kw),
        headers={**stack.headers(), "anthropic-version": "2023-06-01"},
    )


def accounts(stack: Stack) -> dict[str, dict[str, Any]]:
    r = CLIENT.get(f"{stack.url}/admin/accounts", headers=ADMIN)
    assert r.status_code == 200, r.text
    return {row["label"]: row for row in r.json()["data"]}


def only_account(stack: Stack) -> dict[str, Any]:
    [row] = accounts(stack).values()
    return row


def sent(stack: Stack) -> list[tuple[str | None, str, int | None]]:
    """What reached Kiro: (simulator account, model id, status) per request."""
    assert stack.state.wait_idle()
    out = []
    for record in stack.state.requests:
        message = record.body["conversationState"]["currentMessage"]["userInputMessage"]
        out.append((record.account, message["modelId"], record.status))
    return out


def openai_error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return str(error["message"])


def next_round(stack: Stack, clock: FakeClock) -> None:
    """Past every cooldown and throttle window, with clean logs."""
    clock.advance(3600)
    clock.slept.clear()
    stack.state.reset_logs()


# --- model capacity: one model on one account -------------------------------------------------


def test_capacity_on_one_model_leaves_the_other_models_on_the_account(
    stack_factory: StackFactory,
) -> None:
    clock = FakeClock()
    stack = one_account(stack_factory, clock)
    for _ in range(REPEAT):
        stack.state.fail_next(1, "insufficient_capacity")
        message = openai_error(post(stack, SONNET), 429, "insufficient_model_capacity")
        assert "INSUFFICIENT_MODEL_CAPACITY" in message
        row = only_account(stack)
        assert row["state"] == "healthy"
        [cooldown] = row["cooldowns"]
        assert (cooldown["model"], cooldown["cause"]) == ("claude-sonnet-4.5", "capacity")
        assert "INSUFFICIENT_MODEL_CAPACITY" in cooldown["reason"]
        assert "claude-sonnet-4.5: model capacity" in row["description"]

        assert post(stack, HAIKU).status_code == 200  # another model: straight to Kiro
        assert clock.slept == []
        assert post(stack, SONNET).status_code == 200  # the same model: after the cooldown
        assert clock.slept == [0.5]
        assert [s[1:] for s in sent(stack)] == [
            ("claude-sonnet-4.5", 429),
            ("claude-haiku-4.5", 200),
            ("claude-sonnet-4.5", 200),
        ]
        next_round(stack, clock)


def test_capacity_moves_the_model_to_another_account_and_keeps_the_others(
    stack_factory: StackFactory,
) -> None:
    clock = FakeClock()
    stack = two_accounts(stack_factory, clock)
    for _ in range(REPEAT):
        stack.state.fail_next(1, "insufficient_capacity")
        assert post(stack, SONNET).status_code == 200  # a: capacity 429, then b
        assert post(stack, HAIKU).status_code == 200  # a still serves haiku
        assert post(stack, SONNET).status_code == 200  # sonnet keeps off a for now
        assert sent(stack) == [
            ("sim-a", "claude-sonnet-4.5", 429),
            ("sim-b", "claude-sonnet-4.5", 200),
            ("sim-a", "claude-haiku-4.5", 200),
            ("sim-b", "claude-sonnet-4.5", 200),
        ]
        assert clock.slept == []
        clock.advance(0.5)
        assert post(stack, SONNET).status_code == 200
        assert sent(stack)[-1] == ("sim-a", "claude-sonnet-4.5", 200)
        next_round(stack, clock)


def test_capacity_with_retry_after_is_refused_locally_for_that_model_only(
    stack_factory: StackFactory,
) -> None:
    clock = FakeClock()
    stack = one_account(stack_factory, clock)
    capacity = http_error(
        429, "I am experiencing high traffic.", "INSUFFICIENT_MODEL_CAPACITY", {"retry-after": "30"}
    )
    for _ in range(REPEAT):
        stack.state.fail_next(1, capacity)
        r = post(stack, SONNET)
        openai_error(r, 429, "insufficient_model_capacity")
        assert r.headers["retry-after"] == "30"
        clock.advance(5)
        r = post(stack, SONNET)  # refused here, for no longer than Kiro asked
        message = openai_error(r, 429, "rate_limit_exceeded")
        assert r.headers["retry-after"] == "25"
        assert "claude-sonnet-4.5 cooling down for 25 s" in message
        assert "INSUFFICIENT_MODEL_CAPACITY" in message
        assert post(stack, HAIKU).status_code == 200  # the other model is served meanwhile
        clock.advance(25)
        assert post(stack, SONNET).status_code == 200
        assert [s[1:] for s in sent(stack)] == [
            ("claude-sonnet-4.5", 429),
            ("claude-haiku-4.5", 200),
            ("claude-sonnet-4.5", 200),
        ]
        assert clock.slept == []
        next_round(stack, clock)


# --- rate limits: the account, and only when they repeat -------------------------------------


def test_one_rate_limit_429_does_not_cool_the_account(stack_factory: StackFactory) -> None:
    clock = FakeClock()
    stack = one_account(stack_factory, clock)
    for _ in range(REPEAT):
        stack.state.fail_next(1, "throttled")
        r = post(stack, SONNET)
        message = openai_error(r, 429, "rate_limit_exceeded")  # Kiro's 429, passed on
        assert "Too many requests" in message and "retry-after" not in r.headers
        assert r.headers["x-should-retry"] == "true"
        row = only_account(stack)
        assert (row["state"], row["cooldowns"]) == ("healthy", [])
        assert post(stack, SONNET).status_code == 200  # the very next request reaches Kiro
        assert post(stack, HAIKU).status_code == 200
        assert clock.slept == []
        assert [s[2] for s in sent(stack)] == [429, 200, 200]
        next_round(stack, clock)


def test_one_throttle_is_retried_within_the_request_after_a_short_back_off(
    stack_factory: StackFactory,
) -> None:
    clock = FakeClock()
    stack = one_account(stack_factory, clock, attempts=3)
    for _ in range(REPEAT):
        stack.state.fail_next(1, "throttled")
        assert post(stack, SONNET).status_code == 200
        assert [s[2] for s in sent(stack)] == [429, 200]
        assert len(clock.slept) == 1 and 0 < clock.slept[0] <= 0.4
        next_round(stack, clock)


def test_only_repeated_throttles_cool_the_account_and_the_back_off_grows(
    stack_factory: StackFactory,
) -> None:
    clock = FakeClock()
    stack = one_account(stack_factory, clock)
    for _ in range(REPEAT):
        stack.state.fail_next(2, "throttled")
        openai_error(post(stack), 429, "rate_limit_exceeded")
        assert only_account(stack)["state"] == "healthy"  # one throttle is not a pattern
        openai_error(post(stack), 429, "rate_limit_exceeded")
        row = only_account(stack)
        assert (row["state"], row["cause"]) == ("cooling_down", "rate_limit")
        assert row["cooldowns"][0]["model"] is None and row["cooldowns"][0]["seconds"] == 1
        assert "Too many requests" in row["reason"]

        stack.state.fail_next(2, "throttled")
        openai_error(post(stack), 429, "rate_limit_exceeded")  # waited 1 s, Kiro said no
        openai_error(post(stack), 429, "rate_limit_exceeded")  # waited 2 s, Kiro said no
        assert clock.slept == [1.0, 2.0]
        assert len(stack.state.requests) == 4

        r = post(stack)  # cooling 4 s: more than a client's retry would wait
        message = openai_error(r, 429, "rate_limit_exceeded")
        assert r.headers["retry-after"] == "4" and r.headers["retry-after-ms"] == "4000"
        assert "Too many requests" in message and "env: cooling down for 4 s" in message
        assert len(stack.state.requests) == 4  # answered without asking Kiro

        clock.advance(4)
        assert post(stack).status_code == 200  # an answer ends the row of throttles
        stack.state.fail_next(1, "throttled")
        openai_error(post(stack), 429, "rate_limit_exceeded")
        assert only_account(stack)["state"] == "healthy"
        assert post(stack).status_code == 200
        assert clock.slept == [1.0, 2.0]
        next_round(stack, clock)


def test_throttles_a_minute_apart_are_not_a_row(stack_factory: StackFactory) -> None:
    clock = FakeClock()
    stack = one_account(stack_factory, clock)
    for _ in range(REPEAT):
        for _ in range(3):
            stack.state.fail_next(1, "throttled")
            openai_error(post(stack), 429, "rate_limit_exceeded")
            assert only_account(stack)["state"] == "healthy"
            clock.advance(61)
        assert clock.slept == [] and len(stack.state.requests) == 3
        next_round(stack, clock)


@pytest.mark.parametrize("retry_after", [1, 2])
def test_a_short_retry_after_is_waited_out_exactly(
    stack_factory: StackFactory, retry_after: int
) -> None:
    clock = FakeClock()
    stack = one_account(stack_factory, clock)
    for _ in range(REPEAT):
        stack.state.fail_next(1, throttled(retry_after=retry_after))
        r = post(stack)
        openai_error(r, 429, "rate_limit_exceeded")
        assert r.headers["retry-after"] == str(retry_after)  # Kiro's own, passed on
        assert post(stack).status_code == 200
        assert clock.slept == [retry_after]  # never longer than Kiro asked
        assert [s[2] for s in sent(stack)] == [429, 200]
        next_round(stack, clock)


def test_a_short_cooldown_is_waited_out_on_the_real_clock_and_uvloop(
    stack_factory: StackFactory,
) -> None:
    """As production runs: the real clock and uvloop, whose timers may fire a moment before
    the cooldown they wait out has ended (the request was then refused after waiting)."""
    stack = stack_factory(uvloop=True)  # one account, the default attempts
    for _ in range(REPEAT):
        stack.state.fail_next(1, "insufficient_capacity")
        started = time.monotonic()
        r = post(stack, SONNET)
        assert r.status_code == 200, r.text  # 0.5 s for the model, waited out, then Kiro
        assert 0.5 <= time.monotonic() - started < 5
        assert [s[1:] for s in sent(stack)] == [
            ("claude-sonnet-4.5", 429),
            ("claude-sonnet-4.5", 200),
        ]
        stack.state.reset_logs()


def kiro_429_then_local_429(
    stack: Stack, clock: FakeClock, call: Callable[[], Any], local: Callable[[], Any]
) -> None:
    """Kiro says 429 with Retry-After 30; the next requests are refused locally until then."""
    stack.state.fail_next(1, throttled(retry_after=30))
    call()  # Kiro's own 429
    assert len(stack.state.requests) == 1
    local()
    clock.advance(10)
    local()
    assert len(stack.state.requests) == 1  # Kiro was not asked again


@pytest.mark.parametrize("fmt", ["openai", "anthropic", "responses"])
def test_a_long_cooldown_is_refused_locally_with_429_in_the_client_format(
    stack_factory: StackFactory, fmt: str
) -> None:
    clock = FakeClock()
    stack = one_account(stack_factory, clock)
    for _ in range(REPEAT):
        waits: list[str] = []

        def local(waits: list[str] = waits) -> None:
            r = post(stack, fmt=fmt)
            assert r.status_code == 429, r.text
            body = r.json()
            if fmt == "anthropic":
                assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
                message = body["error"]["message"]
            else:
                message = openai_error(r, 429, "rate_limit_exceeded")
                assert body["error"]["type"] == "rate_limit_error"
            assert "Kiro is throttling every account" in message
            assert "Too many requests" in message  # what Kiro said
            assert r.headers["x-should-retry"] == "true"
            waits.append(r.headers["retry-after"])

        kiro_429_then_local_429(stack, clock, lambda: post(stack, fmt=fmt), local)
        assert waits == ["30", "20"]  # the remaining wait, never more than Kiro asked
        clock.advance(20)
        assert post(stack, fmt=fmt).status_code == 200
        assert clock.slept == []
        next_round(stack, clock)


def test_the_sdks_see_a_rate_limit_error_with_retry_after(stack_factory: StackFactory) -> None:
    clock = FakeClock()
    stack = one_account(stack_factory, clock)
    oa = openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)
    an = anthropic.Anthropic(base_url=stack.url, api_key=stack.api_key, max_retries=0)
    calls: dict[str, Callable[[], Any]] = {
        "chat": lambda: oa.chat.completions.create(
            model=SONNET, messages=[{"role": "user", "content": "Hi"}]
        ),
        "responses": lambda: oa.responses.create(model=SONNET, input="Hi"),
        "messages": lambda: an.messages.create(
            model=SONNET, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
        ),
    }
    for _ in range(REPEAT):
        for name, call in calls.items():
            seen: list[str] = []

            def refused(
                call: Callable[[], Any] = call, seen: list[str] = seen, name: str = name
            ) -> None:
                error: type[Exception] = (
                    anthropic.RateLimitError if name == "messages" else openai.RateLimitError
                )
                with pytest.raises(error) as caught:
                    call()
                response = caught.value.response  # type: ignore[attr-defined]
                assert "Too many requests" in str(caught.value)
                seen.append(response.headers["retry-after"])

            kiro_429_then_local_429(stack, clock, refused, refused)
            assert seen == ["30", "30", "20"]
            next_round(stack, clock)


def test_several_accounts_all_throttled_answer_the_shortest_wait(
    stack_factory: StackFactory,
) -> None:
    clock = FakeClock()
    stack = two_accounts(stack_factory, clock)
    for _ in range(REPEAT):
        stack.state.fail_next(1, "throttled")
        assert post(stack).status_code == 200  # a: 429, then b at once
        assert post(stack).status_code == 200  # a again: one throttle cooled nothing
        assert [(s[0], s[2]) for s in sent(stack)] == [
            ("sim-a", 429),
            ("sim-b", 200),
            ("sim-a", 200),
        ]
        stack.state.reset_logs()

        stack.state.enqueue(throttled(retry_after=10), throttled(retry_after=20))
        r = post(stack, HAIKU)
        openai_error(r, 429, "rate_limit_exceeded")
        assert r.headers["retry-after"] == "10"  # when the first account is back
        r = post(stack, SONNET)
        message = openai_error(r, 429, "rate_limit_exceeded")
        assert r.headers["retry-after"] == "10"
        assert "a: cooling down for 10 s" in message and "b: cooling down for 20 s" in message
        assert len(stack.state.requests) == 2
        clock.advance(10)
        assert post(stack).status_code == 200
        assert sent(stack)[-1][0] == "sim-a"
        assert clock.slept == []
        next_round(stack, clock)


# --- quotas and suspensions: the account, until its reset / until a person acts -------------


def next_utc_midnight() -> datetime:
    now = datetime.now(UTC)
    return (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


def test_an_in_stream_daily_quota_keeps_the_account_out_until_midnight(
    stack_factory: StackFactory,
) -> None:
    clock = FakeClock()
    stack = one_account(stack_factory, clock)
    for _ in range(REPEAT):
        stack.state.fail_next(1, "daily_quota_mid_stream")
        r = post(stack, stream=True)
        assert r.status_code == 200
        error = openai_stream_error(parse_sse(r.text))
        assert error is not None and error["code"] == "insufficient_quota"
        assert "DAILY_REQUEST_COUNT" in error["message"]
        row = only_account(stack)
        assert (row["state"], row["cause"]) == ("cooling_down", "quota")
        until = datetime.fromisoformat(row["until"])
        assert abs((until - next_utc_midnight()).total_seconds()) < 5
        r = post(stack)  # refused locally, as Kiro said: 429 insufficient_quota till then
        openai_error(r, 429, "insufficient_quota")
        assert r.headers["x-should-retry"] == "false"
        assert abs(int(r.headers["retry-after"]) - row["cooldowns"][0]["seconds"]) < 5
        assert len(stack.state.requests) == 1
        clock.advance(row["cooldowns"][0]["seconds"] + 1)
        assert post(stack).status_code == 200
        next_round(stack, clock)


def test_an_in_stream_capacity_error_cools_only_that_model(stack_factory: StackFactory) -> None:
    clock = FakeClock()
    stack = one_account(stack_factory, clock)
    for _ in range(REPEAT):
        stack.state.fail_next(1, "capacity_mid_stream")
        error = openai_stream_error(parse_sse(post(stack, stream=True).text))
        assert error is not None and error["code"] == "insufficient_model_capacity"
        [cooldown] = only_account(stack)["cooldowns"]
        assert (cooldown["model"], cooldown["cause"]) == ("claude-sonnet-4.5", "capacity")
        assert post(stack, HAIKU).status_code == 200 and clock.slept == []
        next_round(stack, clock)


SUSPICIOUS = "We have detected suspicious activity on your Kiro account."


def test_a_suspension_disables_the_account_with_kiro_words_and_is_not_retried(
    stack_factory: StackFactory,
) -> None:
    clock = FakeClock()
    stack = one_account(stack_factory, clock, attempts=3)
    for _ in range(REPEAT):
        stack.state.fail_next(1, http_error(400, SUSPICIOUS))  # read from the words, not 400
        message = openai_error(post(stack), 502, "upstream_auth_failed")
        assert SUSPICIOUS in message
        assert len(stack.state.requests) == 1  # no retry, no refresh
        row = only_account(stack)
        assert row["state"] == "disabled" and SUSPICIOUS in row["reason"]
        message = openai_error(post(stack), 503, "no_healthy_account")
        assert SUSPICIOUS in message and len(stack.state.requests) == 1
        clock.advance(10**6)  # time does not bring it back: a person does
        assert only_account(stack)["state"] == "disabled"
        readd = CLIENT.post(
            f"{stack.url}/admin/accounts?replace=true",
            json={"label": "env", "accessToken": "test-access-token-WXYZ"},
            headers=ADMIN,
        )
        assert readd.status_code == 201, readd.text
        assert post(stack).status_code == 200
        next_round(stack, clock)


# --- what the page shows ----------------------------------------------------------------------


async def test_the_status_tab_shows_each_cooldown_with_its_model_and_cause() -> None:
    clock = FakeClock()
    accounts = json.dumps(
        [{"label": "a", "accessToken": "tok-a-0001"}, {"label": "b", "accessToken": "tok-b-0001"}]
    )
    settings = Settings(kiro_accounts=accounts, kiro_pool_strategy="first")
    async with httpx.AsyncClient() as http:
        pool = AccountPool.from_settings(settings, http, clock=clock, sleep=clock.sleep)
        lease = await pool.acquire(model="claude-opus-4.6")
        lease.failed(ModelCapacity("Kiro has no capacity (Kiro 429 INSUFFICIENT_MODEL_CAPACITY)"))
        (await pool.acquire(exclude=frozenset({"a"}))).failed(
            UpstreamThrottled("Kiro is throttling (Kiro 429: Too many requests)", retry_after=90)
        )
    words_of = {
        "en": ("model capacity", "rate limit", "all models"),
        "zh": ("模型容量不足", "限流", "所有模型"),
    }
    for lang, words in words_of.items():
        table = status.accounts_table(SimpleNamespace(pool=pool), lang)  # type: ignore[arg-type]
        column = table.columns[-1]
        cells = dict(zip(table.iloc[:, 0], table[column], strict=True))
        assert cells["a"].startswith(f"claude-opus-4.6 · {words[0]} · ")
        assert "INSUFFICIENT_MODEL_CAPACITY" in cells["a"]
        assert cells["b"].startswith(f"{words[2]} · {words[1]} · ")
        assert "Too many requests" in cells["b"]
        # The note says once when the account is back ("in 1 min", not "in in 1 min").
        notes = dict(zip(table.iloc[:, 0], table[table.columns[-2]], strict=True))
        back = t("in", lang, d=f"1 {t('unit_min', lang)}")
        # Kiro's words are quoted as they came, beside the translated parts.
        assert notes["b"] == f"{back} · “Kiro is throttling (Kiro 429: Too many requests)”"
    [throttle] = orjson.loads(orjson.dumps(pool.snapshot()[1].to_dict()))["cooldowns"]
    assert throttle == {
        "model": None,
        "scope": "account",
        "cause": "rate_limit",
        "reason": "Kiro is throttling (Kiro 429: Too many requests)",
        "until": throttle["until"],
        "seconds": 90,
    }


# --- accounts that lack the model, with per-model cooldowns -----------------------------------


def test_an_account_lacking_the_model_does_not_answer_for_its_cooldown(
    stack_factory: StackFactory,
) -> None:
    """a does not offer Sonnet and is out of quota for an hour; b offers it and Kiro lacks
    capacity for it there for two. A Sonnet request is told when b's Sonnet is back (429
    rate_limit_exceeded), not when a's quota is (a cannot serve it then either), and not that
    the quota is used up (the account that serves the model has quota)."""
    clock = FakeClock()
    stack = two_accounts(stack_factory, clock, attempts=1)
    models = stack.runtime.models
    assert models is not None
    capacity = http_error(
        429,
        "I am experiencing high traffic.",
        "INSUFFICIENT_MODEL_CAPACITY",
        {"retry-after": "7200"},
    )
    for _ in range(REPEAT):
        models.note_missing("a", "claude-sonnet-4.5")  # as Kiro's INVALID_MODEL_ID teaches it
        stack.state.fail_next(1, "quota_exceeded")
        openai_error(post(stack, HAIKU), 429, "insufficient_quota")  # a: out of quota (1 h)
        stack.state.fail_next(1, capacity)
        openai_error(post(stack, SONNET), 429, "insufficient_model_capacity")  # b: Sonnet cools
        assert [s[:2] for s in sent(stack)] == [
            ("sim-a", "claude-haiku-4.5"),
            ("sim-b", "claude-sonnet-4.5"),
        ]
        clock.advance(10)
        r = post(stack, SONNET)  # refused here: only b may serve it, in 7190 s
        message = openai_error(r, 429, "rate_limit_exceeded")
        assert r.headers["retry-after"] == "7190"
        assert "b: claude-sonnet-4.5 cooling down for 7190 s" in message
        assert "a: does not offer claude-sonnet-4.5" in message
        assert len(sent(stack)) == 2  # nothing more reached Kiro
        assert clock.slept == []
        clock.advance(7200)  # past b's Sonnet cooldown (and a's quota) for the next round
        next_round(stack, clock)


# --- an account lacking the model beside one throttled ----------------------------------------

TWO_ACCOUNTS = json.dumps(
    [
        {"label": "a", "accessToken": "tok-aaaa-0001"},
        {"label": "b", "accessToken": "tok-bbbb-0002"},
    ]
)


async def _lists_unknown(credential: object) -> list[Any]:
    from ki2api.model.errors import ModelNotFound

    raise ModelNotFound("lists are not asked in this test")


def two_account_settings(api_url: str, tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        kiro_api_url=api_url + "/generateAssistantResponse",
        kiro_accounts=TWO_ACCOUNTS,
        kiro_token_file=tmp_path / "none.json",
        **extra,
    )


def in_process_gateway(settings: Settings, http: UpstreamHttp, clock: FakeClock) -> Any:
    """Accounts a and b tried in that order, on ``clock``; model lists unknown (every account
    may try a model until Kiro says otherwise). Returns (pool, models, gateway)."""
    from ki2api.kiro.accounts.available_models import AvailableModels
    from ki2api.kiro.http.client import KiroClient
    from ki2api.kiro.wire.models import ModelCatalog
    from ki2api.pipeline.gateway import Gateway

    pool = AccountPool.from_settings(
        settings, http, strategy="first", clock=clock, sleep=clock.sleep
    )
    catalog = ModelCatalog()
    models = AvailableModels(pool, catalog, _lists_unknown)
    gateway = Gateway(settings, KiroClient(http, settings), pool, catalog, models=models)
    return pool, models, gateway


def hello(model: str) -> Any:
    from ki2api.model.request import ChatRequest, Message, TextPart

    return ChatRequest(model, [Message("user", [TextPart("hello")])])


@pytest.mark.parametrize("lacking_first", [True, False])
@pytest.mark.parametrize("retry_after", [None, 30])
async def test_a_throttle_beside_an_account_lacking_the_model_is_a_429_not_a_404(
    lacking_first: bool, retry_after: int | None, tmp_path: Path
) -> None:
    """Two accounts: one that Kiro tells (INVALID_MODEL_ID) does not offer the model, one Kiro
    throttles. The client learns of the throttle, its only way out, not of a missing model."""
    from ki2api.simulator import SimulatorServer

    lacking, throttling = ("a", "b") if lacking_first else ("b", "a")
    request = hello(SONNET)
    with SimulatorServer() as sim:
        sim.state.require_known_tokens = True
        added = {
            "a": sim.state.add_account(access_token="tok-aaaa-0001", label="a"),
            "b": sim.state.add_account(access_token="tok-bbbb-0002", label="b"),
        }
        added[lacking].models = ["claude-haiku-4.5"]  # Kiro's list changed since
        added[throttling].fault = throttled(retry_after)
        settings = two_account_settings(sim.url, tmp_path, upstream_attempts=3)
        async with UpstreamHttp(settings) as http:
            for _ in range(REPEAT):
                _, models, gateway = in_process_gateway(settings, http, FakeClock())
                for _ in range(2):  # Kiro's refusal, then the account skipped for the model
                    with pytest.raises(UpstreamThrottled) as caught:
                        await gateway.open(request)
                    assert caught.value.status == 429
                    assert "Too many requests" in caught.value.message
                    if retry_after is not None:
                        assert caught.value.retry_after is not None
                        assert 0 < caught.value.retry_after <= retry_after
                assert models.skip_for("claude-sonnet-4.5") == {lacking}
                refused = [r.account for r in sim.state.requests if r.status == 400]
                assert refused == [lacking]  # asked once; never again for Sonnet
                sim.state.reset_logs()


async def test_a_model_refused_while_the_other_account_cools_down_is_a_429_not_a_404(
    tmp_path: Path,
) -> None:
    """a cools down after Kiro throttled a Haiku request; b, asked for Sonnet meanwhile, says
    it does not offer it: a is the way out, so the client gets a 429 with a's wait."""
    from ki2api.pipeline.gateway import collect
    from ki2api.simulator import SimulatorServer

    with SimulatorServer() as sim:
        sim.state.require_known_tokens = True
        a = sim.state.add_account(access_token="tok-aaaa-0001", label="a")
        b = sim.state.add_account(access_token="tok-bbbb-0002", label="b")
        b.models = ["claude-haiku-4.5"]
        settings = two_account_settings(sim.url, tmp_path, upstream_attempts=3)
        async with UpstreamHttp(settings) as http:
            for _ in range(REPEAT):
                clock = FakeClock()
                _, _, gateway = in_process_gateway(settings, http, clock)
                a.fault = throttled(retry_after=30)
                assert (await collect(await gateway.open(hello(HAIKU)))).text  # a 429, then b
                a.fault = None
                with pytest.raises(UpstreamThrottled) as caught:
                    await gateway.open(hello(SONNET))
                assert caught.value.status == 429 and caught.value.retry_after == 30
                assert "a: cooling down for 30 s" in caught.value.message
                assert "Too many requests" in caught.value.message
                clock.advance(30)
                assert (await collect(await gateway.open(hello(SONNET)))).text  # a, back
                assert [(r.account, r.status) for r in sim.state.requests] == [
                    ("a", 429),
                    ("b", 200),
                    ("b", 400),
                    ("a", 200),
                ]
                sim.state.reset_logs()


async def test_an_account_lacking_the_model_does_not_set_the_wait(tmp_path: Path) -> None:
    """a does not offer Sonnet and cools down for 10 s; b, which does, for 30 s: a Sonnet
    request is told 30 s (b's wait), and the message says a does not offer the model."""
    from ki2api.model.errors import AccountsCoolingDown

    settings = two_account_settings("http://127.0.0.1:9", tmp_path)  # Kiro is never reached
    async with UpstreamHttp(settings) as http:
        for _ in range(REPEAT):
            clock = FakeClock()
            pool, models, gateway = in_process_gateway(settings, http, clock)
            models.note_missing("a", "claude-sonnet-4.5")
            why = "Kiro is throttling this account (Kiro 429: Too many requests)"
            for label, seconds in (("a", 10), ("b", 30)):
                lease = await pool.acquire(exclude=frozenset({"a", "b"} - {label}))
                lease.failed(UpstreamThrottled(why, retry_after=seconds))
            with pytest.raises(AccountsCoolingDown) as caught:
                await gateway.open(hello(SONNET))
            assert caught.value.retry_after == 30
            assert "a: does not offer claude-sonnet-4.5" in caught.value.message
            assert "b: cooling down for 30 s" in caught.value.message
            assert clock.slept == []


async def test_a_refusal_names_a_missing_login_file_without_its_folder(tmp_path: Path) -> None:
    """Clients and the page's visitors read the refusal: it lists each account's state, but a
    login file by its name only, never where it lies on the server."""
    from ki2api.model.errors import AccountsCoolingDown, NoHealthyAccount

    missing = tmp_path / "secret-folder" / "kiro-auth-token.json"
    env = {"KIRO_ACCESS_TOKEN": "tok-env-0001", "KIRO_TOKEN_FILE": str(missing)}
    settings = Settings.from_env(env)
    async with httpx.AsyncClient() as http:
        clock = FakeClock()
        pool = AccountPool.from_settings(settings, http, clock=clock, sleep=clock.sleep)
        throttle = UpstreamThrottled("Kiro is throttling (Kiro 429)", retry_after=30)
        (await pool.acquire(model="claude-sonnet-4.5")).failed(throttle)
        with pytest.raises(AccountsCoolingDown) as throttled_refusal:
            await pool.acquire(model="claude-sonnet-4.5")
        clock.advance(3600)
        with pytest.raises(NoHealthyAccount) as refusal:
            await pool.acquire(exclude=frozenset({"env"}), model="claude-sonnet-4.5")
    for message in (throttled_refusal.value.message, refusal.value.message):
        assert "…/kiro-auth-token.json" in message
        assert "secret-folder" not in message and str(tmp_path) not in message
