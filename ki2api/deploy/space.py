"""``ki2api deploy``: create or update a Hugging Face Space running this checkout.

Steps, each announced as it happens: check the HF token (``whoami``), read the local Kiro login,
create the Gradio Space (``exist_ok``), set its secrets (the ``KIRO_*`` login and ``API_KEY``),
upload the app (:mod:`ki2api.deploy.files` decides what), then poll the Space's runtime until it
is ``RUNNING`` and print the base URL and a test command.

Every failure is a :class:`DeployError` whose message is one sentence saying what to do; the
CLI prints it and exits 1. ``huggingface_hub`` errors are translated here and nowhere else.
"""

from __future__ import annotations

import os
import re
import secrets as secrets_module
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

from ki2api import __version__

try:  # huggingface_hub 2.x talks through httpx2, 1.x through httpx
    from httpx2 import TransportError
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    from httpx import TransportError  # type: ignore[assignment]
from ki2api.deploy.files import find_leaked_secrets, space_files
from ki2api.deploy.kiro import KiroLoginError, kiro_login

DEFAULT_ENDPOINT = "https://huggingface.co"
TOKENS_PAGE = "https://huggingface.co/settings/tokens"
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
# Stages after which waiting longer will not help.
_FAILED_STAGES = {"BUILD_ERROR", "RUNTIME_ERROR", "CONFIG_ERROR", "PAUSED", "STOPPED", "DELETING"}

# Secrets that are not secret on their own: shown in full in the progress lines.
_PLAIN_SECRETS = {"KIRO_AUTH_METHOD", "KIRO_REGION"}

Say = Callable[[str], None]


class DeployError(Exception):
    """A deploy step failed; ``str(error)`` is the one sentence to show the user."""


@dataclass(frozen=True, slots=True)
class DeployOptions:
    space: str  # OWNER/NAME, or NAME for a Space under the token's own user
    private: bool = False
    token: str | None = None
    api_key: str | None = None
    new_api_key: bool = False
    kiro_token_file: Path | None = None
    code_only: bool = False  # upload the app only; leave the Space's secrets alone
    wait: bool = True
    timeout: float = 900.0
    poll_interval: float = 5.0
    settle: float = 30.0  # without a runtime sha: how long RUNNING must last to count
    endpoint: str | None = None
    root: Path = field(default_factory=lambda: Path(__file__).resolve().parent.parent)


@dataclass(frozen=True, slots=True)
class DeployResult:
    repo_id: str
    space_url: str
    base_url: str
    api_key: str | None  # the key set by this run, None when the Space's key was kept
    stage: str | None  # the last runtime stage seen (None with wait=False)


def space_host(repo_id: str) -> str:
    """The Space's own host: ``Owner/My_Space.v2`` → ``owner-my-space-v2.hf.space``."""
    return re.sub(r"[/_.]", "-", repo_id.lower()) + ".hf.space"


def mask(value: str) -> str:
    return "…" + value[-4:] if len(value) > 8 else "…"


@contextmanager
def _hub(doing: str, repo_id: str, endpoint: str) -> Iterator[None]:
    """Translate ``huggingface_hub`` failures during ``doing`` into one-sentence errors."""
    try:
        yield
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        owner = repo_id.partition("/")[0]
        if status == 401:
            message = (
                f"Hugging Face refused the token while {doing} (invalid or expired): "
                f"create a new write token at {TOKENS_PAGE} and pass it with --token."
            )
        elif status == 402:
            message = (
                f"Hugging Face asks for a paid plan while {doing}: enable billing or a PRO "
                f"subscription for {owner}, or deploy under an account that has one."
            )
        elif status == 403:
            message = (
                f"Your token may not write to {repo_id} ({doing}): use a token with write "
                f"access to {owner} ({TOKENS_PAGE}), or choose a Space name you own."
            )
        elif status == 409:
            message = (
                f"The name {repo_id} is taken by a repository you cannot use as this Space: "
                "pick another --space name."
            )
        elif status == 404:
            message = (
                f"Hugging Face says {repo_id} does not exist or is not visible to your token "
                f"({doing}): check the --space name and the token's permissions."
            )
        else:
            message = (
                f"Hugging Face answered {status} while {doing}: try again in a minute, "
                "or check https://status.huggingface.co."
            )
        raise DeployError(message) from exc
    except (KeyError, ValueError) as exc:
        # huggingface_hub raises these for answers it cannot read, or README front matter
        # the Hub rejects (create_commit validates it first).
        first_line = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise DeployError(
            f"Hugging Face gave an answer ki2api cannot use while {doing} "
            f"({exc.__class__.__name__}: {first_line}): check README.md and try again."
        ) from exc
    except (TransportError, OSError) as exc:
        raise DeployError(
            f"Cannot reach {endpoint} while {doing} ({exc.__class__.__name__}): check your "
            "internet connection or proxy (HTTPS_PROXY) and run the command again."
        ) from exc


def resolve_token(explicit: str | None, env: Mapping[str, str]) -> str:
    token = explicit or env.get("HF_TOKEN")
    if not token:
        try:
            token = get_token()
        except LocalTokenNotFoundError:
            token = None
    if not token:
        raise DeployError(
            f"No Hugging Face token found: create a write token at {TOKENS_PAGE}, then run "
            "`hf auth login`, set HF_TOKEN, or pass --token."
        )
    return token


def _repo_id(space: str, user: str, orgs: set[str], role: str | None) -> str:
    owner, _, name = space.rpartition("/")
    owner = owner or user
    if not _NAME.match(owner) or not _NAME.match(name):
        raise DeployError(
            f"{space!r} is not a valid Space name: use OWNER/NAME with letters, digits, "
            "'-', '_' or '.' (for example --space {user}/ki2api)."
        )
    if owner != user and owner not in orgs:
        raise DeployError(
            f"Your token belongs to {user}, who is not a member of {owner}: use "
            f"--space {user}/{name}, or a token of an account that can write to {owner}."
        )
    if role == "read":
        raise DeployError(
            f"Your Hugging Face token is read-only: create a token with write access at "
            f"{TOKENS_PAGE} and pass it with --token."
        )
    return f"{owner}/{name}"


def _test_command(base_url: str, private: bool) -> str:
    auth = (
        '-H "Authorization: Bearer $HF_TOKEN" -H "x-api-key: $KI2API_KEY"'
        if private
        else '-H "Authorization: Bearer $KI2API_KEY"'
    )
    body = '{"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "Hello"}]}'
    return (
        f"curl {base_url}/chat/completions {auth} -H \"Content-Type: application/json\" -d '{body}'"
    )


class _Deployer:
    def __init__(self, options: DeployOptions, env: Mapping[str, str], say: Say) -> None:
        self.options = options
        self.env = env
        self.say = say
        self.endpoint = (options.endpoint or env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.token = resolve_token(options.token, env)
        self.api = HfApi(
            endpoint=self.endpoint,
            token=self.token,
            library_name="ki2api",
            library_version=__version__,
        )

    def hub(self, doing: str, repo_id: str = "") -> Any:
        return _hub(doing, repo_id or self.options.space, self.endpoint)

    def run(self) -> DeployResult:
        opts = self.options
        self.say(f"Checking your Hugging Face token with {self.endpoint} …")
        with self.hub("checking your token"):
            me = self.api.whoami()
        user = str(me.get("name") or "")
        orgs = {str(org.get("name")) for org in me.get("orgs") or [] if isinstance(org, dict)}
        role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
        repo_id = _repo_id(opts.space, user, orgs, role)
        self.say(f"  signed in as {user}; Space: {repo_id}")

        kiro: dict[str, str] = {}
        if not opts.code_only:
            try:
                login = kiro_login(self.env, opts.kiro_token_file)
            except KiroLoginError as exc:
                raise DeployError(str(exc)) from exc
            kiro = login.secrets
            method = kiro.get("KIRO_AUTH_METHOD")
            self.say(
                f"Using the Kiro login from {login.source}" + (f" ({method})." if method else ".")
            )

        files = space_files(opts.root)
        if "app.py" not in files or "ki2api/__init__.py" not in files:
            raise DeployError(
                f"{opts.root} is not a Ki2API checkout (no app.py or ki2api/): run "
                "`ki2api deploy` from the repository you cloned."
            )
        leaked = find_leaked_secrets(
            opts.root, files, [*kiro.values(), self.token, opts.api_key or ""]
        )
        if leaked:
            raise DeployError(
                f"{leaked[0]} contains one of your tokens, so nothing was uploaded: remove the "
                "token from that file and run the command again."
            )

        base_url = self._create(repo_id)
        space_url = f"{self.endpoint}/spaces/{repo_id}"

        api_key = None if opts.code_only else self._set_secrets(repo_id, kiro)
        commit_oid = self._upload(repo_id, files)

        stage = self._wait(repo_id, commit_oid, space_url) if opts.wait else None
        self._report(repo_id, space_url, base_url, api_key, stage)
        return DeployResult(repo_id, space_url, base_url, api_key, stage)

    def _create(self, repo_id: str) -> str:
        """Create the Space, or check that the existing one is a Gradio Space; the base URL."""
        with self.hub("creating the Space", repo_id):
            try:
                self.api.create_repo(
                    repo_id, repo_type="space", space_sdk="gradio", private=self.options.private
                )
                self.say(f"Created the Space {repo_id}.")
            except HfHubHTTPError as exc:
                if exc.response is None or exc.response.status_code != 409:
                    raise
                self.say(f"Updating the existing Space {repo_id}.")
        with self.hub("reading the Space's details", repo_id):
            info = self.api.space_info(repo_id)
        if info.sdk and info.sdk != "gradio":
            raise DeployError(
                f"The name {repo_id} is taken by a {info.sdk} Space: pick another --space "
                "name, or delete that Space first."
            )
        host = str(info.host or f"https://{space_host(repo_id)}").rstrip("/")
        return f"{host}/v1"

    def _set_secrets(self, repo_id: str, kiro: dict[str, str]) -> str | None:
        opts = self.options
        with self.hub("reading the Space's secrets", repo_id):
            existing = set(self.api.get_space_secrets(repo_id))
        api_key: str | None = opts.api_key
        if api_key is None and (opts.new_api_key or "API_KEY" not in existing):
            api_key = secrets_module.token_urlsafe(32)
        values = dict(kiro)
        if api_key is not None:
            values["API_KEY"] = api_key
        self.say(f"Setting {len(values)} Space secrets …")
        for key, value in values.items():
            with self.hub(f"setting the secret {key}", repo_id):
                self.api.add_space_secret(repo_id, key, value)
            if key == "API_KEY":
                shown = "(shown at the end)" if api_key != opts.api_key else "(yours)"
            else:
                shown = value if key in _PLAIN_SECRETS else mask(value)
            self.say(f"  {key} = {shown}")
        if api_key is None:
            self.say("  API_KEY: keeping the Space's existing key (--new-api-key replaces it)")
        return api_key

    def _upload(self, repo_id: str, files: list[str]) -> str | None:
        root = self.options.root
        with self.hub("listing the Space's files", repo_id):
            remote = self.api.list_repo_files(repo_id, repo_type="space")
        # Drop package files that no longer exist here, so renamed modules do not linger.
        stale = [p for p in remote if p.startswith("ki2api/") and p not in set(files)]
        operations: list[CommitOperationAdd | CommitOperationDelete] = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(root / name))
            for name in files
        ]
        operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
        shown = ", ".join(files[:4]) + (", …" if len(files) > 4 else "")
        self.say(f"Uploading {len(files)} files ({shown}) …")
        with self.hub("uploading the app", repo_id):
            commit = self.api.create_commit(
                repo_id,
                operations,
                commit_message=f"Deploy Ki2API {__version__}",
                repo_type="space",
            )
        oid = getattr(commit, "oid", None)
        self.say(f"  committed {str(oid)[:8] if oid else '(no changes)'}")
        return str(oid) if oid else None

    def _wait(self, repo_id: str, commit_oid: str | None, space_url: str) -> str:
        opts = self.options
        self.say(f"Waiting for the Space to start (up to {int(opts.timeout)} s; Ctrl+C stops) …")
        started = time.monotonic()
        last: str | None = None
        saw_restart = False
        while True:
            with self.hub("reading the Space's status", repo_id):
                runtime = self.api.get_space_runtime(repo_id)
            stage = str(runtime.stage)
            if stage != last:
                self.say(f"  {stage.lower().replace('_', ' ')}")
                last = stage
            if stage in _FAILED_STAGES:
                detail = str(runtime.raw.get("errorMessage") or "").strip().splitlines()
                reason = f" ({detail[0][:160]})" if detail else ""
                raise DeployError(
                    f"The Space stopped at {stage}{reason}: read its logs at "
                    f"{space_url}?logs=container, fix the cause and run the deploy again."
                )
            sha = runtime.raw.get("sha")
            elapsed = time.monotonic() - started
            if stage == "RUNNING" and (
                sha == commit_oid if sha and commit_oid else saw_restart or elapsed >= opts.settle
            ):
                return stage
            saw_restart = saw_restart or stage != "RUNNING"
            if elapsed >= opts.timeout:
                raise DeployError(
                    f"The Space is still {stage.lower()} after {int(opts.timeout)} s: follow it "
                    f"at {space_url} (or rerun with a larger --timeout)."
                )
            time.sleep(opts.poll_interval)

    def _report(
        self,
        repo_id: str,
        space_url: str,
        base_url: str,
        api_key: str | None,
        stage: str | None,
    ) -> None:
        say = self.say
        say("")
        say("Ready." if stage == "RUNNING" else "Uploaded; the Space is building.")
        say(f"  Space page: {space_url}")
        say(f"  Base URL:   {base_url}")
        if api_key is not None:
            say("  API key (shown only this once; it is stored as the Space secret API_KEY):")
            say(f"  export KI2API_KEY='{api_key}'")
        elif not self.options.code_only:
            say("  API key: unchanged (set KI2API_KEY to the key you saved earlier)")
        if self.options.private:
            say("  Private Space: send your HF token as the bearer and the API key as x-api-key.")
        say("Test it:")
        say(f"  {_test_command(base_url, self.options.private)}")


def deploy(
    options: DeployOptions,
    *,
    env: Mapping[str, str] | None = None,
    say: Say = print,
) -> DeployResult:
    """Run the whole deploy; raises :class:`DeployError` with a one-sentence message."""
    return _Deployer(options, os.environ if env is None else env, say).run()
