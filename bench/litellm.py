"""LiteLLM's proxy as the comparison gateway: installed from PyPI into its own virtualenv
(``bench/.venvs/litellm``, git-ignored) by the benchmark itself, configured to front the
simulator's OpenAI-compatible endpoint with the same latency and cadence Ki2API sees.

Anything that goes wrong here raises :class:`Unavailable` with the reason, and the benchmark
runs everything else and says so in its output and in the doc.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.procs import Proc, StartError, free_port, spawn, wait_http

VENV = Path(__file__).resolve().parent / ".venvs" / "litellm"
MASTER_KEY = "sk-bench-master-key-0123456789"
MODEL = "bench-model"
INSTALL_TIMEOUT = 20 * 60
START_TIMEOUT = 120


class Unavailable(Exception):
    """LiteLLM could not be installed or started here."""


def _bin(name: str) -> Path:
    return VENV / "bin" / name


def ensure_installed(log_dir: Path) -> str:
    """Install ``litellm[proxy]`` once; return its version."""
    if not _bin("litellm").exists():
        log = log_dir / "litellm-install.log"
        print(f"installing litellm[proxy] into {VENV} (once; log: {log}) ...", flush=True)
        try:
            with log.open("wb") as install_log:
                if not _bin("python").exists():
                    subprocess.run(
                        [sys.executable, "-m", "venv", str(VENV)],
                        check=True,
                        stdout=install_log,
                        stderr=subprocess.STDOUT,
                        timeout=300,
                    )
                subprocess.run(
                    [str(_bin("pip")), "install", "-q", "litellm[proxy]"],
                    check=True,
                    stdout=install_log,
                    stderr=subprocess.STDOUT,
                    timeout=INSTALL_TIMEOUT,
                )
        except (OSError, subprocess.SubprocessError) as exc:
            tail = "\n".join(
                line
                for line in log.read_text(errors="replace").splitlines()[-20:]
                if "is ignored" not in line
            )
            raise Unavailable(f"pip install 'litellm[proxy]' failed ({exc}):\n{tail}") from exc
    try:
        probe = subprocess.run(
            [
                str(_bin("python")),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"litellm is installed but does not import: {exc}") from exc
    return str(probe.stdout).strip()


def write_config(log_dir: Path, upstream: str) -> Path:
    path = log_dir / "litellm-config.yaml"
    path.write_text(
        f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/claude-sonnet-4.5
      api_base: {upstream}/v1
      api_key: sk-dummy-simulator-key
litellm_settings:
  telemetry: false
general_settings:
  master_key: {MASTER_KEY}
"""
    )
    return path


def start(log_dir: Path, upstream: str) -> Proc:
    """Start the proxy (one worker, its defaults otherwise) and wait until it answers."""
    port = free_port()
    config = write_config(log_dir, upstream)
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the cost map at start
        "LITELLM_TELEMETRY": "False",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    argv = [str(_bin("litellm")), "--config", str(config), "--host", "127.0.0.1"]
    proc = spawn("litellm", [*argv, "--port", str(port)], log_dir, env)
    proc.url = f"http://127.0.0.1:{port}"
    try:
        wait_http(proc, f"{proc.url}/health/liveliness", START_TIMEOUT)
    except StartError as exc:
        proc.stop()
        raise Unavailable(f"the LiteLLM proxy did not start: {exc}") from exc
    return proc
