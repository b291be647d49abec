"""The two refresh flows against a real loopback server: request shapes, answers, failures."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ki2api.kiro.accounts.credentials import AccountSpec
from ki2api.kiro.accounts.refresh import NeedsLogin, refresh_tokens
from ki2api.model.errors import UpstreamThrottled, UpstreamTimeout, UpstreamUnavailable
from ki2api.settings import Settings, Timeouts
from tests.servers import ServerThread

USAGE_ANSWER = {
    "nextDateReset": 1893456000,  # 2030-01-01
    "subscriptionInfo": {"subscriptionTitle": "KIRO FREE"},
    "usageBreakdownList": [
        {
            "resourceType": "CREDIT",
            "currentUsageWithPrecision": 12.5,
            "usageLimitWithPrecision": 50.0,
            "freeTrialInfo": {
                "freeTrialStatus": "ACTIVE",
                "currentUsageWithPrecision": 100.0,
                "usageLimitWithPrecision": 500.0,
            },
        }
    ],
}


@dataclass
class FakeAuth:
    """Kiro's two refresh endpoints, scriptable: valid refresh tokens, rotation, faults, delay.

    Runs on its own thread, so its lock-protected state is read from the tests' event loop.
    """

    valid: set[str] = field(default_factory=set)
    clients: dict[str, str] = field(default_factory=dict)  # clientId -> clientSecret
    rotate: bool = False
    delay: float = 0.0
    status: int | None = None  # force an error answer
    calls: list[dict[str, Any]] = field(default_factory=list)
    usage_calls: list[dict[str, Any]] = field(default_factory=list)
    refused_access: set[str] = field(default_factory=set)  # answered as expired tokens
    issued: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/refreshToken", self._social, methods=["POST"]),
                Route("/token", self._idc, methods=["POST"]),
                Route("/{region}/refreshToken", self._social, methods=["POST"]),
                Route("/getUsageLimits", self._usage, methods=["GET"]),
            ]
        )

    async def _record(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        body = orjson.loads(raw)
        with self.lock:
            self.calls.append(
                {"path": request.url.path, "body": body, "headers": dict(request.headers)}
            )
        if self.delay:
            await asyncio.sleep(self.delay)
        return body  # type: ignore[no-any-return]

    def _issue(self, old: str) -> dict[str, Any]:
        with self.lock:
            self.issued += 1
            n = self.issued
            answer: dict[str, Any] = {
                "accessToken": f"access-token-issued-{n:04d}-xyz",
                "expiresIn": 3600,
            }
            if self.rotate:
                new = f"refresh-token-rotated-{n:04d}-xyz"
                self.valid.discard(old)
                self.valid.add(new)
                answer["refreshToken"] = new
        return answer

    def _fault(self) -> Response | None:
        if self.status is None:
            return None
        return JSONResponse({"message": "scripted failure"}, status_code=self.status)

    async def _social(self, request: Request) -> Response:
        body = await self._record(request)
        if (fault := self._fault()) is not None:
            return fault
        rt = body.get("refreshToken")
        if rt not in self.valid:
            return JSONResponse(
                {"error": "invalid_grant", "error_description": "Invalid refresh token provided"},
                status_code=400,
            )
        answer = self._issue(rt)
        answer["profileArn"] = "arn:aws:codewhisperer:us-east-1:111111111111:profile/FROMREFRESH"
        return JSONResponse(answer)

    async def _usage(self, request: Request) -> Response:
        with self.lock:
            self.usage_calls.append({"url": str(request.url), "headers": dict(request.headers)})
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token in self.refused_access:
            return JSONResponse(
                {"message": "The bearer token included in the request is invalid."},
                status_code=403,
            )
        return JSONResponse(USAGE_ANSWER)

    async def _idc(self, request: Request) -> Response:
        body = await self._record(request)
        if (fault := self._fault()) is not None:
            return fault
        if self.clients.get(body.get("clientId", "")) != body.get("clientSecret"):
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        if body.get("grantType") != "refresh_token" or body.get("refreshToken") not in self.valid:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        answer = self._issue(body["refreshToken"])
        answer["tokenType"] = "Bearer"
        return JSONResponse(answer)


@pytest.fixture
def fake_auth() -> Iterator[tuple[FakeAuth, str]]:
    auth = FakeAuth()
    with ServerThread(auth.app()) as server:
        yield auth, server.url


def auth_settings(url: str, **overrides: Any) -> Settings:
    return Settings(
        kiro_refresh_url=url + "/refreshToken", kiro_oidc_url=url + "/token", **overrides
    )


SOCIAL_RT = "refresh-token-social-0000-abcd"
IDC_RT = "refresh-token-idc-0000-wxyz"


def social_spec(rt: str = SOCIAL_RT) -> AccountSpec:
    return AccountSpec(label="a", source="test", auth_method="social", refresh_token=rt)


def idc_spec() -> AccountSpec:
    return AccountSpec(
        label="b",
        source="test",
        auth_method="idc",
        refresh_token=IDC_RT,
        client_id="client-id-1",
        client_secret="client-secret-1-very-long",
    )


async def test_social_refresh_sends_exactly_the_documented_request(fake_auth):
    auth, url = fake_auth
    auth.valid.add(SOCIAL_RT)
    async with httpx.AsyncClient() as http:
        result = await refresh_tokens(http, auth_settings(url), social_spec())
    (call,) = auth.calls
    assert call["path"] == "/refreshToken"
    assert call["body"] == {"refreshToken": SOCIAL_RT}
    assert call["headers"]["content-type"] == "application/json"
    assert result.access_token == "access-token-issued-0001-xyz"
    assert result.refresh_token is None  # not rotated
    assert (result.profile_arn or "").endswith("/FROMREFRESH")
    left = result.expires_at - datetime.now(UTC)
    assert timedelta(minutes=59) < left <= timedelta(hours=1)


async def test_idc_refresh_sends_exactly_the_documented_request(fake_auth):
    auth, url = fake_auth
    auth.valid.add(IDC_RT)
    auth.clients["client-id-1"] = "client-secret-1-very-long"
    auth.rotate = True
    async with httpx.AsyncClient() as http:
        result = await refresh_tokens(http, auth_settings(url), idc_spec())
    (call,) = auth.calls
    assert call["path"] == "/token"
    assert call["body"] == {
        "clientId": "client-id-1",
        "clientSecret": "client-secret-1-very-long",
        "grantType": "refresh_token",
        "refreshToken": IDC_RT,
    }
    assert result.refresh_token == "refresh-token-rotated-0001-xyz"


async def test_region_is_filled_into_the_url(fake_auth):
    auth, url = fake_auth
    auth.valid.add(SOCIAL_RT)
    settings = Settings(kiro_refresh_url=url + "/{region}/refreshToken")
    spec = AccountSpec(
        label="a", source="t", auth_method="social", refresh_token=SOCIAL_RT, region="eu-central-1"
    )
    async with httpx.AsyncClient() as http:
        await refresh_tokens(http, settings, spec)
    assert auth.calls[0]["path"] == "/eu-central-1/refreshToken"


async def test_invalid_grant_means_needs_login(fake_auth):
    _auth, url = fake_auth
    async with httpx.AsyncClient() as http:
        with pytest.raises(NeedsLogin) as info:
            await refresh_tokens(http, auth_settings(url), social_spec("refresh-token-dead-9999"))
    assert "log in to Kiro again" in info.value.message
    assert "refresh-token-dead-9999" not in info.value.message


async def test_idc_with_a_dead_client_needs_login(fake_auth):
    auth, url = fake_auth
    auth.valid.add(IDC_RT)
    async with httpx.AsyncClient() as http:
        with pytest.raises(NeedsLogin):
            await refresh_tokens(http, auth_settings(url), idc_spec())


@pytest.mark.parametrize(
    ("status", "error"), [(429, UpstreamThrottled), (500, UpstreamUnavailable)]
)
async def test_service_failures_map_to_the_error_tree(fake_auth, status, error):
    auth, url = fake_auth
    auth.valid.add(SOCIAL_RT)
    auth.status = status
    async with httpx.AsyncClient() as http:
        with pytest.raises(error):
            await refresh_tokens(http, auth_settings(url), social_spec())


async def test_unreachable_endpoint_is_upstream_unavailable():
    settings = auth_settings("http://127.0.0.1:9")  # discard port: nothing listens
    async with httpx.AsyncClient() as http:
        with pytest.raises(UpstreamUnavailable) as info:
            await refresh_tokens(http, settings, social_spec())
    assert SOCIAL_RT not in str(info.value)


async def test_slow_endpoint_times_out_with_settings_timeout(fake_auth):
    auth, url = fake_auth
    auth.valid.add(SOCIAL_RT)
    auth.delay = 0.6
    settings = auth_settings(url, timeouts=Timeouts(refresh=0.2))
    async with httpx.AsyncClient() as http:
        with pytest.raises(UpstreamTimeout):
            await refresh_tokens(http, settings, social_spec())


async def test_no_refresh_token_or_client_needs_login_without_a_call(fake_auth):
    auth, url = fake_auth
    no_client = AccountSpec(label="c", source="t", auth_method="idc", refresh_token=IDC_RT)
    async with httpx.AsyncClient() as http:
        with pytest.raises(NeedsLogin):
            await refresh_tokens(http, auth_settings(url), no_client)
    assert auth.calls == []
