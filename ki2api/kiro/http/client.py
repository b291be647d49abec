"""The upstream seam: one pooled httpx client, Kiro's headers, timeouts, error translation.

httpx exceptions are translated here into :mod:`ki2api.model.errors` and never escape.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

import httpx

from ki2api import __version__
from ki2api.kiro.http.heartbeat import with_heartbeat
from ki2api.kiro.wire.errors import error_for_response
from ki2api.kiro.wire.eventstream import EventStreamDecoder, EventStreamError, Frame
from ki2api.model.errors import (
    UpstreamAuthFailed,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ki2api.model.ids import uuid_text
from ki2api.settings import Settings

KIRO_IDE_VERSION = "0.7.45"
_JSON_TARGET = "AmazonCodeWhispererStreamingService.GenerateAssistantResponse"
_ERROR_BODY_LIMIT = 64 * 1024
# The longest answer Kiro gives ends at the model's output limit (128,000 tokens at most, see
# kiro/models.py), in frames of one to a few tokens and ~130-150 bytes each (the captures in
# tests): under 20 MB even at one token a frame. An answer past this is a broken or hostile
# upstream; without a cap, a whole answer (and the parser's token count) would buffer it all.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
_NO_START = "Kiro did not start answering in time"
IDLE = b""  # a read's result when its idle tick passes first (the transport's IDLE)

if TYPE_CHECKING:  # the transport needs httptools; importing it here would make that required
    from ki2api.kiro.http.transport import Http11Transport, Origin, Timeouts
_DEFAULT_PORTS = {"http": 80, "https": 443}


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
_LEAN_TRANSPORTS: weakref.WeakKeyDictionary[httpx.AsyncClient, Http11Transport] = (
    weakref.WeakKeyDictionary()
)


def create_http_client(settings: Settings) -> httpx.AsyncClient:
    """The app's one client: connections to Kiro are reused across requests.

    With httptools installed (``uvicorn[standard]`` brings it) the wire work is done by
    :class:`~ki2api.kiro.http.transport.Http11Transport`, several times cheaper per request and per
    chunk than httpcore under load; otherwise by httpx's own transport.
    """
    t = settings.timeouts
    # Every open answer holds one upstream connection: the cap must be above the number of
    # streams the gateway serves at once (1,000 in the benchmark), or answers queue for a slot.
    limits = httpx.Limits(max_connections=2048, max_keepalive_connections=64)
    transport: Http11Transport | None = None
    # A proxy, or KIRO_HTTP_TRANSPORT=httpx, selects httpx's own transport (it speaks proxies).
    lean = settings.kiro_proxy is None and settings.kiro_http_transport != "httpx"
    if lean and importlib.util.find_spec("httptools") is not None:
        from ki2api.kiro.http.transport import Http11Transport

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


ReadChunk = Callable[[], Awaitable[bytes | None]]  # the next chunk, IDLE on a tick, None at the end


class KiroResponse:
    """An open upstream answer; iterate :meth:`frames`, and always :meth:`aclose`."""

    __slots__ = ("_read", "_close", "decoder")

    def __init__(self, read: ReadChunk, close: Callable[[], Awaitable[None]]) -> None:
        self._read = read
        self._close = close
        self.decoder = EventStreamDecoder()

    @classmethod
    def from_httpx(cls, response: httpx.Response, tick: float | None) -> KiroResponse:
        """httpx's own transport (proxies): idle ticks come from :func:`with_heartbeat`."""
        source: AsyncIterator[bytes | None] = (
            response.aiter_raw() if tick is None else with_heartbeat(response.aiter_raw(), tick)
        )

        async def read() -> bytes | None:
            try:
                chunk = await anext(source)
            except StopAsyncIteration:
                return None
            return IDLE if chunk is None else chunk

        async def close() -> None:
            with contextlib.suppress(RuntimeError):  # the generator is already running/closed
                await source.aclose()  # type: ignore[attr-defined]
            await response.aclose()

        return cls(read, close)

    async def frame_batches(self) -> AsyncIterator[list[Frame] | None]:
        """The frames each read completed (often none, sometimes several); None each time the
        upstream stays quiet for a tick."""
        decoder, read = self.decoder, self._read
        left = MAX_ANSWER_BYTES
        try:
            while (chunk := await read()) is not None:
                if chunk:
                    left -= len(chunk)
                    if left < 0:
                        raise UpstreamProtocolError(
                            f"Kiro's answer went past {MAX_ANSWER_BYTES // (1024 * 1024)} MB, "
                            "longer than any model's output can be; it was cut off"
                        )
                    frames = decoder.feed(chunk)
                    if frames:
                        yield frames
                else:
                    yield None
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
        await self._close()


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """A chat URL taken apart once: where to connect and the request's first lines."""

    origin: Origin
    json_style: bool
    request_line: bytes  # "POST <path> HTTP/1.1\r\nhost: <host>\r\n"

    @classmethod
    def parse(cls, url: str) -> _Endpoint:
        parsed = httpx.URL(url)
        scheme = parsed.scheme
        port = parsed.port or _DEFAULT_PORTS.get(scheme, 443)
        line = b"POST " + parsed.raw_path + b" HTTP/1.1\r\nhost: " + parsed.netloc + b"\r\n"
        return cls((scheme, parsed.host, port), urlsplit(url).path in ("", "/"), line)


class KiroClient:
    def __init__(self, http: httpx.AsyncClient, settings: Settings) -> None:
        self._http = http
        self.http = http  # for the calls off the chat path (web search)
        self._settings = settings
        self._endpoints: dict[str, _Endpoint] = {}
        self._static_heads: dict[tuple[bytes, str, bool], bytes] = {}
        t = settings.timeouts
        self._timeouts: Timeouts = {
            "connect": t.connect,
            "read": t.idle,
            "write": t.idle,
            "pool": t.connect,
        }
        self._tick = settings.keepalive_interval if settings.keepalive_interval > 0 else None

    def chat_url(self, region: str) -> str:
        return self._settings.url(self._settings.kiro_api_url, region)

    def _static_headers(self, credential: CredentialLike, json_style: bool) -> dict[str, str]:
        """Every header but the token and the per-call id."""
        machine = _machine_id(credential.label)
        agent = f"aws-sdk-js/1.0.18 KiroIDE-{KIRO_IDE_VERSION}-{machine} ki2api/{__version__}"
        headers = {
            "content-type": "application/x-amz-json-1.0" if json_style else "application/json",
            "accept": "application/vnd.amazon.eventstream",
            "user-agent": agent,
            "x-amz-user-agent": f"aws-sdk-js/1.0.18 KiroIDE-{KIRO_IDE_VERSION}-{machine}",
            "amz-sdk-request": "attempt=1; max=3",
            "x-amzn-codewhisperer-optout": "true",
            "x-amzn-kiro-agent-mode": "vibe",
        }
        if json_style:
            headers["x-amz-target"] = _JSON_TARGET
        if credential.is_api_key:
            headers["tokentype"] = "API_KEY"
        return headers

    def _headers(self, credential: CredentialLike, json_style: bool) -> dict[str, str]:
        return {
            "authorization": f"Bearer {_header_safe(credential.access_token)}",
            **self._static_headers(credential, json_style),
            "amz-sdk-invocation-id": uuid_text(),
        }

    def _request_bytes(self, endpoint: _Endpoint, credential: CredentialLike, body: bytes) -> bytes:
        """The whole request, from a head rendered once per endpoint and account."""
        key = (endpoint.request_line, credential.label, credential.is_api_key)
        static = self._static_heads.get(key)
        if static is None:
            lines = self._static_headers(credential, endpoint.json_style).items()
            static = endpoint.request_line + b"".join(
                f"{name}: {value}\r\n".encode("latin-1") for name, value in lines
            )
            if len(self._static_heads) > 256:  # accounts come and go (admin API, visitors)
                self._static_heads.clear()
            self._static_heads[key] = static
        token = _header_safe(credential.access_token).encode("latin-1")
        return b"".join(
            (
                static,
                b"authorization: Bearer ",
                token,
                b"\r\namz-sdk-invocation-id: ",
                uuid_text().encode(),
                b"\r\ncontent-length: ",
                str(len(body)).encode(),
                b"\r\n\r\n",
                body,
            )
        )

    async def open(
        self,
        body: bytes,
        credential: CredentialLike,
        while_waiting: Callable[[], object] | None = None,
    ) -> KiroResponse:
        """Send the request and check the status; the body is left to stream. ``while_waiting``
        runs between sending and the answer's head (before sending, on httpx's transport)."""
        url = self.chat_url(credential.region)
        endpoint = self._endpoints.get(url)
        if endpoint is None:
            endpoint = self._endpoints[url] = _Endpoint.parse(url)
        transport = _LEAN_TRANSPORTS.get(self._http)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.timeouts.first_byte
        try:
            if transport is None:
                async with asyncio.timeout_at(deadline):
                    if while_waiting is not None:
                        while_waiting()
                    headers = self._headers(credential, endpoint.json_style)
                    request = self._http.build_request("POST", url, content=body, headers=headers)
                    response = await self._http.send(request, stream=True)
                    status = response.status_code
            else:
                # Straight to the transport with the request pre-rendered: httpx's
                # Request/Response objects and client hooks were most of a call's cost.
                data = self._request_bytes(endpoint, credential, body)
                answer = await transport.exchange(
                    endpoint.origin,
                    data,
                    self._timeouts,
                    deadline=deadline,
                    while_waiting=while_waiting,
                )
                status = answer.status
        except TimeoutError as exc:
            raise UpstreamTimeout(_NO_START) from exc
        except httpx.TimeoutException as exc:
            if loop.time() >= deadline:
                raise UpstreamTimeout(_NO_START) from exc
            raise UpstreamTimeout(f"Kiro did not answer in time ({type(exc).__name__})") from exc
        except httpx.ConnectError as exc:
            raise UpstreamUnavailable(f"cannot connect to Kiro at {_host(url)}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"the request to Kiro failed: {type(exc).__name__}") from exc
        if transport is None:
            if status == 200:
                return KiroResponse.from_httpx(response, self._tick)
            raw_headers: list[tuple[bytes, bytes]] = response.headers.raw
            read, close = _httpx_reader(response), response.aclose
        else:
            if status == 200:
                tick = self._tick
                return KiroResponse(lambda: answer.read(tick), answer.aclose)
            raw_headers, read, close = answer.headers, answer.read, answer.aclose
        try:
            raw = await _read_limited(read)
        except (httpx.HTTPError, TimeoutError):
            raw = b""
        finally:
            await close()
        raise error_for_response(status, raw, httpx.Headers(raw_headers))


def _header_safe(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise UpstreamAuthFailed("The account's access token contains a line break; log in again.")
    if not value.isascii():  # a pasted token with stray characters: no header can carry it
        raise UpstreamAuthFailed("The account's access token is not plain ASCII; log in again.")
    return value


def _httpx_reader(response: httpx.Response) -> ReadChunk:
    chunks = response.aiter_raw()

    async def read() -> bytes | None:
        return await anext(chunks, None)

    return read


async def _read_limited(read: ReadChunk) -> bytes:
    data = bytearray()
    while (chunk := await read()) is not None:
        data += chunk
        if len(data) >= _ERROR_BODY_LIMIT:
            break
    return bytes(data)


def _host(url: str) -> str:
    return urlsplit(url).netloc or url
