"""The upstream HTTP clients the ``clients`` phase compares, for the chat call (the hot path):

- ``handwritten``: the app's own, the hand-written HTTP/1.1 transport (asyncio protocol +
  httptools) that the chat call drives directly with a pre-rendered request;
- ``aiohttp``: httpx's API on aiohttp's connection pool and C parser (``httpx-aiohttp``, the
  transport the OpenAI SDK offers);
- ``httpx``: httpx's API on its default transport (httpcore).

The last two send the chat call as the app did through httpx until it kept one path: a
``Request`` built by the client, ``send(stream=True)``, the body from ``aiter_raw``. They skip
the idle ticks (the benchmark's upstream is never silent for 15 s), which can only flatter them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from ki2api.kiro.http.client import (
    LIMITS,
    CredentialLike,
    KiroClient,
    KiroResponse,
    UpstreamHttp,
    connection_error,
    create_http_client,
)
from ki2api.kiro.wire.errors import error_for_response
from ki2api.model.errors import UpstreamTimeout
from ki2api.settings import Settings

CONTENDERS = ("handwritten", "aiohttp", "httpx")


def httpx_client(name: str, settings: Settings) -> httpx.AsyncClient:
    if name == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        transport: httpx.AsyncBaseTransport = AiohttpTransport(limits=LIMITS, trust_env=False)
    elif name == "httpx":
        transport = httpx.AsyncHTTPTransport(limits=LIMITS, trust_env=False)
    else:
        raise ValueError(f"unknown upstream client {name!r}; one of {', '.join(CONTENDERS)}")
    return create_http_client(settings, transport)


class HttpxKiroClient(KiroClient):
    """The chat call through an httpx client."""

    def __init__(self, http: httpx.AsyncClient, upstream: UpstreamHttp, settings: Settings):
        super().__init__(upstream, settings)
        self._client = http

    async def open(
        self,
        body: bytes,
        credential: CredentialLike,
        while_waiting: Callable[[], object] | None = None,
    ) -> KiroResponse:
        url = self.chat_url(credential.region)
        headers = self._headers(credential, urlsplit(url).path in ("", "/"))
        if while_waiting is not None:
            while_waiting()
        request = self._client.build_request("POST", url, content=body, headers=headers)
        try:
            async with asyncio.timeout(self._settings.timeouts.first_byte):
                response = await self._client.send(request, stream=True)
        except TimeoutError as exc:
            raise UpstreamTimeout("Kiro did not start answering in time") from exc
        except httpx.HTTPError as exc:
            raise connection_error(exc, request.url.host) from exc
        if response.status_code != 200:
            raw = await response.aread()
            await response.aclose()
            raise error_for_response(response.status_code, raw, response.headers)
        chunks = response.aiter_raw()
        return KiroResponse(lambda: anext(chunks, None), response.aclose)


def use_contender(name: str) -> None:
    """Make the app (built after this call, in this process) send its chat calls with
    contender ``name``."""
    if name == "handwritten":
        return
    import ki2api.app

    def kiro_client(upstream: UpstreamHttp, settings: Settings) -> KiroClient:
        return HttpxKiroClient(httpx_client(name, settings), upstream, settings)

    ki2api.app.KiroClient = kiro_client  # type: ignore[assignment,misc]
