"""AWS event-stream codec, sans I/O: feed bytes in, get frames out. No network, no asyncio.

Frame layout (all integers big-endian)::

    total_len u32 | headers_len u32 | prelude_crc u32 | headers | payload | message_crc u32

``prelude_crc`` covers the first 8 bytes and ``message_crc`` everything before it (zlib CRC-32).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

MAX_FRAME_SIZE = 16 * 1024 * 1024
_PRELUDE = struct.Struct(">III")
_MIN_FRAME = 16  # prelude (12) + message CRC (4)
_HEADER_CACHE_LIMIT = 256

# Header value types, as numbered by the spec.
_TRUE, _FALSE, _BYTE, _SHORT, _INT, _LONG, _BYTES, _STRING, _TIMESTAMP, _UUID = range(10)
_FIXED = {
    _BYTE: struct.Struct(">b"),
    _SHORT: struct.Struct(">h"),
    _INT: struct.Struct(">i"),
    _LONG: struct.Struct(">q"),
    _TIMESTAMP: struct.Struct(">q"),
}

HeaderValue = bool | int | bytes | str | datetime | uuid.UUID


class EventStreamError(Exception):
    """The byte stream is not a valid event stream; the decoder cannot go on after it."""


class ChecksumMismatch(EventStreamError):
    pass


class FrameTooLarge(EventStreamError):
    pass


class MalformedFrame(EventStreamError):
    pass


@dataclass(frozen=True, slots=True)
class Frame:
    headers: Mapping[str, HeaderValue]
    payload: bytes

    @property
    def message_type(self) -> str:
        return str(self.headers.get(":message-type", "event"))

    @property
    def event_type(self) -> str | None:
        value = self.headers.get(":event-type")
        return value if isinstance(value, str) else None


def _parse_headers(raw: bytes) -> Mapping[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    pos, end = 0, len(raw)
    try:
        while pos < end:
            name_len = raw[pos]
            name = raw[pos + 1 : pos + 1 + name_len].decode("utf-8")
            pos += 1 + name_len
            kind = raw[pos]
            pos += 1
            value: HeaderValue
            if kind == _STRING or kind == _BYTES:
                (length,) = struct.unpack_from(">H", raw, pos)
                data = raw[pos + 2 : pos + 2 + length]
                if len(data) != length:
                    raise MalformedFrame("header value runs past the header block")
                value = data.decode("utf-8") if kind == _STRING else bytes(data)
                pos += 2 + length
            elif kind == _TRUE or kind == _FALSE:
                value = kind == _TRUE
            elif kind == _UUID:
                if pos + 16 > end:
                    raise MalformedFrame("uuid header runs past the header block")
                value = uuid.UUID(bytes=bytes(raw[pos : pos + 16]))
                pos += 16
            elif kind in _FIXED:
                codec = _FIXED[kind]
                (number,) = codec.unpack_from(raw, pos)
                pos += codec.size
                value = (
                    datetime.fromtimestamp(number / 1000, tz=UTC) if kind == _TIMESTAMP else number
                )
            else:
                raise MalformedFrame(f"unknown header value type {kind}")
            if pos > end:
                raise MalformedFrame("header runs past the header block")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise MalformedFrame(f"unreadable header block: {exc}") from exc
    return MappingProxyType(headers)


class EventStreamDecoder:
    """Incremental decoder. ``feed()`` accepts chunks split anywhere and returns whole frames.

    After an :class:`EventStreamError` the stream is unusable (a frame boundary cannot be
    recovered safely), so the decoder refuses further input.
    """

    __slots__ = ("_buffer", "_failed", "_header_cache", "max_frame_size")

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._buffer = bytearray()
        self._failed = False
        # Kiro repeats the same few header blocks on every frame: parse each once.
        self._header_cache: dict[bytes, Mapping[str, HeaderValue]] = {}
        self.max_frame_size = max_frame_size

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole frame (non-zero at the end = cut stream)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed:
            raise EventStreamError("decoder already failed; start a new one")
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        pos = 0
        size = len(buffer)
        try:
            while size - pos >= 12:
                total, headers_len, prelude_crc = _PRELUDE.unpack_from(buffer, pos)
                if zlib.crc32(buffer[pos : pos + 8]) != prelude_crc:
                    raise ChecksumMismatch("prelude CRC does not match")
                if total > self.max_frame_size:
                    raise FrameTooLarge(f"frame of {total} bytes exceeds {self.max_frame_size}")
                if total < _MIN_FRAME or headers_len > total - _MIN_FRAME:
                    raise MalformedFrame(f"bad lengths: total {total}, headers {headers_len}")
                if size - pos < total:
                    break
                end = pos + total
                body = bytes(buffer[pos : end - 4])
                (message_crc,) = struct.unpack_from(">I", buffer, end - 4)
                if zlib.crc32(body) != message_crc:
                    raise ChecksumMismatch("message CRC does not match")
                raw_headers = body[12 : 12 + headers_len]
                headers = self._header_cache.get(raw_headers)
                if headers is None:
                    headers = _parse_headers(raw_headers)
                    if len(self._header_cache) < _HEADER_CACHE_LIMIT:
                        self._header_cache[raw_headers] = headers
                frames.append(Frame(headers, body[12 + headers_len :]))
                pos = end
        except EventStreamError:
            self._failed = True
            raise
        finally:
            if pos:
                del buffer[:pos]
        return frames


def _encode_header(name: str, value: Any) -> bytes:
    raw_name = name.encode("utf-8")
    out = bytes([len(raw_name)]) + raw_name
    if isinstance(value, bool):
        return out + bytes([_TRUE if value else _FALSE])
    if isinstance(value, str):
        data = value.encode("utf-8")
        return out + bytes([_STRING]) + struct.pack(">H", len(data)) + data
    if isinstance(value, bytes | bytearray):
        return out + bytes([_BYTES]) + struct.pack(">H", len(value)) + bytes(value)
    if isinstance(value, uuid.UUID):
        return out + bytes([_UUID]) + value.bytes
    if isinstance(value, datetime):
        return out + bytes([_TIMESTAMP]) + struct.pack(">q", int(value.timestamp() * 1000))
    if isinstance(value, HeaderInt):
        return out + bytes([value.kind]) + _FIXED[value.kind].pack(value.value)
    if isinstance(value, int):
        return out + bytes([_INT]) + struct.pack(">i", value)
    raise TypeError(f"cannot encode header {name!r} of type {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class HeaderInt:
    """An integer header with an explicit width (byte, short, int or long)."""

    value: int
    kind: int = _INT

    BYTE = _BYTE
    SHORT = _SHORT
    INT = _INT
    LONG = _LONG


def encode_frame(headers: Mapping[str, Any], payload: bytes) -> bytes:
    """Encode one frame (for the simulator and tests). Plain ints are encoded as int32."""
    raw_headers = b"".join(_encode_header(k, v) for k, v in headers.items())
    total = 16 + len(raw_headers) + len(payload)
    prelude = struct.pack(">II", total, len(raw_headers))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw_headers + payload
    return head + struct.pack(">I", zlib.crc32(head))


def encode_event(event_type: str, payload: bytes) -> bytes:
    """An ``event`` frame with the three headers Kiro sends, in Kiro's order."""
    return encode_frame(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        payload,
    )


def encode_exception(exception_type: str, payload: bytes) -> bytes:
    return encode_frame(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        payload,
    )
