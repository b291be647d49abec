"""The upstream seam: pooled connections to Kiro, Kiro's headers, timeouts, error translation.

Every call to Kiro goes through :class:`~ki2api.kiro.http.transport.Http11Transport` (chosen
by measurement over httpx's own transport and httpx-aiohttp: ``python -m bench.clients``), one
per outbound proxy (:class:`UpstreamHttp`). The chat call uses the transport directly; the calls
off the chat path (refresh, model list, usage, web search, images) use an ``httpx.AsyncClient``
on the same transport. httpx exceptions are translated here into :mod:`ki2api.model.errors` and
never escape.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import certifi
import httpx

from ki2api import __version__
from ki2api.kiro.accounts.proxy import DIRECT, parse_proxy
from ki2api.kiro.http.transport import Http11Transport, MalformedResponse, Origin, Timeouts
from ki2api.kiro.wire.errors import error_for_response
from ki2api.kiro.wire.eventstream import EventStreamDecoder, EventStreamError, Frame
from ki2api.model.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamProxyError,
    UpstreamTimeout,
    UpstreamTlsError,
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
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Every open answer holds one upstream connection: the cap must be above the number of streams
# the gateway serves at once (1,000 in the benchmark), or answers queue for a slot.
LIMITS = httpx.Limits(max_connections=2048, max_keepalive_connections=64)


class CredentialLike(Protocol):
    @property
    def label(self) -> str: ...
    @property
    def access_token(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def is_api_key(self) -> bool: ...
    @property
    def proxy(self) -> str | None: ...


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Certificate checks for every call to Kiro: the public roots (certifi's, or the file
    ``SSL_CERT_FILE`` names instead, as OpenSSL and httpx read it), plus the CAs in
    ``KIRO_CA_BUNDLE`` (a corporate TLS proxy's, a private endpoint's). ``ValueError`` naming
    the setting when a file cannot be used."""
    roots = settings.ssl_cert_file
    try:
        ctx = ssl.create_default_context(cafile=str(roots) if roots else certifi.where())
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"SSL_CERT_FILE={roots}: cannot load its certificates ({exc})") from None
    if settings.kiro_ca_bundle is not None:
        try:
            ctx.load_verify_locations(cafile=str(settings.kiro_ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"KIRO_CA_BUNDLE={settings.kiro_ca_bundle}: cannot load its certificates "
                f"(a PEM file of one or more CA certificates is expected; {exc})"
            ) from None
    return ctx


def create_http_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """An httpx client with the gateway's timeouts on ``transport``, by default a new
    hand-written one without a proxy; connections are reused across requests."""
    t = settings.timeouts
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=t.connect, read=t.idle, write=t.idle, pool=t.connect),
        limits=LIMITS,
        transport=transport or Http11Transport(limits=LIMITS, verify=tls_context(settings)),
        http2=False,
        follow_redirects=False,
        trust_env=False,
    )


class UpstreamHttp:
    """The app's connections to Kiro: a transport (and an httpx client on it) per outbound
    proxy, made when an account first needs it. An account's ``proxy`` names its own; None
    means ``KIRO_PROXY`` (or none), ``direct`` means none even when ``KIRO_PROXY`` is set.

    Raises ``ValueError`` naming the setting for an unusable ``KIRO_PROXY``,
    ``KIRO_CA_BUNDLE`` or ``SSL_CERT_FILE``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._tls = tls_context(settings)
        self._default = settings.kiro_proxy
        if self._default is not None:
            try:
                parse_proxy(self._default)
            except ValueError as exc:
                raise ValueError(f"KIRO_PROXY: {exc}") from None
        self._routes: dict[str | None, tuple[httpx.AsyncClient, Http11Transport]] = {}

    def _route(self, proxy: str | None) -> tuple[httpx.AsyncClient, Http11Transport]:
        url = self._default if proxy is None else None if proxy == DIRECT else proxy
        route = self._routes.get(url)
        if route is None:
            transport = Http11Transport(
                limits=LIMITS, verify=self._tls, proxy=parse_proxy(url) if url else None
            )
            route = self._routes[url] = (create_http_client(self._settings, transport), transport)
        return route

    def for_proxy(self, proxy: str | None) -> httpx.AsyncClient:
        """The httpx client for an account's ``proxy`` (calls off the chat path)."""
        return self._route(proxy)[0]

    def transport_for(self, proxy: str | None) -> Http11Transport:
        return self._route(proxy)[1]

    @property
    def default(self) -> httpx.AsyncClient:
        """``KIRO_PROXY``'s client: for calls on no account's behalf (images)."""
        return self._route(None)[0]

    async def aclose(self) -> None:
        routes, self._routes = list(self._routes.values()), {}
        for client, _ in routes:
            await client.aclose()

    async def __aenter__(self) -> UpstreamHttp:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


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
    def __init__(self, upstream: UpstreamHttp, settings: Settings) -> None:
        self.upstream = upstream  # also for the calls off the chat path (web search)
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
        runs between sending and the answer's head."""
        url = self.chat_url(credential.region)
        endpoint = self._endpoints.get(url)
        if endpoint is None:
            endpoint = self._endpoints[url] = _Endpoint.parse(url)
        transport = self.upstream.transport_for(credential.proxy)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.timeouts.first_byte
        try:
            # Straight to the transport with the request pre-rendered: httpx's Request/Response
            # objects and client hooks were most of a call's cost.
            answer = await transport.exchange(
                endpoint.origin,
                self._request_bytes(endpoint, credential, body),
                self._timeouts,
                deadline=deadline,
                while_waiting=while_waiting,
            )
        except httpx.TimeoutException as exc:
            if loop.time() >= deadline:
                raise UpstreamTimeout(_NO_START) from exc
            raise UpstreamTimeout(f"Kiro did not answer in time: {exc}") from exc
        except httpx.HTTPError as exc:
            raise connection_error(exc, _host(url)) from exc
        if answer.status == 200:
            tick = self._tick
            return KiroResponse(lambda: answer.read(tick), answer.aclose)
        try:
            raw = await _read_limited(answer.read)
        except (httpx.HTTPError, TimeoutError):
            raw = b""
        finally:
            await answer.aclose()
        raise error_for_response(answer.status, raw, httpx.Headers(answer.headers))


def _header_safe(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise UpstreamAuthFailed("The account's access token contains a line break; log in again.")
    if not value.isascii():  # a pasted token with stray characters: no header can carry it
        raise UpstreamAuthFailed("The account's access token is not plain ASCII; log in again.")
    return value


def connection_error(exc: httpx.HTTPError, host: str) -> UpstreamError:
    """A failed connection or exchange with Kiro, for the client: the transport's own sentence
    (it names the host, the proxy without its credentials, the TLS reason)."""
    if isinstance(exc, httpx.ProxyError):
        return UpstreamProxyError(f"Kiro is out of reach: {exc}")
    if isinstance(exc.__cause__, ssl.SSLError):
        return UpstreamTlsError(f"Kiro is out of reach: {exc}")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamUnavailable(f"Kiro is out of reach: {exc}")
    if isinstance(exc, MalformedResponse):
        return UpstreamProtocolError(f"Kiro's answer at {host} could not be read: {exc}")
    return UpstreamUnavailable(f"the request to Kiro at {host} failed: {exc or type(exc).__name__}")


async def _read_limited(read: ReadChunk) -> bytes:
    data = bytearray()
    while (chunk := await read()) is not None:
        data += chunk
        if len(data) >= _ERROR_BODY_LIMIT:
            break
    return bytes(data)


def _host(url: str) -> str:
    return urlsplit(url).netloc or url
