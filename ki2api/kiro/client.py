"""The upstream seam: one pooled httpx client, Kiro's headers, timeouts, error translation.

httpx exceptions are translated here into :mod:`ki2api.core.errors` and never escape.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from ki2api import __version__
from ki2api.core.errors import (
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ki2api.kiro.eventstream import EventStreamDecoder, EventStreamError, Frame
from ki2api.kiro.upstream_errors import error_for_response
from ki2api.settings import Settings

KIRO_IDE_VERSION = "0.7.45"
_JSON_TARGET = "AmazonCodeWhispererStreamingService.GenerateAssistantResponse"
_ERROR_BODY_LIMIT = 64 * 1024


class CredentialLike(Protocol):
    @property
    def label(self) -> str: ...
    @property
    def access_token(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def is_api_key(self) -> bool: ...


# The lean transport behind each client made here, for the chat call's direct path.
_LEAN_TRANSPORTS: weakref.WeakKeyDictionary[httpx.AsyncClient, httpx.AsyncBaseTransport] = (
    weakref.WeakKeyDictionary()
)


def create_http_client(settings: Settings) -> httpx.AsyncClient:
    """The app's one client: connections to Kiro are reused across requests.

    With httptools installed (``uvicorn[standard]`` brings it) the wire work is done by
    :class:`~ki2api.kiro.transport.Http11Transport`, several times cheaper per request and per
    chunk than httpcore under load; otherwise by httpx's own transport.
    """
    t = settings.timeouts
    # Every open answer holds one upstream connection: the cap must be above the number of
    # streams the gateway serves at once (1,000 in the benchmark), or answers queue for a slot.
    limits = httpx.Limits(max_connections=2048, max_keepalive_connections=64)
    transport: httpx.AsyncBaseTransport | None = None
    # A proxy, or KIRO_HTTP_TRANSPORT=httpx, selects httpx's own transport (it speaks proxies).
    lean = settings.kiro_proxy is None and settings.kiro_http_transport != "httpx"
    if lean and importlib.util.find_spec("httptools") is not None:
        from ki2api.kiro.transport import Http11Transport

        transport = Http11Transport(limits=limits)
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(connect=t.connect, read=t.idle, write=t.idle, pool=t.connect),
        limits=limits,
        transport=transport,
        proxy=settings.kiro_proxy,
        http2=False,
        follow_redirects=False,
        trust_env=False,
    )
    if transport is not None:
        _LEAN_TRANSPORTS[client] = transport
    return client


def _machine_id(label: str) -> str:
    # Kiro identifies the installation by a 64-hex id; a stable hash per account is enough.
    return hashlib.sha256(f"ki2api:{label}".encode()).hexdigest()


class KiroResponse:
    """An open upstream answer; iterate :meth:`frames`, and always :meth:`aclose`."""

    __slots__ = ("_response", "decoder")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.decoder = EventStreamDecoder()

    async def frames(self) -> AsyncIterator[Frame]:
        decoder = self.decoder
        try:
            async for chunk in self._response.aiter_raw():
                for frame in decoder.feed(chunk):
                    yield frame
        except EventStreamError as exc:
            raise UpstreamProtocolError(f"Kiro sent a corrupt event stream: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout("Kiro went silent in the middle of the answer") from exc
        except httpx.HTTPError as exc:
            raise UpstreamProtocolError(f"the connection to Kiro broke: {exc!r}") from exc
        if decoder.buffered:
            raise UpstreamProtocolError(
                f"Kiro's stream ended in the middle of a frame ({decoder.buffered} bytes left)"
            )

    async def aclose(self) -> None:
        await self._response.aclose()


class KiroClient:
    def __init__(self, http: httpx.AsyncClient, settings: Settings) -> None:
        self._http = http
        self._settings = settings
        self._parsed_urls: dict[str, httpx.URL] = {}
        t = settings.timeouts
        self._timeouts = {"connect": t.connect, "read": t.idle, "write": t.idle, "pool": t.connect}

    def _url(self, url: str) -> httpx.URL:
        parsed = self._parsed_urls.get(url)
        if parsed is None:
            parsed = self._parsed_urls[url] = httpx.URL(url)
        return parsed

    def chat_url(self, region: str) -> str:
        return self._settings.url(self._settings.kiro_api_url, region)

    def _headers(self, credential: CredentialLike, json_style: bool) -> dict[str, str]:
        machine = _machine_id(credential.label)
        agent = f"aws-sdk-js/1.0.18 KiroIDE-{KIRO_IDE_VERSION}-{machine} ki2api/{__version__}"
        headers = {
            "authorization": f"Bearer {credential.access_token}",
            "content-type": "application/x-amz-json-1.0" if json_style else "application/json",
            "accept": "application/vnd.amazon.eventstream",
            "user-agent": agent,
            "x-amz-user-agent": f"aws-sdk-js/1.0.18 KiroIDE-{KIRO_IDE_VERSION}-{machine}",
            "amz-sdk-invocation-id": str(uuid.uuid4()),
            "amz-sdk-request": "attempt=1; max=3",
            "x-amzn-codewhisperer-optout": "true",
            "x-amzn-kiro-agent-mode": "vibe",
        }
        if json_style:
            headers["x-amz-target"] = _JSON_TARGET
        if credential.is_api_key:
            headers["tokentype"] = "API_KEY"
        return headers

    async def open(self, body: bytes, credential: CredentialLike) -> KiroResponse:
        """Send the request and check the status; the body is left to stream."""
        url = self.chat_url(credential.region)
        json_style = urlsplit(url).path in ("", "/")
        headers = self._headers(credential, json_style)
        transport = _LEAN_TRANSPORTS.get(self._http)
        try:
            async with asyncio.timeout(self._settings.timeouts.first_byte):
                if transport is None:
                    request = self._http.build_request("POST", url, content=body, headers=headers)
                    response = await self._http.send(request, stream=True)
                else:
                    # Straight to the transport: the client's per-request work (URL merging,
                    # cookie jar, redirect and auth hooks) is most of its cost and Kiro needs
                    # none of it.
                    request = httpx.Request(
                        "POST",
                        self._url(url),
                        content=body,
                        headers=headers,
                        extensions={"timeout": self._timeouts},
                    )
                    response = await transport.handle_async_request(request)
                    response.request = request
        except TimeoutError as exc:
            raise UpstreamTimeout("Kiro did not start answering in time") from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"Kiro did not answer in time ({type(exc).__name__})") from exc
        except httpx.ConnectError as exc:
            raise UpstreamUnavailable(f"cannot connect to Kiro at {_host(url)}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"the request to Kiro failed: {type(exc).__name__}") from exc
        if response.status_code == 200:
            return KiroResponse(response)
        try:
            raw = await _read_limited(response)
        except (httpx.HTTPError, TimeoutError):
            raw = b""
        finally:
            await response.aclose()
        raise error_for_response(response.status_code, raw, response.headers)


async def _read_limited(response: httpx.Response) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) >= _ERROR_BODY_LIMIT:
            break
    return bytes(data)


def _host(url: str) -> str:
    return urlsplit(url).netloc or url
