"""Whatever a client sends, the answer is a 4xx (or a normal answer) in the client's format:
never a 500, never a traceback. One gateway on a real socket serves every case; the page's
routes (Gradio, mounted at /) get theirs from a second one with the page on, and oversized
posts to them leave the process at most 50 MB larger."""

from __future__ import annotations

import gc
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.sse_events import parse_sse
from tests.stack import Stack, StackFactory, make_stack_factory

pytestmark = pytest.mark.timeout(60)

MODEL = "claude-sonnet-4-5"
MAX_BODY = 64 * 1024

# route → client format
ROUTES = {
    "/v1/chat/completions": "openai",
    "/v1/responses": "openai",
    "/v1/messages": "anthropic",
    "/v1/messages/count_tokens": "anthropic",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    factories: Iterator[StackFactory] = make_stack_factory()
    make = next(factories)
    # Module scope runs outside the per-test HOME isolation: name a login file that is not there.
    no_login = tmp_path_factory.mktemp("home") / "kiro-auth-token.json"
    yield make({"MAX_BODY_BYTES": str(MAX_BODY)}, kiro_token_file=no_login)
    next(factories, None)


@pytest.fixture(scope="module")
def page_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The same gateway with the web page mounted at / (as ``python app.py`` runs it)."""
    factories: Iterator[StackFactory] = make_stack_factory()
    make = next(factories)
    no_login = tmp_path_factory.mktemp("home") / "kiro-auth-token.json"
    yield make(with_ui=True, kiro_token_file=no_login)
    next(factories, None)


@pytest.fixture(params=["api only", "with the page"])
def either_stack(request: pytest.FixtureRequest) -> Stack:
    name = "stack" if request.param == "api only" else "page_stack"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def valid_body(route: str, **extra: Any) -> dict[str, Any]:
    if route == "/v1/responses":
        body: dict[str, Any] = {"model": MODEL, "input": "hi"}
    else:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        if route.startswith("/v1/messages"):
            body["max_tokens"] = 64
    body.update(extra)
    return body


def check_format(r: httpx.Response, fmt: str) -> None:
    """4xx, in the client's own error shape, nothing that looks like a stack trace."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    text = r.text
    assert "Traceback" not in text and 'File "' not in text and "site-packages" not in text
    body = r.json()
    if fmt == "openai":
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert isinstance(body["error"]["message"], str) and body["error"]["type"]
    else:
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert r.headers["x-request-id"]


def check_not_5xx(r: httpx.Response, fmt: str) -> None:
    if r.status_code == 200:
        return
    check_format(r, fmt)


def send(stack: Stack, route: str, content: bytes, **headers: str) -> httpx.Response:
    all_headers = {**stack.headers(), "content-type": "application/json", **headers}
    return httpx.post(f"{stack.url}{route}", content=content, headers=all_headers, timeout=20)


MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "whitespace": b"   \n",
    "not json": b"hello",
    "truncated": b'{"model": "claude-sonnet-4-5", "messages": [',
    "trailing comma": b'{"model": "x",}',
    "single quotes": b"{'model': 'x'}",
    "array": b"[]",
    "string": b'"hi"',
    "null": b"null",
    "number": b"42",
    "NaN": b'{"model": "claude-sonnet-4-5", "temperature": NaN}',
    "Infinity": b'{"model": "claude-sonnet-4-5", "temperature": Infinity}',
    "huge number": b'{"model": "claude-sonnet-4-5", "max_tokens": ' + b"9" * 5000 + b"}",
    "huge float": b'{"model": "claude-sonnet-4-5", "temperature": 1e99999}',
    "invalid utf-8": b'{"model": "claude-\xff\xfe", "messages": []}',
    "lone surrogate": b'{"model": "claude-sonnet-4-5", "messages": [{"role": "user", '
    b'"content": "\\ud800"}]}',
    "nul byte outside string": b'{"model": "x"\x00}',
    "deep arrays": b"[" * 10_000 + b"]" * 10_000,
    "deep objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "deep inside messages": b'{"model": "claude-sonnet-4-5", "messages": '
    + b"[" * 5_000
    + b"]" * 5_000
    + b"}",
    "utf-16 bom": "\ufeff{}".encode("utf-16"),
    "duplicate keys": b'{"model": "a", "model": 5, "messages": 1}',
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_bodies_are_4xx(stack: Stack, route: str, name: str) -> None:
    check_format(send(stack, route, MALFORMED[name]), ROUTES[route])


def wrong_types(route: str) -> list[dict[str, Any]]:
    base = valid_body(route)
    key = "input" if route == "/v1/responses" else "messages"
    cases: list[dict[str, Any]] = [
        {**base, "model": 5},
        {**base, "model": None},
        {**base, "model": ["a"]},
        {**base, "model": ""},
        {**base, key: "hi" if key == "messages" else 5},
        {**base, key: None},
        {**base, key: {"role": "user"}},
        {**base, key: [1, 2, 3]},
        {**base, key: [None]},
        {**base, key: [{"role": "user", "content": {"nested": True}}]},
        {**base, key: [{"role": "user", "content": [{"type": "image_url"}]}]},
        {**base, key: [{"role": "user", "content": [{"type": "mystery", "x": 1}]}]},
        {**base, key: [{"role": ["user"], "content": "x"}]},
        {**base, key: [{"role": "tool", "content": "x"}]},
        {**base, key: [{"role": "assistant", "content": "only the model spoke"}]},
        {**base, "stream": "yes"},
        {**base, "stream": {"a": 1}},
        {**base, "max_tokens": -1},
        {**base, "max_tokens": 0},
        {**base, "max_tokens": "many"},
        {**base, "max_tokens": 1.5},
        {**base, "temperature": "hot"},
        {**base, "temperature": -100},
        {**base, "top_p": [1]},
        {**base, "stop": 5},
        {**base, "stop": [None]},
        {**base, "tools": "all"},
        {**base, "tools": [{"type": "function"}]},
        {**base, "tools": [{"type": "function", "function": {"name": 5}}]},
        {**base, "tools": [{"name": "x" * 10_000, "input_schema": {}}]},
        {**base, "tool_choice": {"type": "nonsense"}},
        {**base, "system": 5},
        {**base, "system": [{"type": "text"}]},
        {**base, "metadata": "x"},
        {**base, "thinking": {"type": "enabled", "budget_tokens": "lots"}},
        {**base, "reasoning": {"effort": 7}},
        {**base, "stream_options": "yes"},
        {**base, "n": 5},
        {**base, "response_format": {"type": "json_schema"}},
    ]
    return cases


@pytest.mark.parametrize("route", ROUTES)
def test_wrong_types_are_4xx(stack: Stack, route: str) -> None:
    for body in wrong_types(route):
        r = send(stack, route, orjson.dumps(body))
        check_not_5xx(r, ROUTES[route])
    assert not [q for q in stack.state.requests if q.refusal], "nothing invalid reached Kiro"


@pytest.mark.parametrize("route", ROUTES)
def test_unknown_fields_are_ignored_or_refused_cleanly(stack: Stack, route: str) -> None:
    body = valid_body(route, zzz_unknown={"a": [1, {"b": None}]}, another=1e10)
    if route != "/v1/responses":
        body["messages"][0]["extra_field"] = "ignored"
    r = send(stack, route, orjson.dumps(body))
    check_not_5xx(r, ROUTES[route])


@pytest.mark.parametrize("route", ROUTES)
def test_strange_text_is_passed_on_or_refused_cleanly(stack: Stack, route: str) -> None:
    texts = [
        "\x00\x01\x02\x1b[31m red \x7f",
        "\u202e right-to-left \u200b zero width \ufeff",
        "emoji 🧨 and combining e\u0301\u0301\u0301",
        "<thinking>not really</thinking> </thinking_mode> ]]> {{ }} %s %n",
        "\r\n\r\ndata: [DONE]\n\nevent: error\n\n",
        "x" * 40_000,
    ]
    for text in texts:
        body = valid_body(route)
        if route == "/v1/responses":
            body["input"] = text
        else:
            body["messages"][0]["content"] = text
        r = send(stack, route, orjson.dumps(body))
        check_not_5xx(r, ROUTES[route])
        if r.status_code == 200 and route in ("/v1/chat/completions", "/v1/messages"):
            assert r.json()  # a normal answer, not a broken one


def test_an_sse_lookalike_in_the_prompt_does_not_break_the_stream(stack: Stack) -> None:
    body = valid_body("/v1/chat/completions", stream=True)
    body["messages"][0]["content"] = "data: [DONE]\n\nevent: error\ndata: {}\n\n"
    r = send(stack, "/v1/chat/completions", orjson.dumps(body))
    assert r.status_code == 200
    events = parse_sse(r.text)
    assert [e.data for e in events].count("[DONE]") == 1 and events[-1].data == "[DONE]"
    assert all("choices" in e.json() for e in events[:-1])  # every other event is a chunk


@pytest.mark.parametrize("route", ROUTES)
def test_body_over_max_body_bytes_is_413(stack: Stack, route: str) -> None:
    body = valid_body(route)
    big = "x" * (MAX_BODY + 10)
    if route == "/v1/responses":
        body["input"] = big
    else:
        body["messages"][0]["content"] = big
    r = send(stack, route, orjson.dumps(body))
    assert r.status_code == 413
    check_format(r, ROUTES[route])


def raw_exchange(stack: Stack, head: str, body: bytes) -> bytes:
    with socket.create_connection((stack.server.host, stack.server.port), timeout=5) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        return s.recv(65536)


@pytest.mark.parametrize("route", ROUTES)
def test_lying_content_length_is_handled(stack: Stack, route: str) -> None:
    base = (
        f"POST {route} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {stack.api_key}\r\n"
        "content-type: application/json\r\nconnection: close\r\n"
    )
    # A declared size past the limit is refused before the body is read.
    reply = raw_exchange(stack, base + f"content-length: {10 * MAX_BODY}\r\n", b"{}")
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]
    assert b"Traceback" not in reply
    # A declared size shorter than the body: only the declared bytes are read (not JSON).
    reply = raw_exchange(stack, base + "content-length: 5\r\n", b'{"model": "x"}')
    assert reply.startswith(b"HTTP/1.1 400"), reply[:100]


@pytest.mark.parametrize("route", ROUTES)
def test_wrong_content_types(stack: Stack, route: str) -> None:
    payload = orjson.dumps(valid_body(route))
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""):
        check_not_5xx(send(stack, route, payload, **{"content-type": ctype}), ROUTES[route])
    form = httpx.post(f"{stack.url}{route}", data={"model": MODEL}, headers=stack.headers())
    check_format(form, ROUTES[route])


@pytest.mark.parametrize("route", ROUTES)
def test_get_on_post_routes_is_405_in_the_clients_format(either_stack: Stack, route: str) -> None:
    stack = either_stack
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        r = httpx.request(method, f"{stack.url}{route}", headers=stack.headers())
        assert r.status_code == 405
        assert "POST" in r.headers["allow"]
        check_format(r, ROUTES[route])


def test_unknown_api_routes_are_404_in_openai_format(either_stack: Stack) -> None:
    stack = either_stack
    for path in ("/v1/nothing", "/v1/chat", "/v1/chat/completions/extra", "/admin/nothing"):
        for method in ("POST", "GET"):
            r = httpx.request(method, f"{stack.url}{path}", headers=stack.headers())
            assert r.status_code in (404, 405)
            check_format(r, "openai")
    r = httpx.post(f"{stack.url}/v1/messages/nothing", headers=stack.headers())
    check_format(r, "anthropic")
    r = httpx.delete(f"{stack.url}/v1/models", headers=stack.headers())
    assert r.status_code == 405 and "GET" in r.headers["allow"]
    check_format(r, "openai")


def test_hostile_headers(stack: Stack) -> None:
    route = "/v1/chat/completions"
    payload = orjson.dumps(valid_body(route))
    hostile: tuple[dict[str, Any], ...] = (
        {"x-api-key": "\x7f" * 10},
        {"authorization": "Bearer " + "k" * 100_000},
        {"authorization": "Basic Zm9vOmJhcg=="},
        {"authorization": "Bearer"},
        {"x-request-id": "../../etc/passwd"},
        {"x-request-id": "a" * 10_000},
        {"x-conversation-id": b"\xff" * 300},
        {"x-api-key": b"\xc3\xa9t\xc3\xa9"},
        {"anthropic-version": "nonsense"},
        {"x-long": "a" * 60_000},
    )
    for headers in hostile:
        try:
            r = httpx.post(
                f"{stack.url}{route}",
                content=payload,
                headers={"content-type": "application/json", **headers},
            )
        except httpx.RemoteProtocolError:
            continue  # the HTTP server refused the headers outright: fine, not a 500
        assert r.status_code < 500, (headers.keys(), r.status_code)
        if r.status_code != 200 and r.headers.get("content-type") == "application/json":
            assert "Traceback" not in r.text
        rid = r.headers.get("x-request-id", "")
        assert "\n" not in rid and "/" not in rid and len(rid) <= 128


def test_very_long_header_block_does_not_hurt_the_server(stack: Stack) -> None:
    # Far past any HTTP server's header limit: refused or dropped, and the server lives on.
    host, port = stack.server.host, stack.server.port
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        try:
            for _ in range(200):
                s.sendall(b"x-junk: " + b"a" * 8000 + b"\r\n")
            s.sendall(b"\r\n")
            reply = s.recv(200)
        except OSError:
            reply = b""
    assert not reply.startswith(b"HTTP/1.1 5")
    assert httpx.get(f"{stack.url}/health").status_code == 200


def test_the_gateway_still_answers_after_all_that(stack: Stack) -> None:
    r = send(stack, "/v1/chat/completions", orjson.dumps(valid_body("/v1/chat/completions")))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
def test_each_answer_carries_exactly_its_own_request_id(stack: Stack, route: str) -> None:
    # The streamed head is a shared constant: the middleware once added each request's id to
    # it in place, so every later answer carried all earlier ids.
    seen: set[str] = set()
    with httpx.Client(base_url=stack.url, headers=stack.headers(), timeout=30) as client:
        for stream in (True, True, False, True):
            sent = f"probe-{route.rsplit('/', 1)[-1]}-{len(seen)}-{stream}"
            r = client.post(
                route, json=valid_body(route, stream=stream), headers={"x-request-id": sent}
            )
            assert r.status_code == 200, r.text[:300]
            ids = r.headers.get_list("x-request-id")
            assert ids == [sent], ids
            generated = client.post(route, json=valid_body(route, stream=stream))
            assert len(generated.headers.get_list("x-request-id")) == 1
            seen.add(sent)


# --- the page's routes (Gradio, mounted at /) ------------------------------------------------

PAGE_MAX_BODY = 1024 * 1024  # PAGE_MAX_BODY_BYTES' default
OVERSIZED_POSTS = 24  # of 48 MB each: over 1 GB sent in all
RSS_GROWTH_BOUND = 50 * 1024 * 1024  # what the server may keep afterwards


def check_page_answer(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert "Traceback" not in r.text and "site-packages" not in r.text


PAGE_BODIES: dict[str, bytes] = {
    **MALFORMED,
    "no session": b'{"data": [], "fn_index": 0}',
    "fn_index negative": b'{"data": [], "fn_index": -1, "session_hash": "s1"}',
    "fn_index huge": b'{"data": [], "fn_index": 99999999999999999999, "session_hash": "s1"}',
    "fn_index string": b'{"data": [], "fn_index": "0", "session_hash": "s1"}',
    "data not a list": b'{"data": {"a": 1}, "fn_index": 0, "session_hash": "s1"}',
    "too few inputs": b'{"data": [], "fn_index": 3, "session_hash": "s1"}',
    "session hash huge": b'{"data": [], "fn_index": 0, "session_hash": "' + b"s" * 100_000 + b'"}',
    "trigger unknown": b'{"data": [], "trigger_id": 424242, "session_hash": "s1"}',
    "session hash empty": b'{"data": [], "fn_index": 0, "session_hash": "", "event_id": ""}',
    "session hash number": b'{"data": [], "fn_index": 0, "session_hash": 7}',
    "event data deep": b'{"data": [], "fn_index": 0, "session_hash": "s1", "event_data": '
    + b"[" * 5_000
    + b"]" * 5_000
    + b"}",
}


@pytest.mark.parametrize("route", ["/gradio_api/queue/join", "/gradio_api/cancel"])
@pytest.mark.parametrize("name", PAGE_BODIES)
def test_page_routes_answer_hostile_bodies_without_5xx(
    page_stack: Stack, route: str, name: str
) -> None:
    r = httpx.post(
        f"{page_stack.url}{route}",
        content=PAGE_BODIES[name],
        headers={"content-type": "application/json"},
        timeout=20,
    )
    check_page_answer(r)


def test_page_routes_answer_hostile_queries_without_5xx(page_stack: Stack) -> None:
    base = page_stack.url
    for path in (
        "/gradio_api/queue/data",
        "/gradio_api/queue/data?session_hash=",
        "/gradio_api/queue/data?session_hash=" + "a" * 5000,
        "/gradio_api/queue/data?session_hash=%00%ff",
        "/gradio_api/heartbeat/" + "a" * 2000,
        "/config?x=" + "%" * 10,
        "/assets/../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/gradio_api/file=../../etc/passwd",
    ):
        with httpx.stream("GET", f"{base}{path}", timeout=20) as r:
            head = r.read() if r.status_code != 200 else next(r.iter_bytes(), b"")
            assert r.status_code < 500, (path, r.status_code)
            assert b"root:" not in head and b"Traceback" not in head


def _rss() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _post_oversized(stack: Stack, streamed: bool, filler: bytes, count: int) -> bytes:
    """POST a queue event carrying ``count`` x ``filler`` over a raw socket, from one buffer
    (the client must not grow this process's memory: the server runs in it). Returns the
    status line, or b"" when the server closed before answering."""
    head = b'{"fn_index": 0, "session_hash": "big", "data": ["'
    tail = b'"]}'
    size = len(head) + len(filler) * count + len(tail)
    framing = b"transfer-encoding: chunked" if streamed else b"content-length: %d" % size
    request = (
        b"POST /gradio_api/queue/join HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + framing
        + b"\r\nconnection: close\r\n\r\n"
    )

    def piece(data: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(data), data) if streamed else data

    try:
        with socket.create_connection((stack.server.host, stack.server.port), timeout=30) as s:
            s.sendall(request + piece(head))
            for _ in range(count):
                s.sendall(piece(filler))
            s.sendall(piece(tail) + (b"0\r\n\r\n" if streamed else b""))
            return s.recv(200).split(b"\r\n", 1)[0]
    except OSError:
        return b""  # the server closed before the client had sent everything: fine


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_oversized_posts_to_the_page_leave_memory_bounded(page_stack: Stack) -> None:
    # The server runs in this process: its memory is ours. 24 posts of 48 MB (a valid queue
    # event carrying 48 MB of data; half declared, half streamed without content-length, four
    # at a time as in the report) may leave the process at most 50 MB larger.
    filler = b"x" * (1024 * 1024)
    httpx.get(f"{page_stack.url}/config", timeout=30)  # warm up Gradio's lazy parts
    gc.collect()
    before = _rss()
    with ThreadPoolExecutor(4) as pool:
        statuses = list(
            pool.map(
                lambda i: _post_oversized(page_stack, i % 2 == 1, filler, 48),
                range(OVERSIZED_POSTS),
            )
        )
    gc.collect()
    grown = _rss() - before
    too_large = b"HTTP/1.1 413 Request Entity Too Large"
    # Refused early: the client sees the 413, or a connection closed under its feet.
    assert all(s in (too_large, b"") for s in statuses), statuses
    probe = b"POST /gradio_api/queue/join HTTP/1.1\r\nhost: x\r\ncontent-length: 50000000\r\n"
    assert raw_exchange(page_stack, probe.decode(), b"{").startswith(too_large)  # what closed them
    assert grown < RSS_GROWTH_BOUND, f"RSS grew by {grown / 1e6:.0f} MB"
    assert httpx.get(f"{page_stack.url}/health", timeout=10).status_code == 200
