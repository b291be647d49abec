"""Issue 17 item 6 through every front door on real sockets: a tool schema (or tool-call
arguments) nested past orjson's writing limit, and an image server redirecting to a URL httpx
cannot build, are 400s in the client's own error format, never 500s."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ki2api.api.common import MAX_JSON_DEPTH
from tests.servers import ServerThread
from tests.stack import Stack, StackFactory, make_stack_factory

pytestmark = pytest.mark.timeout(120)

MODEL = "claude-sonnet-4-5"
FORMATS = {
    "/v1/chat/completions": "openai",
    "/v1/responses": "openai",
    "/v1/messages": "anthropic",
    "/v1/messages/count_tokens": "anthropic",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    factories: Iterator[StackFactory] = make_stack_factory()
    make = next(factories)
    no_login = tmp_path_factory.mktemp("home") / "kiro-auth-token.json"
    yield make({"ALLOW_PRIVATE_IMAGE_URLS": "1"}, kiro_token_file=no_login)
    next(factories, None)


def _redirect(request: Request) -> Response:
    return Response(status_code=302, headers={"location": request.query_params["to"]})


@pytest.fixture(scope="module")
def image_server() -> Iterator[ServerThread]:
    with ServerThread(Starlette(routes=[Route("/to", _redirect)])) as server:
        yield server


def nested(depth: int) -> dict[str, Any]:
    """A JSON schema ``depth`` objects deep (each level one ``properties`` map in between)."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range((depth - 1) // 2):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def json_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((json_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((json_depth(v) for v in value), default=0)
    return 0


def body_with_tool(route: str, schema: dict[str, Any]) -> dict[str, Any]:
    if route == "/v1/chat/completions":
        tool = {"type": "function", "function": {"name": "deep", "parameters": schema}}
        return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    if route == "/v1/responses":
        tool = {"type": "function", "name": "deep", "parameters": schema}
        return {"model": MODEL, "input": "hi", "tools": [tool]}
    tool = {"name": "deep", "description": "d", "input_schema": schema}
    return {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [tool],
    }


def check_400(r: httpx.Response, fmt: str, words: str) -> None:
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert "Traceback" not in r.text
    body = r.json()
    if fmt == "openai":
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == "invalid_request_error"
    else:
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert words in body["error"]["message"], body


def post(stack: Stack, route: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{stack.url}{route}",
        content=json.dumps(body).encode(),  # stdlib: orjson itself refuses to write 255+ levels
        headers={**stack.headers(), "content-type": "application/json"},
        timeout=30,
    )


@pytest.mark.parametrize("route", FORMATS)
def test_a_tool_schema_250_levels_deep_is_a_400(stack: Stack, route: str) -> None:
    schema = nested(250)
    assert json_depth(schema) >= 249
    r = post(stack, route, body_with_tool(route, schema))
    check_400(r, FORMATS[route], f"deeper than {MAX_JSON_DEPTH} levels")
    assert "tools" in r.json()["error"]["message"]


@pytest.mark.parametrize("route", FORMATS)
def test_a_tool_schema_within_the_limit_still_works(stack: Stack, route: str) -> None:
    r = post(stack, route, body_with_tool(route, nested(MAX_JSON_DEPTH - 10)))
    assert r.status_code == 200, r.text[:300]


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/responses"])
def test_tool_call_arguments_nested_too_deep_are_a_400(stack: Stack, route: str) -> None:
    """Arguments arrive as a JSON string: they escape the body's own depth check."""
    arguments = "[" * 300 + "]" * 300
    if route == "/v1/chat/completions":
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "done"},
            ],
        }
    else:
        body = {
            "model": MODEL,
            "input": [
                {"role": "user", "content": "hi"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": arguments},
                {"type": "function_call_output", "call_id": "c1", "output": "done"},
            ],
        }
    check_400(post(stack, route, body), "openai", "deeper than")


def image_body(route: str, url: str) -> dict[str, Any]:
    if route == "/v1/chat/completions":
        part: dict[str, Any] = {"type": "image_url", "image_url": {"url": url}}
        return {"model": MODEL, "messages": [{"role": "user", "content": [part]}]}
    if route == "/v1/responses":
        part = {"type": "input_image", "image_url": url}
        return {"model": MODEL, "input": [{"role": "user", "content": [part]}]}
    part = {"type": "image", "source": {"type": "url", "url": url}}
    return {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": [part]}]}


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/responses", "/v1/messages"])
@pytest.mark.parametrize(
    "location", ["data:image/png;base64,iVBORw0KGgo=", "javascript:alert(1)", "mailto:a@b.example"]
)
def test_an_image_redirecting_to_another_scheme_is_a_400(
    stack: Stack, image_server: ServerThread, route: str, location: str
) -> None:
    url = f"{image_server.url}/to?to={quote(location)}"
    r = post(stack, route, image_body(route, url))
    check_400(r, FORMATS[route], "redirects to something that is not an http(s) URL")


def test_the_request_builder_refuses_what_orjson_cannot_write() -> None:
    """The last line of defence, for a request that did not come through a front door's parser:
    a 400, not orjson's TypeError."""
    from ki2api.kiro.wire.models import ModelCatalog
    from ki2api.kiro.wire.request_builder import build_kiro_request
    from ki2api.model.errors import InvalidRequest
    from ki2api.model.request import ChatRequest, Message, TextPart, ToolSpec

    request = ChatRequest(
        model=MODEL,
        messages=[Message("user", [TextPart("hi")])],
        tools=[ToolSpec("deep", "d", nested(600))],
    )
    with pytest.raises(InvalidRequest, match="too deeply") as info:
        build_kiro_request(
            request, model=ModelCatalog().resolve(MODEL), profile_arn=None, conversation_id="c"
        )
    assert info.value.status == 400


@pytest.mark.parametrize("route", FORMATS)
@pytest.mark.parametrize("field", ["metadata", "tool_choice", "response_format", "text"])
def test_any_deep_field_is_a_4xx_never_a_5xx(stack: Stack, route: str, field: str) -> None:
    """Plain bodies take a fast path without the wire model: a deep field must not slip
    through it into anything that writes JSON."""
    deep: Any = "x"
    for _ in range(400):
        deep = {"a": deep}
    body = body_with_tool(route, {"type": "object"})
    body.pop("tools")
    body[field] = deep
    r = post(stack, route, body)
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code != 200:
        check_400(r, FORMATS[route], "")
