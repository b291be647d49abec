"""Ids from the seeded generator (ki2api/model/ids.py): well-formed and distinct."""

from __future__ import annotations

import re
import uuid

from ki2api.model.ids import hex_id, uuid_text


def test_uuid_text_is_a_random_rfc_4122_uuid() -> None:
    ids = [uuid_text() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:50]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # the usual lower-case text form
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_hex_id_has_the_asked_length() -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", hex_id())
    assert re.fullmatch(r"[0-9a-f]{8}", hex_id(8))
