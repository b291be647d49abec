"""The admin API on a real uvicorn server: auth, listing, add / remove / refresh, usage limits.

Every response body is collected and searched for every token the test used.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from ki2api.api.admin import create_admin_router
from ki2api.kiro.accounts.pool import AccountPool
from ki2api.settings import Settings
from tests.servers import ServerThread
from tests.test_refresh import FakeAuth

ADMIN_KEY = "admin-key-for-tests"
API_KEY = "api-key-for-tests"

SECRETS = [
    "refresh-admin-env-0001",
    "access-admin-env-0001",
    "refresh-added-000001",
    "access-added-0000001",
    "refresh-login-file-01",
    "access-login-file-001",
    "ksk_admin_pasted_0000001",
    "refresh-dead-admin-0001",
    "access-token-issued-0001-xyz",
    "access-token-issued-0002-xyz",
]


@dataclass
class Harness:
    url: str
    auth: FakeAuth
    token_file: Path
    bodies: list[str] = field(default_factory=list)
    client: httpx.AsyncClient = field(default_factory=httpx.AsyncClient)

    async def call(
        self, method: str, path: str, *, key: str | None = ADMIN_KEY, **kw: Any
    ) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if key:
            headers["authorization"] = f"Bearer {key}"
        response = await self.client.request(method, self.url + path, headers=headers, **kw)
        self.bodies.append(response.text)
        return response


def make_app(settings: Settings) -> FastAPI:
    http = httpx.AsyncClient()
    pool = AccountPool.from_settings(settings, http)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.start()
        try:
            yield
        finally:
            await pool.aclose()
            await http.aclose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(create_admin_router(pool, settings))
    return app


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[str, FakeAuth, Path]]:
    fake = FakeAuth()
    fake.valid.update({"refresh-admin-env-0001", "refresh-added-000001"})
    token_file = tmp_path / "kiro-auth-token.json"
    with ServerThread(fake.app()) as auth_server:
        settings = Settings(
            api_key=API_KEY,
            api_key_is_default=False,
            admin_key=ADMIN_KEY,
            kiro_access_token="access-admin-env-0001",
            kiro_refresh_token="refresh-admin-env-0001",
            kiro_token_file=token_file,
            kiro_token_dirs=(tmp_path / "logins",),
            kiro_refresh_url=auth_server.url + "/refreshToken",
            kiro_oidc_url=auth_server.url + "/token",
            kiro_api_url=auth_server.url + "/generateAssistantResponse",
        )
        with ServerThread(make_app(settings)) as app_server:
            yield app_server.url, fake, token_file


@pytest.fixture
async def h(servers: tuple[str, FakeAuth, Path]) -> AsyncIterator[Harness]:
    url, fake, token_file = servers
    harness = Harness(url, fake, token_file)
    yield harness
    await harness.client.aclose()
    everything = "\n".join(harness.bodies)
    for secret in SECRETS:
        assert secret not in everything, secret


async def test_keys(h: Harness) -> None:
    assert (await h.call("GET", "/admin/accounts", key=None)).status_code == 401
    assert (await h.call("GET", "/admin/accounts", key="wrong")).status_code == 401
    denied = await h.call("GET", "/admin/accounts", key=API_KEY)
    assert denied.status_code == 403
    assert denied.json()["error"]["type"] == "permission_error"
    assert (await h.call("DELETE", "/admin/accounts/env", key=API_KEY)).status_code == 403
    assert (await h.call("GET", "/admin/accounts")).status_code == 200


async def test_listing_masks_tokens(h: Harness) -> None:
    body = (await h.call("GET", "/admin/accounts")).json()
    assert body["object"] == "list" and body["strategy"] == "lru" and body["usable"] == 1
    (row,) = body["data"]
    assert row["label"] == "env" and row["source"] == "env" and row["auth_method"] == "social"
    assert row["token"] == "…0001"
    assert row["state"] == "healthy" and row["description"] == "healthy"
    assert {"expires_at", "requests", "errors", "last_error", "usage", "until"} <= set(row)


async def test_add_fields_and_login_file_contents_and_pasted_key(h: Harness) -> None:
    r = await h.call(
        "POST",
        "/admin/accounts",
        json={"label": "work", "refreshToken": "refresh-added-000001", "region": "eu-central-1"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["account"]["label"] == "work"
    assert r.json()["account"]["source"] == "admin"
    login = {
        "accessToken": "access-login-file-001",
        "refreshToken": "refresh-login-file-01",
        "expiresAt": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        "authMethod": "social",
        "provider": "Google",
    }
    r = await h.call("POST", "/admin/accounts", json=login)
    assert r.status_code == 201 and r.json()["account"]["label"] == "added"
    r = await h.call(
        "POST", "/admin/accounts", params={"label": "key"}, json="ksk_admin_pasted_0000001"
    )
    assert r.status_code == 201 and r.json()["account"]["auth_method"] == "api_key"
    labels = [row["label"] for row in (await h.call("GET", "/admin/accounts")).json()["data"]]
    assert labels == ["env", "work", "added", "key"]
    # The same account twice, or a label taken, is refused; replace=true replaces.
    again = await h.call("POST", "/admin/accounts", json={**login, "label": "other"})
    assert again.status_code == 400 and "already in the pool as 'added'" in again.text
    taken = await h.call("POST", "/admin/accounts", json={"label": "work", "accessToken": "x" * 20})
    assert taken.status_code == 400
    replaced = await h.call(
        "POST",
        "/admin/accounts",
        params={"replace": "true"},
        json={"label": "work", "accessToken": "y" * 20},
    )
    assert replaced.status_code == 201 and replaced.json()["account"]["token"] == "…yyyy"


BAD_BODIES = [
    b"[1, 2]",
    b"42",
    b"{",
    b"",
    b'{"label": "bad label!", "accessToken": "abcdefghijklmnop"}',
    b'{"accessToken": 12}',
    b'{"refreshToken": "abcdefghijkl", "authMethod": "magic"}',
    b'{"accessToken": "abcdefghijklmnop", "region": "mars"}',
    b'{"accessToken": "abcdefghijklmnop", "expiresAt": "soon"}',
    b'"two words"',
    b'{"tokenFile": ["x"]}',
    # times no datetime can hold (a 500 before: the year out of range, an overflow)
    b'{"accessToken": "abcdefghijklmnop", "expiresAt": 99999999999999999}',
    b'{"accessToken": "abcdefghijklmnop", "expiresAt": -99999999999999999}',
    b'{"accessToken": "abcdefghijklmnop", "expiresAt": "99999-01-01T00:00:00Z"}',
    b'{"accessToken": "abcdefghijklmnop", "expiresIn": 1e300}',
    b'{"accessToken": "abcdefghijklmnop", "expiresIn": 1e15}',
]


async def test_bad_input_is_a_400_never_a_500(h: Harness) -> None:
    for content in BAD_BODIES:
        r = await h.call(
            "POST",
            "/admin/accounts",
            content=content,
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400, (content, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert len((await h.call("GET", "/admin/accounts")).json()["data"]) == 1


async def test_huge_body_is_refused(h: Harness) -> None:
    r = await h.call("POST", "/admin/accounts", content=b'"' + b"a" * 300_000 + b'"')
    assert r.status_code == 413


async def test_delete(h: Harness) -> None:
    assert (await h.call("DELETE", "/admin/accounts/env")).json() == {"deleted": "env"}
    assert (await h.call("GET", "/admin/accounts")).json()["data"] == []
    missing = await h.call("DELETE", "/admin/accounts/env")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_refresh(h: Harness) -> None:
    r = await h.call("POST", "/admin/accounts/env/refresh")
    assert r.status_code == 200, r.text
    assert r.json()["account"]["token"] == "…-xyz"
    assert h.auth.calls[-1]["body"] == {"refreshToken": "refresh-admin-env-0001"}
    await h.call("POST", "/admin/accounts", params={"label": "k"}, json="ksk_admin_pasted_0000001")
    assert (await h.call("POST", "/admin/accounts/k/refresh")).status_code == 400
    await h.call(
        "POST", "/admin/accounts", json={"label": "dead", "refreshToken": "refresh-dead-admin-0001"}
    )
    dead = await h.call("POST", "/admin/accounts/dead/refresh")
    assert dead.status_code == 502
    assert dead.json()["error"]["code"] == "kiro_login_required"
    rows = {r["label"]: r for r in (await h.call("GET", "/admin/accounts")).json()["data"]}
    assert rows["dead"]["state"] == "needs_login"
    assert (await h.call("POST", "/admin/accounts/nobody/refresh")).status_code == 404


async def test_usage_limits_on_demand(h: Harness) -> None:
    assert h.auth.usage_calls == []  # never fetched by listing or start-up
    h.auth.refused_access.add("access-admin-env-0001")  # stale: refreshed once, then retried
    r = await h.call("GET", "/admin/accounts/env/usage")
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["remaining"] == pytest.approx(50.0 - 12.5 + 400.0)
    assert usage["subscription"] == "KIRO FREE"
    assert usage["resets_at"].startswith("2030-01-01")
    first, second = h.auth.usage_calls
    assert first["url"].endswith(
        "/getUsageLimits?isEmailRequired=true&origin=AI_EDITOR&resourceType=AGENTIC_REQUEST"
    )
    assert first["headers"]["authorization"] == "Bearer access-admin-env-0001"
    assert second["headers"]["authorization"] == "Bearer access-token-issued-0001-xyz"
    (row,) = (await h.call("GET", "/admin/accounts")).json()["data"]
    assert row["usage"]["remaining"] == pytest.approx(437.5)


def test_admin_api_is_off_until_admin_key_is_set(tmp_path: Path) -> None:
    # Before: ADMIN_KEY defaulted to the API key, so every API client was an administrator.
    settings = Settings(
        api_key=API_KEY,
        api_key_is_default=False,
        kiro_access_token="access-admin-env-0001",
        kiro_token_file=tmp_path / "absent.json",
    )
    with ServerThread(make_app(settings)) as server:
        for key in (API_KEY, None, "anything"):
            headers = {"authorization": f"Bearer {key}"} if key else {}
            for method, path in (
                ("GET", "/admin/accounts"),
                ("POST", "/admin/accounts"),
                ("DELETE", "/admin/accounts/env"),
                ("POST", "/admin/accounts/env/refresh"),
                ("GET", "/admin/accounts/env/usage"),
            ):
                r = httpx.request(
                    method, server.url + path, headers=headers, json={"tokenFile": "/etc/passwd"}
                )
                assert r.status_code == 403, (method, path, key, r.text)
                error = r.json()["error"]
                assert error["code"] == "admin_disabled"
                assert "ADMIN_KEY" in error["message"] and "restart" in error["message"]
                assert "passwd" not in r.text


def _login(path: Path, access: str = "access-login-file-001") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    login = {
        "accessToken": access,
        "refreshToken": "refresh-login-file-01",
        "expiresAt": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        "authMethod": "social",
    }
    path.write_bytes(orjson.dumps(login))
    return path


async def test_token_files_only_from_the_login_folders(h: Harness, tmp_path: Path) -> None:
    allowed = tmp_path / "logins"
    outside = _login(tmp_path / "elsewhere" / "kiro-auth-token.json")
    (allowed / "sub").mkdir(parents=True)
    (allowed / "escape.json").symlink_to(outside)
    (allowed / "broken.json").write_text("{not json")
    refused = [
        "/etc/shadow",
        "/etc/passwd",
        "/etc",
        "/nonexistent/kiro-auth-token.json",
        str(tmp_path / "missing.json"),
        str(outside),  # a real login, outside the folders
        str(allowed / ".." / "elsewhere" / "kiro-auth-token.json"),
        str(allowed / "escape.json"),  # a link inside, pointing outside
        str(allowed / "missing.json"),
        str(allowed / "sub"),
        str(allowed / "broken.json"),
        "~/../../etc/shadow",
        "relative/../kiro-auth-token.json",
    ]
    answers = set()
    for path in refused:
        r = await h.call("POST", "/admin/accounts", json={"tokenFile": path, "label": "f"})
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["param"] == "tokenFile"
        answers.add(r.text)
    (answer,) = answers  # one answer for all: it never tells whether a path exists
    assert "KIRO_TOKEN_DIRS" in answer and "shadow" not in answer
    labels = [row["label"] for row in (await h.call("GET", "/admin/accounts")).json()["data"]]
    assert labels == ["env"]
    # A login inside a named folder (through a link that stays inside) is adopted.
    good = _login(allowed / "sub" / "laptop.json")
    os.symlink(good, allowed / "link.json")
    for label, path in (("laptop", good), ("via-link", allowed / "link.json")):
        r = await h.call(
            "POST",
            "/admin/accounts",
            params={"replace": "true"},
            json={"tokenFile": str(path), "label": label},
        )
        assert r.status_code == 201, r.text
        assert r.json()["account"]["source"] == f"file:{os.path.realpath(good)}"
        if label == "laptop":
            await h.call("DELETE", "/admin/accounts/laptop")
