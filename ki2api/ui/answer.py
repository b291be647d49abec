"""How one streamed answer looks in the chat: pure functions of the deltas, no Gradio events.

Reasoning goes into a collapsible "Thinking" message, each tool call into its own titled message,
the answer text into a plain assistant message; every update is the whole answer so far.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ki2api.model.deltas import (
    Delta,
    ReasoningDelta,
    Stop,
    StreamError,
    TextDelta,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from ki2api.model.request import Message, TextPart
from ki2api.ui.i18n import t

ChatMessages = list[dict[str, Any]]


def message_text(content: Any) -> str:
    """Text of a Chatbot message's content (a string, or Gradio 6's list of typed parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, list):
        return "".join(message_text(part) for part in content)
    return ""


def history_to_messages(history: ChatMessages) -> list[Message]:
    """The conversation the model sees: user and assistant text, without the page's own notes
    (thinking, tool calls, errors carry a metadata title and are left out)."""
    messages: list[Message] = []
    for item in history or []:
        role = item.get("role")
        if role not in ("user", "assistant") or (item.get("metadata") or {}).get("title"):
            continue
        text = message_text(item.get("content")).strip()
        if not text:
            continue
        if messages and messages[-1].role == role:
            messages[-1].parts.append(TextPart("\n\n" + text))
        else:
            messages.append(Message(role=role, parts=[TextPart(text)]))
    return messages


@dataclass
class ToolView:
    name: str
    args: list[str] = field(default_factory=list)
    done: bool = False


@dataclass
class AnswerView:
    """Accumulates deltas; :meth:`messages` renders the answer so far."""

    lang: str = "en"
    started: float = field(default_factory=time.perf_counter)
    text: str = ""
    reasoning: str = ""
    tools: dict[int, ToolView] = field(default_factory=dict)
    error: str | None = None
    output_tokens: int | None = None
    first_at: float | None = None
    thinking_done_at: float | None = None
    ended_at: float | None = None
    stopped: bool = False

    def feed(self, delta: Delta) -> None:
        now = time.perf_counter()
        if self.first_at is None and isinstance(delta, TextDelta | ReasoningDelta | ToolCallStart):
            self.first_at = now
        if isinstance(delta, ReasoningDelta):
            self.reasoning += delta.text
        elif isinstance(delta, TextDelta):
            if self.reasoning and self.thinking_done_at is None:
                self.thinking_done_at = now
            self.text += delta.text
        elif isinstance(delta, ToolCallStart):
            self.tools[delta.index] = ToolView(delta.name)
        elif isinstance(delta, ToolCallArgs):
            self.tools[delta.index].args.append(delta.fragment)
        elif isinstance(delta, ToolCallEnd):
            self.tools[delta.index].done = True
        elif isinstance(delta, Usage):
            self.output_tokens = delta.output_tokens
        elif isinstance(delta, StreamError):
            self.fail(delta.error.message)
        elif isinstance(delta, Stop):
            self.finish()

    def fail(self, message: str) -> None:
        self.error = message
        self.finish()

    def finish(self, *, stopped: bool = False) -> None:
        self.stopped = self.stopped or stopped
        if self.ended_at is None:
            self.ended_at = time.perf_counter()

    @property
    def ttft(self) -> float | None:
        return None if self.first_at is None else self.first_at - self.started

    @property
    def tokens(self) -> int:
        if self.output_tokens:
            return self.output_tokens
        produced = (
            self.text + self.reasoning + "".join("".join(v.args) for v in self.tools.values())
        )
        return max(1, len(produced) // 4) if produced else 0

    @property
    def tokens_per_second(self) -> float | None:
        if self.first_at is None:
            return None
        end = self.ended_at or time.perf_counter()
        span = end - self.first_at
        return self.tokens / span if span > 0.05 else None

    def messages(self) -> ChatMessages:
        out: ChatMessages = []
        if self.reasoning:
            end = self.thinking_done_at or self.ended_at
            meta: dict[str, Any] = {"title": "💭 " + t("thinking_title", self.lang)}
            if end is not None and self.first_at is not None:
                meta |= {"status": "done", "duration": round(end - self.first_at, 2)}
            else:
                meta["status"] = "pending"
            out.append({"role": "assistant", "content": self.reasoning, "metadata": meta})
        if self.text:
            out.append({"role": "assistant", "content": self.text})
        for view in self.tools.values():
            title = f"🔧 {t('tool_title', self.lang)}: {view.name}"
            args = "".join(view.args) or "{}"
            meta = {"title": title}  # no status: stays open, the arguments are the point
            out.append({"role": "assistant", "content": f"```json\n{args}\n```", "metadata": meta})
        if self.error is not None:  # the title says what happened, once; the message says why
            title = f"⚠️ {t('error_prefix', self.lang)}"
            out.append({"role": "assistant", "content": self.error, "metadata": {"title": title}})
        if not out:
            out.append({"role": "assistant", "content": "…", "metadata": {"title": "⏳"}})
        return out

    def metrics(self, model: str) -> str:
        parts = [f"`{model}`"]
        if self.ttft is not None:
            parts.append(f"{t('ttft', self.lang)} **{self.ttft:.2f} s**")
        speed = self.tokens_per_second
        if speed is not None:
            parts.append(f"**{speed:.1f}** {t('speed', self.lang)}")
        if self.tokens:
            parts.append(f"{self.tokens} {t('tokens_out', self.lang)}")
        if self.stopped:
            parts.append(t("stopped", self.lang))
        return " · ".join(parts)
