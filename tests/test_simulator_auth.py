"""The simulator's accounts: bearer tokens, API keys, both refresh flows (rotation,
``invalid_grant``, the IdC request shape), the refresh log, usage limits and the model list."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ki2api.simulator import MODELS_TARGET, SimulatorServer, get_fault, http_error
from ki2api.simulator.samples import kiro_request_body

EXPIRED = {"message": "The bearer token included in the request is invalid.", "reason": None}
INVALID_GRANT = {"error": "invalid_grant", "error_description": "Invalid refresh token provided"}


@pytest.fixture(scope="module")
def shared_server() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server


@pytest.fixture
def sim(shared_server: SimulatorServer) -> SimulatorServer:
    assert shared_server.state.wait_idle()
    shared_server.state.reset()
    return shared_server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as c:
        yield c


def chat(
    client: httpx.Client, sim: SimulatorServer, token: str | None, **headers: str
) -> httpx.Response:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.post(
        f"{sim.url}/generateAssistantResponse", json=kiro_request_body(), headers=headers
    )


def social(client: httpx.Client, sim: SimulatorServer, body: Any) -> httpx.Response:
    return client.post(f"{sim.url}/refreshToken", json=body)


def idc(client: httpx.Client, sim: SimulatorServer, body: Any) -> httpx.Response:
    return client.post(f"{sim.url}/token", json=body)


# --- bearer tokens ------------------------------------------------------------------------------


def test_any_token_works_by_default(sim: SimulatorServer, client: httpx.Client) -> None:
    assert chat(client, sim, "whatever").status_code == 200
    assert sim.state.requests[-1].account is None


def test_missing_token_is_refused(sim: SimulatorServer, client: httpx.Client) -> None:
    basic = chat(client, sim, None, authorization="Basic abc")
    for response in (chat(client, sim, None), basic):
        assert response.status_code == 403
        assert response.json()["message"] == "Missing Authentication Token"


def test_known_tokens_only(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.require_known_tokens = True
    assert chat(client, sim, "made-up").json() == EXPIRED
    account = sim.state.add_account(access_token="tok-1", label="main")
    assert chat(client, sim, "tok-1").status_code == 200
    assert sim.state.requests[-1].account == "main"
    assert account.chat_count == 1


def test_expired_access_token(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.add_account(access_token="tok-1")
    sim.state.expire_access_token("tok-1")
    response = chat(client, sim, "tok-1")
    assert response.status_code == 403
    assert response.json() == EXPIRED
    # Tokens never seen before can be expired too (a token file the test wrote by hand).
    sim.state.expire_access_token("from-file")
    assert chat(client, sim, "from-file").json() == EXPIRED


def test_access_tokens_expire_after_their_ttl(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.add_account(access_token="short", expires_in=0.2)
    assert chat(client, sim, "short").status_code == 200
    time.sleep(0.25)
    assert chat(client, sim, "short").json() == EXPIRED


def test_api_keys(sim: SimulatorServer, client: httpx.Client) -> None:
    assert chat(client, sim, "ksk_abc", tokentype="API_KEY").status_code == 200
    assert chat(client, sim, "ksk_abc").status_code == 403  # the header is required
    sim.state.require_known_tokens = True
    assert chat(client, sim, "ksk_abc", tokentype="API_KEY").status_code == 403
    sim.state.add_api_key("ksk_abc")
    assert chat(client, sim, "ksk_abc", tokentype="API_KEY").status_code == 200


# --- social refresh -----------------------------------------------------------------------------


def test_social_refresh_issues_a_working_token(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.require_known_tokens = True
    account = sim.state.add_account(access_token="old", refresh_token="rt-1")
    sim.state.expire_access_token("old")
    response = social(client, sim, {"refreshToken": "rt-1"})
    assert response.status_code == 200
    answer = response.json()
    assert set(answer) == {"accessToken", "expiresIn", "profileArn"}  # no rotation
    assert answer["expiresIn"] == 3600 and answer["profileArn"] == account.profile_arn
    assert chat(client, sim, answer["accessToken"]).status_code == 200
    assert account.access_token == answer["accessToken"] and account.refresh_count == 1

    call = sim.state.refresh_calls[-1]
    assert (call.path, call.body, call.status) == ("/refreshToken", {"refreshToken": "rt-1"}, 200)
    assert call.time <= time.monotonic()


def test_social_refresh_rotation(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.add_account(refresh_token="rt-1", rotate_refresh=True)
    first = social(client, sim, {"refreshToken": "rt-1"}).json()
    assert first["refreshToken"] != "rt-1"
    stale = social(client, sim, {"refreshToken": "rt-1"})
    assert stale.status_code == 400 and stale.json() == INVALID_GRANT
    second = social(client, sim, {"refreshToken": first["refreshToken"]})
    assert second.status_code == 200 and second.json()["refreshToken"] != first["refreshToken"]


def test_revoked_refresh_token(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.add_account(refresh_token="rt-1")
    sim.state.revoke_refresh_token("rt-1")
    response = social(client, sim, {"refreshToken": "rt-1"})
    assert response.status_code == 400 and response.json() == INVALID_GRANT
    assert sim.state.refresh_calls[-1].status == 400


def test_unknown_refresh_tokens(sim: SimulatorServer, client: httpx.Client) -> None:
    fresh = social(client, sim, {"refreshToken": "anything"})
    assert fresh.status_code == 200  # demo mode: any refresh token works
    assert chat(client, sim, fresh.json()["accessToken"]).status_code == 200
    sim.state.require_known_tokens = True
    assert social(client, sim, {"refreshToken": "other"}).json() == INVALID_GRANT


@pytest.mark.parametrize(
    "body",
    [{}, {"refresh_token": "rt"}, {"refreshToken": ""}, {"refreshToken": 5}, [], "rt"],
)
def test_social_refresh_rejects_other_shapes(
    sim: SimulatorServer, client: httpx.Client, body: Any
) -> None:
    response = social(client, sim, body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_refresh_faults_and_latency(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.fail_next_refresh(1, http_error(500, "boom"))
    assert social(client, sim, {"refreshToken": "rt"}).status_code == 500
    assert social(client, sim, {"refreshToken": "rt"}).status_code == 200
    sim.state.refresh_latency = 0.2
    started = time.monotonic()
    social(client, sim, {"refreshToken": "rt"})
    assert time.monotonic() - started >= 0.2


def test_concurrent_refreshes_are_all_logged(sim: SimulatorServer) -> None:
    sim.state.refresh_latency = 0.1
    sim.state.add_account(refresh_token="rt-1")

    def refresh() -> None:
        httpx.post(f"{sim.url}/refreshToken", json={"refreshToken": "rt-1"}, timeout=5)

    threads = [threading.Thread(target=refresh) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sim.state.refresh_calls) == 5


# --- IdC refresh --------------------------------------------------------------------------------


def idc_body(**changes: Any) -> dict[str, Any]:
    body = {
        "clientId": "client-1",
        "clientSecret": "secret-1",
        "grantType": "refresh_token",
        "refreshToken": "rt-idc",
    }
    body.update(changes)
    return body


def test_idc_refresh(sim: SimulatorServer, client: httpx.Client) -> None:
    account = sim.state.add_account(
        refresh_token="rt-idc", auth="idc", client_id="client-1", client_secret="secret-1"
    )
    response = idc(client, sim, idc_body())
    assert response.status_code == 200
    answer = response.json()
    assert {"accessToken", "refreshToken", "expiresIn"} <= set(answer)
    assert answer["refreshToken"] == "rt-idc"  # not rotating
    assert account.access_token == answer["accessToken"]
    assert sim.state.refresh_calls[-1].body == idc_body()

    wrong_client = idc(client, sim, idc_body(clientSecret="nope"))
    assert wrong_client.status_code == 400 and wrong_client.json()["error"] == "invalid_client"
    # An IdC refresh token is not a social one.
    assert social(client, sim, {"refreshToken": "rt-idc"}).json() == INVALID_GRANT


def test_idc_rotation(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.add_account(
        refresh_token="rt-idc",
        auth="idc",
        client_id="client-1",
        client_secret="secret-1",
        rotate_refresh=True,
    )
    new = idc(client, sim, idc_body()).json()["refreshToken"]
    assert new != "rt-idc"
    assert idc(client, sim, idc_body()).json() == INVALID_GRANT
    assert idc(client, sim, idc_body(refreshToken=new)).status_code == 200


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            {
                "client_id": "c",
                "client_secret": "s",
                "grant_type": "refresh_token",
                "refresh_token": "r",
            },
            "invalid_request",
        ),
        (idc_body(grantType="authorization_code"), "unsupported_grant_type"),
        ({"clientId": "c", "grantType": "refresh_token", "refreshToken": "r"}, "invalid_request"),
        (idc_body(clientId=""), "invalid_request"),
    ],
)
def test_idc_refresh_needs_the_documented_shape(
    sim: SimulatorServer, client: httpx.Client, body: dict[str, Any], error: str
) -> None:
    response = idc(client, sim, body)
    assert response.status_code == 400 and response.json()["error"] == error


# --- account information ------------------------------------------------------------------------


def test_usage_limits(sim: SimulatorServer, client: httpx.Client) -> None:
    account = sim.state.add_account(access_token="tok-1")
    account.usage_limit, account.current_usage = 50.0, 12.25
    response = client.get(
        f"{sim.url}/getUsageLimits",
        params={
            "isEmailRequired": "true",
            "origin": "AI_EDITOR",
            "resourceType": "AGENTIC_REQUEST",
        },
        headers={"Authorization": "Bearer tok-1"},
    )
    assert response.status_code == 200
    body = response.json()
    credit = next(e for e in body["usageBreakdownList"] if e["resourceType"] == "CREDIT")
    assert credit["usageLimitWithPrecision"] == 50.0
    assert credit["currentUsageWithPrecision"] == 12.25
    assert credit["freeTrialInfo"]["freeTrialStatus"] == "ACTIVE"
    assert body["nextDateReset"] > time.time()
    assert client.get(f"{sim.url}/getUsageLimits").status_code == 403


def test_list_available_models(sim: SimulatorServer, client: httpx.Client) -> None:
    response = client.post(
        f"{sim.url}/",
        json={"origin": "AI_EDITOR"},
        headers={
            "Authorization": "Bearer t",
            "x-amz-target": MODELS_TARGET,
            "content-type": "application/x-amz-json-1.0",
        },
    )
    assert response.status_code == 200
    ids = [m["modelId"] for m in response.json()["models"]]
    assert "auto" in ids and "claude-sonnet-4.5" in ids
    sim.state.available_models = [{"modelId": "claude-haiku-4.5"}]
    response = client.get(f"{sim.url}/ListAvailableModels", headers={"Authorization": "Bearer t"})
    assert response.json()["models"] == [{"modelId": "claude-haiku-4.5"}]


def test_account_fault_survives_refresh(sim: SimulatorServer, client: httpx.Client) -> None:
    account = sim.state.add_account(access_token="tok-1", refresh_token="rt-1")
    account.fault = get_fault("quota_exceeded")
    assert chat(client, sim, "tok-1").status_code == 402
    token = social(client, sim, {"refreshToken": "rt-1"}).json()["accessToken"]
    assert chat(client, sim, token).status_code == 402
    account.fault = None
    assert chat(client, sim, token).status_code == 200


def test_tokens_are_masked_in_account_repr(sim: SimulatorServer) -> None:
    account = sim.state.add_account(
        access_token="secret-access-1234", refresh_token="secret-rt-5678"
    )
    text = repr(account)
    assert "secret" not in text and "1234" in text and "5678" in text
