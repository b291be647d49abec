"""The internal request model: what every front door parses its wire format into.

Front doors map their roles onto two: ``user`` and ``assistant``. System and developer text goes
to :attr:`ChatRequest.system`; tool results travel on the user message that follows the calls
(as Kiro wants them). The Kiro request builder turns this into ``conversationState`` and enforces
the upstream's shape rules, so front doors do not have to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """Image bytes already fetched and checked; ``format`` is Kiro's: png, jpeg, gif or webp."""

    format: Literal["png", "jpeg", "gif", "webp"]
    data: bytes


ContentPart = TextPart | ImagePart


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the assistant made; ``arguments`` is the decoded JSON object."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolResult:
    tool_call_id: str
    content: str
    is_error: bool = False


@dataclass(slots=True)
class Message:
    role: Role
    parts: list[ContentPart] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)  # assistant only
    tool_results: list[ToolResult] = field(default_factory=list)  # user only

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def images(self) -> list[ImagePart]:
        return [p for p in self.parts if isinstance(p, ImagePart)]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``auto`` lets the model decide, ``none`` offers no tools, ``required`` asks for any call,
    ``tool`` asks for the one named in :attr:`name`."""

    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Reasoning:
    """Thinking mode: a token budget (``enabled``) or an effort level (``adaptive``)."""

    mode: Literal["enabled", "adaptive"]
    budget_tokens: int | None = None
    effort: Literal["low", "medium", "high"] | None = None


@dataclass(frozen=True, slots=True)
class WebSearch:
    """The client offered a web-search tool; the gateway runs the searches
    (:mod:`ki2api.pipeline.websearch`). ``direct_query``: search this at once, no model call
    (Claude Code's WebSearch request)."""

    max_uses: int | None = None
    direct_query: str | None = None
    allowed_domains: tuple[str, ...] = ()
    blocked_domains: tuple[str, ...] = ()


@dataclass(slots=True)
class ChatRequest:
    model: str  # as the client named it; resolved by the model catalog
    messages: list[Message]
    system: str = ""
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    reasoning: Reasoning | None = None
    # json_object / json_schema: the schema (or {} for any object) the answer must follow
    response_schema: dict[str, Any] | None = None
    stream: bool = False
    conversation_id: str | None = None  # from a client header, else derived
    # A visitor's own credential (the UI's pasted token): bypasses the account pool.
    credential_override: Any | None = None
    web_search: WebSearch | None = None  # a server-side web-search tool was offered
