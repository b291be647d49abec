"""The deployment files say what the docs promise: the Space front matter, the Docker files and
the GitHub workflows are parsed and checked for their key facts (no Docker engine or GitHub
runner is needed), and a Space without an API_KEY secret refuses to serve its API."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gradio
import httpx
import pytest
import yaml

from ki2api.deploy.files import is_excluded, space_files

ROOT = Path(__file__).resolve().parent.parent


def _front_matter() -> dict[str, Any]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "README.md must start with the Space's YAML front matter"
    data = yaml.safe_load(match.group(1))
    assert isinstance(data, dict)
    return data


def _gradio_pin() -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"gradio==([\w.]+)(?:\s|$)", line)  # hashed lines end with a backslash
        if match:
            return match.group(1)
    raise AssertionError("requirements.txt must pin gradio==X.Y.Z")


def _yaml(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


# --- the Hugging Face Space -----------------------------------------------------------------


def test_readme_front_matter_configures_a_gradio_space() -> None:
    meta = _front_matter()
    for key in ("title", "emoji", "short_description", "license"):
        assert isinstance(meta.get(key), str) and meta[key], key
    assert meta["sdk"] == "gradio"
    assert meta["app_file"] == "app.py" and (ROOT / "app.py").is_file()
    assert len(meta["short_description"]) <= 60  # the Hub's limit


def test_space_versions_match_what_is_installed_and_pinned() -> None:
    meta = _front_matter()
    assert str(meta["sdk_version"]) == gradio.__version__ == _gradio_pin()
    assert isinstance(meta["python_version"], str)  # unquoted 3.10 would read as 3.1
    assert tuple(int(part) for part in meta["python_version"].split(".")[:2]) >= (3, 11)


def test_space_upload_holds_the_app_and_nothing_secret() -> None:
    files = space_files(ROOT)
    assert {"app.py", "README.md", "requirements.txt", "ki2api/__init__.py"} <= set(files)
    assert any(path.startswith("ki2api/simulator/") for path in files)  # demo mode needs it
    assert not [p for p in files if p.startswith(("tests/", ".venv/", ".git/", "bench/"))]
    for secret in (".env", "kiro-auth-token.json", "ki2api/x/kiro-auth-token.json", "a/key.pem"):
        assert is_excluded(secret), secret
    assert not is_excluded("ki2api/kiro/accounts/credentials.py")


# --- Docker -------------------------------------------------------------------------------------


def _dockerfile() -> list[str]:
    """Instructions with continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_dockerfile_key_facts() -> None:
    lines = _dockerfile()
    assert lines[0].startswith("FROM python:3.11-slim")
    assert any(
        line.startswith("RUN pip install --require-hashes --no-deps -r requirements.txt")
        for line in lines
    )
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1] != "USER root"
    assert "EXPOSE 8989" in lines
    env = " ".join(line for line in lines if line.startswith("ENV "))
    assert "HOST=0.0.0.0" in env and "PORT=8989" in env and "HOME=/home/ki2api" in env
    health = next(line for line in lines if line.startswith("HEALTHCHECK"))
    assert "urllib.request" in health and "/health" in health and "curl" not in health
    assert lines[-1] == 'CMD ["python", "app.py"]'
    for copied in ("requirements.txt", "app.py", "ki2api"):
        assert any(line.startswith("COPY") and copied in line for line in lines), copied


def test_healthcheck_command_is_valid_python() -> None:
    health = next(line for line in _dockerfile() if line.startswith("HEALTHCHECK"))
    code = re.search(r'"-c", "(.*)"\]', health)
    assert code
    compile(code.group(1), "<healthcheck>", "exec")


def test_compose_mounts_the_kiro_login_read_write_and_needs_api_key() -> None:
    service = _yaml("docker-compose.yml")["services"]["ki2api"]
    assert service["build"] == "."
    assert any(str(port).endswith("8989:8989") for port in service["ports"])
    assert service["environment"]["API_KEY"].startswith("${API_KEY:?")
    login, data = service["volumes"]
    source, target, *mode = login.split(":")
    assert source == "${HOME}/.aws/sso/cache"
    assert target == "/home/ki2api/.aws/sso/cache"  # the image's non-root user's home
    assert mode in ([], ["rw"])  # read-write: refreshed tokens are written back
    # DATA_DIR's default for that user (keys, usage), on a named volume: kept across restarts
    name, target = data.split(":")
    assert target == "/home/ki2api/.local/share/ki2api"
    assert name in _yaml("docker-compose.yml")["volumes"]


def test_dockerignore_keeps_secrets_and_clutter_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for needed in (".git", ".venv", "tests", ".env", "**/kiro-auth-token*.json", "**/*.pem"):
        assert needed in patterns, needed
    assert "ki2api" not in patterns and "requirements.txt" not in patterns


# --- GitHub workflows -----------------------------------------------------------------------


def _on(workflow: dict[Any, Any]) -> Any:
    return workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True


def test_ci_runs_the_test_script_on_push_and_pull_request() -> None:
    workflow = _yaml(".github/workflows/ci.yml")
    assert {"push", "pull_request"} <= set(_on(workflow))
    (job,) = workflow["jobs"].values()
    assert "3.11" in str(job.get("container", "")) + str(job["steps"])
    runs = [step.get("run", "") for step in job["steps"]]
    assert "bash .ci/run" in runs
    assert (ROOT / ".ci" / "run").is_file()


def test_space_sync_runs_on_main_and_skips_without_its_settings() -> None:
    workflow = _yaml(".github/workflows/sync-space.yml")
    assert _on(workflow)["push"]["branches"] == ["main"]
    (job,) = workflow["jobs"].values()
    assert job["if"].replace(" ", "") == "${{vars.HF_SPACE!=''}}"
    check, *rest = job["steps"]
    assert "secrets.HF_TOKEN" in check["env"]["HF_TOKEN"] and "present=false" in check["run"]
    assert all(step["if"] == "steps.token.outputs.present == 'true'" for step in rest)
    upload = rest[-1]["run"]
    assert upload.startswith("python -m ki2api deploy") and "--code-only" in upload


# --- a Space without an API_KEY secret --------------------------------------------------------


@pytest.fixture
def space_app_url(monkeypatch: pytest.MonkeyPatch) -> Any:
    from ki2api.app import create_app
    from ki2api.settings import Settings
    from tests.servers import ServerThread

    def start(env: dict[str, str]) -> ServerThread:
        settings = Settings.from_env({"SPACE_ID": "alice/ki2api", "KI2API_DEMO": "1", **env})
        return ServerThread(create_app(settings, with_ui=False))

    return start


def test_space_without_api_key_refuses_with_setup_steps(space_app_url: Any) -> None:
    with space_app_url({}) as server:
        answer = httpx.get(
            f"{server.url}/v1/models", headers={"Authorization": "Bearer ki2api-key-2024"}
        )
    assert answer.status_code == 503
    assert "API_KEY" in answer.text and "secret" in answer.text


def test_space_with_api_key_serves(space_app_url: Any) -> None:
    with space_app_url({"API_KEY": "space-key-0123456789"}) as server:
        answer = httpx.get(
            f"{server.url}/v1/models", headers={"Authorization": "Bearer space-key-0123456789"}
        )
    assert answer.status_code == 200
    assert answer.json()["data"]


# --- the documented commands exist ------------------------------------------------------------


@pytest.mark.parametrize("doc", ["README.md", "docs/deploy.md"])
def test_documented_ki2api_commands_parse(doc: str) -> None:
    import shlex

    from ki2api.cli import build_parser

    text = (ROOT / doc).read_text(encoding="utf-8")
    commands = re.findall(r"python -m ki2api ([^`#\n]*)", text)
    assert commands
    for command in commands:
        command = re.sub(r"\s[<>]\s*\S+", "", command)  # the shell's redirections
        args = shlex.split(command.replace("...", "x").replace("$(id -u)", "1000"))
        build_parser().parse_args(args)  # exits (fails the test) on an unknown command/option
