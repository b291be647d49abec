"""The model table: the names clients send, mapped to the ids Kiro understands.

One table, used twice: to resolve a client's ``model`` (Anthropic-style names, the dotted Kiro ids,
the older upper-case ids, ``auto``; any case; a ``-thinking`` suffix) and to list models on
``/v1/models``. The built-in rows are only the fallback: a catalog can be rebuilt from the
service's own ``ListAvailableModels`` answer by passing its rows to :class:`ModelCatalog`.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from ki2api.core.errors import ModelNotFound

THINKING_SUFFIX = "-thinking"
# Provider prefixes some routers put in front of the name (OpenRouter, LiteLLM style).
_PREFIXES = ("anthropic/", "kiro/", "claude/")
_DATE_SUFFIX = re.compile(r"-(\d{8})$")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str  # the name we list, e.g. "claude-sonnet-4-5"
    kiro_id: str  # what goes upstream in modelId
    context_window: int = 200_000  # tokens
    owned_by: str = "anthropic"
    aliases: tuple[str, ...] = ()
    thinking: bool = False  # resolved through a "-thinking" name: reasoning is on by default
    max_output_tokens: int = 64_000
    # The adaptive thinking form (<thinking_mode>adaptive</thinking_mode> + effort) is only known
    # to work on the 4.6 generation; older models get a token budget instead.
    adaptive_thinking: bool = False


def _m(
    id: str,
    kiro_id: str,
    *aliases: str,
    context_window: int = 200_000,
    max_output_tokens: int = 64_000,
    adaptive_thinking: bool = False,
    owned_by: str = "anthropic",
) -> ModelInfo:
    return ModelInfo(
        id=id,
        kiro_id=kiro_id,
        context_window=context_window,
        owned_by=owned_by,
        aliases=aliases,
        max_output_tokens=max_output_tokens,
        adaptive_thinking=adaptive_thinking,
    )


# Context windows: 200k is what every account gets; some accounts get 1M on the 4.6 models, which
# ListAvailableModels reports when the catalog is rebuilt from it.
DEFAULT_MODELS: tuple[ModelInfo, ...] = (
    _m(
        "claude-sonnet-4-6",
        "claude-sonnet-4.6",
        "claude-sonnet-4.6",
        "claude-sonnet-4-6-latest",
        adaptive_thinking=True,
    ),
    _m(
        "claude-opus-4-6",
        "claude-opus-4.6",
        "claude-opus-4.6",
        max_output_tokens=128_000,
        adaptive_thinking=True,
    ),
    _m(
        "claude-sonnet-4-5",
        "claude-sonnet-4.5",
        "claude-sonnet-4.5",
        "claude-sonnet-4-5-20250929",
        "CLAUDE_SONNET_4_5_20250929_V1_0",
    ),
    _m(
        "claude-opus-4-5",
        "claude-opus-4.5",
        "claude-opus-4.5",
        "claude-opus-4-5-20251101",
        "CLAUDE_OPUS_4_5_20251101_V1_0",
    ),
    _m(
        "claude-haiku-4-5",
        "claude-haiku-4.5",
        "claude-haiku-4.5",
        "claude-haiku-4-5-20251001",
        "CLAUDE_HAIKU_4_5_20251001_V1_0",
    ),
    _m(
        "claude-sonnet-4",
        "claude-sonnet-4",
        "claude-sonnet-4-0",
        "claude-sonnet-4-20250514",
        "CLAUDE_SONNET_4_20250514_V1_0",
    ),
    # No dotted id is known for 3.7: the service still takes the old upper-case one.
    _m(
        "claude-3-7-sonnet",
        "CLAUDE_3_7_SONNET_20250219_V1_0",
        "claude-3-7-sonnet-20250219",
        "claude-3-7-sonnet-latest",
        "claude-3.7-sonnet",
        "CLAUDE_3_7_SONNET_20250219_V1_0",
    ),
    _m("auto", "auto", owned_by="kiro"),  # the service picks the model
)


def _key(name: str) -> str:
    return name.strip().lower()


class ModelCatalog:
    """Resolves client model names; ``kiro_ids`` overrides what is sent upstream per model id."""

    def __init__(
        self,
        models: Iterable[ModelInfo] | None = None,
        *,
        kiro_ids: Mapping[str, str] | None = None,
    ) -> None:
        rows = list(DEFAULT_MODELS if models is None else models)
        overrides = {_key(k): v for k, v in (kiro_ids or {}).items()}
        self._models: list[ModelInfo] = []
        self._index: dict[str, ModelInfo] = {}
        for row in rows:
            if _key(row.id) in overrides:
                row = replace(row, kiro_id=overrides[_key(row.id)])
            self._models.append(row)
            for name in (row.id, row.kiro_id, *row.aliases):
                # First row wins: a later row never steals an earlier row's name.
                self._index.setdefault(_key(name), row)

    def list(self) -> builtins.list[ModelInfo]:
        return list(self._models)

    def resolve(self, name: str) -> ModelInfo:
        key = _key(name or "")
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        thinking = key.endswith(THINKING_SUFFIX)
        if thinking:
            key = key[: -len(THINKING_SUFFIX)]
        info = self._lookup(key)
        if info is None:
            raise ModelNotFound(
                f"The model '{name}' does not exist or is not served here. "
                f"Available models: {', '.join(m.id for m in self._models[:12])}"
                + (" and more (see /v1/models)." if len(self._models) > 12 else "."),
                param="model",
                code="model_not_found",
            )
        return replace(info, thinking=True) if thinking else info

    def _lookup(self, key: str) -> ModelInfo | None:
        if key in self._index:
            return self._index[key]
        # Snapshot names we have not listed yet (claude-opus-4-6-20260101): same model.
        undated = _DATE_SUFFIX.sub("", key)
        if undated != key and undated in self._index:
            return self._index[undated]
        if key.endswith("-latest") and key[: -len("-latest")] in self._index:
            return self._index[key[: -len("-latest")]]
        return None
