"""A local estimate of a request's input tokens, for ``count_tokens`` and ``message_start``.

Kiro has no counting endpoint and reports usage only at the end of an answer, so this is an
estimate, not Anthropic's count: :func:`ki2api.model.tokens.estimate_tokens` over every piece of
text the model reads (system prompt, messages, tool calls and results, tool definitions), plus
per image Anthropic's formula on its size read from the header, or a flat :data:`IMAGE_TOKENS`
(its figure for an image of about a megapixel) for an image URL, which ``count_tokens`` never
fetches. It does not include the few tokens of placeholders and steering the request builder
adds.
"""

from __future__ import annotations

from typing import Any

import orjson

from ki2api.model.request import ChatRequest, ImagePart, TextPart
from ki2api.model.tokens import estimate_tokens
from ki2api.pipeline.image_fit import image_tokens

IMAGE_TOKENS = 1_600


def estimate_request_tokens(request: ChatRequest) -> int:
    texts: list[str] = [request.system]
    images = 0  # tokens
    for message in request.messages:
        for part in message.parts:
            if isinstance(part, TextPart):
                texts.append(part.text)
            elif isinstance(part, ImagePart):
                images += image_tokens(part) or IMAGE_TOKENS
        for call in message.tool_calls:
            texts.append(call.name)
            texts.append(_json_text(call.arguments))
        texts.extend(result.content for result in message.tool_results)
    for tool in request.tools:
        texts.append(f"{tool.name} {tool.description}")
        texts.append(_json_text(tool.parameters))
    return estimate_tokens("\n".join(t for t in texts if t)) + images


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return str(value)  # odd values (lone surrogates ...): still roughly the right size
