"""The ``ki2api`` command as a user runs it: help, serve, accounts (list, refresh, add, remove,
proxy; the last three followed by a running server)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ki2api import cli
from ki2api.settings import Settings
from ki2api.simulator import text_answer
from tests.proxies import HttpConnectProxy, Socks5Proxy
from tests.servers import ServerThread
from tests.stack import Stack, StackFactory
from tests.test_account_hygiene import eventually

ROOT = Path(__file__).resolve().parent.parent
ACCESS = "aoaAAAAAGold-access-token-91ab"
REFRESH = "aorAAAAAGrefresh-token-value-7d1c"
NEW_ACCESS = "aoaAAAAAGfresh-access-token-42cd"


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "ki2api", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _login_file(home: Path, **fields: Any) -> Path:
    path = home / ".aws" / "sso" / "cache" / "kiro-auth-token.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "accessToken": ACCESS,
        "refreshToken": REFRESH,
        "expiresAt": (datetime.now(UTC) + timedelta(minutes=42)).isoformat(),
        "authMethod": "social",
        "provider": "Github",
        "region": "us-east-1",
        **fields,
    }
    path.write_text(json.dumps(data))
    return path


def test_help_lists_every_command() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for command in ("serve", "simulate", "accounts", "deploy"):
        assert command in result.stdout


def test_deploy_help_shows_its_options() -> None:
    result = _run("deploy", "--help")
    assert result.returncode == 0
    for option in ("--space", "--private", "--token", "--api-key", "--kiro-token-file"):
        assert option in result.stdout
    assert "--no-wait" in result.stdout


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([])
    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.startswith("ki2api 0.")


# --- serve ------------------------------------------------------------------------------------


def test_serve_options_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import ki2api.server.run

    seen: list[Settings] = []
    monkeypatch.setattr(ki2api.server.run, "serve", seen.append)
    monkeypatch.setenv("PORT", "7000")
    monkeypatch.setenv("API_KEY", "from-env-key-123")
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "9123", "--demo"]) == 0
    (settings,) = seen
    assert (settings.host, settings.port, settings.demo) == ("0.0.0.0", 9123, True)
    assert settings.api_key == "from-env-key-123"

    seen.clear()
    assert cli.main(["serve"]) == 0
    assert (seen[0].host, seen[0].port, seen[0].demo) == ("127.0.0.1", 7000, False)


def test_serve_rejects_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--port", "70000"])
    assert exited.value.code == 2
    assert "not a TCP port" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_serve_demo_answers_on_the_given_port(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        "HOME": str(tmp_path),
        "API_KEY": "cli-test-key-0123",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "ki2api", "serve", "--demo", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        if health is None:
            process.terminate()
            pytest.fail("the server did not answer:\n" + process.communicate(timeout=20)[0][-3000:])
        assert health.status_code == 200
        assert health.json()["demo"] is True
        models = httpx.get(
            f"http://127.0.0.1:{port}/v1/models",
            headers={"Authorization": "Bearer cli-test-key-0123"},
            timeout=5,
        )
        assert models.status_code == 200 and models.json()["data"]
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
    assert f"listening on http://localhost:{port}" in output
    assert "cli-test-key-0123" not in output
    # The embedded simulator leaves uvicorn's own lines about this server alone.
    assert f"Uvicorn running on http://127.0.0.1:{port}" in output
    assert "Shutting down" in output and "Finished server process" in output
    assert output.count("Uvicorn running on") == 1  # not the simulator's port


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_serve_on_a_busy_port_says_so_once(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = _start(["app.py", "--demo", "--port", str(port)], {"HOME": str(tmp_path)})
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in lines[0]
    assert f"--port {port + 1} or PORT={port + 1}" in lines[0]
    assert "listening on" not in output and "Errno" not in output and "Traceback" not in output


@pytest.mark.slow
def test_serve_without_a_login_says_so_everywhere(tmp_path: Path) -> None:
    """No Kiro login: a WARNING with the ways out, /health says so (200), the 503 names them."""
    openai = pytest.importorskip("openai")
    port = _free_port()
    process = _start(["app.py", "--port", str(port)], {"HOME": str(tmp_path), "API_KEY": "k-1"})
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline and process.poll() is None and health is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            except httpx.TransportError:
                time.sleep(0.2)
        assert health is not None, "the server did not answer"
        assert health.status_code == 200 and health.json()["status"] == "no_accounts"
        with (
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k-1") as client,
            pytest.raises(openai.APIStatusError) as failed,
        ):
            client.chat.completions.create(
                model="claude-sonnet-4-6", messages=[{"role": "user", "content": "hi"}]
            )
        assert failed.value.status_code == 503
        assert "--demo" in failed.value.message and "Tokens tab" in failed.value.message
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
    warning = next(line for line in output.splitlines() if "WARNING" in line and "Kiro" in line)
    for way_out in ("--demo", "Tokens tab", "KIRO_ACCESS_TOKEN", "log in to Kiro"):
        assert way_out in warning, warning


# --- simulate ---------------------------------------------------------------------------------


def test_simulate_runs_the_simulator_with_its_own_options() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "ki2api", "simulate", "--port", "0", "--latency-ms", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.strip().rpartition(" ")[2]
        assert line.startswith("Ki2API Kiro simulator listening on http://127.0.0.1:"), line
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    finally:
        process.terminate()
        process.communicate(timeout=20)


def test_simulate_passes_help_to_the_simulator() -> None:
    result = _run("simulate", "--help")
    assert result.returncode == 0 and "--latency-ms" in result.stdout
    assert result.stdout.startswith("usage: ki2api simulate ")
    assert "(default: 9999)" in result.stdout and "(default: 127.0.0.1)" in result.stdout


def test_simulate_on_a_busy_port_says_so_once() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = _run("simulate", "--port", str(taken.getsockname()[1]))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "cannot listen on" in result.stderr and "--port" in result.stderr


def test_other_commands_reject_unknown_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["settings", "--latency-ms", "1"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --latency-ms 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        cli.main(["accounts", "--latency-ms"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --latency-ms" in capsys.readouterr().err


# --- accounts -----------------------------------------------------------------------------------


def test_accounts_lists_the_login_file_masked(
    isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _login_file(isolated_env)
    assert cli.main(["accounts"]) == 0
    out = capsys.readouterr().out
    header, row = out.strip().splitlines()
    assert header.split() == ["ACCOUNT", "SOURCE", "METHOD", "TOKEN", "EXPIRES", "PROXY", "STATE"]
    assert "kiro-login" in row and "social" in row and "healthy" in row
    assert "…91ab" in row and "(in 4" in row  # 41-42 minutes left
    assert ACCESS not in out and REFRESH not in out


def test_accounts_shows_each_proxy_without_its_credentials(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = [
        {"label": "a", "accessToken": "tok-a-000000001"},
        {
            "label": "b",
            "accessToken": "tok-b-000000002",
            "proxy": "socks5h://u:s3cret@10.0.0.9:1080",
        },
    ]
    monkeypatch.setenv("KIRO_ACCOUNTS", json.dumps(accounts))
    monkeypatch.setenv("KIRO_PROXY", "http://10.0.0.8:3128")
    assert cli.main(["accounts"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.strip().splitlines()[1:]}
    assert "default" in rows["a"] and "socks5h://***@10.0.0.9:1080" in rows["b"]
    assert "s3cret" not in out


def test_accounts_without_any_login_says_how_to_add_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["accounts"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("No Kiro account is configured") and "kiro-auth-token.json" in err


def test_accounts_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KIRO_ACCESS_TOKEN", ACCESS)
    assert cli.main(["accounts"]) == 0
    out = capsys.readouterr().out
    assert "…91ab" in out and ACCESS not in out


def test_accounts_command_as_a_subprocess(tmp_path: Path) -> None:
    _login_file(tmp_path)
    result = _run("accounts", env={"HOME": str(tmp_path), "USERPROFILE": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "kiro-login" in result.stdout and ACCESS not in result.stdout


class _RefreshService:
    """A loopback stand-in for Kiro's social refresh endpoint."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[Any] = []
        self.app = Starlette(routes=[Route("/refreshToken", self.refresh, methods=["POST"])])

    async def refresh(self, request: Request) -> JSONResponse:
        self.bodies.append(json.loads(await request.body()))
        if self.status != 200:
            return JSONResponse(
                {"error": "invalid_grant", "message": "Invalid refresh token provided"},
                self.status,
            )
        return JSONResponse({"accessToken": NEW_ACCESS, "expiresIn": 3600})


def test_accounts_refresh_gets_a_new_token_and_writes_it_back(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = _login_file(isolated_env)
    service = _RefreshService()
    with ServerThread(service.app) as server:
        monkeypatch.setenv("KIRO_REFRESH_URL", f"{server.url}/refreshToken")
        assert cli.main(["accounts", "--refresh"]) == 0
    out = capsys.readouterr().out
    assert service.bodies == [{"refreshToken": REFRESH}]
    assert "refreshed kiro-login" in out and "…42cd" in out and NEW_ACCESS not in out
    assert json.loads(token_file.read_text())["accessToken"] == NEW_ACCESS


def test_accounts_refresh_with_a_dead_login_exits_1(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _login_file(isolated_env)
    service = _RefreshService(status=400)
    with ServerThread(service.app) as server:
        monkeypatch.setenv("KIRO_REFRESH_URL", f"{server.url}/refreshToken")
        assert cli.main(["accounts", "--refresh"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("could not refresh kiro-login:")
    assert "needs login" in captured.out
    assert REFRESH not in captured.out + captured.err


# --- accounts added, removed and given a proxy from the CLI ---------------------------------------

CLI_ACCESS = "tok-cli-added-000000001"
CLI_REFRESH = "aorCliAdded-refresh-000001"
PROXY_SECRET = "cli-pr0xy-s3cret"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "data"
    monkeypatch.setenv("DATA_DIR", str(folder))
    return folder


def _account_json(tmp_path: Path, **fields: Any) -> Path:
    path = tmp_path / "account.json"
    path.write_text(json.dumps({"accessToken": CLI_ACCESS, "refreshToken": CLI_REFRESH, **fields}))
    return path


def _served(stack: Stack) -> dict[str, Any]:
    listing = httpx.get(
        f"{stack.url}/admin/accounts", headers={"authorization": f"Bearer {CLI_ADMIN}"}, timeout=10
    )
    return {row["label"]: row for row in listing.json()["data"]}


def _chat(stack: Stack, text: str) -> httpx.Response:
    stack.state.enqueue(text_answer(f"answer to {text}"))
    return httpx.post(
        f"{stack.base_url}/chat/completions",
        headers=stack.headers(),
        json={"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": text}]},
        timeout=20,
    )


CLI_ADMIN = "admin-key-cli-accounts-01"


def test_accounts_added_given_a_proxy_and_removed_by_the_cli_reach_a_running_server(
    stack_factory: StackFactory,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {
        "ADMIN_KEY": CLI_ADMIN,
        "DATA_DIR": str(data_dir),
        "KIRO_ACCESS_TOKEN": "",
        "USAGE_FLUSH_SECONDS": "0.05",  # how often the server looks at the file
    }
    stack = stack_factory(env)
    assert _served(stack) == {}
    with (
        Socks5Proxy(username="bob", password=PROXY_SECRET) as socks,
        HttpConnectProxy(username="alice", password=PROXY_SECRET) as http,
    ):
        added = ["accounts", "add", "--label", "c1", "--proxy", socks.url]
        assert cli.main([*added, "--json", str(_account_json(tmp_path))]) == 0
        out = capsys.readouterr().out
        masked_socks = f"socks5h://***@127.0.0.1:{socks.port}"
        assert "c1" in out and "cli" in out and masked_socks in out and "…0001" in out
        eventually(lambda: "c1" in _served(stack))  # no restart
        assert _served(stack)["c1"]["proxy"] == masked_socks
        assert _chat(stack, "through-socks").status_code == 200
        assert any(b"Bearer " + CLI_ACCESS.encode() in t.sent for t in socks.tunnels)

        assert cli.main(["accounts", "proxy", "c1", http.url]) == 0
        masked_http = f"http://***@127.0.0.1:{http.port}"
        assert masked_http in capsys.readouterr().out
        eventually(lambda: _served(stack)["c1"]["proxy"] == masked_http)
        assert _chat(stack, "through-http").status_code == 200
        assert any(b"through-http" in t.sent for t in http.tunnels)
        assert not any(b"through-http" in t.sent for t in socks.tunnels)

        assert cli.main(["accounts"]) == 0  # the listing shows both, masked
        listing = capsys.readouterr().out
        (row,) = [line for line in listing.splitlines() if line.startswith("c1 ")]
        assert f"{masked_http} (set at run time)" in row and "cli" in row

        assert cli.main(["accounts", "proxy", "c1", "configured"]) == 0
        eventually(lambda: _served(stack)["c1"]["proxy"] == masked_socks)
        assert cli.main(["accounts", "proxy", "c1", "default"]) == 0  # KIRO_PROXY: none here
        eventually(lambda: _served(stack)["c1"]["proxy"] is None)

        assert cli.main(["accounts", "remove", "c1"]) == 0
        assert "removed c1" in capsys.readouterr().out
        eventually(lambda: _served(stack) == {})
        assert _chat(stack, "nobody-left").status_code == 503
    everything = capsys.readouterr()
    for shown in (out, listing, everything.out, everything.err):
        assert CLI_ACCESS not in shown and CLI_REFRESH not in shown and PROXY_SECRET not in shown


def test_accounts_add_takes_a_login_file_or_stdin_never_a_token_argument(
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    login = _login_file(tmp_path / "elsewhere")
    assert cli.main(["accounts", "add", "--label", "f", "--token-file", str(login)]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("ksk_cli_pasted_key_000000042\n"))
    assert cli.main(["accounts", "add", "--json", "-", "--proxy", "direct"]) == 0
    out = capsys.readouterr().out
    assert "f " in out and "…91ab" in out and "api_key" in out and "direct" in out
    assert cli.main(["accounts"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) == {"f", "added"} and f"file:{login}" in rows["f"]
    assert "ksk_cli_pasted_key_000000042" not in str(rows) and ACCESS not in str(rows)

    with pytest.raises(SystemExit):  # no such option: tokens stay off the command line
        cli.main(["accounts", "add", "--token", ACCESS])
    with pytest.raises(SystemExit):  # a login file or JSON is required
        cli.main(["accounts", "add", "--label", "x"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"accessToken": "tok-bad-0000000001", "proxy": "ftp://u:pw@h:21"}))
    assert cli.main(["accounts", "add", "--json", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "proxy" in err and "tok-bad-0000000001" not in err and "pw@" not in err
    bad.write_text("[1, 2]")
    assert cli.main(["accounts", "add", "--json", str(bad)]) == 1
    assert "an account's fields" in capsys.readouterr().err
    assert cli.main(["accounts", "add", "--json", str(tmp_path / "missing.json")]) == 1
    assert "cannot read" in capsys.readouterr().err
    again = ["accounts", "add", "--label", "f", "--json", str(_account_json(tmp_path))]
    assert cli.main(again) == 1
    assert "exists" in capsys.readouterr().err


def test_accounts_remove_refuses_a_configured_account_and_says_where_it_is(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KIRO_ACCOUNTS", json.dumps([{"label": "k", "accessToken": ACCESS}]))
    assert cli.main(["accounts", "remove", "k"]) == 1
    err = capsys.readouterr().err
    assert "configured in KIRO_ACCOUNTS[0]" in err and "remove it there" in err
    assert cli.main(["accounts", "remove", "nobody"]) == 1
    assert "no account labelled 'nobody'" in capsys.readouterr().err
    # A configured account's proxy may be set, kept, and set back.
    assert cli.main(["accounts", "proxy", "k", "socks5://10.0.0.9:1080"]) == 0
    assert cli.main(["accounts"]) == 0
    assert "socks5://10.0.0.9:1080 (set at run time)" in capsys.readouterr().out
    assert cli.main(["accounts", "proxy", "k", "configured"]) == 0
    assert cli.main(["accounts"]) == 0
    assert "(set at run time)" not in capsys.readouterr().out
    assert cli.main(["accounts", "--refresh", "remove", "k"]) == 2
