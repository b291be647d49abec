"""A whole session with known secrets — refresh with rotation (social and IdC), failover, errors,
the admin API, /health, /metrics, the UI and Gradio's API info — and none of those secrets in
any log line (every logger at DEBUG, uvicorn's and httpx's included), response, header or page."""

from __future__ import annotations

import hmac
import inspect
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from ki2api.api import auth
from ki2api.simulator import get_fault
from tests.stack import Stack, StackFactory

pytestmark = pytest.mark.timeout(90)

API_KEY = "sk-ki2api-APIKEY-SECRET-7f3a9c1e5b"
ADMIN_KEY = "admin-ADMINKEY-SECRET-4d2e8a6f0c"
A_ACCESS = "aoaSECRET-ACCESS-A-9b8c7d6e5f4a3b2c"
A_REFRESH = "aorSECRET-REFRESH-A-1a2b3c4d5e6f7a8b"
B_ACCESS = "aoaSECRET-ACCESS-B-0f1e2d3c4b5a6978"
B_REFRESH = "aorSECRET-REFRESH-B-8796a5b4c3d2e1f0"
B_CLIENT_ID = "clientid-SECRET-B-5a5a5a5a5a5a"
B_CLIENT_SECRET = "clientsecret-SECRET-B-6b6b6b6b6b6b6b"
ADDED_ACCESS = "aoaSECRET-ADDED-C-3e3e3e3e3e3e3e3e"
PRESENTED_WRONG_KEY = "sk-WRONG-PRESENTED-SECRET-9999aaaa"
FIXED_SECRETS = [
    API_KEY,
    ADMIN_KEY,
    A_ACCESS,
    A_REFRESH,
    B_ACCESS,
    B_REFRESH,
    B_CLIENT_ID,
    B_CLIENT_SECRET,
    ADDED_ACCESS,
    PRESENTED_WRONG_KEY,
]
# Loggers that do not propagate to the root (uvicorn's) get their own handler.
LOGGERS = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore", "gradio"]


class Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append(f"{record.name}: {text}")


@pytest.fixture
def all_logs() -> Iterator[Everything]:
    handler = Everything()
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger, level in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)


class Session:
    """Records every response (status line, headers, body) of the session."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.client = httpx.Client(base_url=stack.url, timeout=30)
        self.seen: list[str] = []

    def call(
        self, method: str, path: str, *, key: str | None = API_KEY, **kw: object
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        r = self.client.request(method, path, headers=headers, **kw)  # type: ignore[arg-type]
        self.seen.append(f"{method} {path} {r.status_code}\n{dict(r.headers)}\n{r.text}")
        return r

    def chat(self, stream: bool = False) -> httpx.Response:
        body = {
            "model": "claude-sonnet-4-5",
            "messages": [{"role": "user", "content": "Hello"}],
            "stream": stream,
        }
        return self.call("POST", "/v1/chat/completions", json=body)

    def message(self, stream: bool = False) -> httpx.Response:
        body = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "Hello"}],
            "stream": stream,
        }
        return self.call("POST", "/v1/messages", json=body)


def start(stack_factory: StackFactory) -> Stack:
    accounts = [
        {"label": "a", "accessToken": A_ACCESS, "refreshToken": A_REFRESH, "authMethod": "social"},
        {
            "label": "b",
            "accessToken": B_ACCESS,
            "refreshToken": B_REFRESH,
            "authMethod": "IdC",
            "clientId": B_CLIENT_ID,
            "clientSecret": B_CLIENT_SECRET,
        },
    ]
    env = {
        "API_KEY": API_KEY,
        "ADMIN_KEY": ADMIN_KEY,
        "KIRO_ACCESS_TOKEN": "",
        "KIRO_ACCOUNTS": orjson.dumps(accounts).decode(),
        "KIRO_POOL_STRATEGY": "first",
        "LOG_LEVEL": "debug",
    }
    stack = stack_factory(env, with_ui=True)
    stack.api_key = API_KEY
    return stack


def test_no_secret_anywhere_in_a_full_session(
    stack_factory: StackFactory, all_logs: Everything, capfd: pytest.CaptureFixture[str]
) -> None:
    stack = start(stack_factory)
    state = stack.state
    state.require_known_tokens = True
    a = state.add_account(
        access_token=A_ACCESS, refresh_token=A_REFRESH, rotate_refresh=True, label="sim-a"
    )
    b = state.add_account(
        access_token=B_ACCESS,
        refresh_token=B_REFRESH,
        rotate_refresh=True,
        auth="idc",
        client_id=B_CLIENT_ID,
        client_secret=B_CLIENT_SECRET,
        label="sim-b",
    )
    s = Session(stack)
    try:
        run_session(s, state, a, b)
    finally:
        s.client.close()
    check_nothing_leaked(s, state, all_logs, capfd)


def run_session(s: Session, state: Any, a: Any, b: Any) -> None:
    # 1. Account a's token expired: one social refresh, with a rotated refresh token.
    state.expire_access_token(A_ACCESS)
    assert s.chat().status_code == 200
    assert s.chat(stream=True).status_code == 200
    assert a.refresh_count == 1 and a.refresh_token != A_REFRESH

    # 2. a is suspended: failover to b, whose token then expires (IdC refresh, client secret).
    a.fault = get_fault("suspended")
    assert s.message().status_code == 200
    state.expire_access_token(b.access_token)
    assert s.message(stream=True).status_code == 200
    assert b.refresh_count == 1

    # 3. Errors: b runs out of quota, then nothing is left; the refresh token of b dies.
    b.fault = get_fault("quota_exceeded")
    assert s.chat().status_code == 429
    assert s.message().status_code in (429, 503, 529)
    b.fault = None
    state.revoke_refresh_token(b.refresh_token or "")
    s.call("POST", "/admin/accounts/b/refresh", key=ADMIN_KEY)
    s.call("POST", "/v1/messages/count_tokens", json={"model": "x", "messages": []})

    # 4. Wrong keys: the presented key is never echoed.
    wrong = s.call("POST", "/v1/chat/completions", key=PRESENTED_WRONG_KEY, json={})
    assert wrong.status_code == 401
    assert s.call("GET", "/admin/accounts", key=API_KEY).status_code == 403
    assert s.call("GET", "/admin/accounts", key=PRESENTED_WRONG_KEY).status_code == 401

    # 5. Admin API: listing, adding an account by token, refresh, usage.
    assert s.call("GET", "/admin/accounts", key=ADMIN_KEY).status_code == 200
    added = s.call("POST", "/admin/accounts?label=c", key=ADMIN_KEY, json=ADDED_ACCESS)
    assert added.status_code == 201
    s.call("POST", "/admin/accounts/a/refresh", key=ADMIN_KEY)
    s.call("GET", "/admin/accounts/a/usage", key=ADMIN_KEY)
    s.call("GET", "/admin/accounts/c/usage", key=ADMIN_KEY)
    assert s.call("GET", "/admin/accounts", key=ADMIN_KEY).status_code == 200

    # 6. Health, metrics, the UI and Gradio's description of its API.
    assert s.call("GET", "/health", key=None).status_code == 200
    assert s.call("GET", "/metrics", key=ADMIN_KEY).status_code == 200
    assert s.call("GET", "/", key=None).status_code == 200
    for path in ("/config", "/gradio_api/info", "/info", "/gradio_api/openapi.json"):
        s.call("GET", path, key=None)
    assert any(p.startswith("GET /config 200") for p in s.seen)


def check_nothing_leaked(
    s: Session, state: Any, all_logs: Everything, capfd: pytest.CaptureFixture[str]
) -> None:
    # Every token any account held during the session, rotated ones included.
    secrets = set(FIXED_SECRETS)
    for account in state.accounts.accounts:
        secrets.update(filter(None, (account.access_token, account.refresh_token)))
        secrets.update(account.previous_access_tokens)
    assert len(secrets) > len(FIXED_SECRETS)
    out, err = capfd.readouterr()
    haystack = "\n".join([*s.seen, *all_logs.lines, out, err])
    assert len(all_logs.lines) > 10 and "ki2api" in haystack
    leaked = [secret for secret in secrets if secret in haystack]
    assert not leaked, f"secrets leaked: {[x[-4:] for x in leaked]}"
    # Masked forms are fine (last four characters), whole tokens are not.
    assert "SECRET" not in haystack.replace("/v1/", "")


def test_api_keys_are_compared_in_constant_time(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "hmac.compare_digest" in inspect.getsource(auth.keys_match)
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return bool(real(a, b))

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module auth calls it through
    for key in (stack.api_key, "wrong", stack.api_key[:-1]):
        httpx.get(f"{stack.base_url}/models", headers={"authorization": f"Bearer {key}"})
    assert len(calls) >= 3
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)
