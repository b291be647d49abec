"""Client keys end to end: made through the admin API or the CLI, used with the real openai and
anthropic SDKs against the simulator, refused with each limit in each format, counted."""

from __future__ import annotations

import calendar
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from ki2api.cli import main as cli
from ki2api.settings import Settings
from ki2api.simulator import Script, context_usage_event
from ki2api.simulator.mcp import SearchResult
from ki2api.simulator.scripts import text_answer, text_events, tool_use_answer
from ki2api.store import DB_NAME, SqliteStore
from ki2api.teams.gate import Teams
from tests.stack import ACCESS_TOKEN, Stack, StackFactory

ADMIN_KEY = "admin-key-0123456789abcdef"
SONNET = "claude-sonnet-4-5"
HAIKU = "claude-haiku-4-5"
START = calendar.timegm((2026, 3, 15, 12, 0, 0))  # noon UTC on the 15th


class Clock:
    """The keys' clock: a test moves it on (buckets refill, days and months end)."""

    def __init__(self) -> None:
        self.now = float(START)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gateway(stack_factory: StackFactory, clock: Clock) -> Callable[..., Stack]:
    def start(**env: str) -> Stack:
        return stack_factory(
            {"ADMIN_KEY": ADMIN_KEY, **env}, teams=lambda settings: Teams(settings, clock=clock)
        )

    return start


def admin(stack: Stack) -> httpx.Client:
    return httpx.Client(
        base_url=stack.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    )


def make_key(stack: Stack, **fields: Any) -> dict[str, Any]:
    with admin(stack) as client:
        made = client.post("/admin/keys", json={"name": "alice", **fields})
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


def oai(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0)


def ant(stack: Stack, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.url, api_key=key, max_retries=0)


def chat(stack: Stack, key: str, model: str = SONNET, stream: bool = False) -> str:
    with oai(stack, key) as client:
        if stream:
            parts = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
        done = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
        return done.choices[0].message.content or ""


def message(stack: Stack, key: str, model: str = SONNET) -> str:
    with ant(stack, key) as client:
        done = client.messages.create(
            model=model, max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
    return "".join(b.text for b in done.content if b.type == "text")


def usage_rows(stack: Stack, requests: int | None = None, **query: str) -> list[dict[str, Any]]:
    """``requests``: wait (briefly) until that many are counted: a request is counted just
    after its answer's last byte, which its client may see first."""
    with admin(stack) as client:
        for _ in range(100):
            answer = client.get("/admin/usage", params=query)
            assert answer.status_code == 200, answer.text
            rows: list[dict[str, Any]] = answer.json()["data"]
            if requests is None or totals(rows, "requests") >= requests:
                break
            time.sleep(0.02)
    return rows


def totals(rows: list[dict[str, Any]], field: str) -> float:
    return sum(row[field] for row in rows)


# --- lifecycle -------------------------------------------------------------------------------


def test_a_key_is_made_shown_once_used_changed_and_revoked_through_the_admin_api(
    gateway: Callable[..., Stack],
) -> None:
    stack = gateway()
    made = make_key(stack, models=["claude-sonnet-*"], rpm=30, credits_per_day=50)
    secret = made["secret"]
    assert secret.startswith("ki2-") and len(secret) == 47
    assert made["key"] == f"ki2-…{secret[-4:]}" and made["status"] == "active"
    assert (made["rpm"], made["credits_per_day"], made["models"]) == (30, 50.0, ["claude-sonnet-*"])

    with admin(stack) as client:
        listed = client.get("/admin/keys")
        assert listed.status_code == 200
        assert secret not in listed.text and "secret" not in listed.text
        (row,) = listed.json()["data"]
        assert row["name"] == "alice" and row["last_used_at"] is None

        assert "simulator" in chat(stack, secret).lower()
        assert "simulator" in message(stack, secret).lower()
        assert client.get("/admin/keys/alice").json()["last_used_at"] is not None

        off = client.patch("/admin/keys/alice", json={"enabled": False})
        assert off.status_code == 200 and off.json()["status"] == "disabled"
        with pytest.raises(openai.AuthenticationError) as refused:
            chat(stack, secret)
        assert refused.value.code == "key_disabled"
        client.patch("/admin/keys/alice", json={"enabled": True, "rpm": None})
        assert chat(stack, secret)

        revoked = client.delete(f"/admin/keys/{made['id']}")
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        with pytest.raises(openai.AuthenticationError) as refused:
            chat(stack, secret)
        assert refused.value.code == "key_revoked" and "revoked" in refused.value.message
        with pytest.raises(anthropic.AuthenticationError) as gone:
            message(stack, secret)
        assert gone.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        assert client.get("/admin/keys").json()["data"] == []
        everything = client.get("/admin/keys", params={"include_revoked": "true"}).json()
        assert [k["status"] for k in everything["data"]] == ["revoked"]
        # The name is free again; the revoked key stays revoked.
        assert client.post("/admin/keys", json={"name": "alice"}).status_code == 201
        taken = client.post("/admin/keys", json={"name": "alice"})
        assert taken.status_code == 409 and taken.json()["error"]["code"] == "key_exists"


def test_the_admin_api_refuses_bad_fields_with_a_400_naming_them(
    gateway: Callable[..., Stack],
) -> None:
    stack = gateway()
    with admin(stack) as client:
        for body, param in (
            ({"name": "bad name"}, "name"),
            ({"name": "operator"}, "name"),
            ({}, "name"),
            ({"name": "bob", "rpm": 0}, "rpm"),
            ({"name": "bob", "rpm": 1.5}, "rpm"),
            ({"name": "bob", "tpm": "many"}, "tpm"),
            ({"name": "bob", "credits_per_day": -1}, "credits_per_day"),
            ({"name": "bob", "models": "claude sonnet"}, "models"),
            ({"name": "bob", "models": [1]}, "models"),
            ({"name": "bob", "expires_at": "next week"}, "expires_at"),
            ({"name": "bob", "expires_at": 1e30}, "expires_at"),
            ({"name": "bob", "expires_in_days": 1e11}, "expires_in_days"),
            ({"name": "bob", "enabled": "yes"}, "enabled"),
            ({"name": "bob", "colour": "red"}, "colour"),
        ):
            answer = client.post("/admin/keys", json=body)
            assert answer.status_code == 400, (body, answer.text)
            assert answer.json()["error"]["param"] == param, body
        assert client.post("/admin/keys", json=["alice"]).status_code == 400
        assert client.patch("/admin/keys/nobody", json={"rpm": 5}).status_code == 404
        assert client.get("/admin/usage", params={"from": "yesterday"}).status_code == 400
        assert client.get("/admin/usage", params={"format": "xml"}).status_code == 400
        assert client.get("/admin/usage", params={"key": "nobody"}).status_code == 404
        assert client.get("/admin/keys", params={"include_revoked": "maybe"}).status_code == 400
        assert client.get("/admin/keys/x/daily", params={"days": "0"}).status_code == 400
        assert client.get("/admin/keys").json()["data"] == []
    api = httpx.get(f"{stack.url}/admin/keys", headers=stack.headers())
    assert api.status_code == 403  # the API key is no administrator


def test_an_expired_key_is_refused_with_a_401_in_both_formats(
    gateway: Callable[..., Stack], clock: Clock
) -> None:
    stack = gateway()
    secret = make_key(stack, expires_in_days=1)["secret"]
    assert chat(stack, secret)
    clock.advance(86400)
    with pytest.raises(openai.AuthenticationError) as refused:
        chat(stack, secret)
    assert refused.value.code == "key_expired" and "expired on 2026-03-16" in refused.value.message
    with pytest.raises(anthropic.AuthenticationError):
        message(stack, secret)
    with admin(stack) as client:
        assert client.get("/admin/keys/alice").json()["status"] == "expired"
        client.patch("/admin/keys/alice", json={"expires_at": None})
    assert chat(stack, secret)


# --- limits ----------------------------------------------------------------------------------


def test_requests_past_a_keys_rpm_get_429_with_retry_after_in_both_formats(
    gateway: Callable[..., Stack], clock: Clock
) -> None:
    stack = gateway()
    secret = make_key(stack, rpm=2)["secret"]
    assert chat(stack, secret, stream=True)
    assert message(stack, secret)
    with pytest.raises(openai.RateLimitError) as refused:
        chat(stack, secret)
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.response.headers["retry-after"] == "30"
    assert "2 requests per minute" in refused.value.message
    with pytest.raises(anthropic.RateLimitError) as throttled:
        message(stack, secret)
    assert throttled.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert throttled.value.response.headers["retry-after"] == "30"
    assert make_key(stack, name="bob", rpm=2)["secret"]  # another key: its own bucket
    clock.advance(30)
    assert chat(stack, secret)
    refused_rows = [r for r in usage_rows(stack, key="alice") if r["refused"]]
    assert totals(refused_rows, "refused") == 2 and refused_rows[0]["account"] == ""
    assert totals(usage_rows(stack, requests=3, key="alice"), "requests") == 3


def test_a_keys_token_limit_refuses_the_next_request_after_a_long_answer(
    gateway: Callable[..., Stack], clock: Clock
) -> None:
    stack = gateway()
    secret = make_key(stack, tpm=5)["secret"]
    text = chat(stack, secret, stream=True)  # admitted with 5 tokens left, not cut
    assert text == stack.state.requests[-1].sent_text
    with pytest.raises(openai.RateLimitError) as refused:
        chat(stack, secret)
    assert refused.value.code == "rate_limit_exceeded" and "tokens per minute" in str(refused.value)
    with pytest.raises(anthropic.RateLimitError):
        message(stack, secret)
    clock.advance(3600)
    assert message(stack, secret)


def test_a_spent_daily_budget_answers_insufficient_quota_until_midnight_utc(
    gateway: Callable[..., Stack], clock: Clock
) -> None:
    """The simulator meters 0.0058 credits an answer: the first of the day crosses a budget of
    0.005 and is served whole; the next one is refused."""
    stack = gateway()
    secret = make_key(stack, credits_per_day=0.005)["secret"]
    text = chat(stack, secret, stream=True)
    assert text and text == stack.state.requests[-1].sent_text
    served = len(stack.state.requests)
    with pytest.raises(openai.RateLimitError) as refused:
        chat(stack, secret)
    assert refused.value.code == "insufficient_quota"
    assert refused.value.type == "insufficient_quota"  # type: ignore[attr-defined]
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert refused.value.response.headers["retry-after"] == str(12 * 3600)
    assert "0.005 credits for today" in refused.value.message
    with pytest.raises(anthropic.RateLimitError) as spent:
        message(stack, secret)
    assert spent.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert len(stack.state.requests) == served  # nothing went upstream
    clock.advance(12 * 3600)  # midnight UTC
    assert message(stack, secret)


def test_a_spent_monthly_budget_holds_until_the_first_of_the_month(
    gateway: Callable[..., Stack], clock: Clock
) -> None:
    stack = gateway()
    secret = make_key(stack, credits_per_month=0.01)["secret"]
    assert chat(stack, secret) and chat(stack, secret)  # 0.0116 once the second has ended
    clock.advance(86400)  # a new day does not help
    with pytest.raises(openai.RateLimitError) as refused:
        chat(stack, secret)
    assert refused.value.code == "insufficient_quota" and "this month" in refused.value.message
    clock.now = calendar.timegm((2026, 4, 1, 0, 0, 1))
    assert chat(stack, secret)


def test_a_model_outside_the_keys_allowlist_is_refused_with_403_and_unlisted(
    gateway: Callable[..., Stack],
) -> None:
    stack = gateway()
    secret = make_key(stack, models=["claude-sonnet-*"])["secret"]
    assert chat(stack, secret, model=SONNET)
    assert message(stack, secret, model="claude-sonnet-4-6-thinking")
    sent = len(stack.state.requests)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat(stack, secret, model=HAIKU)
    assert refused.value.code == "model_not_allowed" and "claude-sonnet-*" in refused.value.message
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        message(stack, secret, model=HAIKU)
    assert denied.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    assert len(stack.state.requests) == sent
    with oai(stack, secret) as client:
        names = [m.id for m in client.models.list()]
    assert names and all(n.startswith("claude-sonnet") for n in names)
    with oai(stack, stack.api_key) as client:
        assert any(m.id.startswith("claude-haiku") for m in client.models.list())


def test_api_key_stays_the_operators_unlimited_key_and_its_usage_is_counted(
    gateway: Callable[..., Stack],
) -> None:
    stack = gateway(RATE_LIMIT="1000/minute")
    make_key(stack, rpm=1)
    for _ in range(3):
        assert chat(stack, stack.api_key)
    (row,) = usage_rows(stack, requests=3, key="operator")
    assert (row["key"], row["requests"], row["refused"]) == ("operator", 3, 0)


def test_on_a_space_without_api_key_client_keys_work_and_the_default_key_does_not(
    gateway: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = gateway(API_KEY="", SPACE_ID="me/ki2api", DATA_DIR=str(tmp_path / "data"))
    secret = make_key(stack)["secret"]
    assert chat(stack, secret)
    with pytest.raises(openai.APIStatusError) as refused:
        chat(stack, "ki2api-key-2024")
    assert refused.value.status_code == 503 and "API_KEY" in refused.value.message


def test_rate_limit_is_the_rpm_of_keys_that_set_none(gateway: Callable[..., Stack]) -> None:
    stack = gateway(RATE_LIMIT="1/minute")
    secret = make_key(stack)["secret"]
    assert chat(stack, secret)
    with pytest.raises(openai.RateLimitError):
        chat(stack, secret)


def test_a_web_search_is_one_request_of_the_key_however_many_model_calls_it_takes(
    gateway: Callable[..., Stack],
) -> None:
    stack = gateway()
    secret = make_key(stack, rpm=2)["secret"]
    search = orjson.dumps({"query": "kumquat season"}).decode()
    stack.state.enqueue(
        tool_use_answer("web_search", "tooluse_ws1", search), text_answer("In winter.")
    )
    stack.state.searches.enqueue([SearchResult("Kumquat", "https://example.org/k", "Citrus.")])
    tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    with ant(stack, secret) as client:
        answer = client.messages.create(
            model=SONNET,
            max_tokens=100,
            messages=[{"role": "user", "content": "When are kumquats in season?"}],
            tools=[tool],  # type: ignore[list-item]
        )
        assert "In winter." in "".join(b.text for b in answer.content if b.type == "text")
        assert len(stack.state.requests) == 2  # two model calls, one request of the key
        # Claude Code's own search request (no model call) is admitted like any other.
        stack.state.searches.enqueue([SearchResult("K", "https://example.org/k", "C.")])
        searched = client.messages.create(
            model=SONNET,
            max_tokens=100,
            system="You are an assistant for performing a web search tool use",
            messages=[{"role": "user", "content": "Perform a web search for the query: k"}],
            tools=[tool],  # type: ignore[list-item]
        )
        assert searched.content[0].type == "server_tool_use"
        with pytest.raises(anthropic.RateLimitError):
            message(stack, secret)
    rows = usage_rows(stack, requests=2, key="alice")
    assert totals(rows, "requests") == 2 and totals(rows, "refused") == 1


# --- usage -----------------------------------------------------------------------------------


def test_usage_by_day_key_and_account_in_json_csv_and_metrics(
    gateway: Callable[..., Stack], clock: Clock
) -> None:
    stack = gateway()
    alice = make_key(stack)["secret"]
    bob = make_key(stack, name="bob")["secret"]
    chat(stack, alice)
    chat(stack, alice, stream=True)
    message(stack, bob)
    # An answer without Kiro's metering: its credits are an estimate, and say so.
    stack.state.enqueue(
        Script((*text_events("no meter here", 2), context_usage_event(1.0)), "no-meter")
    )
    chat(stack, bob)
    clock.advance(86400)
    chat(stack, bob)
    with pytest.raises(openai.NotFoundError):
        chat(stack, bob, model="no-such-model")  # refused before admission: not counted

    rows = usage_rows(stack, requests=5)
    assert [(r["day"], r["key"], r["requests"]) for r in rows] == [
        ("2026-03-15", "alice", 2),
        ("2026-03-15", "bob", 2),
        ("2026-03-16", "bob", 1),
    ]
    assert all(r["account"] == "env" for r in rows)
    for row in rows:
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0 and row["errors"] == 0
    alice_row, bob_row, _ = rows
    # The simulator meters 0.0058 credits an answer, and a millionth a character of the prompt.
    assert alice_row["credits"] == pytest.approx(2 * 0.0058, abs=1e-4)
    assert not alice_row["credits_estimated"]
    assert bob_row["credits_estimated"] > 0
    assert bob_row["credits"] - bob_row["credits_estimated"] == pytest.approx(0.0058, abs=1e-4)

    assert [r["key"] for r in usage_rows(stack, key="bob")] == ["bob", "bob"]
    assert len(usage_rows(stack, **{"from": "2026-03-16"})) == 1
    assert len(usage_rows(stack, to="2026-03-15")) == 2
    assert usage_rows(stack, account="elsewhere") == []
    with admin(stack) as client:
        csv = client.get("/admin/usage", params={"format": "csv"})
        assert csv.headers["content-type"].startswith("text/csv")
        lines = csv.text.splitlines()
        assert lines[0].startswith("day,key,key_id,account,requests,errors,refused,")
        assert len(lines) == 4 and lines[1].startswith("2026-03-15,alice,key_")
        assert client.get("/admin/usage", headers={"accept": "text/csv"}).text == csv.text
        daily = client.get("/admin/keys/bob/daily", params={"days": "3"}).json()["data"]
        assert [(d["day"], d["requests"]) for d in daily] == [
            ("2026-03-14", 0),
            ("2026-03-15", 2),
            ("2026-03-16", 1),
        ]
        metrics = client.get("/metrics").text
    assert 'ki2api_key_requests_total{key="alice"} 2.0' in metrics
    assert 'ki2api_key_requests_total{key="bob"} 3.0' in metrics
    assert 'ki2api_key_tokens_total{key="bob",kind="output"}' in metrics


def test_metrics_name_at_most_a_hundred_keys_and_the_rest_share_other() -> None:
    teams = Teams(Settings(), SqliteStore(":memory:"))
    for i in range(150):
        teams._totals(f"user-{i}").requests += 1
    assert len(teams.totals) == 101 and teams.totals["other"].requests == 50


def test_usage_rows_match_the_upstream_under_concurrent_load_on_20_keys_and_4_accounts(
    gateway: Callable[..., Stack],
) -> None:
    accounts = [{"label": f"acc-{i}", "accessToken": f"{ACCESS_TOKEN}-{i}"} for i in range(4)]
    stack = gateway(
        KIRO_ACCESS_TOKEN="",
        KIRO_ACCOUNTS=orjson.dumps(accounts).decode(),
        KIRO_POOL_STRATEGY="round_robin",
    )
    keys = [make_key(stack, name=f"user-{i:02d}", rpm=1000)["secret"] for i in range(20)]
    requests_per_key = 12
    jobs = [(keys[i % 20], i % 3 == 0) for i in range(20 * requests_per_key)]

    http = httpx.Client(limits=httpx.Limits(max_connections=16), timeout=30)
    clients = {
        key: openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, http_client=http)
        for key in keys
    }

    def run(job: tuple[str, bool]) -> None:
        key, stream = job
        ask = {"model": SONNET, "messages": [{"role": "user", "content": "hi"}]}
        if stream:
            chunks = clients[key].chat.completions.create(**ask, stream=True)  # type: ignore[call-overload]
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            assert clients[key].chat.completions.create(**ask).choices[0].message.content  # type: ignore[call-overload]

    with http, concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(run, jobs))
    upstream = stack.state.requests
    assert len(upstream) == len(jobs)
    rows = usage_rows(stack, requests=len(jobs))
    assert totals(rows, "requests") == len(jobs) and totals(rows, "errors") == 0
    by_key: dict[str, int] = {}
    by_account: dict[str, int] = {}
    for row in rows:
        by_key[row["key"]] = by_key.get(row["key"], 0) + row["requests"]
        by_account[row["account"]] = by_account.get(row["account"], 0) + row["requests"]
    assert by_key == {f"user-{i:02d}": requests_per_key for i in range(20)}
    seen: dict[str, int] = {}
    for record in upstream:
        token = record.headers["authorization"].removeprefix("Bearer ")
        label = f"acc-{token.rsplit('-', 1)[1]}"
        seen[label] = seen.get(label, 0) + 1
    assert by_account == seen


# --- stored state and secrecy ----------------------------------------------------------------


def test_keys_usage_and_budgets_survive_a_restart(
    gateway: Callable[..., Stack], stack_factory: StackFactory, clock: Clock, tmp_path: Path
) -> None:
    data = str(tmp_path / "data")
    first = gateway(DATA_DIR=data)
    secret = make_key(first, credits_per_day=0.005)["secret"]
    assert chat(first, secret)
    first.server.stop()

    second = gateway(DATA_DIR=data)
    with pytest.raises(openai.RateLimitError) as refused:
        chat(second, secret)  # today's spending was kept
    assert refused.value.code == "insufficient_quota"
    rows = usage_rows(second, key="alice")
    assert [(r["account"], r["requests"], r["refused"]) for r in rows] == [
        ("", 0, 1),
        ("env", 1, 0),
    ]
    with admin(second) as client:
        client.patch("/admin/keys/alice", json={"credits_per_day": None})
    assert chat(second, secret)


def test_a_key_never_appears_in_the_database_the_logs_or_the_admin_answers(
    gateway: Callable[..., Stack], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    caplog.set_level(logging.DEBUG)
    stack = gateway(DATA_DIR=str(data))
    secret = make_key(stack, rpm=1)["secret"]
    answers = []
    chat(stack, secret)
    with pytest.raises(openai.RateLimitError):
        chat(stack, secret)
    with admin(stack) as client:
        for path in ("/admin/keys", "/admin/keys/alice", "/admin/usage", "/metrics"):
            answers.append(client.get(path).text)
        answers.append(client.patch("/admin/keys/alice", json={"rpm": 5}).text)
        answers.append(client.delete("/admin/keys/alice").text)
    with pytest.raises(openai.AuthenticationError) as refused:
        chat(stack, secret)
    answers.append(str(refused.value))
    stack.server.stop()  # everything written
    stored = b"".join(p.read_bytes() for p in data.iterdir())
    assert secret.encode() not in stored and secret[4:20].encode() not in stored
    assert all(secret not in text and secret[4:20] not in text for text in answers)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "key=alice" in logged  # the access log names the key, never shows it
    assert secret not in logged and secret[4:20] not in logged


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "data"
    monkeypatch.setenv("DATA_DIR", str(folder))
    yield folder


def test_the_cli_makes_lists_changes_and_revokes_keys_a_running_server_honours(
    gateway: Callable[..., Stack], data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = gateway(DATA_DIR=str(data_dir), USAGE_FLUSH_SECONDS="0.05")
    argv = ["keys", "create", "--name", "alice", "--credits-per-day", "50", "--rpm", "30"]
    assert cli([*argv, "--models", "claude-sonnet-*"]) == 0
    out = capsys.readouterr().out
    secret = next(w for w in out.split() if w.startswith("ki2-") and "…" not in w)
    assert "shown once" in out and "alice" in out

    assert _eventually(lambda: _works(stack, secret))  # the server reloads the keys
    assert cli(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert "alice" in listing and f"ki2-…{secret[-4:]}" in listing and secret not in listing
    assert "claude-sonnet-*" in listing and "0.00/50" in listing

    assert cli(["keys", "update", "alice", "--rpm", "off", "--models", "off", "--json"]) == 0
    changed = capsys.readouterr().out
    assert '"rpm":null' in changed and '"models":[]' in changed
    assert _eventually(lambda: _works(stack, secret, model=HAIKU))

    assert cli(["keys", "revoke", "alice"]) == 0
    assert "revoked" in capsys.readouterr().out
    assert _eventually(lambda: not _works(stack, secret))
    with pytest.raises(openai.AuthenticationError):
        chat(stack, secret)

    assert cli(["usage", "--csv"]) == 0
    csv = capsys.readouterr().out.splitlines()
    assert csv[0].startswith("day,key,") and any(",alice," in line for line in csv[1:])
    assert cli(["keys", "update", "nobody", "--rpm", "3"]) == 1
    assert "No key" in capsys.readouterr().err
    assert cli(["keys", "update", "alice", "--rpm", "3"]) == 1  # revoked: make a new one
    assert (data_dir / DB_NAME).exists()


def test_the_cli_says_in_one_sentence_when_the_database_is_damaged(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir.mkdir()
    (data_dir / DB_NAME).write_bytes(b"garbage" * 1000)
    assert cli(["keys", "list"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: The database") and "is damaged" in err and "\n" not in err


def _works(stack: Stack, secret: str, model: str = SONNET) -> bool:
    try:
        return bool(chat(stack, secret, model=model))
    except (openai.AuthenticationError, openai.PermissionDeniedError):
        return False


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


async def test_the_benchmarks_accounting_timing_runs_on_20_keys() -> None:
    from bench.teams import accounting_cost

    keyed, operator = await accounting_cost(200)
    assert 0 < operator < 5000 and 0 < keyed < 5000  # µs per request, on any machine
