"""The Kiro simulator, driven as a real server with a real HTTP client (httpx) and decoded with
the project's event-stream decoder: both chat styles, streaming and timing, every script step,
every named fault, captures replayed byte for byte, disconnects, the request log, and the
server's own lifecycle."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest

from ki2api.kiro.wire.eventstream import ChecksumMismatch, EventStreamDecoder, EventStreamError
from ki2api.simulator import (
    CHAT_TARGET,
    FAULTS,
    SIMULATOR_TAG,
    ConnectionDrop,
    CorruptCrc,
    CutMidFrame,
    Delay,
    Event,
    ExceptionFrame,
    Flood,
    Garbage,
    HttpError,
    Raw,
    Script,
    SimulatorServer,
    SimulatorState,
    SlowFirstByte,
    Stall,
    capture,
    capture_bytes,
    capture_names,
    faults,
    get_fault,
    parallel_tool_use_answer,
    text_answer,
    tool_use_answer,
)
from ki2api.simulator.player import play
from ki2api.simulator.samples import (
    answer_text,
    assistant_turn,
    decode_events,
    kiro_request_body,
    tool_spec,
    user_turn,
)

AUTH = {"Authorization": "Bearer test-token"}
SHARED_CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "kiro-captures"


@pytest.fixture(scope="module")
def shared_server() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server


@pytest.fixture
def sim(shared_server: SimulatorServer) -> SimulatorServer:
    """One server for the module, with a fresh state for each test."""
    shared_server.app.state.live_streams.close_all()
    assert shared_server.state.wait_idle()
    shared_server.state.reset()
    return shared_server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as c:
        yield c


def chat(
    client: httpx.Client, sim: SimulatorServer, body: dict[str, Any] | None = None, **kw: Any
) -> httpx.Response:
    headers = {**AUTH, **kw.pop("headers", {})}
    return client.post(
        f"{sim.url}/generateAssistantResponse",
        json=body or kiro_request_body(),
        headers=headers,
        **kw,
    )


# --- both chat styles and the default answer ----------------------------------------------------


def test_path_style_streams_the_default_answer(sim: SimulatorServer, client: httpx.Client) -> None:
    body = kiro_request_body("What is the capital of France?", conversation_id="conv-42")
    response = chat(client, sim, body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    events = decode_events(response.content)
    types = [t for t, _ in events]
    assert types[0] == "initial-response"
    assert events[0][1] == {"conversationId": "conv-42"}
    assert types.count("assistantResponseEvent") >= 3
    assert types[-2:] == ["meteringEvent", "contextUsageEvent"]
    text = answer_text(response.content)
    assert SIMULATOR_TAG in text and "What is the capital of France?" in text

    record = sim.state.requests[-1]
    assert (record.path, record.style, record.status) == ("/generateAssistantResponse", "path", 200)
    assert record.body == body and record.refusal is None
    assert record.headers["authorization"] == "Bearer test-token"
    assert record.sent_text == text
    assert record.frames_sent == len(events)
    assert record.bytes_sent == len(response.content)
    assert record.finished is not None and record.finished >= record.started
    assert not record.closed_by_client


def test_json_rpc_style_answers_the_same(sim: SimulatorServer, client: httpx.Client) -> None:
    body = kiro_request_body("Hello", conversation_id="c1")
    headers = {**AUTH, "x-amz-target": CHAT_TARGET, "content-type": "application/x-amz-json-1.0"}
    rpc = client.post(f"{sim.url}/", content=orjson.dumps(body), headers=headers)
    path = chat(client, sim, body)
    assert rpc.status_code == 200
    assert rpc.content == path.content  # the default answer is deterministic
    assert sim.state.requests[0].style == "json-1.0"


def test_unknown_target_and_unknown_path(sim: SimulatorServer, client: httpx.Client) -> None:
    response = client.post(f"{sim.url}/", json={}, headers={"x-amz-target": "Foo.Bar"})
    assert response.status_code == 400
    assert response.json()["__type"] == "UnknownOperationException"
    missing = client.get(f"{sim.url}/nope")
    assert missing.status_code == 404 and "message" in missing.json()


def test_chinese_question_gets_a_chinese_answer(sim: SimulatorServer, client: httpx.Client) -> None:
    text = answer_text(chat(client, sim, kiro_request_body("今天天气怎么样？")).content)
    assert "模拟器" in text and "今天天气怎么样？" in text


def test_thinking_tags_produce_reasoning_events(sim: SimulatorServer, client: httpx.Client) -> None:
    content = (
        "<thinking_mode>enabled</thinking_mode><max_thinking_length>2000</max_thinking_length>Why?"
    )
    events = decode_events(chat(client, sim, kiro_request_body(content)).content)
    reasoning = [p for t, p in events if t == "reasoningContentEvent"]
    assert reasoning and "Why?" in "".join(p["text"] for p in reasoning)
    assert "signature" in reasoning[-1]
    assert "<thinking_mode>" not in "".join(p.get("content", "") for _, p in events)


def test_naming_an_offered_tool_calls_it(sim: SimulatorServer, client: httpx.Client) -> None:
    schema = {
        "type": "object",
        "properties": {
            "path": {"type": "string"},
            "lines": {"type": "integer", "minimum": 3},
            "mode": {"enum": ["fast", "slow"]},
        },
        "required": ["path"],
    }
    body = kiro_request_body(
        "Please use read_file on it", tools=[tool_spec("read_file", schema=schema)]
    )
    events = decode_events(chat(client, sim, body).content)
    tool_events = [p for t, p in events if t == "toolUseEvent"]
    assert tool_events[0]["name"] == "read_file"
    use_id = tool_events[0]["toolUseId"]
    assert use_id.startswith("tooluse_")
    assert all(p["toolUseId"] == use_id for p in tool_events)
    arguments = "".join(p.get("input", "") for p in tool_events)
    assert orjson.loads(arguments) == {"path": "example", "lines": 3, "mode": "fast"}
    assert len([p for p in tool_events if "input" in p]) > 1  # fragmented
    assert tool_events[-1].get("stop") is True


def test_tool_results_are_answered_in_text(sim: SimulatorServer, client: httpx.Client) -> None:
    use = {"toolUseId": "tooluse_9", "name": "read_file", "input": {}}
    body = kiro_request_body(
        "Here you go (read_file)",
        history=[user_turn("Read it"), assistant_turn("Reading.", [use])],
        tools=[tool_spec("read_file")],
        tool_results=[
            {"toolUseId": "tooluse_9", "content": [{"text": "42 lines"}], "status": "success"}
        ],
    )
    events = decode_events(chat(client, sim, body).content)
    assert not [t for t, _ in events if t == "toolUseEvent"]
    assert "42 lines" in answer_text(chat(client, sim, body).content)


# --- refusals -----------------------------------------------------------------------------------


def test_malformed_body_gets_improperly_formed(sim: SimulatorServer, client: httpx.Client) -> None:
    body = kiro_request_body()
    body["systemPrompt"] = "Be brief"
    response = chat(client, sim, body)
    assert response.status_code == 400
    assert response.json() == {"message": "Improperly formed request.", "reason": None}
    record = sim.state.requests[-1]
    assert record.status == 400 and record.refusal is not None and "systemPrompt" in record.refusal


def test_too_long_and_unknown_model(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.max_body_bytes = 2_000
    too_long = chat(client, sim, kiro_request_body("x" * 3_000))
    assert too_long.status_code == 400
    assert too_long.json() == {
        "message": "Input is too long.",
        "reason": "CONTENT_LENGTH_EXCEEDS_THRESHOLD",
    }
    bad_model = chat(client, sim, kiro_request_body(model_id="gpt-5"))
    assert bad_model.status_code == 400 and bad_model.json()["reason"] == "INVALID_MODEL_ID"


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"[]", b'"x"', b"null"])
def test_garbage_bodies_get_a_400_not_a_500(
    sim: SimulatorServer, client: httpx.Client, raw: bytes
) -> None:
    response = client.post(
        f"{sim.url}/generateAssistantResponse",
        content=raw,
        headers={**AUTH, "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert set(response.json()) == {"message", "reason"}


def test_content_type_must_be_json(sim: SimulatorServer, client: httpx.Client) -> None:
    response = client.post(
        f"{sim.url}/generateAssistantResponse",
        content=orjson.dumps(kiro_request_body()),
        headers={**AUTH, "content-type": "text/plain"},
    )
    assert response.status_code == 400
    assert "content-type" in (sim.state.requests[-1].refusal or "")


def test_refused_requests_do_not_consume_scripts(
    sim: SimulatorServer, client: httpx.Client
) -> None:
    sim.state.enqueue(text_answer("kept"))
    assert chat(client, sim, {"bad": 1}).status_code == 400
    assert answer_text(chat(client, sim).content) == "kept"


# --- scripts ------------------------------------------------------------------------------------


def test_scripts_are_played_first_in_first_out(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.enqueue(text_answer("one", chunks=1), text_answer("two", chunks=1))
    assert sim.state.pending() == 2
    assert answer_text(chat(client, sim).content) == "one"
    assert answer_text(chat(client, sim).content) == "two"
    assert SIMULATOR_TAG in answer_text(chat(client, sim).content)  # back to the default


def test_text_answer_in_chunks_with_reasoning(sim: SimulatorServer, client: httpx.Client) -> None:
    script = text_answer("Hello, world!", chunks=5, reasoning="Let me think.", model_id="auto")
    sim.state.enqueue(script)
    response = chat(client, sim)
    assert response.content == script.body()
    events = decode_events(response.content)
    assert [p["content"] for t, p in events if t == "assistantResponseEvent"] == [
        "Hel",
        "lo,",
        " wo",
        "rl",
        "d!",
    ]
    assert "".join(p["text"] for t, p in events if t == "reasoningContentEvent") == "Let me think."
    assert all(p["modelId"] == "auto" for t, p in events if t == "assistantResponseEvent")


def test_thinking_tags_variant(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.enqueue(text_answer("Answer.", reasoning="Hmm.", thinking_tags=True))
    text = answer_text(chat(client, sim).content)
    assert text.startswith("<thinking>Hmm.</thinking>") and text.endswith("Answer.")


def test_tool_use_answers(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.enqueue(
        tool_use_answer(
            "Write", "tooluse_A", '{"path": "a.txt", "content": "hi"}', 4, text_before="Ok."
        )
    )
    events = decode_events(chat(client, sim).content)
    tools = [p for t, p in events if t == "toolUseEvent"]
    assert tools[0] == {"name": "Write", "toolUseId": "tooluse_A"}
    assert "".join(p.get("input", "") for p in tools) == '{"path": "a.txt", "content": "hi"}'
    assert tools[-1] == {"name": "Write", "toolUseId": "tooluse_A", "stop": True}
    assert events[-1][0] == "contextUsageEvent"

    sim.state.enqueue(tool_use_answer("Write", "tooluse_B", '{"path": "b', truncated=True))
    events = decode_events(chat(client, sim).content)
    assert not any(p.get("stop") for _, p in events)
    assert "contextUsageEvent" not in [t for t, _ in events]

    sim.state.enqueue(
        parallel_tool_use_answer([("a", "tooluse_1", "{}"), ("b", "tooluse_2", '{"x": 1}')])
    )
    events = decode_events(chat(client, sim).content)
    starts = [
        p["name"] for t, p in events if t == "toolUseEvent" and set(p) == {"name", "toolUseId"}
    ]
    stops = [p["toolUseId"] for t, p in events if t == "toolUseEvent" and p.get("stop")]
    assert starts == ["a", "b"] and stops == ["tooluse_1", "tooluse_2"]


def test_event_exception_and_raw_steps(sim: SimulatorServer, client: httpx.Client) -> None:
    raw = Event("assistantResponseEvent", {"content": "raw"}).encode()
    sim.state.enqueue(
        [
            Event("followupPromptEvent", {"followupPrompt": {"content": "more?"}}),
            Raw(raw),
            ExceptionFrame("ThrottlingException", {"message": "slow down"}),
        ]
    )
    frames = EventStreamDecoder().feed(chat(client, sim).content)
    assert [f.event_type for f in frames[:2]] == ["followupPromptEvent", "assistantResponseEvent"]
    assert frames[2].message_type == "exception"
    assert frames[2].headers[":exception-type"] == "ThrottlingException"
    assert sim.state.requests[-1].sent_text == "raw"


def test_http_error_step(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.enqueue(HttpError(418, {"message": "teapot", "reason": "X"}, {"x-extra": "1"}))
    response = chat(client, sim)
    assert response.status_code == 418
    assert response.json() == {"message": "teapot", "reason": "X"}
    assert response.headers["x-extra"] == "1"


def test_cut_mid_frame_ends_the_body_inside_a_frame(
    sim: SimulatorServer, client: httpx.Client
) -> None:
    sim.state.enqueue(text_answer("ab", chunks=2).steps[:1] + (CutMidFrame(),))
    response = chat(client, sim)
    assert response.status_code == 200
    decoder = EventStreamDecoder()
    frames = decoder.feed(response.content)
    assert len(frames) == 1 and decoder.buffered > 0


def test_cut_mid_frame_with_abort_breaks_the_http_body(
    sim: SimulatorServer, client: httpx.Client
) -> None:
    sim.state.enqueue([Event("assistantResponseEvent", {"content": "a"}), CutMidFrame(abort=True)])
    with pytest.raises(httpx.RemoteProtocolError):
        chat(client, sim)
    assert sim.state.wait_idle()


def test_corrupt_crc_hits_the_next_frame(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.enqueue(
        [
            Event("assistantResponseEvent", {"content": "good"}),
            CorruptCrc(),
            Event("assistantResponseEvent", {"content": "bad"}),
        ]
    )
    data = chat(client, sim).content
    decoder = EventStreamDecoder()
    first_len = len(Event("assistantResponseEvent", {"content": "good"}).encode())
    assert len(decoder.feed(data[:first_len])) == 1
    with pytest.raises(ChecksumMismatch):
        decoder.feed(data[first_len:])
    assert sim.state.requests[-1].sent_text == "good"


def test_garbage_step(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.enqueue([Garbage(32)])
    data = chat(client, sim).content
    assert len(data) == 32 and data == Garbage(32).encode()
    with pytest.raises(EventStreamError):
        EventStreamDecoder().feed(data)


def test_connection_drop_before_the_response(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.enqueue(ConnectionDrop())
    with pytest.raises(httpx.RemoteProtocolError):
        chat(client, sim)
    assert sim.state.wait_idle()
    assert sim.state.requests[-1].status is None


def test_slow_first_byte_delays_the_status_line(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.enqueue([SlowFirstByte(0.4), *text_answer("x").steps])
    started = time.monotonic()
    with client.stream(
        "POST", f"{sim.url}/generateAssistantResponse", json=kiro_request_body(), headers=AUTH
    ) as r:
        assert time.monotonic() - started >= 0.35
        assert r.status_code == 200
    with pytest.raises(httpx.ReadTimeout):
        sim.state.enqueue([SlowFirstByte(1.0)])
        chat(client, sim, timeout=0.2)


def test_frames_are_flushed_one_by_one(sim: SimulatorServer, client: httpx.Client) -> None:
    """Streaming is observable: each frame arrives on its own, ``chunk_interval`` apart."""
    sim.state.chunk_interval = 0.15
    script = text_answer("abcd", chunks=4, context_usage=None)
    sim.state.enqueue(script)
    arrivals: list[tuple[float, int]] = []
    decoder = EventStreamDecoder()
    with client.stream(
        "POST", f"{sim.url}/generateAssistantResponse", json=kiro_request_body(), headers=AUTH
    ) as r:
        for chunk in r.iter_raw():
            arrivals.append((time.monotonic(), len(decoder.feed(chunk))))
    assert [n for _, n in arrivals] == [1] * len(script.steps)
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert all(gap >= 0.1 for gap in gaps), gaps


def test_latency_delays_every_answer(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.latency = 0.3
    started = time.monotonic()
    assert chat(client, sim).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_explicit_delays_between_frames(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.enqueue(
        [
            Event("assistantResponseEvent", {"content": "a"}),
            Delay(0.3),
            Event("assistantResponseEvent", {"content": "b"}),
        ]
    )
    started = time.monotonic()
    assert answer_text(chat(client, sim).content) == "ab"
    assert time.monotonic() - started >= 0.3


# --- faults -------------------------------------------------------------------------------------

HTTP_FAULTS = {
    "expired_token": (403, None, "The bearer token included in the request is invalid."),
    "quota_exceeded": (402, "MONTHLY_REQUEST_COUNT", None),
    "suspended": (403, "TEMPORARILY_SUSPENDED", None),
    "not_authorized": (403, None, "User is not authorized to make this call."),
    "throttled": (429, None, None),
    "daily_quota": (429, "DAILY_REQUEST_COUNT", None),
    "insufficient_capacity": (429, "INSUFFICIENT_MODEL_CAPACITY", None),
    "server_error": (500, None, None),
    "model_unavailable": (503, "MODEL_TEMPORARILY_UNAVAILABLE", None),
    "improperly_formed": (400, None, "Improperly formed request."),
    "input_too_long": (400, "CONTENT_LENGTH_EXCEEDS_THRESHOLD", "Input is too long."),
}


@pytest.mark.parametrize("name", HTTP_FAULTS)
def test_http_faults(sim: SimulatorServer, client: httpx.Client, name: str) -> None:
    status, reason, message = HTTP_FAULTS[name]
    sim.state.fail_next(1, name)
    response = chat(client, sim)
    assert response.status_code == status
    body = response.json()
    assert body["reason"] == reason and isinstance(body["message"], str)
    if message:
        assert body["message"] == message
    assert "x-amzn-errortype" in response.headers
    assert sim.state.requests[-1].fault == name
    assert chat(client, sim).status_code == 200  # only the next request fails


def test_stream_faults_keep_a_real_prefix_of_the_answer(
    sim: SimulatorServer, client: httpx.Client
) -> None:
    expected = answer_text(chat(client, sim).content)
    for name, error in [
        ("cut_mid_frame", None),
        ("corrupted_crc", ChecksumMismatch),
        ("garbage_bytes", EventStreamError),
    ]:
        sim.state.fail_next(1, name)
        data = chat(client, sim).content
        decoder = EventStreamDecoder()
        text = ""
        try:
            for i in range(len(data)):  # byte by byte: keep every frame before the bad one
                for frame in decoder.feed(data[i : i + 1]):
                    if frame.event_type == "assistantResponseEvent":
                        text += orjson.loads(frame.payload)["content"]
        except EventStreamError as exc:
            assert error is not None and isinstance(exc, error)
        else:
            assert error is None and decoder.buffered > 0, name
        record = sim.state.requests[-1]
        assert record.fault == name and record.sent_text == text
        assert text and expected.startswith(text) and text != expected


def test_drop_faults(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.fail_next(1, "connection_drop")
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        chat(client, sim)
    sim.state.fail_next(1, "drop_mid_stream")
    with pytest.raises(httpx.RemoteProtocolError, match="incomplete"):
        chat(client, sim)


def test_stall_and_slow_faults(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.fail_next(1, "stall_mid_stream")
    with pytest.raises(httpx.ReadTimeout):
        chat(client, sim, timeout=0.3)
    assert sim.state.wait_idle()
    assert sim.state.requests[-1].closed_by_client

    sim.state.enqueue(faults.slow_frames(0.1))
    started = time.monotonic()
    assert SIMULATOR_TAG in answer_text(chat(client, sim).content)
    assert time.monotonic() - started >= 0.4  # several frames, 0.1 s apart


def test_every_named_fault_is_covered() -> None:
    covered = set(HTTP_FAULTS) | {
        "cut_mid_frame",
        "corrupted_crc",
        "garbage_bytes",
        "connection_drop",
        "drop_mid_stream",
        "stall_mid_stream",
        "slow_frames",
        "slow_first_byte",
        *EXCEPTION_FAULTS,
    }
    assert covered == set(FAULTS)


EXCEPTION_FAULTS = {
    "daily_quota_mid_stream": "DAILY_REQUEST_COUNT",
    "capacity_mid_stream": "INSUFFICIENT_MODEL_CAPACITY",
}


@pytest.mark.parametrize("name", EXCEPTION_FAULTS)
def test_exception_faults_end_a_started_answer(
    sim: SimulatorServer, client: httpx.Client, name: str
) -> None:
    sim.state.fail_next(1, name)
    response = chat(client, sim)
    assert response.status_code == 200
    frames = EventStreamDecoder().feed(response.content)
    assert any(f.event_type == "assistantResponseEvent" for f in frames[:-1])
    last = frames[-1]
    assert last.message_type == "exception"
    assert last.headers[":exception-type"] == "ThrottlingException"
    assert orjson.loads(last.payload)["reason"] == EXCEPTION_FAULTS[name]
    assert sim.state.requests[-1].fault == name


def test_fail_next_goes_ahead_of_the_queue(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.enqueue(text_answer("queued"))
    sim.state.fail_next(2, "server_error")
    responses = [chat(client, sim) for _ in range(3)]
    assert [r.status_code for r in responses] == [500, 500, 200]
    assert answer_text(responses[2].content) == "queued"


def test_account_fault_applies_to_that_account_only(
    sim: SimulatorServer, client: httpx.Client
) -> None:
    bad = sim.state.add_account(access_token="tok-bad")
    sim.state.add_account(access_token="tok-good")
    bad.fault = get_fault("suspended")
    headers = {"Authorization": "Bearer tok-bad"}
    assert chat(client, sim, headers=headers).status_code == 403
    assert chat(client, sim, headers={"Authorization": "Bearer tok-good"}).status_code == 200
    assert [r.account for r in sim.state.requests] == ["account-1", "account-2"]


def test_random_faults_are_seeded() -> None:
    def run(seed: int) -> list[str | None]:
        state = SimulatorState(fault_rate=0.5, fault_seed=seed)
        return [state.next_answer(lambda: text_answer("x"))[1] for _ in range(40)]

    first = run(7)
    assert first == run(7) and first != run(8)
    drawn = [f for f in first if f]
    assert 8 <= len(drawn) <= 32
    assert set(drawn) <= set(SimulatorState().random_faults)


# --- captures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", capture_names())
def test_captures_are_replayed_byte_for_byte(
    sim: SimulatorServer, client: httpx.Client, name: str
) -> None:
    sim.state.enqueue(capture(name))
    response = chat(client, sim)
    assert response.content == capture_bytes(name)
    assert sim.state.requests[-1].script == f"capture:{name}"
    if SHARED_CAPTURES.is_dir():
        assert capture_bytes(name) == (SHARED_CAPTURES / f"{name}.bin").read_bytes()


def test_capture_text_is_recorded(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.enqueue(capture("text-short"))
    chat(client, sim)
    assert (
        sim.state.requests[-1].sent_text
        == "Immersive Weather Card: Native Web Design & Dynamic Effects"
    )
    assert capture("text-zh-then-tooluse").text.startswith("我将为")


def test_three_captures_are_shipped() -> None:
    assert capture_names() == ["text-json-fragments", "text-short", "text-zh-then-tooluse"]
    with pytest.raises(KeyError):
        capture_bytes("nope")
    with pytest.raises(ValueError):
        capture_bytes("../state")


# --- disconnects and open streams ---------------------------------------------------------------


def _leave_after_first_frame(sim: SimulatorServer) -> float:
    """Read the first bytes of an answer, close the connection, return when it was closed."""
    with httpx.Client(timeout=5.0) as c:
        with c.stream(
            "POST", f"{sim.url}/generateAssistantResponse", json=kiro_request_body(), headers=AUTH
        ) as r:
            chunks = r.iter_raw()  # kept alive: dropping the iterator closes the response
            next(chunks)
            assert sim.state.open_streams == 1
    return time.monotonic()


@pytest.mark.parametrize("pause", [Delay(30), Stall()], ids=["delay", "stall"])
def test_client_leaving_is_noticed_within_a_second(sim: SimulatorServer, pause: Any) -> None:
    sim.state.enqueue([Event("assistantResponseEvent", {"content": "a"}), pause])
    left = _leave_after_first_frame(sim)
    assert sim.state.wait_idle(timeout=2.0)
    record = sim.state.requests[-1]
    assert record.closed_by_client
    assert record.closed_by_client_at is not None
    assert record.closed_by_client_at - left < 1.0
    assert sim.state.open_streams == 0


def test_leaving_before_the_first_byte_is_noticed(sim: SimulatorServer) -> None:
    sim.state.enqueue([SlowFirstByte(30)])
    with pytest.raises(httpx.ReadTimeout):
        with httpx.Client(timeout=0.3) as c:
            c.post(f"{sim.url}/generateAssistantResponse", json=kiro_request_body(), headers=AUTH)
    left = time.monotonic()
    assert sim.state.wait_idle(timeout=2.0)
    record = sim.state.requests[-1]
    assert record.closed_by_client and record.closed_by_client_at is not None
    assert record.closed_by_client_at - left < 1.0


def test_open_streams_counts_answers_in_flight(sim: SimulatorServer) -> None:
    for _ in range(3):
        sim.state.enqueue([Event("assistantResponseEvent", {"content": "a"}), Stall()])
    clients = [httpx.Client(timeout=5.0) for _ in range(3)]
    streams = [
        c.stream(
            "POST", f"{sim.url}/generateAssistantResponse", json=kiro_request_body(), headers=AUTH
        )
        for c in clients
    ]
    responses = [s.__enter__() for s in streams]
    readers = [r.iter_raw() for r in responses]  # kept alive: dropping one closes its response
    for reader in readers:
        next(reader)
    assert sim.state.open_streams == 3
    for s, c in zip(streams, clients, strict=True):
        s.__exit__(None, None, None)
        c.close()
    assert sim.state.wait_idle(timeout=2.0)
    assert all(r.closed_by_client for r in sim.state.requests)


# --- OpenAI-compatible endpoint -----------------------------------------------------------------


def openai_body(**extra: Any) -> dict[str, Any]:
    return {"model": "sim", "messages": [{"role": "user", "content": "Hi there"}], **extra}


def sse_chunks(text: str) -> list[Any]:
    lines = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [orjson.loads(line) for line in lines[:-1]]


def test_openai_streamed(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.enqueue(text_answer("Hello there", chunks=3))
    response = client.post(
        f"{sim.url}/v1/chat/completions",
        json=openai_body(stream=True, stream_options={"include_usage": True}),
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = sse_chunks(response.text)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello there"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert sim.state.requests[-1].style == "openai"


def test_openai_not_streamed_with_tool_calls(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.enqueue(tool_use_answer("get_weather", "tooluse_W", '{"city": "Paris"}', 3))
    response = client.post(f"{sim.url}/v1/chat/completions", json=openai_body())
    assert response.status_code == 200
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["id"] == "tooluse_W" and call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_openai_default_answer_and_tools(sim: SimulatorServer, client: httpx.Client) -> None:
    response = client.post(f"{sim.url}/v1/chat/completions", json=openai_body())
    assert "Hi there" in response.json()["choices"][0]["message"]["content"]
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    body = {"model": "m", "messages": [{"role": "user", "content": "call lookup"}], "tools": tools}
    message = client.post(f"{sim.url}/v1/chat/completions", json=body).json()["choices"][0][
        "message"
    ]
    assert message["tool_calls"][0]["function"]["name"] == "lookup"


def test_openai_faults(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.fail_next(1, "throttled")
    response = client.post(f"{sim.url}/v1/chat/completions", json=openai_body(stream=True))
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "rate_limit_error"
    sim.state.fail_next(1, "cut_mid_frame")
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(f"{sim.url}/v1/chat/completions", json=openai_body(stream=True))
    bad = client.post(f"{sim.url}/v1/chat/completions", content=b"nope")
    assert bad.status_code == 400 and "error" in bad.json()


def test_openai_and_kiro_share_timing(sim: SimulatorServer, client: httpx.Client) -> None:
    sim.state.latency = 0.2
    started = time.monotonic()
    client.post(f"{sim.url}/v1/chat/completions", json=openai_body())
    assert time.monotonic() - started >= 0.2


# --- the server itself --------------------------------------------------------------------------


def _port_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) != 0


def test_start_stop_leaves_no_thread_or_socket() -> None:
    threads = threading.active_count()
    for _ in range(3):
        server = SimulatorServer().start()
        assert httpx.get(f"{server.url}/health").json()["simulator"] is True
        server.stop()
        assert _port_closed(server.url)
    assert threading.active_count() == threads


def test_stop_does_not_hang_on_open_streams() -> None:
    server = SimulatorServer().start()
    server.state.enqueue([Event("assistantResponseEvent", {"content": "a"}), Stall()])
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            with httpx.Client(timeout=30) as c:
                with c.stream(
                    "POST",
                    f"{server.url}/generateAssistantResponse",
                    json=kiro_request_body(),
                    headers=AUTH,
                ) as r:
                    for _ in r.iter_raw():
                        pass
        except httpx.HTTPError as exc:
            errors.append(exc)

    holder = threading.Thread(target=hold)
    holder.start()
    assert server.state.wait_for(lambda s: s.open_streams == 1)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3.0
    holder.join(5)
    assert not holder.is_alive()
    assert errors and isinstance(errors[0], httpx.RemoteProtocolError)
    assert not server.state.requests[-1].closed_by_client  # the server ended it


async def test_async_context_manager() -> None:
    async with SimulatorServer() as server:
        async with httpx.AsyncClient() as c:
            response = await c.post(
                f"{server.url}/generateAssistantResponse", json=kiro_request_body(), headers=AUTH
            )
        assert response.status_code == 200
    assert not server.running


def test_cli_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ki2api.simulator", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0
    assert "--latency-ms" in done.stdout and "--chunk-interval-ms" in done.stdout


def test_cli_serves_and_prints_its_url() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "ki2api.simulator", "--port", "0", "--latency-ms", "50"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("Ki2API Kiro simulator listening on http://127.0.0.1:")
        url = line.split()[-1]
        deadline = time.monotonic() + 10
        while True:
            try:
                response = httpx.post(
                    f"{url}/generateAssistantResponse", json=kiro_request_body(), headers=AUTH
                )
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert SIMULATOR_TAG in answer_text(response.content)
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


class _SlowChannel:
    """Stands in for a response whose every write takes a while (a busy machine)."""

    def __init__(self, write_seconds: float) -> None:
        self.write_seconds = write_seconds
        self.dropped = False
        self.written_at: list[float] = []
        self.finished_at: float | None = None

    async def write(self, data: bytes, text: str, frames: int = 1, poison: bool = False) -> None:
        self.written_at.append(time.monotonic())
        await asyncio.sleep(self.write_seconds)

    async def finish(self) -> None:
        self.finished_at = time.monotonic()


def _write_offsets(
    script: Script, channel: _SlowChannel, *, latency: float, chunk_interval: float
) -> list[float]:
    """Play ``script`` into ``channel``; when each write started, in s after the start."""

    async def run() -> float:
        started = time.monotonic()
        await play(script, cast(Any, channel), latency=latency, chunk_interval=chunk_interval)
        return started

    started = asyncio.run(run())
    return [t - started for t in channel.written_at]


def test_cadence_keeps_to_the_clock_when_writes_are_slow() -> None:
    """Frame k is due ``latency + k * chunk_interval`` after the start, however long each write
    took: a remote service's cadence does not stretch with this machine's load."""
    script = text_answer("abcdefghij", chunks=10, context_usage=None)
    frames = sum(isinstance(step, Event) for step in script.steps)
    channel = _SlowChannel(write_seconds=0.03)
    offsets = _write_offsets(script, channel, latency=0.05, chunk_interval=0.04)
    assert len(offsets) == frames
    for k, offset in enumerate(offsets):
        # Sleeping 40 ms after each 30 ms write would put frame k at 50 + 70k ms.
        assert 0.05 + 0.04 * k - 0.002 <= offset <= 0.05 + 0.04 * k + 0.02, (k, offsets)
    assert channel.finished_at is not None


def test_a_delay_moves_the_rest_of_the_clock_on() -> None:
    script = Script(
        (
            Event("assistantResponseEvent", {"content": "a"}),
            Delay(0.1),
            Event("assistantResponseEvent", {"content": "b"}),
            Event("assistantResponseEvent", {"content": "c"}),
        )
    )
    offsets = _write_offsets(script, _SlowChannel(0.0), latency=0.02, chunk_interval=0.03)
    for offset, expected in zip(offsets, [0.02, 0.15, 0.18], strict=True):
        assert expected - 0.002 <= offset <= expected + 0.02, offsets


def test_flood_repeats_a_frame_until_its_bytes_are_out(
    sim: SimulatorServer, client: httpx.Client
) -> None:
    frame = Event("assistantResponseEvent", {"content": "again "})
    size = len(frame.encode())
    end = Event("assistantResponseEvent", {"content": "end"})
    sim.state.enqueue(Script((Flood(frame, total_bytes=100 * size, frames_per_write=8), end)))
    response = chat(client, sim)
    events = decode_events(response.content)
    assert [p["content"] for _, p in events] == ["again "] * 104 + ["end"]  # whole writes of 8
    record = sim.state.requests[-1]
    assert record.frames_sent == 105 and record.sent_text == "end"  # flood text is not kept


def test_an_endless_flood_stops_when_the_client_leaves(sim: SimulatorServer) -> None:
    frame = Event("assistantResponseEvent", {"content": "x" * 4096})
    sim.state.enqueue(Script((Flood(frame),)))
    with (
        httpx.Client(timeout=5.0) as c,
        c.stream(
            "POST", f"{sim.url}/generateAssistantResponse", json=kiro_request_body(), headers=AUTH
        ) as response,
    ):
        received = 0
        for chunk in response.iter_raw():
            received += len(chunk)
            if received > 4 * 1024 * 1024:
                break
    assert sim.state.wait_idle(timeout=10)
