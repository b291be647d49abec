"""The table of docs/errors.md as data, for the tests that keep it true."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ki2api.model import errors
from ki2api.model.errors import GatewayError
from ki2api.pipeline import concurrency

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
NONE = "—"


@dataclass(frozen=True)
class DocRow:
    kiro_status: str
    reason: str
    message: str
    fault: str
    classified_as: str
    gateway_does: str
    client_gets: str
    openai_status: int
    openai_type: str
    openai_code: str
    should_retry: str
    retry_after: str
    anthropic_status: int
    anthropic_type: str

    @property
    def http_status(self) -> int | None:
        return int(self.kiro_status) if self.kiro_status.isdigit() else None

    @property
    def mid_stream(self) -> bool:
        return self.kiro_status.startswith("mid-stream")

    @property
    def succeeds(self) -> bool:
        return self.client_gets == "answer"

    def error_class(self) -> type[GatewayError]:
        return error_class(self.client_gets)


def error_class(name: str) -> type[GatewayError]:
    found = getattr(errors, name, None) or getattr(concurrency, name, None)
    assert isinstance(found, type) and issubclass(found, GatewayError), name
    return found


def doc_rows() -> list[DocRow]:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Kiro status |"))
    rows: list[DocRow] = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 14, line
        values: list[str | int] = list(cells)
        values[7], values[12] = int(cells[7]), int(cells[12])
        rows.append(DocRow(*values))  # type: ignore[arg-type]
    return rows


def rows_by_fault() -> dict[str, DocRow]:
    return {row.fault: row for row in doc_rows() if row.fault != NONE}
