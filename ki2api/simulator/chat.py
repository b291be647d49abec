"""The chat endpoints: Kiro's ``generateAssistantResponse`` (both call styles) and the
OpenAI-compatible ``/v1/chat/completions``. Everything that can refuse a request happens here,
before a script starts playing: auth, content type, size, the strict validator."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ki2api.simulator.default_model import default_answer, prompt_from_kiro, prompt_from_openai
from ki2api.simulator.openai_compat import OpenAIRenderer, openai_error_body
from ki2api.simulator.player import KiroRenderer, LiveStreams, ScriptResponse
from ki2api.simulator.scripts import HttpError
from ki2api.simulator.state import RequestRecord, SimulatorState
from ki2api.simulator.validator import Refusal, parse_and_check

JSON_TYPES = frozenset({"application/json", "application/x-amz-json-1.0"})


def error_response(error: HttpError) -> Response:
    headers = {"content-type": "application/json", **error.headers}
    return Response(orjson.dumps(error.body), status_code=error.status, headers=headers)


def _headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


class ChatEndpoints:
    def __init__(self, state: SimulatorState, live: LiveStreams) -> None:
        self.state = state
        self.live = live

    def _refuse(self, record: RequestRecord, error: HttpError) -> Response:
        self.state.finish_record(record, error.status)
        return error_response(error)

    async def kiro(self, request: Request, style: str) -> Response:
        """``generateAssistantResponse``, path style or JSON-1.0 style (same behaviour)."""
        state = self.state
        raw = await request.body()
        headers = _headers(request)
        record = state.new_record(request.url.path, style, headers, len(raw))
        auth = state.authorize(headers)
        if auth.account is not None:
            record.account = auth.account.label
        if auth.error is not None:
            return self._refuse(record, auth.error)

        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        allowed = auth.account.models if auth.account is not None else None
        body, refusal = parse_and_check(
            raw,
            model_ids=state.model_ids if allowed is None else state.model_ids & set(allowed),
            max_body_bytes=state.max_body_bytes,
        )
        if content_type not in JSON_TYPES:
            refusal = Refusal(f"content-type {content_type or '(none)'} is not JSON")
        record.body = body
        if refusal is not None:
            record.refusal = refusal.reason
            return self._refuse(record, HttpError(400, refusal.body(), _validation_headers()))

        prompt = prompt_from_kiro(body, len(raw))
        script, fault = state.next_answer(lambda: default_answer(prompt), auth.account, body)
        record.script, record.fault = script.name, fault
        if auth.account is not None:
            auth.account.chat_count += 1
        return ScriptResponse(
            script, state=state, record=record, renderer=KiroRenderer(), live=self.live
        )

    async def openai(self, request: Request) -> Response:
        """OpenAI chat completions over the same scripts (no auth: any key is fine)."""
        state = self.state
        raw = await request.body()
        record = state.new_record(request.url.path, "openai", _headers(request), len(raw))
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        record.body = body
        if not isinstance(body, Mapping) or not isinstance(body.get("messages"), list):
            record.refusal = "body must be a JSON object with a messages list"
            state.finish_record(record, 400)
            return Response(
                openai_error_body(400, record.refusal),
                status_code=400,
                media_type="application/json",
            )
        prompt = prompt_from_openai(body, len(raw))
        script, fault = state.next_answer(lambda: default_answer(prompt), body=body)
        record.script, record.fault = script.name, fault
        options = body.get("stream_options")
        renderer = OpenAIRenderer(
            model=str(body.get("model") or "simulator"),
            stream=body.get("stream") is True,
            include_usage=isinstance(options, Mapping) and options.get("include_usage") is True,
            prompt_size=len(raw),
        )
        return ScriptResponse(script, state=state, record=record, renderer=renderer, live=self.live)


def _validation_headers() -> dict[str, str]:
    return {"x-amzn-errortype": "ValidationException:http://internal.amazon.com/coral/"}
