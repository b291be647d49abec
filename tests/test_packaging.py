"""What gets installed, and from where: one lock (uv.lock) behind the two commands of the README
and the hashed requirements files exported from it, declared dependencies that cover what the
code imports, GitHub actions pinned by commit, and a Docker image whose code the app's user
cannot change. File checks without network; the uv export check runs uv offline and is skipped
where uv is not installed."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = {"requirements.txt": "runtime", "requirements-dev.txt": "dev"}
# Test tools that must never reach the Space, the image or `uv run --no-dev`.
DEV_ONLY = {"pytest", "playwright", "hypothesis", "mypy", "ruff", "schemathesis"}


@dataclass
class Pin:
    name: str
    version: str
    marker: str
    hashes: set[str] = field(default_factory=set)


def _requirements(name: str) -> list[Pin]:
    """The pins of a hashed requirements file (continuation lines joined, comments dropped)."""
    text = (ROOT / name).read_text(encoding="utf-8")
    logical = re.sub(r"\\\n", " ", text)
    pins = []
    for line in logical.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-"), f"{name}: options have no place here: {line[:60]}"
        spec, *hashes = re.split(r"\s+--hash=", line)
        match = re.fullmatch(r"([A-Za-z0-9][\w.-]*)==([\w.+!-]+)\s*(?:;\s*(.+))?", spec.strip())
        assert match, f"{name}: not an exact pin: {spec[:80]}"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h.strip()) for h in hashes), spec
        pins.append(
            Pin(
                canonicalize_name(match[1]),
                match[2],
                match[3] or "",
                {h.strip() for h in hashes},
            )
        )
    return pins


@cache
def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _declared(kind: str) -> list[Requirement]:
    project = _pyproject()
    if kind == "runtime":
        return [Requirement(r) for r in project["project"]["dependencies"]]
    return [Requirement(r) for r in project["dependency-groups"]["dev"]]


@cache
def _lock() -> dict[str, Any]:
    return tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))


@cache
def _lock_packages() -> dict[str, list[dict[str, Any]]]:
    """The locked packages by name (a name has several versions when platforms need them)."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for package in _lock()["package"]:
        by_name.setdefault(canonicalize_name(package["name"]), []).append(package)
    return by_name


def _root() -> dict[str, Any]:
    (root,) = [p for p in _lock()["package"] if p["source"].get("editable") == "."]
    return root


def _lock_hashes(package: dict[str, Any]) -> set[str]:
    files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
    return {f["hash"] for f in files}


def _resolve(entry: dict[str, Any]) -> dict[str, Any]:
    """The locked package an edge of the graph points to (a version is named when several are)."""
    candidates = _lock_packages()[canonicalize_name(entry["name"])]
    matches = [p for p in candidates if entry.get("version", p["version"]) == p["version"]]
    assert len(matches) == 1, entry
    return matches[0]


def _closure(kind: str, env: dict[str, str] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """The locked packages that `kind` installs: all of them whatever the platform, or only the
    ones whose markers hold in ``env``."""
    root = _root()
    todo = list(root.get("dependencies", []))
    if kind == "dev":
        todo += root.get("dev-dependencies", {}).get("dev", [])
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    extras_done: set[tuple[str, str, str]] = set()
    while todo:
        entry = todo.pop()
        if env is not None and "marker" in entry and not Marker(entry["marker"]).evaluate(env):
            continue
        package = _resolve(entry)
        key = (canonicalize_name(package["name"]), package["version"])
        if key not in seen:
            seen[key] = package
            todo += package.get("dependencies", [])
        for extra in entry.get("extra", []):
            if (*key, extra) not in extras_done:
                extras_done.add((*key, extra))
                todo += package.get("optional-dependencies", {}).get(extra, [])
    return seen


# --- the hashed requirements files are the lock, exported ----------------------------------


@pytest.mark.parametrize("name", REQUIREMENTS)
def test_requirements_pin_every_package_with_its_hashes(name: str) -> None:
    pins = _requirements(name)
    assert len(pins) > 20
    assert not [p.name for p in pins if not p.hashes], f"{name}: packages without a hash"
    text = (ROOT / name).read_text(encoding="utf-8")
    # No index of a particular machine, no local path, no editable install.
    assert not re.search(r"^\s*(-i|--index-url|--extra-index-url|--find-links|-e)\b", text, re.M)


@pytest.mark.parametrize(("name", "kind"), REQUIREMENTS.items())
def test_requirements_hold_exactly_the_locked_packages(name: str, kind: str) -> None:
    pins = {(p.name, p.version): p for p in _requirements(name)}
    locked = _closure(kind)
    assert set(pins) == set(locked), "re-export with `bash .ci/lock`"
    for key, pin in pins.items():
        assert pin.hashes == _lock_hashes(locked[key]), f"{key}: hashes differ from uv.lock"


def test_runtime_requirements_leave_the_test_tools_out() -> None:
    runtime = {p.name for p in _requirements("requirements.txt")}
    dev = {p.name for p in _requirements("requirements-dev.txt")}
    assert DEV_ONLY <= dev
    assert not runtime & DEV_ONLY
    assert runtime <= dev


def _uv() -> str | None:
    return os.environ.get("UV") or shutil.which("uv")  # `uv run` names itself in UV


@pytest.mark.parametrize(
    ("name", "selection"),
    [("requirements.txt", "--no-dev"), ("requirements-dev.txt", "--all-groups")],
)
def test_requirements_are_what_uv_exports_from_the_lock(name: str, selection: str) -> None:
    uv = _uv()
    if uv is None:
        pytest.skip("uv is not installed")
    command = [uv, "export", "--frozen", "--offline", "--no-emit-project", "--no-header"]
    exported = subprocess.run(
        [*command, selection, "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    committed = (ROOT / name).read_text(encoding="utf-8")
    body = "".join(committed.splitlines(keepends=True)[2:])  # after the two header lines
    assert committed.startswith("# This file was autogenerated by uv")
    assert body == exported, f"{name} is not what uv.lock exports: run `bash .ci/lock`"


# --- pyproject.toml, the lock and the requirements agree ----------------------------------


def _specs(entries: list[dict[str, Any]]) -> set[tuple[str, str, tuple[str, ...]]]:
    return {
        (
            canonicalize_name(e["name"]),
            str(Requirement(f"x{e.get('specifier', '')}").specifier),
            tuple(sorted(e.get("extras", []))),
        )
        for e in entries
    }


def _req_specs(reqs: list[Requirement]) -> set[tuple[str, str, tuple[str, ...]]]:
    return {(canonicalize_name(r.name), str(r.specifier), tuple(sorted(r.extras))) for r in reqs}


def test_lock_is_up_to_date_with_pyproject() -> None:
    metadata = _root()["metadata"]
    assert _specs(metadata["requires-dist"]) == _req_specs(_declared("runtime")), (
        "uv.lock was made from other dependencies than pyproject.toml's: run `bash .ci/lock`"
    )
    assert _specs(metadata["requires-dev"]["dev"]) == _req_specs(_declared("dev"))
    assert _lock()["requires-python"] == _pyproject()["project"]["requires-python"]


@pytest.mark.parametrize(("name", "kind"), REQUIREMENTS.items())
def test_pyproject_and_requirements_agree_on_versions(name: str, kind: str) -> None:
    pins = {p.name: p.version for p in _requirements(name)}
    declared = _declared("runtime") + (_declared("dev") if kind == "dev" else [])
    for requirement in declared:
        version = pins.get(canonicalize_name(requirement.name))
        assert version, f"{requirement.name} is declared in pyproject.toml but not in {name}"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name} pins {requirement.name}=={version}, pyproject.toml asks {requirement}"
        )


def test_gradio_is_pinned_to_the_spaces_sdk_version() -> None:
    (gradio,) = [r for r in _declared("runtime") if r.name == "gradio"]
    (spec,) = gradio.specifier
    assert spec.operator == "=="  # the Space installs its sdk_version, so the lock must match
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"\nsdk_version: {spec.version}\n" in readme.split("\n---\n", 1)[0]


# --- every package the code imports is declared --------------------------------------------


def _imports(statements: list[ast.stmt], optional: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """Each import statement, with whether the code can do without it (under `except
    ImportError` or `if TYPE_CHECKING`). Walks statements only, which keeps it quick."""
    for stmt in statements:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            yield stmt, optional
        elif isinstance(stmt, ast.Try):
            caught = {
                name.id
                for handler in stmt.handlers
                if handler.type is not None
                for name in ast.walk(handler.type)
                if isinstance(name, ast.Name)
            }
            yield from _imports(
                stmt.body, optional or bool(caught & {"ImportError", "ModuleNotFoundError"})
            )
            for handler in stmt.handlers:
                yield from _imports(handler.body, optional)
            yield from _imports(stmt.orelse + stmt.finalbody, optional)
        elif isinstance(stmt, ast.If):
            yield from _imports(stmt.body, optional or "TYPE_CHECKING" in ast.unparse(stmt.test))
            yield from _imports(stmt.orelse, optional)
        else:
            for name in ("body", "orelse", "finalbody"):
                nested = getattr(stmt, name, None)
                if isinstance(nested, list):
                    yield from _imports(nested, optional)
            for case in getattr(stmt, "cases", []):
                yield from _imports(case.body, optional)


@cache
def _third_party_imports(folder: str) -> tuple[tuple[str, str], ...]:
    return tuple(_scan_imports(folder))


def _scan_imports(folder: str) -> Iterator[tuple[str, str]]:
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, optional in _imports(tree.body):
            if optional:
                continue
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in {"ki2api", "tests", "bench"}:
                    yield f"{path.relative_to(ROOT)}:{node.lineno}", top


@pytest.mark.parametrize(("folder", "kind"), [("ki2api", "runtime"), ("tests", "dev")])
def test_every_third_party_import_is_declared(folder: str, kind: str) -> None:
    declared = {canonicalize_name(r.name) for r in _declared("runtime")}
    if kind == "dev":
        declared |= {canonicalize_name(r.name) for r in _declared("dev")}
    providers = packages_distributions()
    missing: dict[str, list[str]] = {}
    for where, module in _third_party_imports(folder):
        if not {canonicalize_name(d) for d in providers.get(module, [])} & declared:
            missing.setdefault(module, []).append(where)
    assert not missing, "declare these in pyproject.toml, then run `bash .ci/lock`:\n" + "\n".join(
        f"{module} (imported at {places[0]} and {len(places) - 1} more)"
        for module, places in sorted(missing.items())
    )


def test_the_import_check_sees_pandas_and_skips_optional_imports() -> None:
    found = {module for _, module in _third_party_imports("ki2api")}
    assert {"pandas", "gradio", "starlette", "httptools"} <= found
    assert "httpx2" not in found  # imported under `except ImportError` (deploy.py)


# --- installable on Linux, macOS and Windows ----------------------------------------------

_LINUX = [f"manylinux_2_{minor}_x86_64" for minor in range(31, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
PLATFORMS = {
    "linux-x86_64-3.11": ((3, 11), "linux", "Linux", "x86_64", _LINUX),
    "macos-arm64-3.12": (
        (3, 12),
        "darwin",
        "Darwin",
        "arm64",
        list(mac_platforms((14, 0), "arm64")),
    ),
    "windows-amd64-3.13": ((3, 13), "win32", "Windows", "AMD64", ["win_amd64"]),
}


@pytest.mark.parametrize("kind", ["runtime", "dev"])
@pytest.mark.parametrize("platform", PLATFORMS)
def test_lock_has_a_wheel_for_every_package_on_each_desktop_platform(
    platform: str, kind: str
) -> None:
    version, sys_platform, system, machine, platforms = PLATFORMS[platform]
    major, minor = version
    env = {
        "python_version": f"{major}.{minor}",
        "python_full_version": f"{major}.{minor}.0",
        "sys_platform": sys_platform,
        "platform_system": system,
        "platform_machine": machine,
        "os_name": "nt" if sys_platform == "win32" else "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    tags: set[Tag] = set(cpython_tags(version, platforms=platforms))
    tags |= set(compatible_tags(version, f"cp{major}{minor}", platforms))
    packages = _closure(kind, env)
    assert ("gradio", "6.31.0") in packages
    no_wheel = [
        f"{name}=={v}"
        for (name, v), package in packages.items()
        if package["source"].get("editable") is None
        and not any(
            parse_wheel_filename(wheel["url"].rsplit("/", 1)[1])[3] & tags
            for wheel in package.get("wheels", [])
        )
    ]
    assert not no_wheel, f"no wheel for {platform}: {no_wheel}"


# --- the two commands of the README, and CI running the same --------------------------------


def _first_bash_block(text: str) -> list[str]:
    match = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    assert match
    return [line.split("#", 1)[0].strip() for line in match[1].splitlines()]


def test_readme_starts_with_two_commands_that_set_themselves_up() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    english, chinese = readme.split("\n## 简体中文\n")
    for section in (english, chinese):
        # The demo's command leaves the test tools out; the test command brings them.
        assert _first_bash_block(section) == ["uv run --no-dev app.py --demo", "uv run pytest"]
    assert "bash .ci/lock" in english and "bash .ci/lock" in chinese


def test_ci_runs_the_readmes_test_command_unchanged() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    test_command = _first_bash_block(readme)[1]
    script = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert script[-1] == test_command
    # Nothing installs the test tools around uv's back.
    assert not [line for line in script if "requirements" in line or "pip install -r" in line]


def test_lock_script_exports_both_requirements_files() -> None:
    script = (ROOT / ".ci" / "lock").read_text(encoding="utf-8")
    assert re.search(r"^uv lock\b", script, re.M)
    for name in REQUIREMENTS:
        # The committed file's header records the command that made it; the script runs it.
        header = (ROOT / name).read_text(encoding="utf-8").splitlines()[1]
        command = header.lstrip("# ").strip()
        assert command.startswith("uv export --frozen")
        words = set(command.split())
        assert any(
            words <= set(line.split()) for line in script.splitlines() if "uv export" in line
        ), f"{name}: `{command}` is not what .ci/lock runs"


# --- GitHub workflows and the Docker image -------------------------------------------------


def _uses(workflow: dict[Any, Any]) -> Iterator[str]:
    for job in workflow["jobs"].values():
        if "uses" in job:
            yield job["uses"]
        for step in job.get("steps", []):
            if "uses" in step:
                yield step["uses"]


@pytest.mark.parametrize("path", sorted((ROOT / ".github" / "workflows").glob("*.yml")))
def test_workflow_actions_are_pinned_by_commit(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    uses = list(_uses(yaml.safe_load(text)))
    assert uses
    for action in uses:
        if action.startswith("./"):
            continue  # an action of this repository
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", action), (
            f"{path.name}: `{action}` must name a commit (the tag goes in a comment)"
        )
        # The release the commit belongs to stays readable, as a trailing comment.
        assert re.search(re.escape(action) + r" # v\d+(\.\d+)*\s*$", text, re.M), action


def _dockerfile() -> list[str]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_docker_image_runs_as_a_user_who_cannot_change_the_code() -> None:
    lines = _dockerfile()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0", "0:0"}
    user = users[-1]
    for line in lines:
        if line.startswith(("COPY", "ADD")):
            chown = re.search(r"--chown=(\S+)", line)
            assert chown is None or chown[1].split(":")[0] in {"root", "0"}, line
        if line.startswith("RUN"):
            # Only the user's own home may be handed over (the Kiro login folder is written).
            for target in re.findall(r"chown\s+(?:-R\s+)?\S+\s+(\S+)", line):
                assert target.startswith(f"/home/{user}"), line
            assert "chmod" not in line or "/app" not in line, line
    assert f"chown -R {user}:{user} /home/{user}/.aws" in " ".join(lines)
    install = [line for line in lines if line.startswith("RUN pip install")]
    assert install == ["RUN pip install --require-hashes --no-deps -r requirements.txt"]


def test_docker_base_image_is_pinned_by_digest() -> None:
    froms = [
        line.split()[1]
        for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if line.startswith("FROM ")
    ]
    assert froms, "no FROM line"
    for image in froms:
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), image
