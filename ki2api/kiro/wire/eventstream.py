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
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, NamedTuple

MAX_FRAME_SIZE = 16 * 1024 * 1024
_PRELUDE = struct.Struct(">III")
_PRELUDE_LEN = 12
_CRC = struct.Struct(">I")
_MIN_FRAME = 16  # prelude (12) + message CRC (4)
_HEADER_CACHE_LIMIT = 256
_COPY_LIMIT = 64 * 1024  # below this, slicing bytes beats making a memoryview
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

# Header value types, as numbered by the spec.
_TRUE, _FALSE, _BYTE, _SHORT, _INT, _LONG, _BYTES, _STRING, _TIMESTAMP, _UUID = range(10)
_FIXED = {
    _BYTE: struct.Struct(">b"),
    _SHORT: struct.Struct(">h"),
    _INT: struct.Struct(">i"),
    _LONG: struct.Struct(">q"),
    _TIMESTAMP: struct.Struct(">q"),
}
_U16 = struct.Struct(">H")
_I64 = _FIXED[_LONG]

HeaderValue = bool | int | bytes | str | datetime | uuid.UUID


class EventStreamError(Exception):
    """The byte stream is not a valid event stream; the decoder cannot go on after it."""


class ChecksumMismatch(EventStreamError):
    """A prelude or message CRC-32 does not match the bytes: corruption in transit."""


class FrameTooLarge(EventStreamError):
    """A prelude announces a frame above ``max_frame_size``; raised before buffering it."""


class MalformedFrame(EventStreamError):
    """The CRCs match but the content is impossible: lengths, header types, header bounds."""


class Frame(NamedTuple):
    """One decoded frame, a pure value. A named tuple because the decoder builds one per frame
    and a tuple is about three times cheaper to create than a frozen dataclass."""

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
    """Parse one header block. Every read is bounds-checked so a bad block fails clearly."""
    headers: dict[str, HeaderValue] = {}
    pos, end = 0, len(raw)
    while pos < end:
        name_len = raw[pos]
        pos += 1
        if pos + name_len + 1 > end:
            raise MalformedFrame("header name runs past the header block")
        try:
            name = raw[pos : pos + name_len].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedFrame(f"header name is not UTF-8: {exc}") from exc
        pos += name_len
        kind = raw[pos]
        pos += 1
        value: HeaderValue
        if kind == _STRING or kind == _BYTES:
            if pos + 2 > end:
                raise MalformedFrame(f"header {name!r}: length runs past the header block")
            length = (raw[pos] << 8) | raw[pos + 1]
            pos += 2
            if pos + length > end:
                raise MalformedFrame(f"header {name!r}: value runs past the header block")
            data = raw[pos : pos + length]
            pos += length
            if kind == _BYTES:
                value = data
            else:
                try:
                    value = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise MalformedFrame(f"header {name!r}: string is not UTF-8: {exc}") from exc
        elif kind == _TRUE or kind == _FALSE:
            value = kind == _TRUE
        elif kind == _UUID:
            if pos + 16 > end:
                raise MalformedFrame(f"header {name!r}: uuid runs past the header block")
            value = uuid.UUID(bytes=raw[pos : pos + 16])
            pos += 16
        elif kind in _FIXED:
            codec = _FIXED[kind]
            if pos + codec.size > end:
                raise MalformedFrame(f"header {name!r}: value runs past the header block")
            (number,) = codec.unpack_from(raw, pos)
            pos += codec.size
            if kind == _TIMESTAMP:
                try:
                    value = _EPOCH + timedelta(milliseconds=number)
                except OverflowError as exc:
                    raise MalformedFrame(f"header {name!r}: timestamp out of range") from exc
            else:
                value = number
        else:
            raise MalformedFrame(f"header {name!r}: unknown value type {kind}")
        if name in headers:
            raise MalformedFrame(f"header {name!r} appears twice")
        headers[name] = value
    return MappingProxyType(headers)


# Kiro repeats the same few header blocks on every frame of every answer, so parsed blocks are
# shared process-wide. The values are immutable; the cache is emptied when full so a stream of
# one-off blocks (say, a UUID per frame) cannot pin it with useless entries.
_header_cache: dict[bytes, Mapping[str, HeaderValue]] = {}


def _headers(raw: bytes) -> Mapping[str, HeaderValue]:
    headers = _header_cache.get(raw)
    if headers is None:
        headers = _parse_headers(raw)
        if len(_header_cache) >= _HEADER_CACHE_LIMIT:
            _header_cache.clear()
        _header_cache[raw] = headers
    return headers


_crc32 = zlib.crc32


class EventStreamDecoder:
    """Incremental decoder. ``feed()`` accepts chunks split anywhere and returns whole frames.

    Work per call is proportional to the bytes fed: a partial frame waits in a buffer, and the
    decoder only looks at it again once enough bytes for the next step have arrived (12 for a
    prelude, then the whole frame), so a large frame fed in small chunks is never rescanned.

    After an :class:`EventStreamError` the stream is unusable (a frame boundary cannot be
    recovered safely), so the decoder refuses further input.
    """

    __slots__ = ("_buffer", "_consumed", "_failed", "_need", "max_frame_size")

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._buffer = bytearray()
        self._failed = False
        # Bytes the buffer must hold before decoding can progress: a prelude, or a whole frame
        # once its prelude has been checked.
        self._need = _PRELUDE_LEN
        self._consumed = 0  # stream offset of the buffer's first byte, for error messages
        self.max_frame_size = max_frame_size

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole frame (non-zero at the end = cut stream)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add bytes; return the frames they complete (often none, sometimes several)."""
        if self._failed:
            raise EventStreamError("decoder already failed on an earlier error; start a new one")
        buffer = self._buffer
        if buffer:
            if len(buffer) + len(data) < self._need:
                buffer += data
                return []
            data = b"".join((buffer, data))  # one copy into immutable bytes
            buffer.clear()
        elif len(data) < _PRELUDE_LEN:
            buffer += data
            return []
        elif type(data) is not bytes:
            data = bytes(data)
        # From here ``data`` is immutable bytes starting at a frame boundary: slices of it are
        # the header cache keys and the payloads, with no further copy.
        frames: list[Frame] = []
        size = len(data)
        pos = 0
        self._need = _PRELUDE_LEN
        try:
            while size - pos >= _PRELUDE_LEN:
                total, headers_len, prelude_crc = _PRELUDE.unpack_from(data, pos)
                crc = _crc32(data[pos : pos + 8])
                if crc != prelude_crc:
                    raise ChecksumMismatch(
                        f"prelude CRC mismatch at stream byte {self._consumed + pos}: "
                        f"computed {crc:#010x}, frame says {prelude_crc:#010x}"
                    )
                if total > self.max_frame_size:
                    raise FrameTooLarge(
                        f"frame of {total} bytes exceeds the {self.max_frame_size}-byte limit"
                    )
                if total < _MIN_FRAME or headers_len > total - _MIN_FRAME:
                    raise MalformedFrame(
                        f"impossible lengths: total {total}, headers {headers_len} "
                        f"(a frame needs {_MIN_FRAME} bytes plus its headers)"
                    )
                end = pos + total
                if end > size:
                    self._need = total  # sleep until the whole frame is here
                    break
                crc_at = end - 4
                # The message CRC continues from the prelude's first 8 bytes. Small bodies are
                # sliced (cheaper than a memoryview); big ones are not copied.
                body = data if total < _COPY_LIMIT else memoryview(data)
                crc = _crc32(body[pos + 8 : crc_at], crc)
                (message_crc,) = _CRC.unpack_from(data, crc_at)
                if crc != message_crc:
                    raise ChecksumMismatch(
                        f"message CRC mismatch in the frame at stream byte {self._consumed + pos}: "
                        f"computed {crc:#010x}, frame says {message_crc:#010x}"
                    )
                headers_end = pos + _PRELUDE_LEN + headers_len
                raw_headers = data[pos + _PRELUDE_LEN : headers_end]
                headers = _header_cache.get(raw_headers) or _headers(raw_headers)
                frames.append(Frame(headers, data[headers_end:crc_at]))
                pos = end
        except EventStreamError:
            self._failed = True
            raise
        self._consumed += pos
        if pos < size:
            buffer += data[pos:] if size - pos < _COPY_LIMIT else memoryview(data)[pos:]
        return frames


def _encode_header(name: str, value: Any) -> bytes:
    raw_name = name.encode("utf-8")
    if not 0 < len(raw_name) < 256:
        raise ValueError(f"header name {name!r} must be 1-255 bytes of UTF-8")
    out = bytes([len(raw_name)]) + raw_name
    if isinstance(value, bool):
        return out + bytes([_TRUE if value else _FALSE])
    if isinstance(value, str | bytes | bytearray):
        kind, data = (_STRING, value.encode("utf-8")) if isinstance(value, str) else (_BYTES, value)
        if len(data) > 0xFFFF:
            raise ValueError(f"header {name!r}: value of {len(data)} bytes exceeds 65535")
        return out + bytes([kind]) + _U16.pack(len(data)) + bytes(data)
    if isinstance(value, uuid.UUID):
        return out + bytes([_UUID]) + value.bytes
    if isinstance(value, datetime):
        # Exact integer arithmetic that drops sub-millisecond digits, also before 1970
        # (int(value.timestamp() * 1000) would round those towards 1970 instead).
        aware = value if value.tzinfo is not None else value.astimezone(UTC)
        return out + bytes([_TIMESTAMP]) + _I64.pack((aware - _EPOCH) // _ONE_MS)
    number, kind = (value.value, value.kind) if isinstance(value, HeaderInt) else (value, _INT)
    if isinstance(number, int):
        try:
            return out + bytes([kind]) + _FIXED[kind].pack(number)
        except struct.error as exc:
            raise ValueError(f"header {name!r}: {number} does not fit its width") from exc
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

    def __post_init__(self) -> None:
        if self.kind not in (_BYTE, _SHORT, _INT, _LONG):
            raise ValueError(f"HeaderInt kind must be BYTE, SHORT, INT or LONG, not {self.kind}")


def encode_frame(headers: Mapping[str, Any], payload: bytes) -> bytes:
    """Encode one frame (for the simulator and tests). Plain ints are encoded as int32."""
    raw_headers = b"".join(_encode_header(k, v) for k, v in headers.items())
    total = _MIN_FRAME + len(raw_headers) + len(payload)
    prelude = struct.pack(">II", total, len(raw_headers))
    head = prelude + _CRC.pack(zlib.crc32(prelude)) + raw_headers + bytes(payload)
    return head + _CRC.pack(zlib.crc32(head))


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
