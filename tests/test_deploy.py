"""``ki2api deploy`` against a fake Hugging Face Hub on a loopback uvicorn server
(tests/fake_hub.py), which records every call so the tests can check the arguments."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ki2api.cli import main
from ki2api.deploy.files import space_files
from ki2api.deploy.space import DeployError, DeployOptions, deploy, space_host
from tests.fake_hub import GOOD_TOKEN, FakeHub, FakeRepo, running_hub

REPO_ROOT = Path(__file__).resolve().parent.parent
REFRESH = "aorAAAAAGrefresh-token-value-7d1c"
ACCESS = "aoaAAAAAGaccess-token-value-91ab"


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with running_hub() as state:
        yield state


@pytest.fixture
def no_stored_hf_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home directory holding a social Kiro login."""
    cache = tmp_path / "home" / ".aws" / "sso" / "cache"
    cache.mkdir(parents=True)
    (cache / "kiro-auth-token.json").write_text(
        json.dumps(
            {
                "accessToken": ACCESS,
                "refreshToken": REFRESH,
                "expiresAt": "2030-01-01T00:00:00.000Z",
                "profileArn": "arn:aws:codewhisperer:us-east-1:123456789012:profile/TEST",
                "authMethod": "social",
                "provider": "Github",
                "region": "us-east-1",
            }
        )
    )
    return tmp_path / "home"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of what matters in a checkout, plus the clutter that must never be uploaded."""
    root = tmp_path / "checkout"
    for name in space_files(REPO_ROOT):
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO_ROOT / name).read_bytes())
    if not (root / "app.py").exists():  # the app may not be written yet in this checkout
        (root / "app.py").write_text("print('ki2api')\n")
    for junk in (
        ".env",
        "kiro-auth-token.json",
        "ki2api/kiro-auth-token.json",
        "ki2api/server.pem",
        "ki2api/__pycache__/x.cpython-311.pyc",
        "tests/test_x.py",
        ".venv/lib/site.py",
        ".git/config",
        "docs/deploy.md",
    ):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("junk\n")
    return root


def _options(hub: FakeHub, checkout: Path, **overrides: Any) -> DeployOptions:
    values: dict[str, Any] = dict(
        space="alice/my_gateway",
        token=GOOD_TOKEN,
        endpoint=hub.url,
        root=checkout,
        poll_interval=0.01,
        timeout=10.0,
    )
    values.update(overrides)
    return DeployOptions(**values)


def _env(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "USERPROFILE": str(home)}


def test_space_host_follows_the_hf_space_naming() -> None:
    assert space_host("Alice/My_Gateway.v2") == "alice-my-gateway-v2.hf.space"


def test_deploy_creates_the_space_sets_secrets_uploads_and_waits(
    hub: FakeHub, checkout: Path, home: Path
) -> None:
    lines: list[str] = []
    result = deploy(_options(hub, checkout, private=True), env=_env(home), say=lines.append)

    # create_repo: a private Gradio Space under alice
    create = next(p for m, path, p in hub.calls if path == "/api/repos/create")
    assert create == {
        "name": "my_gateway",
        "organization": "alice",
        "visibility": "private",
        "type": "space",
        "sdk": "gradio",
    }
    space = hub.spaces["alice/my_gateway"]

    # secrets: the Kiro login plus a generated API key
    assert space.secrets["KIRO_REFRESH_TOKEN"] == REFRESH
    assert space.secrets["KIRO_ACCESS_TOKEN"] == ACCESS
    assert space.secrets["KIRO_AUTH_METHOD"] == "social"
    assert space.secrets["KIRO_REGION"] == "us-east-1"
    assert space.secrets["KIRO_PROFILE_ARN"].endswith(":profile/TEST")
    assert "KIRO_CLIENT_SECRET" not in space.secrets
    api_key = space.secrets["API_KEY"]
    assert result.api_key == api_key and len(api_key) >= 40

    # upload: the app and its package, nothing secret and no clutter
    uploaded = set(space.files) - {".gitattributes"}
    assert {"app.py", "README.md", "requirements.txt", "ki2api/__init__.py"} <= uploaded
    assert "ki2api/deploy/space.py" in uploaded
    assert all(not p.startswith(("tests/", ".venv/", ".git/", "docs/")) for p in uploaded)
    assert all(
        "kiro-auth-token" not in p and not p.endswith((".pem", ".pyc", ".env")) for p in uploaded
    )
    assert ".env" not in uploaded
    assert all(
        REFRESH.encode() not in body and ACCESS.encode() not in body
        for body in space.files.values()
    )
    assert space.files["app.py"] == (checkout / "app.py").read_bytes()

    # order: whoami, create, secrets, upload, runtime until RUNNING on the new commit
    order = [p for p in hub.paths() if not p.endswith(("validate-yaml", "preupload/main"))]
    assert order[0] == "GET /api/whoami-v2"
    assert order[1] == "POST /api/repos/create"
    first_upload = order.index("POST /api/spaces/alice/my_gateway/commit/main")
    assert max(i for i, p in enumerate(order) if p.endswith("/secrets")) < first_upload
    assert order[-3:] == ["GET /api/spaces/alice/my_gateway/runtime"] * 3
    assert result.stage == "RUNNING"

    # output: progress, the key exactly once, the base URL and a test command
    text = "\n".join(lines)
    assert text.count(api_key) == 1
    assert REFRESH not in text and ACCESS not in text and GOOD_TOKEN not in text
    assert "https://alice-my-gateway.hf.space/v1" in text
    assert "curl https://alice-my-gateway.hf.space/v1/chat/completions" in text
    assert "building" in text and "running" in text
    assert result.base_url == "https://alice-my-gateway.hf.space/v1"


def test_redeploy_keeps_the_api_key_and_removes_stale_modules(
    hub: FakeHub, checkout: Path, home: Path
) -> None:
    first = deploy(_options(hub, checkout), env=_env(home), say=lambda _: None)
    space = hub.spaces["alice/my_gateway"]
    space.files["ki2api/old_module.py"] = b"gone = True\n"
    hub.stages = ["RUNNING_BUILDING", "RUNNING"]
    lines: list[str] = []
    hub.space_host = "https://alice-my-gateway.hf.space"
    second = deploy(_options(hub, checkout), env=_env(home), say=lines.append)
    assert second.base_url == "https://alice-my-gateway.hf.space/v1"
    assert "Updating the existing Space alice/my_gateway." in lines
    assert second.api_key is None and space.secrets["API_KEY"] == first.api_key
    assert "ki2api/old_module.py" not in space.files
    assert ".gitattributes" in space.files  # files outside the package are left alone
    assert len(space.commits) == 2 and first.api_key not in "\n".join(lines)

    third = deploy(_options(hub, checkout, new_api_key=True), env=_env(home), say=lambda _: None)
    assert third.api_key and third.api_key != first.api_key
    assert space.secrets["API_KEY"] == third.api_key


def test_code_only_touches_no_secret_and_needs_no_kiro_login(
    hub: FakeHub, checkout: Path, tmp_path: Path
) -> None:
    result = deploy(
        _options(hub, checkout, code_only=True, wait=False),
        env={"HOME": str(tmp_path / "empty")},
        say=lambda _: None,
    )
    assert result.api_key is None and result.stage is None
    assert not any(path.endswith("/secrets") for _, path, _ in hub.calls)
    assert not any(path.endswith("/runtime") for _, path, _ in hub.calls)
    assert "app.py" in hub.spaces["alice/my_gateway"].files


def test_idc_login_ships_the_client_from_the_file_beside_it(
    hub: FakeHub, checkout: Path, home: Path
) -> None:
    cache = home / ".aws" / "sso" / "cache"
    token_file = cache / "kiro-auth-token.json"
    data = json.loads(token_file.read_text())
    data.update(authMethod="IdC", provider="BuilderId", clientIdHash="abc123")
    token_file.write_text(json.dumps(data))
    (cache / "abc123.json").write_text(
        json.dumps({"clientId": "client-id-1", "clientSecret": "client-secret-value-xyz"})
    )
    deploy(_options(hub, checkout, wait=False), env=_env(home), say=lambda _: None)
    secrets = hub.spaces["alice/my_gateway"].secrets
    assert secrets["KIRO_AUTH_METHOD"] == "idc"
    assert secrets["KIRO_CLIENT_ID"] == "client-id-1"
    assert secrets["KIRO_CLIENT_SECRET"] == "client-secret-value-xyz"


def test_given_api_key_and_token_file_options_are_used(
    hub: FakeHub, checkout: Path, home: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "login.json"
    elsewhere.write_text(
        json.dumps({"refreshToken": "other-refresh-token-0000", "authMethod": "social"})
    )
    deploy(
        _options(hub, checkout, api_key="my-own-key-123456", kiro_token_file=elsewhere, wait=False),
        env=_env(tmp_path / "nobody"),
        say=lambda _: None,
    )
    secrets = hub.spaces["alice/my_gateway"].secrets
    assert secrets["API_KEY"] == "my-own-key-123456"
    assert secrets["KIRO_REFRESH_TOKEN"] == "other-refresh-token-0000"


def test_login_from_the_environment_wins_over_the_default_file(
    hub: FakeHub, checkout: Path, home: Path, tmp_path: Path
) -> None:
    accounts = tmp_path / "accounts.json"
    accounts.write_text('[{"label": "a", "refreshToken": "accounts-file-refresh-0001"}]')
    env = {**_env(home), "KIRO_ACCOUNTS": str(accounts), "KIRO_REFRESH_TOKEN": "env-refresh-01234"}
    lines: list[str] = []
    deploy(_options(hub, checkout, wait=False), env=env, say=lines.append)
    secrets = hub.spaces["alice/my_gateway"].secrets
    assert secrets["KIRO_ACCOUNTS"] == accounts.read_text()  # the JSON, not a local path
    assert secrets["KIRO_REFRESH_TOKEN"] == "env-refresh-01234"
    assert "KIRO_ACCESS_TOKEN" not in secrets  # nothing from the login file
    assert any("the environment (KIRO_ACCOUNTS, KIRO_REFRESH_TOKEN)" in line for line in lines)


def test_kiro_api_key_login_needs_no_refresh_token(
    hub: FakeHub, checkout: Path, tmp_path: Path
) -> None:
    login = tmp_path / "key.json"
    login.write_text('{"accessToken": "ksk_0123456789abcdef"}')
    deploy(
        _options(hub, checkout, wait=False, kiro_token_file=login),
        env={"HOME": str(tmp_path)},
        say=lambda _: None,
    )
    secrets = hub.spaces["alice/my_gateway"].secrets
    assert secrets["KIRO_ACCESS_TOKEN"] == "ksk_0123456789abcdef"
    assert "KIRO_REFRESH_TOKEN" not in secrets


def test_deploy_through_the_cli_prints_progress_and_exits_0(
    hub: FakeHub, checkout: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    code = main(["deploy", "--space", "my_gateway", "--no-wait", "--source", str(checkout)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "signed in as alice; Space: alice/my_gateway" in out
    assert "Uploading" in out and "export KI2API_KEY=" in out
    assert hub.spaces["alice/my_gateway"].secrets["API_KEY"] in out


# --- failures: one sentence, exit code 1, no traceback ----------------------------------------


def _fails(hub: FakeHub, checkout: Path, env: dict[str, str], **overrides: Any) -> str:
    with pytest.raises(DeployError) as caught:
        deploy(_options(hub, checkout, **overrides), env=env, say=lambda _: None)
    message = str(caught.value)
    assert "\n" not in message and message.endswith(".")
    return message


def test_no_hf_token(hub: FakeHub, checkout: Path, home: Path, no_stored_hf_token: None) -> None:
    message = _fails(hub, checkout, _env(home), token=None)
    assert message.startswith("No Hugging Face token found")
    assert "hf auth login" in message and not hub.calls


def test_rejected_hf_token(hub: FakeHub, checkout: Path, home: Path) -> None:
    message = _fails(hub, checkout, _env(home), token="hf_wrong")
    assert "refused the token" in message and "hf_wrong" not in message


def test_read_only_token(hub: FakeHub, checkout: Path, home: Path) -> None:
    hub.role = "read"
    assert "read-only" in _fails(hub, checkout, _env(home))
    assert "POST /api/repos/create" not in hub.paths()


def test_namespace_of_someone_else(hub: FakeHub, checkout: Path, home: Path) -> None:
    message = _fails(hub, checkout, _env(home), space="bob/gateway")
    assert "not a member of bob" in message and "--space alice/gateway" in message


@pytest.mark.parametrize(
    ("status", "words"),
    [(403, "may not write"), (402, "paid plan"), (500, "answered 500")],
)
def test_create_refused(hub: FakeHub, checkout: Path, home: Path, status: int, words: str) -> None:
    hub.create_status = status
    message = _fails(hub, checkout, _env(home))
    assert words in message
    assert not any(path.endswith("/secrets") for _, path, _ in hub.calls)


def test_name_taken_by_a_space_of_another_kind(hub: FakeHub, checkout: Path, home: Path) -> None:
    hub.spaces["alice/my_gateway"] = FakeRepo(private=False, sdk="docker")
    message = _fails(hub, checkout, _env(home))
    assert "taken by a docker Space" in message
    assert not any(path.endswith(("/secrets", "/commit/main")) for _, path, _ in hub.calls)


def test_no_kiro_login(hub: FakeHub, checkout: Path, tmp_path: Path) -> None:
    message = _fails(hub, checkout, {"HOME": str(tmp_path / "nobody")})
    assert message.startswith("No Kiro login found at")
    assert "--kiro-token-file" in message
    assert "POST /api/repos/create" not in hub.paths()  # nothing half-created


def test_idc_login_without_its_client_file(hub: FakeHub, checkout: Path, home: Path) -> None:
    token_file = home / ".aws" / "sso" / "cache" / "kiro-auth-token.json"
    data = json.loads(token_file.read_text())
    data.update(authMethod="IdC", clientIdHash="missing")
    token_file.write_text(json.dumps(data))
    assert "missing.json is missing" in _fails(hub, checkout, _env(home))


def test_hub_unreachable(checkout: Path, home: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(DeployError) as caught:
        deploy(
            DeployOptions(space="alice/x", token=GOOD_TOKEN, endpoint=closed, root=checkout),
            env=_env(home),
            say=lambda _: None,
        )
    assert str(caught.value).startswith(f"Cannot reach {closed}")


def test_space_that_fails_to_build(hub: FakeHub, checkout: Path, home: Path) -> None:
    hub.stages = ["BUILDING", "BUILD_ERROR"]
    message = _fails(hub, checkout, _env(home))
    assert "BUILD_ERROR (ModuleNotFoundError: No module named 'nope')" in message
    assert "?logs=container" in message


def test_space_that_does_not_start_in_time(hub: FakeHub, checkout: Path, home: Path) -> None:
    hub.stages = ["BUILDING"]
    message = _fails(hub, checkout, _env(home), timeout=0.1)
    assert "still building" in message and "--timeout" in message


def test_a_token_inside_an_uploaded_file_stops_the_upload(
    hub: FakeHub, checkout: Path, home: Path
) -> None:
    (checkout / "ki2api" / "notes.txt").write_text(f"my token: {REFRESH}\n")
    message = _fails(hub, checkout, _env(home))
    assert message.startswith("ki2api/notes.txt contains one of your tokens")
    assert "POST /api/repos/create" not in hub.paths()


def test_cli_failure_is_one_line_on_stderr(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, no_stored_hf_token: None
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    code = main(["deploy", "--space", "alice/x", "--endpoint", hub.url])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.startswith("error: No Hugging Face token found") and err.count("\n") == 1
    assert "Traceback" not in out + err
