"""The event-stream codec: real captures split anywhere, botocore as a second opinion,
round-trips of every header type, and golden negative vectors."""

from __future__ import annotations

import json
import struct
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from ki2api.kiro.wire import eventstream as es
from ki2api.kiro.wire.eventstream import (
    MAX_FRAME_SIZE,
    ChecksumMismatch,
    EventStreamDecoder,
    EventStreamError,
    Frame,
    FrameTooLarge,
    HeaderInt,
    MalformedFrame,
    encode_event,
    encode_exception,
    encode_frame,
)

SHARED_CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "kiro-captures"
# The simulator ships byte-identical copies (checked below), so a lone clone still runs these.
PACKAGED_CAPTURES = Path(__file__).resolve().parents[1] / "ki2api" / "simulator" / "captures"
CAPTURES = SHARED_CAPTURES if SHARED_CAPTURES.is_dir() else PACKAGED_CAPTURES
KIRO_HEADERS = {
    ":event-type": "assistantResponseEvent",
    ":content-type": "application/json",
    ":message-type": "event",
}

# What each capture holds, written out by hand from its README, not derived from the decoder.
EXPECTED_TEXT = {
    "text-short.bin": ["Immersive Weather Car", "d: Native Web Design & Dynamic Effects"],
    "text-json-fragments.bin": [
        "{",
        '\n    "isNewT',
        'opic": true,\n    "title',
        '": "Weather Car',
        'd"\n}',
    ],
    "text-zh-then-tooluse.bin": [
        "我",
        "将",
        "为",
        "您创",
        "建一个高",
        "级天气展",
        "示卡片",
        "，完",
        "全符合您",
        "的要求。",
        "让",
        "我先",
        "创",
        "建一个包",
        "含所",
        "有功",
        "能的单",
        "一",
        "HTML",
        "文件。",
    ],  # fmt: skip
}
FULL_TEXT = {
    "text-short.bin": "Immersive Weather Card: Native Web Design & Dynamic Effects",
    "text-json-fragments.bin": '{\n    "isNewTopic": true,\n    "title": "Weather Card"\n}',
    "text-zh-then-tooluse.bin": (
        "我将为您创建一个高级天气展示卡片，完全符合您的要求。让我先创建一个包含所有功能的单一HTML文件。"
    ),
}
TOOL_USE = {"name": "Write", "toolUseId": "tooluse_1DCqyICMR-CfTS36UNNiwA"}

needs_captures = pytest.mark.skipif(not CAPTURES.is_dir(), reason=f"{CAPTURES} not present")


def capture(name: str) -> bytes:
    return (CAPTURES / name).read_bytes()


def decode_chunks(chunks: Iterable[bytes], **kwargs: Any) -> list[Frame]:
    decoder = EventStreamDecoder(**kwargs)
    frames = [frame for chunk in chunks for frame in decoder.feed(chunk)]
    assert decoder.buffered == 0, "bytes left over after the last chunk"
    return frames


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def raw_frame(raw_headers: bytes, payload: bytes = b"{}") -> bytes:
    """A frame with valid CRCs around whatever header bytes the test wants."""
    prelude = struct.pack(">II", 16 + len(raw_headers) + len(payload), len(raw_headers))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw_headers + payload
    return head + struct.pack(">I", zlib.crc32(head))


def prelude(total: int, headers_len: int) -> bytes:
    lengths = struct.pack(">II", total, headers_len)
    return lengths + struct.pack(">I", zlib.crc32(lengths))


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --- real captures -------------------------------------------------------------------------


@needs_captures
@pytest.mark.parametrize("name", sorted(EXPECTED_TEXT))
def test_capture_decodes_to_the_expected_frames(name: str) -> None:
    frames = decode_chunks([capture(name)])
    text_frames = frames[: len(EXPECTED_TEXT[name])]
    assert [dict(f.headers) for f in text_frames] == [KIRO_HEADERS] * len(text_frames)
    assert [json.loads(f.payload) for f in text_frames] == [
        {"content": text} for text in EXPECTED_TEXT[name]
    ]
    assert "".join(json.loads(f.payload)["content"] for f in text_frames) == FULL_TEXT[name]
    assert all(f.message_type == "event" for f in frames)
    if name == "text-zh-then-tooluse.bin":
        assert len(frames) == 21
        assert frames[-1].event_type == "toolUseEvent"
        assert json.loads(frames[-1].payload) == TOOL_USE
    else:
        assert len(frames) == len(EXPECTED_TEXT[name])


@needs_captures
@pytest.mark.parametrize("name", sorted(EXPECTED_TEXT))
def test_capture_decodes_identically_for_every_two_chunk_split(name: str) -> None:
    data = capture(name)
    reference = decode_chunks([data])
    for cut in range(len(data) + 1):
        assert decode_chunks([data[:cut], data[cut:]]) == reference, f"split at byte {cut}"


@needs_captures
@pytest.mark.parametrize("name", sorted(EXPECTED_TEXT))
def test_capture_decodes_identically_byte_by_byte(name: str) -> None:
    data = capture(name)
    assert decode_chunks(data[i : i + 1] for i in range(len(data))) == decode_chunks([data])


@needs_captures
@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(sorted(EXPECTED_TEXT)), cuts=st.lists(st.integers(0, 2738)))
def test_capture_decodes_identically_for_random_splits(name: str, cuts: list[int]) -> None:
    data = capture(name)
    chunks = split_at(data, (c for c in cuts if c <= len(data)))
    assert decode_chunks(chunks) == decode_chunks([data])


@needs_captures
def test_all_captures_back_to_back_in_one_decoder() -> None:
    stream = b"".join(capture(name) for name in sorted(EXPECTED_TEXT))
    frames = decode_chunks(split_at(stream, range(0, len(stream), 97)))
    assert len(frames) == 2 + 5 + 21


def botocore_frames(chunks: Iterable[bytes]) -> list[tuple[dict[str, Any], bytes]]:
    buffer = EventStreamBuffer()
    out: list[tuple[dict[str, Any], bytes]] = []
    for chunk in chunks:
        buffer.add_data(chunk)
        out.extend((dict(message.headers), message.payload) for message in buffer)
    return out


@needs_captures
@pytest.mark.parametrize("name", sorted(EXPECTED_TEXT))
@pytest.mark.parametrize("chunk_size", [1, 64, 10_000])
def test_botocore_agrees_on_the_captures(name: str, chunk_size: int) -> None:
    data = capture(name)
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    ours = [(dict(f.headers), f.payload) for f in decode_chunks(chunks)]
    assert ours == botocore_frames(chunks)


# --- round trips ---------------------------------------------------------------------------

# Each strategy yields (value to encode, value our decoder gives back, value botocore gives back).
_MS = st.integers(
    min_value=(datetime(1, 1, 1, tzinfo=UTC) - es._EPOCH) // timedelta(milliseconds=1),
    max_value=(datetime(9999, 12, 31, tzinfo=UTC) - es._EPOCH) // timedelta(milliseconds=1),
)


def _int_header(kind: int, bits: int) -> st.SearchStrategy[tuple[Any, Any, Any]]:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return st.integers(lo, hi).map(lambda n: (HeaderInt(n, kind), n, n))


HEADER_VALUES = st.one_of(
    st.booleans().map(lambda b: (b, b, b)),
    _int_header(HeaderInt.BYTE, 8),
    _int_header(HeaderInt.SHORT, 16),
    _int_header(HeaderInt.INT, 32),
    _int_header(HeaderInt.LONG, 64),
    st.integers(-(2**31), 2**31 - 1).map(lambda n: (n, n, n)),  # plain int = int32
    st.binary(max_size=300).map(lambda b: (b, b, b)),
    st.text(max_size=100).map(lambda s: (s, s, s)),
    _MS.map(lambda ms: (es._EPOCH + timedelta(milliseconds=ms),) * 2 + (ms,)),
    st.uuids().map(lambda u: (u, u, u.bytes)),
)
HEADER_NAMES = st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) < 256)
FRAMES = st.lists(
    st.tuples(st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=8), st.binary(max_size=500)),
    min_size=1,
    max_size=5,
)


def _encode(frames: list[tuple[dict[str, tuple[Any, Any, Any]], bytes]]) -> bytes:
    return b"".join(
        encode_frame({k: v[0] for k, v in headers.items()}, payload) for headers, payload in frames
    )


@settings(max_examples=200, deadline=None)
@given(frames=FRAMES, data=st.data())
def test_round_trip_of_every_header_type_in_random_chunks(
    frames: list[tuple[dict[str, tuple[Any, Any, Any]], bytes]], data: st.DataObject
) -> None:
    stream = _encode(frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    decoded = decode_chunks(split_at(stream, cuts))
    assert [(dict(f.headers), f.payload) for f in decoded] == [
        ({k: v[1] for k, v in headers.items()}, payload) for headers, payload in frames
    ]


@settings(max_examples=200, deadline=None)
@given(frames=FRAMES)
def test_botocore_decodes_our_encoder_output(
    frames: list[tuple[dict[str, tuple[Any, Any, Any]], bytes]],
) -> None:
    assert botocore_frames([_encode(frames)]) == [
        ({k: v[2] for k, v in headers.items()}, payload) for headers, payload in frames
    ]


def test_header_value_types_decode_to_python_types() -> None:
    stamp = datetime(2025, 8, 22, 12, 30, 1, 123000, tzinfo=UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    headers = {
        "t": True,
        "f": False,
        "b": HeaderInt(-128, HeaderInt.BYTE),
        "s": HeaderInt(-32768, HeaderInt.SHORT),
        "i": 2**31 - 1,
        "l": HeaderInt(-(2**63), HeaderInt.LONG),
        "raw": b"\x00\xff",
        "str": "héllo",
        "when": stamp,
        "id": ident,
    }
    (frame,) = decode_chunks([encode_frame(headers, b"x")])
    assert dict(frame.headers) == {
        **headers,
        "b": -128,
        "s": -32768,
        "l": -(2**63),
    }
    assert type(frame.headers["t"]) is bool and type(frame.headers["b"]) is int


def test_timestamp_encoding_is_exact_to_the_millisecond() -> None:
    for ms in (1_755_865_801_123, 1_755_865_801_001, -1, 0, 999, -62_135_596_800_000):
        stamp = es._EPOCH + timedelta(milliseconds=ms)
        (frame,) = decode_chunks([encode_frame({"t": stamp}, b"")])
        assert frame.headers["t"] == stamp
        assert botocore_frames([encode_frame({"t": stamp}, b"")])[0][0]["t"] == ms


@pytest.mark.parametrize(
    ("stamp", "ms"),
    [
        (datetime(2025, 8, 22, 0, 0, 0, 123999, tzinfo=UTC), 1_755_820_800_123),
        (datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC), -1),  # not 0: digits dropped
        (datetime(2025, 8, 22, 2, 0, tzinfo=timezone(timedelta(hours=2))), 1_755_820_800_000),
    ],
)
def test_timestamp_encoding_drops_sub_millisecond_digits(stamp: datetime, ms: int) -> None:
    assert botocore_frames([encode_frame({"t": stamp}, b"")])[0][0]["t"] == ms


def test_long_string_and_bytes_headers() -> None:
    headers = {"s": "é" * 200, "b": bytes(range(256)) * 255 + bytes(255), "e": "", "z": b""}
    assert len(headers["b"]) == 0xFFFF
    (frame,) = decode_chunks([encode_frame(headers, b"")])
    assert dict(frame.headers) == headers


def test_encode_event_and_exception_use_kiro_headers() -> None:
    event, exception = decode_chunks(
        [encode_event("toolUseEvent", b"{}"), encode_exception("X", b"1")]
    )
    assert list(event.headers) == [":event-type", ":content-type", ":message-type"]
    assert (event.message_type, event.event_type, event.payload) == ("event", "toolUseEvent", b"{}")
    assert exception.message_type == "exception"
    assert exception.event_type is None
    assert exception.headers[":exception-type"] == "X"


def test_frame_is_an_immutable_value() -> None:
    frame = Frame({":event-type": "e"}, b"p")
    assert frame == Frame(headers={":event-type": "e"}, payload=b"p")
    assert frame.message_type == "event"  # the default when the header is absent
    assert Frame({":event-type": 3}, b"").event_type is None
    (decoded,) = decode_chunks([encode_event("e", b"p")])
    with pytest.raises(TypeError):
        decoded.headers[":event-type"] = "other"  # type: ignore[index]
    with pytest.raises(AttributeError):
        decoded.payload = b"other"  # type: ignore[misc]


def test_feed_accepts_bytearray_and_memoryview() -> None:
    data = encode_event("e", b"payload") * 2
    decoder = EventStreamDecoder()
    frames = decoder.feed(bytearray(data[:5])) + decoder.feed(memoryview(data)[5:])
    assert [f.payload for f in frames] == [b"payload", b"payload"]
    assert [f.payload for f in EventStreamDecoder().feed(memoryview(data))] == [b"payload"] * 2


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("", "v", "1-255 bytes"),
        ("x" * 256, "v", "1-255 bytes"),
        ("n", "x" * 65536, "exceeds 65535"),
        ("n", 2**31, "does not fit"),
        ("n", HeaderInt(128, HeaderInt.BYTE), "does not fit"),
    ],
)
def test_encoder_rejects_unencodable_headers(name: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_frame({name: value}, b"")


def test_encoder_rejects_unknown_types_and_widths() -> None:
    with pytest.raises(TypeError, match="float"):
        encode_frame({"n": 1.5}, b"")
    with pytest.raises(ValueError, match="kind"):
        HeaderInt(1, kind=7)


# --- negative vectors ----------------------------------------------------------------------

SAMPLE = encode_frame({":event-type": "assistantResponseEvent", "n": HeaderInt(7)}, b'{"a":1}')


def failing_feed(decoder: EventStreamDecoder, data: bytes) -> EventStreamError:
    with pytest.raises(EventStreamError) as info:
        decoder.feed(data)
    with pytest.raises(EventStreamError, match="already failed"):
        decoder.feed(b"")
    with pytest.raises(EventStreamError, match="already failed"):
        decoder.feed(SAMPLE)
    return info.value


@pytest.mark.parametrize("bit", range(96))
def test_any_bit_flip_in_the_prelude_is_a_prelude_checksum_mismatch(bit: int) -> None:
    error = failing_feed(EventStreamDecoder(), flip_bit(SAMPLE, bit))
    assert type(error) is ChecksumMismatch
    assert "prelude CRC mismatch at stream byte 0" in str(error)


def test_any_bit_flip_after_the_prelude_is_a_message_checksum_mismatch() -> None:
    for bit in range(96, len(SAMPLE) * 8):
        error = failing_feed(EventStreamDecoder(), SAMPLE + flip_bit(SAMPLE, bit))
        assert type(error) is ChecksumMismatch, bit
        assert f"message CRC mismatch in the frame at stream byte {len(SAMPLE)}" in str(error)


def test_errors_name_the_offset_in_the_whole_stream() -> None:
    decoder = EventStreamDecoder()
    assert len(decoder.feed(SAMPLE + SAMPLE[:20])) == 1
    assert decoder.feed(SAMPLE[20:]) != []
    with pytest.raises(ChecksumMismatch, match=f"frame at stream byte {2 * len(SAMPLE)}:"):
        decoder.feed(flip_bit(SAMPLE, 8 * (len(SAMPLE) - 1)))


def test_frame_over_the_default_limit_fails_on_its_prelude() -> None:
    # Only the 12-byte prelude is fed: the decoder must not wait for 16 MiB to arrive.
    error = failing_feed(EventStreamDecoder(), prelude(MAX_FRAME_SIZE + 1, 0))
    assert isinstance(error, FrameTooLarge)
    assert f"{MAX_FRAME_SIZE + 1} bytes exceeds the {MAX_FRAME_SIZE}-byte limit" in str(error)


def test_frame_size_limit_is_configurable_and_inclusive() -> None:
    assert len(decode_chunks([SAMPLE], max_frame_size=len(SAMPLE))) == 1
    error = failing_feed(EventStreamDecoder(max_frame_size=len(SAMPLE) - 1), SAMPLE)
    assert isinstance(error, FrameTooLarge)


@pytest.mark.parametrize(
    ("total", "headers_len"), [(0, 0), (15, 0), (16, 1), (100, 85), (16, 2**32 - 1)]
)
def test_impossible_lengths_are_malformed(total: int, headers_len: int) -> None:
    error = failing_feed(EventStreamDecoder(), prelude(total, headers_len) + bytes(200))
    assert isinstance(error, MalformedFrame)
    assert f"impossible lengths: total {total}, headers {headers_len}" in str(error)


def test_smallest_frame_no_headers_no_payload() -> None:
    (frame,) = decode_chunks([raw_frame(b"", b"")])
    assert frame == Frame({}, b"")


@pytest.mark.parametrize(
    ("raw_headers", "message"),
    [
        (b"\x01x\x0a", "header 'x': unknown value type 10"),
        (b"\x01x\xff", "header 'x': unknown value type 255"),
        (b"\x05ab", "header name runs past the header block"),
        (b"\x01x", "header name runs past the header block"),
        (b"\x01x\x07\x00", "header 'x': length runs past the header block"),
        (b"\x01x\x07\x00\x05abc", "header 'x': value runs past the header block"),
        (b"\x01x\x07\x00\x04abc", "header 'x': value runs past the header block"),
        (b"\x01x\x06\xff\xff", "header 'x': value runs past the header block"),
        (b"\x01x\x09" + bytes(15), "header 'x': uuid runs past the header block"),
        (b"\x01x\x04\x00\x00\x00", "header 'x': value runs past the header block"),
        (b"\x01x\x05" + bytes(7), "header 'x': value runs past the header block"),
        (b"\x01x\x08" + struct.pack(">q", 2**62), "header 'x': timestamp out of range"),
        (b"\x01x\x07\x00\x01\xff", "header 'x': string is not UTF-8"),
        (b"\x01\xff\x00", "header name is not UTF-8"),
        (b"\x01x\x00\x01x\x01", "header 'x' appears twice"),
    ],
)
def test_bad_header_blocks_are_malformed(raw_headers: bytes, message: str) -> None:
    error = failing_feed(EventStreamDecoder(), raw_frame(raw_headers))
    assert isinstance(error, MalformedFrame)
    assert message in str(error)


def test_truncated_stream_leaves_bytes_buffered() -> None:
    stream = SAMPLE * 3
    for cut in range(1, len(SAMPLE)):
        decoder = EventStreamDecoder()
        assert len(decoder.feed(stream[:-cut])) == 2
        assert decoder.buffered == len(SAMPLE) - cut
        assert decoder.feed(stream[-cut:])[0].payload == b'{"a":1}'
        assert decoder.buffered == 0


def test_split_inside_the_header_block() -> None:
    decoder = EventStreamDecoder()
    middle = 12 + 5  # inside the first header's name
    assert decoder.feed(SAMPLE[:middle]) == []
    assert decoder.buffered == middle
    (frame,) = decoder.feed(SAMPLE[middle:])
    assert frame.event_type == "assistantResponseEvent" and frame.headers["n"] == 7


def test_large_frame_in_small_chunks_takes_linear_time() -> None:
    # A quadratic buffer would copy ~4 GiB here and take minutes; linear takes milliseconds.
    payload = bytes(range(256)) * 4096  # 1 MiB
    data = encode_frame({":event-type": "big"}, payload)
    start = time.perf_counter()
    frames = decode_chunks(data[i : i + 256] for i in range(0, len(data), 256))
    assert time.perf_counter() - start < 5
    assert frames == [Frame({":event-type": "big"}, payload)]


def test_header_cache_stays_bounded_and_correct() -> None:
    stream = b"".join(encode_frame({"id": uuid.UUID(int=i)}, b"") for i in range(600))
    frames = decode_chunks([stream])
    assert [f.headers["id"] for f in frames] == [uuid.UUID(int=i) for i in range(600)]
    assert len(es._header_cache) <= es._HEADER_CACHE_LIMIT
    # Kiro's usual block still decodes right after the cache was churned.
    (frame,) = decode_chunks([encode_event("assistantResponseEvent", b"{}")])
    assert dict(frame.headers) == KIRO_HEADERS


def test_cached_headers_are_shared_but_read_only() -> None:
    first, second = decode_chunks([encode_event("e", b"1"), encode_event("e", b"2")])
    assert first.headers is second.headers
    assert isinstance(first.headers, Mapping)
    with pytest.raises(TypeError):
        first.headers["x"] = 1  # type: ignore[index]


@pytest.mark.skipif(not SHARED_CAPTURES.is_dir(), reason="../shared is not beside this clone")
def test_packaged_captures_are_the_real_ones() -> None:
    shared = sorted(SHARED_CAPTURES.glob("*.bin"))
    assert shared
    for path in shared:
        assert (PACKAGED_CAPTURES / path.name).read_bytes() == path.read_bytes()
