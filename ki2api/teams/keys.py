"""Client keys: how they are made, stored (a hash) and matched against a model allowlist.

A key is ``ki2-`` and 43 URL-safe characters: 256 random bits from the OS. It is shown once,
when made; the store keeps its SHA-256 and its last 4 characters. A plain SHA-256 is enough for
a secret this random (guessing a key from its hash means trying 2**256 keys), costs a
microsecond on every request where bcrypt or scrypt would cost tens of milliseconds, and needs
no server secret, so the CLI and the server work on the same database without sharing one.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import re
import secrets
from collections.abc import Iterable

from ki2api.model.ids import hex_id

KEY_PREFIX = "ki2-"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
RESERVED_NAMES = frozenset({"operator", "other"})  # API_KEY's rows; the metrics' overflow label


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def key_hint(secret: str) -> str:
    return secret[-4:]


def masked(hint: str) -> str:
    """How a key is shown after it was made: ``ki2-…abcd``."""
    return f"{KEY_PREFIX}…{hint}"


def new_key_id() -> str:
    return f"key_{hex_id(12)}"


def check_name(name: str) -> str | None:
    """Why ``name`` cannot name a key, or None."""
    if not NAME_PATTERN.match(name):
        return "a key's name is 1-64 letters, digits and . _ @ + -, the first a letter or digit"
    if name.lower() in RESERVED_NAMES:
        return f"{name!r} is reserved"
    return None


def check_patterns(patterns: Iterable[str]) -> str | None:
    for pattern in patterns:
        if not pattern or len(pattern) > 100 or not pattern.isprintable() or " " in pattern:
            return f"{pattern!r} is not a model pattern (e.g. 'claude-sonnet-*')"
    return None


@functools.lru_cache(maxsize=256)
def allowlist(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """The glob ``patterns`` (``*``, ``?``, ``[...]``; case does not matter) as one regex."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns), re.IGNORECASE)


def model_allowed(patterns: tuple[str, ...], *names: str) -> bool:
    """Whether any of ``names`` (the name the client sent, the model it resolved to) matches one
    of the glob ``patterns``."""
    match = allowlist(patterns).match
    return any(match(n) for n in names if n)
