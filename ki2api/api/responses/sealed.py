"""``reasoning.encrypted_content``: a reasoning item the client hands back on its next turn.

Clients that keep no server state (Codex: ``store: false``) ask for it with
``include: ["reasoning.encrypted_content"]`` and resend the item as it came. The gateway keeps
nothing either, so the item carries its own content: the reasoning text and the service's
signature, as base64 of ``k1`` + HMAC-SHA256 (first 16 bytes) + JSON. The MAC, keyed by
``REASONING_SECRET`` (else a key made at start-up), lets the gateway tell its own items from
anything a client made up; an item that fails the check is ignored (logged), never trusted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass

import orjson

log = logging.getLogger("ki2api.responses")

_VERSION = b"k1"
_MAC_BYTES = 16


@dataclass(frozen=True, slots=True)
class SealedReasoning:
    text: str
    signature: str | None


class ReasoningSeal:
    def __init__(self, secret: str | None = None) -> None:
        self._key = secret.encode() if secret else secrets.token_bytes(32)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def seal(self, text: str, signature: str | None) -> str:
        payload = orjson.dumps({"text": text, "signature": signature})
        return base64.b64encode(_VERSION + self._mac(payload) + payload).decode()

    def open(self, token: object) -> SealedReasoning | None:
        """The reasoning in ``token``, or None when it is not one this gateway sealed."""
        if not isinstance(token, str):
            return None
        try:
            raw = base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            return None
        head, mac, payload = raw[:2], raw[2 : 2 + _MAC_BYTES], raw[2 + _MAC_BYTES :]
        if head != _VERSION or not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        text, signature = value.get("text"), value.get("signature")
        if not isinstance(text, str) or not (signature is None or isinstance(signature, str)):
            return None
        return SealedReasoning(text, signature)
