"""The model table: every name clients send resolves to the id Kiro takes."""

from __future__ import annotations

import pytest

from ki2api.core.errors import ModelNotFound
from ki2api.kiro.models import ModelCatalog, ModelInfo


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return ModelCatalog()


@pytest.mark.parametrize(
    ("name", "listed", "kiro_id"),
    [
        ("claude-sonnet-4-20250514", "claude-sonnet-4", "claude-sonnet-4"),
        ("claude-sonnet-4-0", "claude-sonnet-4", "claude-sonnet-4"),
        ("claude-sonnet-4", "claude-sonnet-4", "claude-sonnet-4"),
        ("CLAUDE_SONNET_4_20250514_V1_0", "claude-sonnet-4", "claude-sonnet-4"),
        ("claude-sonnet-4-5", "claude-sonnet-4-5", "claude-sonnet-4.5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5", "claude-sonnet-4.5"),
        ("claude-sonnet-4.5", "claude-sonnet-4-5", "claude-sonnet-4.5"),
        ("CLAUDE_SONNET_4_5_20250929_V1_0", "claude-sonnet-4-5", "claude-sonnet-4.5"),
        ("claude-haiku-4-5", "claude-haiku-4-5", "claude-haiku-4.5"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5", "claude-haiku-4.5"),
        ("claude-haiku-4.5", "claude-haiku-4-5", "claude-haiku-4.5"),
        ("claude-opus-4-5", "claude-opus-4-5", "claude-opus-4.5"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5", "claude-opus-4.5"),
        ("claude-opus-4.5", "claude-opus-4-5", "claude-opus-4.5"),
        ("claude-sonnet-4-6", "claude-sonnet-4-6", "claude-sonnet-4.6"),
        ("claude-sonnet-4.6", "claude-sonnet-4-6", "claude-sonnet-4.6"),
        ("claude-opus-4-6", "claude-opus-4-6", "claude-opus-4.6"),
        ("claude-opus-4.6", "claude-opus-4-6", "claude-opus-4.6"),
        ("claude-3-7-sonnet-20250219", "claude-3-7-sonnet", "CLAUDE_3_7_SONNET_20250219_V1_0"),
        ("CLAUDE_3_7_SONNET_20250219_V1_0", "claude-3-7-sonnet", "CLAUDE_3_7_SONNET_20250219_V1_0"),
        ("auto", "auto", "auto"),
        # case, spaces, router prefixes, unseen snapshot dates
        ("Claude-Sonnet-4-5", "claude-sonnet-4-5", "claude-sonnet-4.5"),
        ("  claude-haiku-4-5  ", "claude-haiku-4-5", "claude-haiku-4.5"),
        ("anthropic/claude-opus-4.5", "claude-opus-4-5", "claude-opus-4.5"),
        ("claude-opus-4-6-20260301", "claude-opus-4-6", "claude-opus-4.6"),
        ("AUTO", "auto", "auto"),
    ],
)
def test_resolves(catalog: ModelCatalog, name: str, listed: str, kiro_id: str) -> None:
    info = catalog.resolve(name)
    assert (info.id, info.kiro_id, info.thinking) == (listed, kiro_id, False)


@pytest.mark.parametrize(
    "name",
    ["claude-sonnet-4-5-thinking", "CLAUDE-SONNET-4.5-THINKING", "claude-sonnet-4.5-thinking"],
)
def test_thinking_suffix(catalog: ModelCatalog, name: str) -> None:
    info = catalog.resolve(name)
    assert (info.id, info.kiro_id, info.thinking) == (
        "claude-sonnet-4-5",
        "claude-sonnet-4.5",
        True,
    )
    assert catalog.resolve("claude-sonnet-4-5").thinking is False  # the table is not changed


@pytest.mark.parametrize(
    "name", ["gpt-4o", "", "claude", "claude-sonnet-4-5-20250929x", "-thinking"]
)
def test_unknown_model(catalog: ModelCatalog, name: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        catalog.resolve(name)
    error = info.value
    assert (error.status, error.param, error.openai_code) == (404, "model", "model_not_found")
    assert "claude-sonnet-4-5" in error.message  # lists valid names


def test_list_has_unique_ids_and_sane_limits(catalog: ModelCatalog) -> None:
    models = catalog.list()
    ids = [m.id for m in models]
    assert len(ids) == len(set(ids))
    assert {"claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-6", "auto"} <= set(ids)
    for m in models:
        assert m.context_window >= 200_000 and m.max_output_tokens > 0 and not m.thinking
        assert catalog.resolve(m.id) == m
    catalog.list().clear()  # a copy
    assert catalog.list() == models


def test_per_model_kiro_id_override() -> None:
    catalog = ModelCatalog(kiro_ids={"claude-sonnet-4-5": "CLAUDE_SONNET_4_5_20250929_V1_0"})
    assert (
        catalog.resolve("claude-sonnet-4-5-20250929").kiro_id == "CLAUDE_SONNET_4_5_20250929_V1_0"
    )
    assert catalog.resolve("claude-haiku-4-5").kiro_id == "claude-haiku-4.5"


def test_catalog_from_the_service_list() -> None:
    """ListAvailableModels can replace the fallback table: only what the account may use."""
    catalog = ModelCatalog(
        [
            ModelInfo("claude-sonnet-4-5", "claude-sonnet-4.5", 1_000_000, aliases=("sonnet",)),
            ModelInfo("claude-opus-4-7", "claude-opus-4.7", 1_000_000),
        ]
    )
    assert catalog.resolve("sonnet").context_window == 1_000_000
    assert catalog.resolve("claude-opus-4.7-thinking").thinking
    with pytest.raises(ModelNotFound):
        catalog.resolve("claude-haiku-4-5")
