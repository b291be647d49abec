"""The model table: every name clients send resolves to the id Kiro takes."""

from __future__ import annotations

import pytest

from ki2api.kiro.wire.models import ModelCatalog, ModelInfo
from ki2api.model.errors import ModelNotFound


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


# --- resolution that never strands a client (issue 18) ------------------------------------------


@pytest.mark.parametrize(
    ("name", "listed"),
    [
        ("claude-opus-5-5", "claude-opus-4-6"),  # Claude Code 2.1.3xx's default: newest opus
        ("claude-opus-4-8[1m]", "claude-opus-4-6"),  # its 1M-context label
        ("claude-opus-4-6[1m]", "claude-opus-4-6"),
        ("claude-sonnet-4-6-20270101[1m]", "claude-sonnet-4-6"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-haiku-5-0", "claude-haiku-4-5"),
        ("claude-3-5-sonnet-20241022", "claude-3-7-sonnet"),  # nearest sonnet: 3.7
        ("claude-3-opus-20240229", "claude-opus-4-5"),  # nearest opus: 4.5
        ("claude-sonnet-4-7", "claude-sonnet-4-6"),
        ("sonnet", "claude-sonnet-4-6"),
        ("anthropic/claude-opus-4-7-thinking", "claude-opus-4-6"),
    ],
)
def test_unknown_versions_fall_back_to_the_family(
    catalog: ModelCatalog, name: str, listed: str
) -> None:
    assert catalog.resolve(name).id == listed


def test_family_tie_prefers_the_newer_version() -> None:
    catalog = ModelCatalog(
        [
            ModelInfo("claude-sonnet-4", "claude-sonnet-4"),
            ModelInfo("claude-sonnet-4-4", "claude-sonnet-4.4"),
            ModelInfo("claude-sonnet-4-6", "claude-sonnet-4.6"),
        ]
    )
    assert catalog.resolve("claude-sonnet-4-5").id == "claude-sonnet-4-6"
    assert catalog.resolve("claude-sonnet-4-1").id == "claude-sonnet-4"


def test_aliases_come_after_exact_ids() -> None:
    catalog = ModelCatalog(
        aliases={"gpt-4o": "claude-sonnet-4-6", "claude-haiku-4-5": "claude-opus-4-6"}
    )
    assert catalog.resolve("gpt-4o").kiro_id == "claude-sonnet-4.6"
    assert catalog.resolve("GPT-4o-thinking").thinking
    assert catalog.resolve("claude-haiku-4-5").id == "claude-haiku-4-5"  # exact id wins
    catalog.set_aliases('{"gpt-5": "opus"}')
    assert catalog.resolve("gpt-5").id == "claude-opus-4-6"
    with pytest.raises(ModelNotFound):
        catalog.resolve("gpt-4o")  # the old table is gone
    catalog.set_aliases({"o3": "no-such-model"})
    with pytest.raises(ModelNotFound, match="alias"):
        catalog.resolve("o3")
    with pytest.raises(ValueError):
        catalog.set_aliases("[1, 2]")


def test_fallback_for_unknown_names_is_the_operators_choice() -> None:
    strict = ModelCatalog()
    with pytest.raises(ModelNotFound) as info:
        strict.resolve("claude-sonet-4-5")
    assert "The closest: claude-sonnet-4-5" in info.value.message
    lenient = ModelCatalog(fallback="auto")
    assert lenient.resolve("gpt-4o").id == "auto"
    assert lenient.resolve("claude-opus-4-8").id == "claude-opus-4-6"  # family before fallback


def test_catalog_narrowed_to_what_the_accounts_list() -> None:
    catalog = ModelCatalog()
    first = catalog.resolve("claude-opus-4-6")
    assert catalog.resolve("claude-opus-4-6") is first  # memoised
    catalog.set_available(
        [
            ModelInfo("claude-sonnet-4-5", "claude-sonnet-4.5", 1_000_000),
            ModelInfo("claude-haiku-4-5", "claude-haiku-4.5"),
        ]
    )
    assert [m.id for m in catalog.list()] == ["claude-sonnet-4-5", "claude-haiku-4-5", "auto"]
    assert catalog.resolve("claude-sonnet-4-6").id == "claude-sonnet-4-5"
    assert catalog.resolve("claude-sonnet-4-5").context_window == 1_000_000
    with pytest.raises(ModelNotFound):
        catalog.resolve("claude-opus-4-6")  # no opus on any account
    catalog.set_available(None)
    assert catalog.resolve("claude-opus-4-6").id == "claude-opus-4-6"
