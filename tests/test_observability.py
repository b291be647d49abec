"""/metrics and the access log on a real server: who may read the metrics, labels that stay a
fixed few whatever paths clients make up, and log lines a client cannot forge."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time

import httpx
import pytest

from ki2api.model.logsafe import MAX_LOGGED_CHARS, printable
from tests.stack import API_KEY, Stack, StackFactory

pytestmark = pytest.mark.timeout(300)

ADMIN_KEY = "metrics-admin-key-0123456789"


def test_printable_escapes_what_could_forge_a_line_or_a_field() -> None:
    assert printable("/v1/chat/completions") == "/v1/chat/completions"
    assert printable("/v1/模型") == "/v1/模型"
    assert printable("a\nb\rc\td e\x00\x7f\x85\u2028") == (
        "a\\x0ab\\x0dc\\x09d\\x20e\\x00\\x7f\\x85\\u2028"
    )
    assert printable(None) == "None"
    long = printable("x" * 10_000)
    assert len(long) == MAX_LOGGED_CHARS + 1 and long.endswith("…")


def _get(url: str, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(url + "/metrics", headers=headers)


def test_metrics_need_the_admin_key(stack_factory: StackFactory) -> None:
    # Before: with no ADMIN_KEY, /metrics was public.
    off = stack_factory()
    for key in (None, API_KEY, "made-up"):
        r = _get(off.url, key)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "admin_disabled"
        assert "ADMIN_KEY" in r.text and "METRICS_PUBLIC" in r.text
        assert "ki2api_requests" not in r.text
    keyed = stack_factory({"ADMIN_KEY": ADMIN_KEY})
    assert _get(keyed.url, None).status_code == 401
    assert _get(keyed.url, "wrong").status_code == 401
    assert _get(keyed.url, API_KEY).status_code == 403
    ok = _get(keyed.url, ADMIN_KEY)
    assert ok.status_code == 200 and "ki2api_accounts" in ok.text
    public = stack_factory({"METRICS_PUBLIC": "1"})
    assert _get(public.url, None).status_code == 200


def _series(text: str) -> set[str]:
    """Each sample's name and labels, without its value."""
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}


def _made_up_paths(n: int) -> list[tuple[str, str]]:
    shapes = (
        ("GET", "/v1/made-up-{i}"),
        ("POST", "/v1/chat/completions/{i}"),
        ("GET", "/admin/accounts/acct-{i}/usage"),
        ("DELETE", "/admin/accounts/acct-{i}"),
        ("GET", "/v1/models/model-{i}"),
        ("POST", "/admin/nothing-{i}"),
        ("GET", "/health/{i}"),
    )
    return [(shapes[i % len(shapes)][0], shapes[i % len(shapes)][1].format(i=i)) for i in range(n)]


def test_made_up_paths_do_not_grow_the_metrics(stack_factory: StackFactory) -> None:
    # Before: each made-up /v1/... path became a label value (20,000 paths: 111 MB of metrics).
    stack = stack_factory({"ADMIN_KEY": ADMIN_KEY})
    requests = _made_up_paths(20_000)
    # The bulk goes straight into the app (its lifespan has run in the server): the labels are
    # the app's doing, and 20,000 loopback round trips take minutes on a busy machine.
    transport = httpx.ASGITransport(app=stack.app)

    async def send(chunk: list[tuple[str, str]]) -> None:
        headers = {"authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gw", headers=headers
        ) as client:
            for method, path in chunk:
                r = await client.request(method, path)
                assert r.status_code < 500, (path, r.text)

    async def send_all(items: list[tuple[str, str]]) -> None:
        await asyncio.gather(*(send(items[i::8]) for i in range(8)))

    asyncio.run(send_all(requests[:700]))
    _get(stack.url, ADMIN_KEY)  # /metrics has its own series once read
    before = _get(stack.url, ADMIN_KEY).text
    asyncio.run(send_all(requests[700:]))
    after = _get(stack.url, ADMIN_KEY).text
    assert _series(after) == _series(before)
    assert len(after) < len(before) + 500  # only the counts grew (a few digits each)
    paths = set(re.findall(r'path="([^"]*)"', after))
    assert "other" in paths and not any("made-up" in p or "acct-" in p for p in paths)
    # The routes' templates are the labels.
    assert {"/admin/accounts/{label}", "/admin/accounts/{label}/usage"} <= paths
    # Over the socket too.
    assert httpx.get(stack.url + "/v1/over-the-socket").status_code == 404
    assert _series(_get(stack.url, ADMIN_KEY).text) == _series(after)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _raw(stack: Stack, target: bytes, extra: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", stack.server.port), timeout=30) as s:
        s.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer " + API_KEY.encode() + b"\r\n" + extra + b"\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_a_newline_in_the_path_cannot_forge_a_log_line(stack_factory: StackFactory) -> None:
    stack = stack_factory()
    handler = _Records()
    logging.getLogger().addHandler(handler)
    ki2api_log = logging.getLogger("ki2api")
    level = ki2api_log.level
    ki2api_log.setLevel(logging.INFO)  # the access log is INFO
    try:
        forged = b"/v1/x%0D%0Amethod=GET%20path=/v1/chat/completions%20status=200%0Aforged"
        answers = [
            _raw(stack, forged),
            _raw(stack, b"/v1/models/a%0Ab%00c%E2%80%A8d"),
            _raw(stack, b"/v1/%C2%85nel", extra=b"x-request-id: abc def\r\n"),
        ]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            access = [r for r in handler.records if r.name == "ki2api.access"]
            if len(access) >= 3:
                break
            time.sleep(0.05)
    finally:
        logging.getLogger().removeHandler(handler)
        ki2api_log.setLevel(level)
    assert all(a.startswith(b"HTTP/1.1 404") for a in answers), answers
    access = [r.getMessage() for r in handler.records if r.name == "ki2api.access"]
    assert len(access) == 3, access
    for line in access:
        assert "\n" not in line and "\r" not in line and "\x00" not in line
        assert "\u2028" not in line and "\x85" not in line
        keys = [field.split("=", 1)[0] for field in line.split(" ")]
        assert keys == [
            "method",
            "path",
            "status",
            "model",
            "kiro_model",
            "account",
            "key",
            "latency_ms",
            "ttft_ms",
            "error",
            "request_id",
        ], line
        assert " status=404 " in line
    assert (
        "path=/v1/x\\x0d\\x0amethod=GET\\x20path=/v1/chat/completions\\x20status=200" in (access[0])
    )
    for record in handler.records:  # nothing else the server logged has a raw line break
        assert "\n" not in record.getMessage() or record.exc_info, record.getMessage()
