"""Images from clients, checked before they reach the request model.

``data:`` URLs and Anthropic base64 blocks are decoded; ``http(s)`` URLs are fetched with a size
and a time limit. The format is always read from the bytes (magic numbers): Kiro takes png, jpeg,
gif and webp, and a declared type that disagrees with the bytes is refused, as Anthropic's API does.

Fetching refuses private, loopback, link-local and other non-public addresses unless allowed
(``ALLOW_PRIVATE_IMAGE_URLS``): every address the host resolves to is checked, the connection is
pinned to a checked address (so a second DNS answer cannot point elsewhere), and redirects are
followed by hand, each hop checked the same way.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from typing import Literal
from urllib.parse import unquote_to_bytes

import httpx

from ki2api.model.errors import InvalidRequest
from ki2api.model.request import ImagePart

ImageFormat = Literal["png", "jpeg", "gif", "webp"]

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
MAX_REDIRECTS = 3
_MEDIA_TYPES: dict[str, ImageFormat] = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/pjpeg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}


def sniff_format(data: bytes) -> ImageFormat | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _checked(
    data: bytes, declared: str | None, *, max_bytes: int, param: str | None, where: str
) -> ImagePart:
    if not data:
        raise InvalidRequest(f"The image {where} is empty.", param=param)
    if len(data) > max_bytes:
        raise InvalidRequest(
            f"The image {where} is {len(data)} bytes; the limit is {max_bytes} bytes.",
            param=param,
        )
    found = sniff_format(data)
    if found is None:
        raise InvalidRequest(
            f"The image {where} is not a PNG, JPEG, GIF or WebP image (the only formats "
            "supported).",
            param=param,
        )
    if declared is not None:
        wanted = _MEDIA_TYPES.get(declared.strip().lower())
        if wanted is None:
            raise InvalidRequest(
                f"Unsupported image type '{declared}' {where}: use image/png, image/jpeg, "
                "image/gif or image/webp.",
                param=param,
            )
        if wanted != found:
            raise InvalidRequest(
                f"The image {where} is declared as {declared} but its data is {found.upper()}.",
                param=param,
            )
    return ImagePart(format=found, data=data)


def _b64decode(text: str, *, max_bytes: int, param: str | None, where: str) -> bytes:
    compact = "".join(text.split())
    if len(compact) > (max_bytes + 2) // 3 * 4 + 4:
        raise InvalidRequest(
            f"The image {where} is larger than the limit of {max_bytes} bytes.", param=param
        )
    compact = compact.replace("-", "+").replace("_", "/")  # tolerate the URL-safe alphabet
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"The image {where} is not valid base64.", param=param) from None


def decode_base64_image(
    media_type: str, data: str, *, max_bytes: int = DEFAULT_MAX_BYTES, param: str | None = None
) -> ImagePart:
    """An Anthropic ``{"type": "base64", "media_type", "data"}`` image source."""
    where = "in the base64 source"
    raw = _b64decode(data, max_bytes=max_bytes, param=param, where=where)
    return _checked(raw, media_type, max_bytes=max_bytes, param=param, where=where)


def decode_data_url(
    url: str, *, max_bytes: int = DEFAULT_MAX_BYTES, param: str | None = None
) -> ImagePart:
    """``data:image/png;base64,...`` (base64 or percent-encoded)."""
    where = "in the data URL"
    head, comma, payload = url.partition(",")
    if not head[:5].lower() == "data:" or not comma:
        raise InvalidRequest("Malformed data URL: expected data:<type>;base64,<data>.", param=param)
    fields = [f.strip() for f in head[5:].split(";")]
    declared = fields[0] or None
    if any(f.lower() == "base64" for f in fields[1:]):
        raw = _b64decode(payload, max_bytes=max_bytes, param=param, where=where)
    else:
        raw = unquote_to_bytes(payload)
    return _checked(raw, declared, max_bytes=max_bytes, param=param, where=where)


# IPv6 forms that carry an IPv4 address a router or the host may end up reaching; the embedded
# address is what must be public. 6to4 (2002::/16) and IPv4-mapped (::ffff:0:0/96) are unwrapped
# by the ipaddress module's own properties.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix, IPv4 in the last 32 bits
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # local-use NAT64: never public
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            ip = embedded  # :: and ::1 become 0.0.0.0 and 0.0.0.1: not public either
    return ip.is_global and not ip.is_multicast


async def _resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def _target(
    url: httpx.URL, allow_private: bool, param: str | None
) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
    """(URL to connect to, extra headers, request extensions); refuses non-public hosts."""
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidRequest(
            "Image URLs must be data: URLs or http(s) URLs with a host.", param=param
        )
    if allow_private:
        return url, {}, {}
    port = url.port or (443 if url.scheme == "https" else 80)
    host = url.raw_host.decode("ascii")  # IDNA-encoded, as DNS and TLS want it
    try:
        addresses = await _resolve(host, port)
    except (OSError, UnicodeError):
        raise InvalidRequest(
            f"The image host '{url.host}' cannot be resolved.", param=param
        ) from None
    if not addresses or not all(_is_public(a) for a in addresses):
        raise InvalidRequest(
            f"The image URL's host '{url.host}' is a private, loopback or otherwise non-public "
            "address; fetching it is not allowed here.",
            param=param,
        )
    # Connect to the address just checked; keep the name for the Host header and TLS (SNI and
    # certificate check), so a DNS answer that changes between check and connect cannot win.
    pinned = url.copy_with(host=addresses[0])
    host_header = url.netloc.decode("ascii").rpartition("@")[2]
    return pinned, {"Host": host_header}, {"sni_hostname": host}


async def load_image_url(
    url: str,
    *,
    http: httpx.AsyncClient,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = 10.0,
    allow_private: bool = False,
    param: str | None = None,
) -> ImagePart:
    """A ``data:`` URL decoded, or an ``http(s)`` URL fetched within ``max_bytes`` and ``timeout``
    seconds (for the whole fetch, redirects included)."""
    if url[:5].lower() == "data:":
        return decode_data_url(url, max_bytes=max_bytes, param=param)
    shown = url if len(url) <= 200 else url[:200] + "..."
    try:
        async with asyncio.timeout(timeout):
            data = await _fetch(url, http, max_bytes, allow_private, param, shown)
    except TimeoutError:
        raise InvalidRequest(
            f"Fetching the image at {shown} took longer than {timeout:g} s.", param=param
        ) from None
    # Servers often send a generic or wrong content-type: for fetched images the bytes decide.
    return _checked(data, None, max_bytes=max_bytes, param=param, where=f"at {shown}")


async def _fetch(
    url: str,
    http: httpx.AsyncClient,
    max_bytes: int,
    allow_private: bool,
    param: str | None,
    shown: str,
) -> bytes:
    try:
        current = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise InvalidRequest(f"The image URL {shown} is not a valid URL.", param=param) from None
    for _ in range(MAX_REDIRECTS + 1):
        target, headers, extensions = await _target(current, allow_private, param)
        try:
            request = http.build_request("GET", target, headers=headers, extensions=extensions)
            response = await http.send(request, stream=True, follow_redirects=False)
        except httpx.InvalidURL:
            # httpx builds the next hop of a redirect even when not following it, and fails on a
            # Location such as data:, javascript: or mailto:
            raise _bad_redirect(param, shown) from None
        except httpx.HTTPError as exc:
            raise InvalidRequest(
                f"Could not fetch the image at {shown}: {type(exc).__name__}.", param=param
            ) from None
        async with _closing(response):
            if response.is_redirect and "location" in response.headers:
                current = _redirect_target(current, response.headers["location"], param, shown)
                continue
            if response.status_code != 200:
                raise InvalidRequest(
                    f"Could not fetch the image at {shown}: HTTP {response.status_code}.",
                    param=param,
                )
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise InvalidRequest(
                    f"The image at {shown} is {length} bytes; the limit is {max_bytes} bytes.",
                    param=param,
                )
            chunks: list[bytes] = []
            size = 0
            try:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise InvalidRequest(
                            f"The image at {shown} is larger than the limit of {max_bytes} bytes.",
                            param=param,
                        )
                    chunks.append(chunk)
            except httpx.HTTPError as exc:
                raise InvalidRequest(
                    f"Could not fetch the image at {shown}: {type(exc).__name__}.", param=param
                ) from None
            return b"".join(chunks)
    raise InvalidRequest(f"The image at {shown} redirects too many times.", param=param)


def _redirect_target(current: httpx.URL, location: str, param: str | None, shown: str) -> httpx.URL:
    """The next hop; a Location httpx cannot even parse (``data:``, ``javascript:``, ``mailto:``
    ...) is the client's problem, not a server error."""
    try:
        target = current.join(location)
        if target.scheme in ("http", "https") and target.host:
            return target
    except (httpx.InvalidURL, TypeError, ValueError):
        pass
    raise _bad_redirect(param, shown)


def _bad_redirect(param: str | None, shown: str) -> InvalidRequest:
    return InvalidRequest(
        f"The image at {shown} redirects to something that is not an http(s) URL.", param=param
    )


class _closing:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    async def __aenter__(self) -> httpx.Response:
        return self._response

    async def __aexit__(self, *exc: object) -> None:
        await self._response.aclose()
