"""Which files of a checkout go to a Hugging Face Space, and which never do.

One list for ``ki2api deploy`` and for the GitHub workflow that syncs ``main`` to the Space, so
the two can never disagree. It is an allowlist (the app, its package, the Space's README and
requirements) minus a denylist of anything that could hold a secret or is just local clutter.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path, PurePosixPath

# Top-level files the Space needs; missing optional ones (LICENSE) are simply skipped.
SPACE_TOP_FILES: tuple[str, ...] = ("app.py", "README.md", "requirements.txt", "LICENSE")
# Folders uploaded whole (minus the denylist). The simulator lives inside the package and is
# needed: demo mode runs it in-process.
SPACE_FOLDERS: tuple[str, ...] = ("ki2api",)

# Never uploaded, wherever they sit (matched against each path part and the file name).
NEVER_UPLOAD: tuple[str, ...] = (
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    "tests",
    "*.pyc",
    "*.pyo",
    "*.egg-info",
    ".DS_Store",
    "*.log",
    "*.swp",
    # anything that may hold a credential
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa*",
    "kiro-auth-token*.json",
    "credentials*.json",
    "*secret*.json",
    ".netrc",
)


def is_excluded(relative: str) -> bool:
    """True when any part of ``relative`` (a POSIX path) matches the denylist."""
    parts = PurePosixPath(relative).parts
    return any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in NEVER_UPLOAD)


def space_files(root: Path) -> list[str]:
    """The sorted POSIX paths, relative to ``root``, that make up the Space."""
    found: set[str] = set()
    for name in SPACE_TOP_FILES:
        if (root / name).is_file():
            found.add(name)
    for folder in SPACE_FOLDERS:
        base = root / folder
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            if path.is_file() and not path.is_symlink():
                found.add(path.relative_to(root).as_posix())
    return sorted(path for path in found if not is_excluded(path))


def find_leaked_secrets(root: Path, files: list[str], secrets: list[str]) -> list[str]:
    """The files whose bytes contain one of ``secrets`` (a last check before uploading)."""
    needles = [value.encode() for value in secrets if len(value) >= 12]
    if not needles:
        return []
    return [
        name for name in files if any(needle in (root / name).read_bytes() for needle in needles)
    ]
