"""Image loading: data URLs, Anthropic base64 sources, and http(s) fetching on a real loopback
server (limits, timeouts, redirects, and the refusal of private addresses)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from ki2api.model.errors import InvalidRequest
from ki2api.pipeline import images
from ki2api.pipeline.images import (
    decode_base64_image,
    decode_data_url,
    load_image_url,
    sniff_format,
)
from tests.servers import ServerThread

# Real 1x1 images.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0aHBwgJC4nICIsIxwc"
    "KDcpLDAxNDQ0Hyc5PTgyPC4zNDL/wAALCAABAAEBAREA/8QAFAABAAAAAAAAAAAAAAAAAAAACf/EABQQAQAAAAAAAAAA"
    "AAAAAAAAAAD/2gAIAQEAAD8AVN//2Q=="
)
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
WEBP = base64.b64decode("UklGRhoAAABXRUJQVlA4TA0AAAAvAAAAEAcQERGIiP4HAA==")


def data_url(media_type: str, raw: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(raw).decode()}"


# --- data URLs and base64 ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("media_type", "raw", "fmt"),
    [
        ("image/png", PNG, "png"),
        ("image/jpeg", JPEG, "jpeg"),
        ("image/jpg", JPEG, "jpeg"),
        ("image/gif", GIF, "gif"),
        ("image/webp", WEBP, "webp"),
        ("IMAGE/PNG", PNG, "png"),
    ],
)
def test_data_url_formats(media_type: str, raw: bytes, fmt: str) -> None:
    image = decode_data_url(data_url(media_type, raw))
    assert image.format == fmt
    assert image.data == raw


def test_data_url_tolerates_whitespace_missing_padding_and_urlsafe_alphabet() -> None:
    encoded = base64.urlsafe_b64encode(JPEG).decode().rstrip("=")
    wrapped = "\n".join(encoded[i : i + 60] for i in range(0, len(encoded), 60))
    assert decode_data_url(f"data:image/jpeg;base64,{wrapped}").data == JPEG


def test_percent_encoded_data_url() -> None:
    from urllib.parse import quote_from_bytes

    assert decode_data_url("data:image/gif," + quote_from_bytes(GIF)).data == GIF


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (data_url("image/png", JPEG), "declared as image/png but its data is JPEG"),
        (data_url("image/bmp", b"BM" + b"\0" * 40), "not a PNG, JPEG, GIF or WebP"),
        (data_url("image/svg+xml", b"<svg/>"), "not a PNG, JPEG, GIF or WebP"),
        (data_url("image/tiff", PNG), "Unsupported image type 'image/tiff'"),
        ("data:image/png;base64,!!!notbase64!!!", "not valid base64"),
        ("data:image/png;base64,", "is empty"),
        ("data:image/png;base64", "Malformed data URL"),
        ("image/png;base64,AAAA", "Malformed data URL"),
    ],
)
def test_bad_data_urls_are_refused_with_a_clear_message(url: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_data_url(url, param="messages[0].content[1]")
    assert message in info.value.message
    assert info.value.param == "messages[0].content[1]"
    assert info.value.status == 400


def test_oversized_data_url_is_refused_before_decoding() -> None:
    raw = PNG + b"\0" * 2000
    with pytest.raises(InvalidRequest, match="limit of 1000 bytes"):
        decode_data_url(data_url("image/png", raw), max_bytes=1000)
    assert decode_data_url(data_url("image/png", raw), max_bytes=len(raw)).data == raw


def test_anthropic_base64_source() -> None:
    image = decode_base64_image("image/webp", base64.b64encode(WEBP).decode())
    assert (image.format, image.data) == ("webp", WEBP)
    with pytest.raises(InvalidRequest, match="declared as image/gif but its data is PNG"):
        decode_base64_image("image/gif", base64.b64encode(PNG).decode(), param="x")


def test_sniffing_needs_the_whole_magic() -> None:
    assert sniff_format(b"RIFF\0\0\0\0WAVE") is None
    assert sniff_format(b"\x89PN") is None
    assert sniff_format(WEBP[:12]) == "webp"


# --- fetching over http -----------------------------------------------------------------------


async def _slow(request: Request) -> Response:
    await asyncio.sleep(3)
    return Response(PNG, media_type="image/png")


async def _endless(request: Request) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        yield PNG
        for _ in range(1000):
            yield b"\0" * 4096

    return StreamingResponse(body(), media_type="image/png")  # chunked: no content-length


def _app() -> Starlette:
    return Starlette(
        routes=[
            Route("/a.png", lambda r: Response(PNG, media_type="image/png")),
            # a wrong content-type: the bytes decide for fetched images
            Route("/a.jpg", lambda r: Response(JPEG, media_type="application/octet-stream")),
            Route(
                "/host",
                lambda r: Response(PNG if r.headers["host"].startswith("pics.test:") else b"x"),
            ),
            Route("/big.png", lambda r: Response(PNG + b"\0" * 5000, media_type="image/png")),
            Route("/endless.png", _endless),
            Route("/text", lambda r: Response("<html>", media_type="text/html")),
            Route("/missing", lambda r: Response("no", status_code=404)),
            Route("/slow.png", _slow),
            Route("/redirect", lambda r: RedirectResponse("/a.png")),
            Route("/loop", lambda r: RedirectResponse("/loop")),
            Route(
                "/to",
                lambda r: Response(status_code=302, headers={"location": r.query_params["to"]}),
            ),
        ]
    )


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(_app()) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def test_fetches_an_image_when_private_addresses_are_allowed(
    server: ServerThread, http: httpx.AsyncClient
) -> None:
    image = await load_image_url(f"{server.url}/a.png", http=http, allow_private=True)
    assert (image.format, image.data) == ("png", PNG)
    image = await load_image_url(f"{server.url}/a.jpg", http=http, allow_private=True)
    assert image.format == "jpeg"
    image = await load_image_url(f"{server.url}/redirect", http=http, allow_private=True)
    assert image.data == PNG


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "0.0.0.0", "10.1.2.3"])
async def test_refuses_private_and_loopback_hosts(
    server: ServerThread, http: httpx.AsyncClient, host: str
) -> None:
    with pytest.raises(InvalidRequest, match="non-public address") as info:
        await load_image_url(
            f"http://{host}:{server.port}/a.png", http=http, allow_private=False, param="p"
        )
    assert info.value.param == "p"


async def test_every_resolved_address_is_checked(
    monkeypatch: pytest.MonkeyPatch, http: httpx.AsyncClient
) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "169.254.169.254"]  # one public, one the metadata service

    monkeypatch.setattr(images, "_resolve", resolve)
    with pytest.raises(InvalidRequest, match="non-public"):
        await load_image_url("https://pics.test/a.png", http=http)


async def test_connection_is_pinned_to_the_checked_address(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, http: httpx.AsyncClient
) -> None:
    """The host name is only resolved once, by the check; the request goes to that address with
    the original Host header (pics.test does not exist in DNS)."""

    async def resolve(host: str, port: int) -> list[str]:
        assert host == "pics.test"
        return ["127.0.0.1"]

    monkeypatch.setattr(images, "_resolve", resolve)
    monkeypatch.setattr(images, "_is_public", lambda address: True)
    image = await load_image_url(f"http://pics.test:{server.port}/host", http=http)
    assert image.data == PNG


async def test_redirects_are_checked_hop_by_hop(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, http: httpx.AsyncClient
) -> None:
    checked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        checked.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(images, "_resolve", resolve)
    monkeypatch.setattr(images, "_is_public", lambda address: True)
    assert (await load_image_url(f"http://pics.test:{server.port}/redirect", http=http)).data == PNG
    assert checked == ["pics.test", "pics.test"]
    with pytest.raises(InvalidRequest, match="redirects too many times"):
        await load_image_url(f"http://pics.test:{server.port}/loop", http=http)


@pytest.mark.parametrize(
    "location",
    [
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "mailto:someone@example.com",
        "ftp://example.com/a.png",
        "https://:80/a.png",
    ],
)
async def test_redirects_to_other_schemes_are_a_clear_400(
    server: ServerThread, http: httpx.AsyncClient, location: str
) -> None:
    """httpx cannot even build some of these URLs (InvalidURL, which is no HTTPError)."""
    with pytest.raises(InvalidRequest, match="redirects to something that is not an http") as info:
        await load_image_url(
            f"{server.url}/to?to={quote(location)}", http=http, allow_private=True, param="p"
        )
    assert info.value.param == "p"


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
        "64:ff9b:1::a00:1",  # local-use NAT64 prefix
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:c0a8:101::5",  # 6to4 of 192.168.1.1
        "::10.0.0.1",  # IPv4-compatible
        "::127.0.0.1",
        "::a9fe:a9fe",
        "::ffff:10.0.0.1",  # IPv4-mapped
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::",
        "::1",
    ],
)
async def test_ipv6_forms_of_private_ipv4_addresses_are_refused(
    monkeypatch: pytest.MonkeyPatch, http: httpx.AsyncClient, address: str
) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return [address]

    monkeypatch.setattr(images, "_resolve", resolve)
    with pytest.raises(InvalidRequest, match="non-public"):
        await load_image_url("https://pics.test/a.png", http=http)


@pytest.mark.parametrize(
    "address",
    ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2606:4700:4700::1111", "8.8.8.8"],
)
def test_ipv6_forms_of_public_addresses_stay_public(address: str) -> None:
    assert images._is_public(address)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/big.png", "is 5070 bytes; the limit is 1000 bytes"),
        ("/endless.png", "larger than the limit of 1000 bytes"),
        ("/text", "not a PNG, JPEG, GIF or WebP"),
        ("/missing", "HTTP 404"),
    ],
)
async def test_fetch_errors(
    server: ServerThread, http: httpx.AsyncClient, path: str, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        await load_image_url(f"{server.url}{path}", http=http, max_bytes=1000, allow_private=True)


async def test_fetch_time_limit(server: ServerThread, http: httpx.AsyncClient) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InvalidRequest, match="took longer than 0.3 s"):
        await load_image_url(f"{server.url}/slow.png", http=http, timeout=0.3, allow_private=True)
    assert loop.time() - started < 2


async def test_connection_failure_is_a_clear_400(http: httpx.AsyncClient) -> None:
    with pytest.raises(InvalidRequest, match="Could not fetch the image"):
        await load_image_url("http://127.0.0.1:9/a.png", http=http, allow_private=True)


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "file:///etc/passwd", "http:///x"])
async def test_other_schemes_are_refused(http: httpx.AsyncClient, url: str) -> None:
    with pytest.raises(InvalidRequest):
        await load_image_url(url, http=http, allow_private=True)


async def test_data_urls_pass_through_load_image_url(http: httpx.AsyncClient) -> None:
    image = await load_image_url(data_url("image/gif", GIF), http=http)
    assert image.format == "gif"
