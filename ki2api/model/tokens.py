"""Local token estimates, used only when the service reports no counts.

Roughly 4 characters per token for Latin text and about one token per CJK character: close
enough for usage reporting and ``max_tokens`` enforcement, and cheap on the hot path.
"""

from __future__ import annotations


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    if text.isascii():
        return max(1, (len(text) + 3) // 4)
    wide = sum(1 for ch in text if ord(ch) > 0x2E7F)
    return max(1, wide + (len(text) - wide + 3) // 4)
