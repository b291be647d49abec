"""The upstream path over real TLS on loopback, with a CA the test run makes (tests/tls.py):
certificates accepted and refused (each a clear error the client sees with a meaningful status),
chunked and length-delimited answers, a server closing an idle kept-alive connection, and the
limit on a response's headers. The fault matrix runs over TLS too (tests/test_faults.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ki2api.app import create_app
from ki2api.kiro.http.client import tls_context
from ki2api.kiro.http.transport import MAX_HEAD_BYTES, Http11Transport
from ki2api.settings import Settings
from ki2api.simulator import SimulatorServer, text_answer
from tests.servers import ServerThread
from tests.stack import stack_env
from tests.tls import TlsFiles, raw_tls_server


async def echo(request: Request) -> Response:
    port = request.client.port if request.client else 0
    return Response(await request.body(), headers={"x-client-port": str(port)})


async def chunked(request: Request) -> Response:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one;", b"two;", b"three"):
            yield part
            await asyncio.sleep(0.01)

    return StreamingResponse(parts())


APP = Starlette(routes=[Route("/echo", echo, methods=["GET", "POST"]), Route("/chunked", chunked)])


@pytest.fixture(scope="module")
def https_server(tls_files: TlsFiles) -> Iterator[ServerThread]:
    with ServerThread(APP, ssl_certfile=tls_files.cert, ssl_keyfile=tls_files.key) as server:
        yield server


def client(tls: TlsFiles | None) -> httpx.AsyncClient:
    settings = Settings(kiro_ca_bundle=Path(tls.ca) if tls else None)
    transport = Http11Transport(verify=tls_context(settings))
    return httpx.AsyncClient(transport=transport, timeout=5.0)


async def test_a_trusted_certificate_length_delimited_and_chunked_answers(
    https_server: ServerThread, tls_files: TlsFiles
) -> None:
    assert https_server.url.startswith("https://")
    async with client(tls_files) as http:
        whole = await http.post(f"{https_server.url}/echo", content=b"x" * 50_000)
        streamed = await http.get(f"{https_server.url}/chunked")
        again = await http.get(f"{https_server.url}/echo")
    assert whole.content == b"x" * 50_000 and whole.headers["content-length"] == "50000"
    assert streamed.headers["transfer-encoding"] == "chunked"
    assert streamed.content == b"one;two;three"
    assert whole.headers["x-client-port"] == again.headers["x-client-port"]  # kept alive


async def test_an_untrusted_ca_is_a_clear_error(https_server: ServerThread) -> None:
    async with client(None) as http:  # the public roots only
        with pytest.raises(httpx.ConnectError) as caught:
            await http.get(f"{https_server.url}/echo")
    message = str(caught.value)
    assert "TLS certificate of 127.0.0.1 was not accepted" in message
    assert "KIRO_CA_BUNDLE" in message


async def test_a_wrong_host_name_is_a_clear_error(tls_files: TlsFiles, tmp_path: Path) -> None:
    other = tls_files.reissue(tmp_path, "other.example")
    with ServerThread(APP, ssl_certfile=other.cert, ssl_keyfile=other.key) as server:
        async with client(tls_files) as http:
            with pytest.raises(httpx.ConnectError) as caught:
                await http.get(f"{server.url}/echo")
    assert "was not accepted" in str(caught.value)
    assert "mismatch" in str(caught.value)


async def test_ssl_cert_file_replaces_the_roots_and_bad_files_are_named(
    https_server: ServerThread, tls_files: TlsFiles, tmp_path: Path
) -> None:
    settings = Settings(ssl_cert_file=Path(tls_files.ca))
    async with httpx.AsyncClient(transport=Http11Transport(verify=tls_context(settings))) as http:
        assert (await http.get(f"{https_server.url}/echo")).status_code == 200
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ValueError, match="KIRO_CA_BUNDLE=.*junk.pem"):
        tls_context(Settings(kiro_ca_bundle=junk))
    # A file that is not there is refused when the settings are read, naming the variable.
    with pytest.raises(ValueError, match="SSL_CERT_FILE must be the path of a PEM file"):
        Settings.from_env({"HOME": str(tmp_path), "SSL_CERT_FILE": str(tmp_path / "absent.pem")})


async def test_a_server_closing_an_idle_connection_does_not_fail_the_next_request(
    tls_files: TlsFiles,
) -> None:
    port, thread = raw_tls_server(
        tls_files, lambda _: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 2
    )
    async with client(tls_files) as http:
        assert (await http.get(f"https://127.0.0.1:{port}/")).content == b"ok"
        await asyncio.sleep(0.1)  # the server's close reaches the idle connection
        assert (await http.get(f"https://127.0.0.1:{port}/")).content == b"ok"
    thread.join(2)


def head_of(size: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * size + b"\r\ncontent-length: 2\r\n\r\nok"


async def test_response_headers_have_a_size_limit(tls_files: TlsFiles) -> None:
    port, thread = raw_tls_server(tls_files, lambda _: head_of(MAX_HEAD_BYTES - 1024), 2)
    async with client(tls_files) as http:
        assert (await http.get(f"https://127.0.0.1:{port}/")).content == b"ok"  # under it
    port, thread = raw_tls_server(tls_files, lambda _: head_of(2 * MAX_HEAD_BYTES), 1)
    async with client(tls_files) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="headers are over 64 KB"):
            await http.get(f"https://127.0.0.1:{port}/")
    thread.join(2)


# --- what the gateway's clients see ------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_sim(tls_files: TlsFiles) -> Iterator[SimulatorServer]:
    with SimulatorServer(ssl_certfile=tls_files.cert, ssl_keyfile=tls_files.key) as sim:
        yield sim


@pytest.fixture(scope="module")
def wrong_host_sim(
    tls_files: TlsFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimulatorServer]:
    """A certificate from the trusted CA, for another name than 127.0.0.1."""
    other = tls_files.reissue(tmp_path_factory.mktemp("other"), "other.example")
    with SimulatorServer(ssl_certfile=other.cert, ssl_keyfile=other.key) as sim:
        yield sim


def gateway(
    sim_url: str, *, uvloop: bool = False, **env: str
) -> tuple[ServerThread, dict[str, str]]:
    settings = Settings.from_env(stack_env(sim_url, **env))
    server = ServerThread(create_app(settings, with_ui=False), uvloop=uvloop).start()
    return server, {"authorization": f"Bearer {settings.api_key}"}


def chat_through(sim_url: str, fmt: str, **env: str) -> httpx.Response:
    server, headers = gateway(sim_url, **env)
    try:
        return chat(server, headers, fmt)
    finally:
        server.stop()


def chat(server: ServerThread, headers: dict[str, str], fmt: str) -> httpx.Response:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": "hi"}],
    }
    if fmt == "anthropic":
        body["max_tokens"] = 100
        headers = {**headers, "anthropic-version": "2023-06-01"}
    path = "chat/completions" if fmt == "openai" else "messages"
    return httpx.post(f"{server.url}/v1/{path}", json=body, headers=headers, timeout=30)


def test_the_gateway_answers_through_a_trusted_certificate(
    tls_sim: SimulatorServer, tls_files: TlsFiles
) -> None:
    server, headers = gateway(tls_sim.url, uvloop=True, KIRO_CA_BUNDLE=tls_files.ca)
    try:
        tls_sim.state.enqueue(text_answer("over TLS"))
        r = chat(server, headers, "openai")
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "over TLS"
    finally:
        server.stop()


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
@pytest.mark.parametrize("case", ["untrusted", "wrong-host"])
def test_a_refused_certificate_is_a_502_that_says_why(
    tls_sim: SimulatorServer,
    wrong_host_sim: SimulatorServer,
    tls_files: TlsFiles,
    case: str,
    fmt: str,
) -> None:
    if case == "untrusted":
        r = chat_through(tls_sim.url, fmt)  # no KIRO_CA_BUNDLE: the public roots only
    else:
        r = chat_through(wrong_host_sim.url, fmt, KIRO_CA_BUNDLE=tls_files.ca)
    assert r.status_code == 502, r.text
    assert "Traceback" not in r.text
    error = r.json()["error"]
    assert "not accepted" in error["message"] or "cannot connect" in error["message"]
    if fmt == "openai":
        assert error["code"] == "upstream_tls_error"
    if case == "untrusted":
        assert "KIRO_CA_BUNDLE" in error["message"]


def test_oversized_upstream_headers_are_a_502(tls_files: TlsFiles) -> None:
    port, _ = raw_tls_server(tls_files, lambda _: head_of(2 * MAX_HEAD_BYTES), 20)  # and lists
    server, headers = gateway(f"https://127.0.0.1:{port}", KIRO_CA_BUNDLE=tls_files.ca)
    try:
        r = chat(server, headers, "openai")
    finally:
        server.stop()
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "upstream_protocol_error"
    assert "headers are over 64 KB" in r.json()["error"]["message"]
