"""Ids for requests, answers and upstream calls, without a system call each.

``uuid.uuid4()`` reads ``os.urandom`` every time; on the way to the first token a request made
three of them. These ids only need to be unique (logs, clients' bookkeeping, Kiro's invocation
id), not secret: a generator seeded once from the OS is enough, and reseeded in a forked child.
"""

from __future__ import annotations

import os
import random
import uuid

_random = random.Random(os.urandom(32))


def _reseed() -> None:
    _random.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)


def hex_id(chars: int = 32) -> str:
    """``chars`` random lowercase hex digits."""
    return f"{_random.getrandbits(chars * 4):0{chars}x}"


def uuid_text() -> str:
    """A random (version 4) UUID in its usual text form."""
    return str(uuid.UUID(int=_random.getrandbits(128), version=4))
