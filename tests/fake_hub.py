"""A fake Hugging Face Hub on a loopback uvicorn server, for ``ki2api deploy`` and the backup.

It implements only the endpoints ``huggingface_hub`` calls for whoami, create_repo (Spaces and
datasets), repo info, get/add Space secrets, list_repo_files, create_commit (validate-yaml,
preupload, commit), get_space_runtime and hf_hub_download (a dataset's files), and records
every call so the tests can check the arguments. Files are uploaded inline (``uploadMode:
regular``) and kept per repository.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

GOOD_TOKEN = "hf_good_token_0123456789"


@dataclass
class FakeRepo:
    private: bool
    sdk: str  # "" for a dataset
    files: dict[str, bytes] = field(default_factory=lambda: {".gitattributes": b"*.bin lfs\n"})
    secrets: dict[str, str] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)


@dataclass
class FakeHub:
    url: str = ""
    user: str = "alice"
    orgs: tuple[str, ...] = ("team",)
    role: str = "write"
    create_status: int | None = None  # force an error answer on /api/repos/create
    space_host: str | None = None  # what space_info reports as the Space's host
    stages: list[str] = field(default_factory=lambda: ["BUILDING", "APP_STARTING", "RUNNING"])
    spaces: dict[str, FakeRepo] = field(default_factory=dict)
    datasets: dict[str, FakeRepo] = field(default_factory=dict)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    down: bool = False  # every call answers 403 (a Hub that will not serve this machine)

    def paths(self) -> list[str]:
        return [f"{method} {path}" for method, path, _ in self.calls]


def fake_hub_app(hub: FakeHub) -> Starlette:
    def authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {GOOD_TOKEN}"

    def denied() -> JSONResponse:
        return JSONResponse({"error": "Invalid credentials in Authorization header"}, 401)

    def repos(request: Request) -> dict[str, FakeRepo]:
        datasets = request.url.path.startswith(("/api/datasets/", "/datasets/"))
        return hub.datasets if datasets else hub.spaces

    def space(request: Request) -> FakeRepo | None:
        repo_id = f"{request.path_params['owner']}/{request.path_params['name']}"
        return repos(request).get(repo_id)

    async def record(request: Request) -> Any:
        body = await request.body()
        try:
            payload: Any = json.loads(body) if body else None
        except ValueError:
            payload = body.decode()
        hub.calls.append((request.method, request.url.path, payload))
        return payload

    async def whoami(request: Request) -> JSONResponse:
        await record(request)
        if not authorized(request):
            return denied()
        return JSONResponse(
            {
                "type": "user",
                "name": hub.user,
                "orgs": [{"name": org} for org in hub.orgs],
                "auth": {"type": "access_token", "accessToken": {"role": hub.role}},
            }
        )

    async def create(request: Request) -> JSONResponse:
        payload = await record(request)
        if not authorized(request):
            return denied()
        repo_id = f"{payload['organization']}/{payload['name']}"
        kind = payload.get("type") or "model"
        url = f"{hub.url}/{kind}s/{repo_id}"
        if hub.create_status is not None:
            return JSONResponse({"error": "refused by the fake"}, hub.create_status)
        repos = hub.datasets if kind == "dataset" else hub.spaces
        if repo_id in repos:  # the Hub's answer when the repo exists
            return JSONResponse({"error": f"You already created this {kind} repo", "url": url}, 409)
        repos[repo_id] = FakeRepo(
            private=payload.get("visibility") == "private", sdk=payload.get("sdk", "")
        )
        return JSONResponse({"url": url, "name": repo_id})

    async def repo_info(request: Request) -> JSONResponse:
        await record(request)
        target = space(request)
        if target is None:
            return JSONResponse({"error": "Repository not found"}, 404)
        repo_id = f"{request.path_params['owner']}/{request.path_params['name']}"
        return JSONResponse(
            {"id": repo_id, "sdk": target.sdk, "private": target.private, "host": hub.space_host}
        )

    async def secrets(request: Request) -> JSONResponse:
        payload = await record(request)
        target = space(request)
        if target is None:
            return JSONResponse({"error": "Repository not found"}, 404)
        if request.method == "POST":
            target.secrets[payload["key"]] = payload["value"]
            return JSONResponse({})
        return JSONResponse(
            {key: {"updatedAt": "2026-01-01T00:00:00.000Z"} for key in target.secrets}
        )

    async def tree(request: Request) -> JSONResponse:
        await record(request)
        target = space(request)
        if target is None:
            return JSONResponse({"error": "Repository not found"}, 404)
        return JSONResponse(
            [
                {"type": "file", "path": p, "oid": "0" * 40, "size": len(b)}
                for p, b in target.files.items()
            ]
        )

    async def validate_yaml(request: Request) -> JSONResponse:
        await record(request)
        return JSONResponse({"errors": [], "warnings": []})

    async def preupload(request: Request) -> JSONResponse:
        payload = await record(request)
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
            for f in payload["files"]
        ]
        return JSONResponse({"files": files})

    async def commit(request: Request) -> JSONResponse:
        await record(request)
        target = space(request)
        if target is None:
            return JSONResponse({"error": "Repository not found"}, 404)
        lines = [json.loads(line) for line in hub.calls[-1][2].splitlines() if line.strip()]
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                target.files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "deletedFile":
                target.files.pop(value["path"], None)
        oid = f"{len(target.commits) + 1:040x}"
        target.commits.append(oid)
        repo_id = f"{request.path_params['owner']}/{request.path_params['name']}"
        kind = request.url.path.split("/")[2]  # spaces | datasets
        return JSONResponse(
            {"commitUrl": f"{hub.url}/{kind}/{repo_id}/commit/{oid}", "commitOid": oid}
        )

    async def runtime(request: Request) -> JSONResponse:
        await record(request)
        target = space(request)
        if target is None:
            return JSONResponse({"error": "Repository not found"}, 404)
        stage = hub.stages.pop(0) if len(hub.stages) > 1 else hub.stages[0]
        sha = target.commits[-1] if target.commits else None
        body: dict[str, Any] = {
            "stage": stage,
            "hardware": {"current": None, "requested": "cpu-basic"},
        }
        if sha:
            body["sha"] = sha
        if stage.endswith("ERROR"):
            body["errorMessage"] = "ModuleNotFoundError: No module named 'nope'\nmore lines"
        return JSONResponse(body)

    async def resolve(request: Request) -> Response:
        """A file's bytes (GET) or its metadata (HEAD), as hf_hub_download reads them."""
        await record(request)
        target = space(request)
        if target is None:
            return Response(status_code=404, headers={"x-error-code": "RepoNotFound"})
        data = target.files.get(request.path_params["path"])
        if data is None:
            return Response(status_code=404, headers={"x-error-code": "EntryNotFound"})
        headers = {
            "x-repo-commit": target.commits[-1] if target.commits else "0" * 40,
            "etag": f'"{hashlib.sha256(data).hexdigest()}"',
        }
        return Response(data, headers=headers, media_type="application/octet-stream")

    class Down:
        """While ``hub.down``, every call is refused before it reaches its route."""

        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and hub.down:
                await JSONResponse({"error": "down"}, 403)(scope, receive, send)
                return
            await self.app(scope, receive, send)

    space_path = "/api/spaces/{owner}/{name}"
    dataset_path = "/api/datasets/{owner}/{name}"
    return Starlette(
        middleware=[Middleware(Down)],
        routes=[
            Route("/api/whoami-v2", whoami),
            Route("/api/repos/create", create, methods=["POST"]),
            Route("/api/validate-yaml", validate_yaml, methods=["POST"]),
            Route(space_path, repo_info),
            Route(space_path + "/secrets", secrets, methods=["GET", "POST"]),
            Route(space_path + "/tree/{rev}", tree),
            Route(space_path + "/preupload/{rev}", preupload, methods=["POST"]),
            Route(space_path + "/commit/{rev}", commit, methods=["POST"]),
            Route(space_path + "/runtime", runtime),
            Route(dataset_path, repo_info),
            Route(dataset_path + "/preupload/{rev}", preupload, methods=["POST"]),
            Route(dataset_path + "/commit/{rev}", commit, methods=["POST"]),
            Route("/datasets/{owner}/{name}/resolve/{rev}/{path:path}", resolve),
        ],
    )


@contextmanager
def running_hub() -> Iterator[FakeHub]:
    """A fake Hub serving on loopback for the ``with`` block; ``hub.url`` is its endpoint."""
    state = FakeHub()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(fake_hub_app(state), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield state
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
