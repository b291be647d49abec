"""Checks on what the model did against what the client asked for.

The service has no ``tool_choice`` or ``response_format``: the request builder steers the model
with instructions, and these checks report honestly when it did not follow them.
"""

from __future__ import annotations

import re

import orjson

from ki2api.model.logsafe import printable
from ki2api.model.request import ChatRequest

_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n(.*?)\n?```\s*$", re.DOTALL)


def tool_choice_problem(request: ChatRequest, called: list[str]) -> str | None:
    """Why the calls made do not satisfy ``tool_choice``, or None when they do."""
    choice = request.tool_choice
    if choice.mode == "required" and not called:
        return "tool_choice was 'required' but the model answered without calling a tool"
    if choice.mode == "tool" and choice.name not in called:
        # The name is the client's: escaped, as this goes to the log and into an SSE comment.
        return f"tool_choice asked for '{printable(choice.name)}' but the model did not call it"
    return None


def normalise_json_answer(text: str, schema: dict[str, object]) -> tuple[str, str | None]:
    """Strip a Markdown fence around a JSON answer; return the text and a problem, if any."""
    match = _FENCE.match(text)
    if match:
        text = match.group(1).strip()
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text, "response_format asked for JSON but the answer is not valid JSON"
    if schema.get("type", "object") == "object" and not isinstance(value, dict):
        return text, "response_format asked for a JSON object but the answer is another value"
    return text, None
