"""Account hygiene (issue 20, item 6; credits of item 3): on real sockets, the simulator as Kiro.

- a conversation sticks to the account that served it, while that account can serve; it moves
  when the account cools down, and then sticks to the new one;
- an account Kiro suspends or flags is out of rotation, shown as suspended with Kiro's words,
  and never asked again (the background credits call finds a suspension too);
- a minimum interval between the requests of an account: turns are waited for (no polling),
  and a turn further off than QUEUE_TIMEOUT sends the request elsewhere or answers 429;
- each account's credits and reset date, refreshed in the background.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from ki2api.pipeline.sticky import MemorySticky
from ki2api.simulator import http_error
from ki2api.simulator.faults import Fault, get_fault
from ki2api.simulator.scripts import Script
from ki2api.ui import status
from tests.stack import Stack, StackFactory

ADMIN_KEY = "hygiene-tests-admin-key"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
TOKENS = {"a": "sim-access-a-000001", "b": "sim-access-b-000001"}
pytestmark = pytest.mark.timeout(120)


def two_accounts(
    factory: StackFactory, *, extra: dict[str, Any] | None = None, **env: str
) -> Stack:
    """Accounts a and b (``extra``: more fields per label), known to the simulator as sim-a and
    sim-b; the default strategy (least recently used)."""
    accounts = [{"label": label, "accessToken": token} for label, token in TOKENS.items()]
    for entry in accounts:
        entry.update((extra or {}).get(entry["label"], {}))
    stack = factory(
        {"KIRO_ACCESS_TOKEN": "", "KIRO_ACCOUNTS": json.dumps(accounts), **env},
        admin_key=ADMIN_KEY,
    )
    for label, token in TOKENS.items():
        stack.state.add_account(access_token=token, label=f"sim-{label}")
    return stack


def sim_account(stack: Stack, label: str) -> Any:
    return next(a for a in stack.state.accounts.accounts if a.label == f"sim-{label}")


def chat(stack: Stack, *turns: str, timeout: float = 30) -> httpx.Response:
    """One request of a conversation whose user turns so far are ``turns``."""
    messages: list[dict[str, str]] = []
    for i, text in enumerate(turns):
        if i:
            messages.append({"role": "assistant", "content": f"answer {i}"})
        messages.append({"role": "user", "content": text})
    return httpx.post(
        f"{stack.base_url}/chat/completions",
        json={"model": "claude-sonnet-4-5", "messages": messages},
        headers=stack.headers(),
        timeout=timeout,
    )


def served(stack: Stack) -> list[tuple[str | None, int | None]]:
    """(simulator account, status) of each request Kiro got, in order."""
    assert stack.state.wait_idle()
    return [(r.account, r.status) for r in stack.state.requests]


def accounts(stack: Stack) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"{stack.url}/admin/accounts", headers=ADMIN)
    assert r.status_code == 200, r.text
    return {row["label"]: row for row in r.json()["data"]}


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- sticky conversations ---------------------------------------------------------------------


def test_a_conversation_stays_on_the_account_of_its_first_turn(
    stack_factory: StackFactory,
) -> None:
    stack = two_accounts(stack_factory)
    turns = ["Plan a week in Kyoto"]
    for n in range(6):  # least recently used alone would alternate (the test below)
        assert chat(stack, *turns).status_code == 200
        turns.append(f"And day {n + 2}?")
    log = served(stack)
    assert len({account for account, _ in log}) == 1
    # New conversations still spread over the accounts.
    for n in range(4):
        assert chat(stack, f"Unrelated question {n}").status_code == 200
    assert {account for account, _ in served(stack)[6:]} == {"sim-a", "sim-b"}


def test_without_stickiness_the_turns_spread_over_the_accounts(
    stack_factory: StackFactory,
) -> None:
    stack = two_accounts(stack_factory, KIRO_STICKY_TTL="0")
    turns = ["Plan a week in Kyoto"]
    for n in range(4):
        assert chat(stack, *turns).status_code == 200
        turns.append(f"And day {n + 2}?")
    assert len({account for account, _ in served(stack)}) == 2


def test_a_conversation_moves_when_its_account_cools_down_and_sticks_to_the_new_one(
    stack_factory: StackFactory,
) -> None:
    stack = two_accounts(stack_factory)
    turns = ["Plan a week in Kyoto"]
    assert chat(stack, *turns).status_code == 200
    [(first, _)] = served(stack)
    other = "sim-b" if first == "sim-a" else "sim-a"
    # Its account is throttled with a Retry-After: it cools down, the turn moves at once.
    stack.state.fail_next(1, http_error(429, "Too many requests", None, {"retry-after": "1"}))
    turns.append("And day 2?")
    assert chat(stack, *turns).status_code == 200
    assert served(stack)[1:] == [(first, 429), (other, 200)]
    time.sleep(1.2)  # the first account is healthy again, and least recently used ...
    assert accounts(stack)[first[-1]]["state"] == "healthy"
    for n in range(3):
        turns.append(f"And day {n + 3}?")
        assert chat(stack, *turns).status_code == 200
    # ... yet the conversation stays where it moved.
    assert [account for account, _ in served(stack)[3:]] == [other] * 3


def test_a_conversation_leaves_an_account_whose_slots_are_all_taken(
    stack_factory: StackFactory,
) -> None:
    stack = two_accounts(stack_factory, MAX_CONCURRENT_PER_ACCOUNT="1")
    turns = ["Plan a week in Kyoto"]
    assert chat(stack, *turns).status_code == 200
    [(first, _)] = served(stack)
    stack.state.enqueue(get_fault("slow_first_byte"))  # holds its account's only slot for 2 s
    slow = threading.Thread(target=chat, args=(stack, *turns, "And day 2?"))
    slow.start()
    eventually(lambda: len(stack.state.requests) == 2)
    started = time.monotonic()
    assert chat(stack, *turns, "And day 2, again?").status_code == 200
    assert time.monotonic() - started < 1.5  # did not queue behind the slow one
    slow.join()
    log = served(stack)
    assert log[1][0] == first and log[2][0] != first


async def test_the_sticky_store_is_bounded_and_forgets_idle_conversations() -> None:
    now = [0.0]
    store = MemorySticky(max_entries=2, clock=lambda: now[0])
    await store.set("x", "a", ttl=10)
    await store.set("y", "b", ttl=10)
    assert await store.get("x") == "a"  # x is now the most recently used
    await store.set("z", "a", ttl=10)
    assert len(store) == 2 and await store.get("y") is None  # least recently used: y
    now[0] = 9.9
    await store.set("x", "b", ttl=10)  # each turn sets it again: alive 10 s after the last
    now[0] = 10.0
    assert await store.get("z") is None and await store.get("x") == "b"
    now[0] = 19.8
    assert await store.get("x") == "b"
    now[0] = 20.0
    assert await store.get("x") is None and len(store) == 0


# --- suspended and flagged accounts -----------------------------------------------------------


def _refusal(status: int, message: str, reason: str | None = None) -> Fault:
    error = http_error(status, message, reason)
    return Fault("refusal", lambda _answer: Script((error,)))


SUSPENSIONS = {
    "suspended": get_fault("suspended"),
    "locked": _refusal(
        403,
        "Your User ID (d-1234) temporarily is suspended. We've locked your account as a "
        "security precaution. To restore access, please contact our support team.",
    ),
    "unusual account activity": _refusal(
        403, "Your User ID is temporarily suspended. We detected unusual account activity."
    ),
    "flagged": _refusal(
        429,
        "Due to suspicious activity, we are imposing temporary limits on how frequently your "
        "account can send a request to Kiro while we investigate.",
    ),
}


@pytest.mark.parametrize("kind", SUSPENSIONS)
def test_a_suspended_or_flagged_account_is_taken_out_and_never_asked_again(
    stack_factory: StackFactory, kind: str
) -> None:
    stack = two_accounts(stack_factory, KIRO_POOL_STRATEGY="round_robin")
    sim_account(stack, "a").fault = SUSPENSIONS[kind]
    for n in range(6):
        assert chat(stack, f"Question {n}").status_code == 200  # b answers each
    log = served(stack)
    assert log.count(("sim-b", 200)) == 6 and len(log) == 7  # a was asked once
    said = str(SUSPENSIONS[kind].apply(Script(())).steps[0].body["message"])  # type: ignore[attr-defined]
    row = accounts(stack)["a"]
    assert row["state"] == "disabled" and row["suspended"] is True
    assert said[:40] in row["reason"] and row["description"].startswith("suspended: Kiro ")
    health = httpx.get(f"{stack.url}/health").json()
    assert health["accounts_usable"] == 1
    assert health["accounts"] == {
        "healthy": 1,
        "cooling_down": 0,
        "needs_login": 0,
        "disabled": 0,
        "suspended": 1,
    }
    assert "reason" not in json.dumps(health) and said[:20] not in json.dumps(health)
    for lang, word in (("en", "suspended by Kiro"), ("zh", "已被 Kiro 封禁")):
        table = status.accounts_table(stack.runtime, lang)
        cells = dict(zip(table.iloc[:, 0], table.iloc[:, 1], strict=True))
        notes = dict(zip(table.iloc[:, 0], table[table.columns[-2]], strict=True))
        assert cells["a"] == f"⛔ {word}" and said[:40] in notes["a"]
    # A person acts: the account comes back (here: added again).
    readd = httpx.post(
        f"{stack.url}/admin/accounts?replace=true",
        json={"label": "a", "accessToken": "sim-access-a-000002"},
        headers=ADMIN,
    )
    assert readd.status_code == 201 and readd.json()["account"]["suspended"] is False


def test_the_credits_refresh_finds_a_suspension_before_any_chat(
    stack_factory: StackFactory,
) -> None:
    stack = two_accounts(stack_factory, KIRO_USAGE_REFRESH="0.2")
    sim_account(stack, "a").fault = get_fault("suspended")
    eventually(lambda: accounts(stack)["a"]["suspended"])
    for n in range(3):
        assert chat(stack, f"Question {n}").status_code == 200
    assert served(stack) == [("sim-b", 200)] * 3  # a never got a chat
    assert "TEMPORARILY_SUSPENDED" in accounts(stack)["a"]["usage_error"]


# --- a minimum interval between requests ------------------------------------------------------


def test_requests_on_a_paced_account_wait_their_turn_without_spinning(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory({"KIRO_MIN_INTERVAL_MS": "250"}, admin_key=ADMIN_KEY)
    results: list[int] = []
    cpu, wall = time.process_time(), time.monotonic()
    threads = [
        threading.Thread(target=lambda n=n: results.append(chat(stack, f"Q{n}").status_code))
        for n in range(5)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    assert results == [200] * 5
    arrivals = sorted(r.started for r in stack.state.requests)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert min(gaps) > 0.2 and arrivals[-1] - arrivals[0] >= 0.95, gaps
    assert wall >= 1.0
    # Waiting is sleeping: the whole process (gateway, simulator, clients) stayed mostly idle.
    assert cpu < wall * 0.8, (cpu, wall)
    [row] = accounts(stack).values()
    assert row["min_interval_ms"] == 250 and row["waiting"] == 0


def test_a_turn_too_far_off_sends_the_request_elsewhere_then_answers_429(
    stack_factory: StackFactory,
) -> None:
    stack = two_accounts(
        stack_factory,
        extra={"a": {"minIntervalMs": 2000}, "b": {"min_interval_ms": 2000}},
        QUEUE_TIMEOUT="0.5",
    )
    started = time.monotonic()
    assert chat(stack, "One").status_code == 200
    assert chat(stack, "Two").status_code == 200  # the other account: no wait at all
    refused = chat(stack, "Three")
    assert time.monotonic() - started < 1.5
    assert {account for account, _ in served(stack)} == {"sim-a", "sim-b"}
    assert len(stack.state.requests) == 2  # the refusal never reached Kiro
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "QUEUE_TIMEOUT" in error["message"]
    assert "minimum interval 2000 ms" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 2
    time.sleep(float(refused.headers["retry-after-ms"]) / 1000)
    assert chat(stack, "Three, again").status_code == 200


def test_an_account_may_set_its_own_interval(stack_factory: StackFactory) -> None:
    stack = two_accounts(
        stack_factory, extra={"a": {"minIntervalMs": 0}}, KIRO_MIN_INTERVAL_MS="1500"
    )
    rows = accounts(stack)
    assert rows["a"]["min_interval_ms"] == 0 and rows["b"]["min_interval_ms"] == 1500
    bad = httpx.post(
        f"{stack.url}/admin/accounts",
        json={"label": "c", "accessToken": "sim-access-c-000001", "minIntervalMs": -5},
        headers=ADMIN,
    )
    assert bad.status_code == 400 and "minIntervalMs" in bad.json()["error"]["message"]


# --- credits ----------------------------------------------------------------------------------


def test_each_accounts_credits_are_refreshed_in_the_background(
    stack_factory: StackFactory,
) -> None:
    stack = two_accounts(stack_factory, KIRO_USAGE_REFRESH="0.3")
    a = sim_account(stack, "a")
    a.usage_limit, a.current_usage, a.free_trial_limit = 50.0, 12.5, None
    eventually(lambda: all(row["usage"] for row in accounts(stack).values()))
    eventually(lambda: accounts(stack)["a"]["usage"]["remaining"] == 37.5)
    usage = accounts(stack)["a"]["usage"]
    assert usage["limit"] == 50 and usage["used"] == 12.5 and usage["subscription"] == "KIRO FREE"
    resets = datetime.fromisoformat(usage["resets_at"])
    assert resets > datetime.now(UTC) and resets.day == 1  # the first of next month
    assert accounts(stack)["b"]["usage"]["remaining"] == 550  # 50 + an active free trial
    a.current_usage = 40.0
    eventually(lambda: accounts(stack)["a"]["usage"]["remaining"] == 10)
    assert stack.state.usage_calls.count("sim-a") >= 2
    for lang, words in (("en", "10 of 50 left · resets in "), ("zh", "剩余 10 / 50 · ")):
        table = status.accounts_table(stack.runtime, lang)
        credits = dict(zip(table.iloc[:, 0], table[table.columns[-3]], strict=True))
        assert credits["a"].startswith(words), credits
    # A failed call keeps the last numbers, says why, and leaves a working account alone.
    a.fault = get_fault("not_authorized")
    eventually(lambda: accounts(stack)["a"]["usage_error"] is not None)
    row = accounts(stack)["a"]
    assert row["usage"]["remaining"] == 10 and row["state"] == "healthy"
    assert "not authorized" in status.credits_text(
        stack.runtime.pool.snapshot()[0], datetime.now(UTC), "en"
    )


def test_no_credits_are_asked_unless_the_setting_says_so(stack_factory: StackFactory) -> None:
    stack = two_accounts(stack_factory)
    assert chat(stack, "Hello").status_code == 200
    time.sleep(0.3)
    assert stack.state.usage_calls == []
    assert {row["usage"] for row in accounts(stack).values()} == {None}
