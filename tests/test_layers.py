"""The package's layers, as docs/architecture.md draws them: a module may import its own layer
and those below it, never one above. Every import counts, including those inside functions and
under ``TYPE_CHECKING`` (a cycle hidden from the interpreter is still a cycle for a reader)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ki2api"

# Lowest first. A module belongs to the longest prefix that names it.
LAYERS: list[tuple[str, ...]] = [
    # "ki2api.kiro": its __init__ only; "ki2api.store": the stored state, below the accounts
    ("ki2api.model", "ki2api.settings", "ki2api.kiro", "ki2api.store"),
    ("ki2api.kiro.wire",),
    ("ki2api.kiro.accounts",),
    ("ki2api.kiro.http",),
    ("ki2api.shared",),  # state shared by replicas (Redis): implements the accounts' hooks
    ("ki2api.simulator",),  # a stand-in for Kiro: speaks the wire format, nothing above it
    ("ki2api.pipeline",),
    ("ki2api.teams",),  # client keys: Gateway.open's admission (pipeline) on the store
    ("ki2api.api",),
    ("ki2api.runtime",),
    ("ki2api.ui",),
    ("ki2api.app",),
    ("ki2api.server", "ki2api.deploy"),
    ("ki2api.cli", "ki2api.__main__"),
]
# The package's own __init__ (the version) sits below everything.
BASE = "ki2api"


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = rank, len(prefix)
    return best


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # `from ki2api.kiro import wire` imports the subpackage, not just the package
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name == BASE or name.startswith(BASE + ".")}


def all_modules() -> list[tuple[str, Path]]:
    return sorted((module_name(p), p) for p in PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m, _ in all_modules() if m != BASE and layer_of(m) < 0]
    assert unplaced == [], f"add these to LAYERS (and to docs/architecture.md): {unplaced}"


@pytest.mark.parametrize(("module", "path"), all_modules(), ids=lambda v: str(v))
def test_no_module_imports_a_higher_layer(module: str, path: Path) -> None:
    if module == BASE:
        return
    own = layer_of(module)
    upward = sorted(
        target
        for target in imports_of(path, module)
        if target != BASE and layer_of(target) > own and _exists(target)
    )
    assert upward == [], f"{module} (layer {own}) imports a higher layer: {upward}"


def _exists(module: str) -> bool:
    """``from x import name`` adds ``x.name``, which is only a module if a file says so."""
    relative = Path(*module.split("."))
    root = PACKAGE.parent
    return (root / relative).with_suffix(".py").exists() or (root / relative).is_dir()


def test_the_layer_test_catches_an_upward_import(tmp_path: Path) -> None:
    """The check itself works: a model module importing the pipeline is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("from ki2api.pipeline.gateway import Gateway\n", encoding="utf-8")
    targets = imports_of(bad, "ki2api.model.bad")
    assert any(layer_of(t) > layer_of("ki2api.model.bad") for t in targets)
