"""docs/errors.md says what each upstream failure becomes; these tests hold the code to it."""

from __future__ import annotations

import orjson
import pytest

from ki2api.api.errors import (
    anthropic_error_body,
    anthropic_status,
    error_headers,
    openai_error_body,
)
from ki2api.kiro.wire.errors import (
    EXCEPTION_STATUS,
    TABLE,
    error_for_exception,
    error_for_response,
)
from tests.error_doc import NONE, DocRow, doc_rows, error_class

ROWS = doc_rows()
HTTP_ROWS = [r for r in ROWS if r.http_status is not None]


def kiro_body(row: DocRow) -> bytes:
    reason = None if row.reason == NONE else row.reason
    return orjson.dumps({"message": row.message, "reason": reason})


def test_the_table_is_there_and_complete() -> None:
    assert len(ROWS) >= 25
    assert {r.http_status for r in HTTP_ROWS} >= {400, 401, 402, 403, 404, 408, 429, 500, 503}


@pytest.mark.parametrize("row", HTTP_ROWS, ids=lambda r: f"{r.kiro_status}-{r.reason}")
def test_each_kiro_answer_is_classified_as_documented(row: DocRow) -> None:
    assert row.http_status is not None
    error = error_for_response(row.http_status, kiro_body(row), {})
    assert type(error) is error_class(row.classified_as)


@pytest.mark.parametrize("row", HTTP_ROWS, ids=lambda r: f"{r.kiro_status}-{r.reason}")
def test_the_same_answer_inside_a_stream_is_classified_the_same(row: DocRow) -> None:
    """One table: an exception frame of the type that stands for the status says the same."""
    kinds = [k for k, status in EXCEPTION_STATUS.items() if status == row.http_status]
    for kind in kinds:
        error = error_for_exception(kind, kiro_body(row))
        assert type(error) is error_class(row.classified_as), kind


def test_every_table_row_is_documented() -> None:
    """Each row of the code's table is what some documented Kiro answer lands on."""
    for table_row in TABLE:
        hits = [r for r in HTTP_ROWS if table_row.takes(r.http_status)]
        hits = [
            r
            for r in hits
            if table_row.marker is None
            or table_row.marker.lower() in f"{r.reason} {r.message}".lower()
        ]
        classified = {error_class(r.classified_as) for r in hits}
        assert table_row.error in classified, f"no documented row for {table_row}"


@pytest.mark.parametrize(
    "row", [r for r in ROWS if not r.succeeds], ids=lambda r: f"{r.kiro_status}-{r.reason}"
)
def test_what_clients_get_matches_the_error_classes(row: DocRow) -> None:
    error = row.error_class()("message", retry_after=None)
    assert error.status == row.openai_status
    body = openai_error_body(error)["error"]
    assert body["type"] == row.openai_type
    # The gateway's own checks may set a more precise code (tests/test_limits_api.py).
    assert body["code"] == row.openai_code or row.kiro_status.startswith("gateway:")
    assert error_headers(error)["x-should-retry"] == row.should_retry
    assert anthropic_status(error) == row.anthropic_status
    assert anthropic_error_body(error)["error"]["type"] == row.anthropic_type


def test_retry_after_reaches_both_formats_when_known() -> None:
    for row in ROWS:
        if row.retry_after == NONE or row.succeeds:
            continue
        error = row.error_class()("wait", retry_after=2.5)
        headers = error_headers(error)
        assert headers["retry-after"] == "3" and headers["retry-after-ms"] == "2500"


def test_kiro_retry_after_header_is_read_in_both_forms() -> None:
    body = orjson.dumps({"message": "slow down"})
    assert error_for_response(429, body, {"retry-after": "7"}).retry_after == 7
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    after = error_for_response(429, body, {"retry-after": later}).retry_after
    assert after is not None and 25 < after <= 30
    assert error_for_response(429, body, {"retry-after": "soon"}).retry_after is None


def test_odd_kiro_error_bodies_still_classify() -> None:
    for body in (b"", b"<html>gateway timeout</html>", b"[1, 2]", b"\xff\xfe", b"null"):
        error = error_for_response(500, body, {})
        assert error.status == 503 and error.should_retry
    assert "<html>" in error_for_response(502, b"<html>x</html>", {}).message
    unknown = error_for_response(418, b'{"message": "teapot"}', {})
    assert unknown.status == 502 and "teapot" in unknown.message


def test_retryable_means_the_openai_sdk_would_retry_the_status() -> None:
    """x-should-retry: false is only needed where the SDK would otherwise retry (408/409/429/5xx);
    true must never be sent on a 4xx the SDK treats as final, that would be contradictory."""
    for row in ROWS:
        if row.should_retry == "true":
            assert row.openai_status in (408, 409, 429) or row.openai_status >= 500
