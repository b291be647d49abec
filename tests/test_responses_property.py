"""Property: any Responses request body, however odd, is either a clear 400 or a ChatRequest
whose Kiro body the simulator's strict validator accepts — never a crash (a 500)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ki2api.api.responses.protocol import parse_wire, to_chat_request
from ki2api.kiro.wire.models import ModelCatalog
from ki2api.kiro.wire.request_builder import build_kiro_request
from ki2api.model.errors import GatewayError
from ki2api.model.request import ImagePart
from ki2api.simulator.validator import validate_request

ARN = "arn:aws:codewhisperer:us-east-1:699475941385:profile/EHGA3GRVQMUK"
CATALOG = ModelCatalog()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "output_text", "input_image", "refusal", "x"])},
    optional={"text": json_values, "image_url": json_values, "refusal": json_values},
)
contents = st.one_of(json_values, st.lists(parts, max_size=3))
call_ids = st.sampled_from(["call_1", "call_2", "", "id with spaces"])
items = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]),
            "content": contents,
        },
        optional={"type": st.just("message")},
    ),
    st.fixed_dictionaries(
        {"type": st.just("function_call"), "call_id": call_ids, "name": st.text(max_size=6)},
        optional={"arguments": st.one_of(json_values, st.just('{"a": 1}'), st.just("{"))},
    ),
    st.fixed_dictionaries(
        {"type": st.just("function_call_output"), "call_id": call_ids},
        optional={"output": contents},
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["reasoning", "item_reference", "web_search_call"])}
    ),
)
functions = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "function", "web_search"]), "name": json_values},
    optional={"description": json_values, "parameters": json_values},
)
bodies = st.fixed_dictionaries(
    {
        "model": st.just("claude-sonnet-4-6"),
        "input": st.one_of(st.text(max_size=8), st.lists(items, max_size=5), json_values),
    },
    optional={
        "instructions": json_values,
        "tools": st.one_of(st.lists(functions, max_size=2), json_values),
        "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required"]), json_values),
        "reasoning": json_values,
        "max_output_tokens": json_values,
        "text": json_values,
    },
)


async def load_image(url: str, param: str) -> ImagePart:
    return ImagePart("png", b"\x89PNG\r\n\x1a\n\0")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_any_body_is_a_400_or_an_accepted_request(body: dict[str, Any]) -> None:
    try:
        request = asyncio.run(to_chat_request(parse_wire(body), load_image))
    except GatewayError as exc:
        assert exc.status == 400 and exc.message
        return
    built = build_kiro_request(
        request, model=CATALOG.resolve(request.model), profile_arn=ARN, conversation_id="c-1"
    )
    reason = validate_request(orjson.loads(built.body))
    assert reason is None, reason
