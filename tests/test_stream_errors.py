"""One table for Kiro's errors, however they come (docs/errors.md, "What a failure cools down").

Each error Kiro answers with a status has an in-stream twin: the same body in an exception frame
of the type the service names that status with, after the answer has started. Played against a
gateway on a real socket in front of the simulator, the twin gets the same treatment as the
status: the same error class and client answer (the same HTTP status for a request that is not
streamed; the same error in the stream's error event for one that is) and the same effect on the
account: what cools down (the account or one model), why and for how long, what is disabled and
with which words, which model the account is known to lack, and whether a 429 that follows
continues a row of throttles or starts a new one. Each case starts with one 429 (which cools
nothing but starts a row) and ends with another, so that last part shows.

The differences are by design: an exception frame has no ``Retry-After``, and a started answer
cannot be retried, so an expired token there fails that answer and is refreshed before the
account's next request (last test) instead of being refreshed and retried at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from ki2api.app import create_app
from ki2api.kiro.wire.errors import EXCEPTION_STATUS
from ki2api.settings import Settings
from ki2api.simulator import Fault, HttpError, SimulatorServer, http_error, in_stream
from tests.error_doc import NONE, DocRow, doc_rows
from tests.fake_clock import FakeClock, pool_on
from tests.servers import ServerThread
from tests.sse_events import openai_stream_error, parse_sse
from tests.stack import API_KEY, stack_env

ADMIN_KEY = "stream-errors-admin-key"
SONNET = "claude-sonnet-4.5"  # Kiro's id of the model asked for
HEADERS = {"authorization": f"Bearer {API_KEY}"}
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
EXPIRED = ("The bearer token included in the request is invalid.", "expired")

pytestmark = pytest.mark.timeout(60)


def twin_rows() -> list[DocRow]:
    """The documented Kiro answers whose status an exception type stands for (401, 404 and 408
    have none); an expired token has its own test below."""
    statuses = set(EXCEPTION_STATUS.values())
    return [
        row
        for row in doc_rows()
        if row.http_status in statuses and row.classified_as != "TokenExpired"
    ]


def status_answer(row: DocRow) -> HttpError:
    assert row.http_status is not None
    return http_error(row.http_status, row.message, None if row.reason == NONE else row.reason)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server


@dataclass
class Gateway:
    server: ServerThread
    app: Any

    @property
    def url(self) -> str:
        return self.server.url

    def chat(self, stream: bool = False) -> httpx.Response:
        body = {
            "model": "claude-sonnet-4-5",
            "messages": [{"role": "user", "content": "Hello"}],
            "stream": stream,
        }
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=HEADERS, timeout=15)

    def account(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/admin/accounts", headers=ADMIN, timeout=5)
        assert r.status_code == 200, r.text
        [row] = r.json()["data"]
        return dict(row)


def start_gateway(
    sim: SimulatorServer, started: list[ServerThread], clock: FakeClock, **env: str
) -> Gateway:
    """One account, one attempt per request, its pool on ``clock``; the admin API on."""
    settings = Settings.from_env(
        stack_env(sim.url, **env), upstream_attempts=1, admin_key=ADMIN_KEY
    )
    app = create_app(settings, with_ui=False, pool=pool_on(clock)(settings))
    server = ServerThread(app).start()
    started.append(server)
    return Gateway(server, app)


@pytest.fixture
def gateways(sim: SimulatorServer) -> Iterator[list[ServerThread]]:
    started: list[ServerThread] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()
        sim.state.clear_queue()


def kiro_words(message: str) -> str:
    """The gateway's words for a failure, without the part that names how Kiro said it ("Kiro
    429 REASON: …" for a status, "Kiro ThrottlingException REASON: …" for a frame), and with
    numbers apart (the seconds to midnight pass between two cases)."""
    return re.sub(r"\d+", "N", message.split(" (Kiro ")[0])


def client_error(r: httpx.Response, streamed: bool) -> tuple[int | None, str, str, str]:
    """(HTTP status, or None for an error that came in a started stream; type; code; words)."""
    if streamed:
        assert r.status_code == 200, r.text
        error = openai_stream_error(parse_sse(r.text))
        assert error is not None, r.text
        return None, error["type"], error["code"], kiro_words(error["message"])
    assert r.status_code >= 400, r.text
    error = r.json()["error"]
    return r.status_code, error["type"], error["code"], kiro_words(error["message"])


def account_effect(row: dict[str, Any]) -> dict[str, Any]:
    """What the admin API shows of the account, to compare; cooldown lengths apart."""
    return {
        "state": row["state"],
        "cause": row["cause"],
        "reason": None if row["reason"] is None else kiro_words(row["reason"]),
        "errors": row["errors"],
        "cooldowns": [(c["model"], c["cause"], kiro_words(c["reason"])) for c in row["cooldowns"]],
    }


@dataclass
class Outcome:
    answer: tuple[int | None, str, str, str]
    effect: dict[str, Any]
    seconds: list[float]  # each cooldown's length
    lacking: frozenset[str]  # the accounts known not to offer the model
    then: tuple[int | None, str, str, str]  # a throttle that follows
    effect_then: dict[str, Any]
    reached_kiro: int


def play(
    sim: SimulatorServer, gateways: list[ServerThread], fault: Fault | HttpError, streamed: bool
) -> Outcome:
    sim.state.reset()
    gateway = start_gateway(sim, gateways, FakeClock())
    sim.state.fail_next(1, "throttled")  # one 429: cools nothing, starts a row
    assert gateway.chat().status_code == 429
    sim.state.fail_next(1, fault)
    answer = client_error(gateway.chat(stream=streamed), streamed)
    row = gateway.account()
    models = gateway.app.runtime.models  # the same process: the gateway's own lists
    lacking = models.skip_for(SONNET) if models is not None else frozenset()
    sim.state.clear_queue()
    sim.state.fail_next(1, "throttled")
    then = client_error(gateway.chat(), False)
    sim.state.clear_queue()
    assert sim.state.wait_idle()
    return Outcome(
        answer,
        account_effect(row),
        [c["seconds"] for c in row["cooldowns"]],
        lacking,
        then,
        account_effect(gateway.account()),
        len(sim.state.requests),
    )


@pytest.mark.parametrize(
    "row", twin_rows(), ids=lambda r: f"{r.kiro_status}-{r.reason}-{r.message[:24]}"
)
def test_an_error_inside_a_stream_is_treated_as_its_status_twin(
    sim: SimulatorServer, gateways: list[ServerThread], row: DocRow
) -> None:
    answer = status_answer(row)
    by_status = play(sim, gateways, answer, streamed=False)
    assert by_status.answer[0] == row.openai_status
    assert (by_status.answer[1], by_status.answer[2]) == (row.openai_type, row.openai_code)
    for streamed in (False, True):
        twin = play(sim, gateways, in_stream(answer, after_frames=1), streamed)
        if streamed:  # the stream had started: its error event says the same
            assert twin.answer[1:] == by_status.answer[1:]
        else:
            assert twin.answer == by_status.answer
        assert twin.effect == by_status.effect
        assert len(twin.seconds) == len(by_status.seconds)
        for mine, theirs in zip(twin.seconds, by_status.seconds, strict=True):
            assert abs(mine - theirs) < 5  # a daily quota: until midnight, on the real clock
        assert twin.lacking == by_status.lacking
        assert (twin.then, twin.effect_then) == (by_status.then, by_status.effect_then)
        assert twin.reached_kiro == by_status.reached_kiro


def test_the_cases_cover_each_kind_of_effect() -> None:
    """The twins above include a request at fault, a model the account lacks, a model cooling,
    a rate limit, a daily and a monthly quota, a suspension and a server error."""
    classes = {row.classified_as for row in twin_rows()}
    assert classes >= {
        "UpstreamRejected",
        "ContextLengthExceeded",
        "ModelNotFound",
        "ModelCapacity",
        "ModelUnavailable",
        "UpstreamThrottled",
        "QuotaExceeded",
        "UpstreamAuthFailed",
        "UpstreamUnavailable",
    }
    assert any(row.reason == "DAILY_REQUEST_COUNT" for row in twin_rows())


@pytest.mark.parametrize("where", ["status", "stream"])
def test_an_expired_token_is_refreshed_either_way(
    sim: SimulatorServer, gateways: list[ServerThread], where: str
) -> None:
    """A status: refreshed at once and the request retried with the new token. Inside a started
    answer: that answer fails (it cannot be asked again), and the token is refreshed before the
    account's next request. Either way one refresh, and the account stays in service."""
    sim.state.reset()
    sim.state.add_account(access_token="sim-access-exp-0001", refresh_token="aorSim-refresh-exp")
    gateway = start_gateway(
        sim,
        gateways,
        FakeClock(),
        KIRO_ACCESS_TOKEN="sim-access-exp-0001",
        KIRO_REFRESH_TOKEN="aorSim-refresh-exp",
    )
    expired = http_error(403, EXPIRED[0])
    if where == "status":
        sim.state.fail_next(1, expired)
        assert gateway.chat().status_code == 200
    else:
        sim.state.fail_next(1, in_stream(expired))
        r = gateway.chat(stream=True)
        assert client_error(r, True)[2] == "upstream_token_expired"
        assert sim.state.refresh_calls == []
        assert gateway.chat().status_code == 200
    assert len(sim.state.refresh_calls) == 1
    tokens = [r.headers["authorization"] for r in sim.state.requests]
    assert tokens[0] == "Bearer sim-access-exp-0001" != tokens[-1]
    assert gateway.account()["state"] == "healthy"


def test_an_error_event_goes_through_the_table_too() -> None:
    """``invalidStateEvent`` is classified by the same rows (here: a suspension's words)."""
    from ki2api.kiro.wire.events import KiroEventParser
    from ki2api.kiro.wire.eventstream import EventStreamDecoder, encode_event
    from ki2api.model.deltas import StreamError
    from ki2api.model.errors import AccountSuspended, UpstreamError

    def error_of(payload: dict[str, str]) -> Any:
        raw = encode_event("invalidStateEvent", orjson.dumps(payload))
        [delta] = KiroEventParser().feed(EventStreamDecoder().feed(raw)[0])
        assert isinstance(delta, StreamError)
        return delta.error

    suspended = error_of({"reason": "TEMPORARILY_SUSPENDED", "message": "Your User ID is out."})
    assert type(suspended) is AccountSuspended and "Your User ID is out." in suspended.message
    other = error_of({"reason": "INVALID_STATE", "message": json.dumps("odd")})
    assert type(other) is UpstreamError and "INVALID_STATE" in other.message
