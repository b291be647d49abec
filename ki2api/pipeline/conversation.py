"""The conversation id sent upstream: stable across the turns of one conversation.

A client may name its conversation (``X-Conversation-Id``); otherwise the id is derived from what
every later turn of the same conversation repeats: the system prompt and the first user message.
Kiro expects a UUID, so a client's free-form value is turned into one (uuid5), deterministically.
"""

from __future__ import annotations

import re
import uuid

from ki2api.model.errors import InvalidRequest
from ki2api.model.request import ChatRequest

# Fixed namespace, so the same conversation maps to the same id on every gateway instance.
NAMESPACE = uuid.UUID("5b0f6b5e-8f4e-4d7a-9c61-2f1e4b7a9d30")
MAX_HEADER_CHARS = 200
_PRINTABLE = re.compile(r"[\x21-\x7e]+")  # visible ASCII, no spaces


def conversation_id_for(request: ChatRequest, header_value: str | None) -> str:
    value = header_value if header_value is not None else request.conversation_id
    if value is not None and value.strip():
        return _from_client(value.strip())
    first_user = next((m for m in request.messages if m.role == "user"), None)
    first = first_user or (request.messages[0] if request.messages else None)
    seed = "\x00".join((request.system, first.text if first else ""))
    # uuid5 encodes its name as UTF-8, which a lone surrogate would break: the round trip lets
    # any text through (and gives the ids this gateway has always given).
    return str(uuid.uuid5(NAMESPACE, seed.encode("utf-8", "surrogatepass").decode("latin-1")))


def _from_client(value: str) -> str:
    if len(value) > MAX_HEADER_CHARS or not _PRINTABLE.fullmatch(value):
        raise InvalidRequest(
            f"X-Conversation-Id must be 1 to {MAX_HEADER_CHARS} visible ASCII characters "
            "(a UUID is best).",
            param="X-Conversation-Id",
        )
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return str(uuid.uuid5(NAMESPACE, "client:" + value))
