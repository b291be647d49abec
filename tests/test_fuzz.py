"""Fuzzing: schemathesis against the app's OpenAPI schema, and a hypothesis fuzzer throwing
arbitrary JSON at every front door and at the page's routes (Gradio's queue, and paths around
it). Over 2,000 requests in all hit a gateway on a real socket (in front of the simulator), and
none may answer 5xx or leak a traceback.

The front doors read raw bodies (to bound their size and to answer bad JSON in the client's
format), so FastAPI's schema has no request bodies; the test adds them (``BODIES``) so
schemathesis generates real payloads.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ki2api.app import create_app
from ki2api.settings import Settings
from tests.stack import API_KEY, Stack, StackFactory, make_stack_factory

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

SCHEMATHESIS_EXAMPLES = 120  # per operation; ~13 operations
FUZZ_EXAMPLES = 900
COUNT = {"requests": 0}

_TEXT = {"type": "string", "maxLength": 200}
_ANY: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "maxLength": 50},
        {"type": "integer"},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 10}},
        {"type": "object", "maxProperties": 3},
    ]
}
_MODEL = {
    "anyOf": [
        {"enum": ["claude-sonnet-4-5", "claude-haiku-4.5", "auto", "claude-opus-4.6-thinking"]},
        _TEXT,
    ]
}
_PART = {
    "type": "object",
    "properties": {
        "type": {"enum": ["text", "image_url", "image", "tool_use", "tool_result", "thinking"]},
        "text": _TEXT,
        "id": _TEXT,
        "name": _TEXT,
        "input": {"type": "object", "maxProperties": 2},
        "tool_use_id": _TEXT,
        "content": _TEXT,
        "image_url": {"type": "object", "properties": {"url": _TEXT}},
        "source": {"type": "object", "properties": {"type": _TEXT, "data": _TEXT}},
    },
    "required": ["type"],
}
_MESSAGE = {
    "type": "object",
    "properties": {
        "role": {"enum": ["user", "assistant", "system", "developer", "tool", "function"]},
        "content": {
            "anyOf": [_TEXT, {"type": "array", "maxItems": 3, "items": _PART}, {"type": "null"}]
        },
        "tool_call_id": _TEXT,
        "name": _TEXT,
        "tool_calls": {
            "type": "array",
            "maxItems": 2,
            "items": {
                "type": "object",
                "properties": {
                    "id": _TEXT,
                    "type": {"enum": ["function"]},
                    "function": {
                        "type": "object",
                        "properties": {"name": _TEXT, "arguments": _TEXT},
                    },
                },
            },
        },
    },
    "required": ["role"],
}
_TOOL = {
    "type": "object",
    "properties": {
        "type": {"enum": ["function", "custom"]},
        "name": _TEXT,
        "description": _TEXT,
        "input_schema": {"type": "object", "maxProperties": 2},
        "function": {
            "type": "object",
            "properties": {
                "name": _TEXT,
                "description": _TEXT,
                "parameters": {"type": "object", "maxProperties": 2},
            },
        },
    },
}
_COMMON = {
    "model": _MODEL,
    "stream": {"type": "boolean"},
    "max_tokens": {"type": "integer"},
    "temperature": {"type": "number"},
    "top_p": {"type": "number"},
    "stop": {"anyOf": [_TEXT, {"type": "array", "maxItems": 3, "items": _TEXT}]},
    "tools": {"type": "array", "maxItems": 2, "items": _TOOL},
    "tool_choice": _ANY,
    "metadata": _ANY,
}
CHAT_BODY = {
    "type": "object",
    "properties": {
        **_COMMON,
        "messages": {"type": "array", "maxItems": 4, "items": _MESSAGE},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "reasoning_effort": {"enum": ["low", "medium", "high", "none"]},
    },
    "required": ["model", "messages"],
}
MESSAGES_BODY = {
    "type": "object",
    "properties": {
        **_COMMON,
        "messages": {"type": "array", "maxItems": 4, "items": _MESSAGE},
        "system": {"anyOf": [_TEXT, {"type": "array", "maxItems": 2, "items": _PART}]},
        "thinking": {
            "type": "object",
            "properties": {"type": {"enum": ["enabled", "disabled"]}, "budget_tokens": {}},
        },
    },
    "required": ["model", "messages", "max_tokens"],
}
RESPONSES_BODY = {
    "type": "object",
    "properties": {
        **_COMMON,
        "input": {"anyOf": [_TEXT, {"type": "array", "maxItems": 3, "items": _MESSAGE}]},
        "instructions": _TEXT,
        "max_output_tokens": {"type": "integer"},
        "reasoning": {"type": "object", "properties": {"effort": _TEXT}},
    },
    "required": ["model", "input"],
}
ACCOUNT_BODY = {
    "type": "object",
    "properties": {
        "label": _TEXT,
        "accessToken": _TEXT,
        "refreshToken": _TEXT,
        "token": _TEXT,
        "region": _TEXT,
        "authMethod": _TEXT,
    },
}
BODIES = {
    ("/v1/chat/completions", "post"): CHAT_BODY,
    ("/v1/messages", "post"): MESSAGES_BODY,
    ("/v1/messages/count_tokens", "post"): MESSAGES_BODY,
    ("/v1/responses", "post"): RESPONSES_BODY,
    ("/admin/accounts", "post"): ACCOUNT_BODY,
}


def openapi_with_bodies() -> dict[str, Any]:
    app = create_app(Settings(kiro_token_file=Path("/nonexistent/kiro.json")), with_ui=False)
    schema = copy.deepcopy(app.openapi())
    for (path, method), body in BODIES.items():
        operation = schema["paths"][path][method]
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    # Deleting accounts would only test that an empty pool answers 503: leave it out.
    for operations in schema["paths"].values():
        operations.pop("delete", None)
    return schema


SCHEMA = schemathesis.openapi.from_dict(openapi_with_bodies())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    factories: Iterator[StackFactory] = make_stack_factory()
    make = next(factories)
    no_login = tmp_path_factory.mktemp("home") / "kiro-auth-token.json"
    # ADMIN_KEY set (to the same key), so the fuzzer reaches the admin API's handlers too.
    yield make({"KIRO_FIRST_BYTE_TIMEOUT": "5", "ADMIN_KEY": API_KEY}, kiro_token_file=no_login)
    next(factories, None)
    print(f"fuzz: {COUNT['requests']} requests")


def check_answer(status: int, text: str, path: str) -> None:
    assert status < 500, (status, path, text[:500])
    assert "Traceback" not in text and "site-packages" not in text
    if status >= 400 and path.startswith("/v1/"):
        body = orjson.loads(text)
        if path.startswith("/v1/messages"):
            assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
        else:
            assert set(body["error"]) == {"message", "type", "param", "code"}


@SCHEMA.parametrize()
@settings(
    max_examples=SCHEMATHESIS_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_schemathesis_finds_no_server_errors(case: Any, stack: Stack) -> None:
    response = case.call(base_url=stack.url, headers=stack.headers(), timeout=20)
    COUNT["requests"] += 1
    check_answer(response.status_code, response.text, case.path)


# --- hypothesis: arbitrary JSON and near-valid bodies at every front door ----------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
roles = st.sampled_from(["user", "assistant", "system", "developer", "tool", "wizard", ""])
contents = (
    st.text(max_size=80)
    | st.none()
    | st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "image_url", "tool_result", "x"])},
            optional={"text": st.text(max_size=20) | json_values, "content": json_values},
        ),
        max_size=3,
    )
    | json_values
)
messages = st.lists(
    st.fixed_dictionaries({"role": roles | json_values}, optional={"content": contents}),
    max_size=5,
)
near_valid = st.fixed_dictionaries(
    {"model": st.sampled_from(["claude-sonnet-4-5", "auto"]) | json_values},
    optional={
        "messages": messages | json_values,
        "input": st.text(max_size=40) | messages | json_values,
        "max_tokens": st.integers(-5, 10**12) | json_values,
        "stream": st.booleans() | json_values,
        "tools": json_values,
        "tool_choice": json_values,
        "system": st.text(max_size=40) | json_values,
        "stop": json_values,
        "temperature": st.floats(allow_nan=False) | json_values,
    },
)
routes = st.sampled_from(
    ["/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/responses"]
)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=routes, body=near_valid | json_values, raw=st.booleans())
def test_hypothesis_bodies_find_no_server_errors(
    stack: Stack, route: str, body: Any, raw: bool
) -> None:
    content = json.dumps(body).encode()  # stdlib: integers of any size
    if raw:  # sometimes cut the JSON short, as a broken client would
        content = content[: len(content) // 2]
    r = httpx.post(
        f"{stack.url}{route}",
        content=content,
        headers={**stack.headers(), "content-type": "application/json"},
        timeout=20,
    )
    COUNT["requests"] += 1
    check_answer(r.status_code, r.text, route)


# --- the page's routes (Gradio, mounted at /): the queue and the paths around it -----------


@pytest.fixture(scope="module")
def page_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    factories: Iterator[StackFactory] = make_stack_factory()
    make = next(factories)
    no_login = tmp_path_factory.mktemp("home") / "kiro-auth-token.json"
    yield make({}, with_ui=True, kiro_token_file=no_login)
    next(factories, None)


PAGE_EXAMPLES = 400
queue_bodies = st.fixed_dictionaries(
    {},
    optional={
        "data": st.lists(json_values, max_size=10) | json_values,
        "fn_index": st.integers(-3, 40) | st.integers() | json_values,
        "session_hash": st.text(max_size=40) | json_values,
        "trigger_id": st.integers(-3, 200) | json_values,
        "event_id": st.text(max_size=40) | json_values,
        "event_data": json_values,
    },
)
page_paths = st.sampled_from(
    ["/gradio_api/", "/gradio_api/file=", "/gradio_api/queue/", "/", "/assets/", "/config/"]
).flatmap(lambda base: st.text(max_size=30).map(lambda tail: base + tail))


def check_page(status: int, text: str, what: Any) -> None:
    assert status < 500, (status, what, text[:300])
    assert "Traceback" not in text and "site-packages" not in text


@settings(max_examples=PAGE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    route=st.sampled_from(["/gradio_api/queue/join", "/gradio_api/cancel"]),
    body=queue_bodies | json_values,
    raw=st.booleans(),
)
def test_page_queue_finds_no_server_errors(
    page_stack: Stack, route: str, body: Any, raw: bool
) -> None:
    content = json.dumps(body).encode()
    if raw:
        content = content[: len(content) // 2]
    r = httpx.post(
        f"{page_stack.url}{route}",
        content=content,
        headers={"content-type": "application/json"},
        timeout=20,
    )
    COUNT["requests"] += 1
    check_page(r.status_code, r.text, body)


@settings(max_examples=PAGE_EXAMPLES // 4, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=page_paths, method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE"]))
def test_page_paths_find_no_server_errors(page_stack: Stack, path: str, method: str) -> None:
    try:
        with httpx.Client(base_url=page_stack.url, timeout=10) as client:
            request = client.build_request(method, path)
            response = client.send(request, stream=True)
            head = b"" if method == "HEAD" else next(response.iter_bytes(), b"")
            response.close()
    except httpx.InvalidURL:
        return  # not a URL a client can send
    COUNT["requests"] += 1
    check_page(response.status_code, head.decode("utf-8", "replace"), (method, path))


def test_enough_requests_were_made(stack: Stack) -> None:
    """Runs last in this module (pytest keeps file order): the fuzzers above sent ≥ 2,000."""
    assert COUNT["requests"] >= 2000, COUNT
