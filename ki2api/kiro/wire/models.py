"""The model table: the names clients send, mapped to the ids Kiro understands.

One table, used twice: to resolve a client's ``model`` (Anthropic-style names, the dotted Kiro ids,
the older upper-case ids, ``auto``; any case; a ``-thinking`` suffix) and to list models on
``/v1/models``. The built-in rows are only the fallback:
:mod:`ki2api.kiro.accounts.available_models` narrows the catalog to what the accounts list
(``ListAvailableModels``, :meth:`set_available`). Names nobody lists still find a model when one
fits (see :class:`ModelCatalog`), so a client on its own defaults (Claude Code asks for models
newer than Kiro's) is not stranded.
"""

from __future__ import annotations

import builtins
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import orjson

from ki2api.model.errors import ModelNotFound

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


_LABEL = re.compile(r"\[[^\[\]]*\]$")  # Claude Code's "[1m]" (its 1M-context label)
_FAMILY_NEW = re.compile(r"^claude-(opus|sonnet|haiku)(?:-(\d+)(?:[-.](\d{1,2}))?)?$")
_FAMILY_OLD = re.compile(r"^claude-(\d+)(?:[-.](\d{1,2}))?-(opus|sonnet|haiku)$")
_FAMILIES = ("opus", "sonnet", "haiku")
_MEMO_LIMIT = 4096


def family_version(name: str) -> tuple[str, int | None] | None:
    """``("opus", 406)`` for ``claude-opus-4-6`` / ``claude-opus-4.6``, ``("sonnet", 305)`` for
    ``claude-3-5-sonnet``, ``("haiku", None)`` for a bare ``haiku``; None for other names."""
    key = _key(name)
    if key in _FAMILIES:
        return key, None
    if match := _FAMILY_NEW.match(key):
        family, major, minor = match.groups()
    elif match := _FAMILY_OLD.match(key):
        major, minor, family = match.groups()
    else:
        return None
    if major is None:
        return family, None
    return family, int(major) * 100 + int(minor or 0)


def client_id_for(kiro_id: str) -> str:
    """The name we list for a Kiro id the built-in table does not know: ``claude-opus-4.7`` →
    ``claude-opus-4-7`` (Anthropic's spelling); other ids as they are."""
    return kiro_id.lower().replace(".", "-") if kiro_id.lower().startswith("claude-") else kiro_id


def info_for_listed(
    kiro_id: str,
    *,
    known: ModelInfo | None,
    context_window: int | None = None,
    max_output_tokens: int | None = None,
) -> ModelInfo:
    """A row for a model the service lists: the built-in row when it knows the id (its aliases
    kept), with the service's limits."""
    if known is None:
        fv = family_version(client_id_for(kiro_id))
        known = _m(
            client_id_for(kiro_id),
            kiro_id,
            kiro_id,
            adaptive_thinking=fv is not None and (fv[1] or 0) >= 406,
            owned_by="anthropic" if kiro_id.lower().startswith("claude") else "kiro",
        )
    else:
        known = replace(known, kiro_id=kiro_id)
    if context_window:
        known = replace(known, context_window=context_window)
    if max_output_tokens:
        known = replace(known, max_output_tokens=max_output_tokens)
    return known


def parse_aliases(raw: str | Mapping[str, str] | None) -> dict[str, str]:
    """``MODEL_ALIASES``: a JSON object of client name → model name. Raises ValueError."""
    if raw is None or raw == "":
        return {}
    data = orjson.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and k.strip() and v.strip()
        for k, v in data.items()
    ):
        raise ValueError('MODEL_ALIASES must be a JSON object of names, e.g. {"gpt-4o": "auto"}')
    return {_key(k): v.strip() for k, v in data.items()}


class ModelCatalog:
    """Resolves client model names to what the pool can serve.

    ``models`` is the built-in table (the fallback); :meth:`set_available` narrows it to what the
    accounts may use (``ListAvailableModels``). Resolution order: the exact name → the
    operator's aliases (``MODEL_ALIASES``) → the name without a ``[...]`` label, a date suffix or
    ``-latest`` → the same family (opus / sonnet / haiku) at the nearest version listed, newer
    first → ``fallback`` (``MODEL_FALLBACK``, e.g. ``auto``) → 404 naming the closest ids.
    A ``-thinking`` suffix turns reasoning on; ``kiro_ids`` overrides what is sent upstream.
    Results are memoised per name, so a request pays one dict lookup.
    """

    def __init__(
        self,
        models: Iterable[ModelInfo] | None = None,
        *,
        kiro_ids: Mapping[str, str] | None = None,
        aliases: Mapping[str, str] | None = None,
        fallback: str | None = None,
    ) -> None:
        rows = list(DEFAULT_MODELS if models is None else models)
        overrides = {_key(k): v for k, v in (kiro_ids or {}).items()}
        self._base = [
            replace(row, kiro_id=overrides[_key(row.id)]) if _key(row.id) in overrides else row
            for row in rows
        ]
        self._base_index = self._index_of(self._base)
        self._aliases = parse_aliases(aliases)
        self.fallback = fallback or None
        self._memo: dict[str, ModelInfo] = {}
        self._install(self._base)

    @staticmethod
    def _index_of(rows: Iterable[ModelInfo]) -> dict[str, ModelInfo]:
        index: dict[str, ModelInfo] = {}
        for row in rows:
            for name in (row.id, row.kiro_id, *row.aliases):
                index.setdefault(_key(name), row)  # first row wins
        return index

    def _install(self, rows: builtins.list[ModelInfo]) -> None:
        self._models = rows
        self._index = self._index_of(rows)
        self._families = sorted(
            ((fv[0], fv[1] or 0, row) for row in rows if (fv := family_version(row.id))),
            key=lambda t: -t[1],
        )
        self._memo = {}

    # --- what the pool can serve -------------------------------------------------------------

    def list(self) -> builtins.list[ModelInfo]:
        return list(self._models)

    def set_available(self, listed: Iterable[ModelInfo] | None) -> None:
        """Serve only ``listed`` (rows made by :func:`info_for_listed`); None: the built-in table.
        ``auto`` stays whatever the accounts list: the service always takes it."""
        if listed is None:
            self._install(self._base)
            return
        rows: builtins.list[ModelInfo] = []
        seen: set[str] = set()
        for row in listed:
            if _key(row.id) not in seen:
                seen.add(_key(row.id))
                rows.append(row)
        auto = self._base_index.get("auto")
        if auto is not None and "auto" not in seen:
            rows.append(auto)
        self._install(rows)

    def built_in(self) -> builtins.list[ModelInfo]:
        return list(self._base)

    def known(self, kiro_id: str) -> ModelInfo | None:
        """The built-in row for a Kiro id (or any name it answers to)."""
        return self._base_index.get(_key(kiro_id))

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def set_aliases(self, aliases: Mapping[str, str] | str | None) -> None:
        """Replace the alias table (raises ValueError for a malformed one)."""
        self._aliases = parse_aliases(aliases)
        self._memo = {}

    # --- resolution --------------------------------------------------------------------------

    def resolve(self, name: str) -> ModelInfo:
        info = self._memo.get(name)
        if info is None:
            info = self._resolve(name)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[name] = info
        return info

    def _resolve(self, name: str) -> ModelInfo:
        key = _key(name if isinstance(name, str) else "")
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        thinking = key.endswith(THINKING_SUFFIX)
        if thinking:
            key = key[: -len(THINKING_SUFFIX)]
        info = self._index.get(key)
        if info is None and key in self._aliases:
            target = self._aliases[key]
            info = self._match(_key(target))
            if info is None:
                raise ModelNotFound(
                    f"The model '{name}' is an alias (MODEL_ALIASES) of '{target}', which is not "
                    f"served here. Available models: {self._names()}",
                    param="model",
                    code="model_not_found",
                )
        if info is None:
            info = self._match(key)
        if info is None and self.fallback and key:
            info = self._match(_key(self.fallback))
        if info is None:
            raise self._not_found(name, key)
        return replace(info, thinking=True) if thinking else info

    def _match(self, key: str) -> ModelInfo | None:
        if key in self._index:
            return self._index[key]
        bare = _LABEL.sub("", key).strip()
        bare = _DATE_SUFFIX.sub("", bare)
        if bare.endswith("-latest"):
            bare = bare[: -len("-latest")]
        if bare in self._index:
            return self._index[bare]
        fv = family_version(bare)
        if fv is None:
            return None
        family, wanted = fv
        rows = [(v, row) for f, v, row in self._families if f == family]  # newest first
        if not rows:
            return None
        if wanted is None:
            return rows[0][1]
        return min(rows, key=lambda t: abs(t[0] - wanted))[1]  # min keeps the newer on a tie

    def _names(self) -> str:
        names = [m.id for m in self._models]
        more = " and more (see /v1/models)." if len(names) > 12 else "."
        return ", ".join(names[:12]) + more

    def _not_found(self, name: str, key: str) -> ModelNotFound:
        ids = [m.id for m in self._models]
        close = difflib.get_close_matches(key, ids, n=3, cutoff=0.4)
        hint = f" The closest: {', '.join(close)}." if close else ""
        return ModelNotFound(
            f"The model '{name}' does not exist or is not served here.{hint} "
            f"Available models: {self._names()}",
            param="model",
            code="model_not_found",
        )
